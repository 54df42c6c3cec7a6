"""ConStyle: the contrastive prior encoder of IRConStyle (Fan et al., "IRConStyle: Image Restoration Framework Using
Contrastive Learning and Style Transfer", arXiv 2402.15784) and ConStyle v2 (arXiv 2406.18242).

A MoCo-style wrapper (He et al., arXiv 1911.05722): a query encoder sees the degraded image, a momentum key encoder
sees the clean image of the same patch, and a queue of past latents provides the negatives. Written from the
project notes (``shared/notes/constyle.md``); module and buffer names follow upstream so that upstream checkpoints
load unchanged (``encoder_q.stage1.0.0.weight`` ... ``encoder_q.mlp2.1.running_var``, ``queue``, ``queue_ptr``).

Shapes for an input (B, 3, H, W), H and W multiples of 8 (the ConStyle backbones pad for you):
latents ``q = [out1, out2]`` both (B, 128); intermediate maps ``feas`` = (B, 32, H/2, W/2), (B, 64, H/4, W/4),
(B, 128, H/8, W/8). ``out2`` is "the latent code" injected into the backbones.
"""
import torch
import torch.nn.functional as F
from torch import nn

from irtoolkit.utils.dist import all_gather_cat
from irtoolkit.utils.registry import ARCH_REGISTRY


class ConvAct(nn.Sequential):
    """Conv (no bias, 'same' padding) -> LeakyReLU(0.1). Keys: ``0.weight``."""

    def __init__(self, cin, cout, kernel_size=3, stride=1):
        super().__init__(nn.Conv2d(cin, cout, kernel_size, stride, (kernel_size - 1) // 2, bias=False),
                         nn.LeakyReLU(0.1, inplace=True))


class HeadBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d that also trains with batch size 1 (upstream raises there): a single sample is normalised
    with the running statistics instead of the (undefined) batch statistics. Same state_dict keys as BatchNorm1d."""

    def forward(self, x):
        if self.training and x.shape[0] == 1:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0., self.eps)
        return super().forward(x)


class LinearBNAct(nn.Sequential):
    """Linear -> BatchNorm1d -> GELU (upstream's projection head stage). Keys ``0.*`` and ``1.*``."""

    def __init__(self, cin, cout):
        super().__init__(nn.Linear(cin, cout), HeadBatchNorm1d(cout), nn.GELU())


class ConStyleEncoder(nn.Module):
    """Upstream's ``MyBaseEncoder``: four strided conv stages, global pooling and a two-layer MLP head.

    RGB in [0, 1] without mean/std normalisation. Returns ``([out1, out2], [fea1, fea2, fea3], logits)`` where
    ``logits`` is (B, num_classes) from the optional ConStyle v2 classification head, else None.
    """

    def __init__(self, in_channels=3, num_classes=0, init='torch'):
        super().__init__()
        self.stage1 = nn.Sequential(ConvAct(in_channels, 16), ConvAct(16, 16), ConvAct(16, 32, stride=2))
        self.stage2 = nn.Sequential(ConvAct(32, 32), ConvAct(32, 64, stride=2))
        self.stage3 = nn.Sequential(ConvAct(64, 128), ConvAct(128, 128, stride=2))
        self.stage4 = nn.Sequential(ConvAct(128, 256), ConvAct(256, 256, stride=2))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.mlp1 = LinearBNAct(256, 128)
        self.mlp2 = LinearBNAct(128, 128)
        # v2's head: keys classifier.0 / classifier.3 (ReLU and Dropout in between carry no weights)
        self.classifier = nn.Sequential(nn.Linear(256, 512), nn.ReLU(inplace=True), nn.Dropout(0.5),
                                        nn.Linear(512, num_classes)) if num_classes else None
        if init == 'kaiming':
            # torch's default conv init shrinks the signal ~3x per layer: after 9 bias-free convs the pooled
            # features are ~1e-4 of the input and the encoder barely learns; He init for LeakyReLU(0.1) keeps it O(1)
            for mod in self.modules():
                if isinstance(mod, nn.Conv2d):
                    nn.init.kaiming_normal_(mod.weight, a=0.1, nonlinearity='leaky_relu')
        elif init != 'torch':
            raise ValueError(f'ConStyle: init must be "torch" (upstream) or "kaiming", got {init!r}')

    def forward(self, x):
        fea1 = self.stage1(x)
        fea2 = self.stage2(fea1)
        fea3 = self.stage3(fea2)
        pooled = self.pool(self.stage4(fea3)).flatten(1)
        out1 = self.mlp1(pooled)
        out2 = self.mlp2(out1)
        logits = self.classifier(pooled) if self.classifier is not None else None
        return [out1, out2], [fea1, fea2, fea3], logits


@ARCH_REGISTRY.register()
class ConStyle(nn.Module):
    """Query encoder + momentum key encoder + queue of latents.

    Args (upstream's): ``Train`` builds the key encoder and the queue (False: inference only, ``encoder_q`` alone);
        ``dim`` latent size (128; the encoder's head is fixed at 128, other values are rejected), ``K`` queue length
        (any value >= 1; upstream needs K divisible by the batch size), ``m`` momentum, ``T`` temperature handed to
        the InfoNCE loss. Added: ``enqueue`` 'query' (upstream: the degraded image's latent) or 'key' (MoCo: the
        clean image's momentum latent); ``num_classes`` > 0 adds v2's classification head; ``in_channels``;
        ``init`` 'torch' (upstream: PyTorch's default) or 'kaiming' (He init of the convs: keeps the encoder's
        features from vanishing; a loaded checkpoint replaces either).

    ``forward(x)`` -> ``(q, feas)`` of the query encoder (upstream's inference call). ``forward(im_q, im_k)`` ->
    :meth:`train_forward`. On several processes the enqueued latents are gathered from every rank first, so the
    queue stays identical everywhere.
    """

    def __init__(self, Train=True, dim=128, K=65760, m=0.999, T=0.07, enqueue='query', num_classes=0, in_channels=3,
                 init='torch'):
        super().__init__()
        if dim != 128:
            raise ValueError(f'ConStyle: dim must be 128 (the encoder head width), got {dim}')
        if enqueue not in ('query', 'key'):
            raise ValueError(f'ConStyle: enqueue must be "query" or "key", got {enqueue!r}')
        if int(K) < 1:
            raise ValueError(f'ConStyle: K (queue length) must be >= 1, got {K}')
        self.Train, self.dim, self.K, self.m, self.T, self.enqueue = bool(Train), dim, int(K), m, T, enqueue
        self.frozen = False  # set by freeze(): the module then stays in eval mode (BatchNorm: see freeze)
        self.frozen_bn = 'eval'
        self.mode_asked = True  # the last mode train() was called with (a frozen module reports training False)
        if self.Train:
            # buffers before children, like upstream, so state_dict order matches its checkpoints
            self.register_buffer('queue', torch.randn(dim, self.K))
            self.register_buffer('queue_ptr', torch.zeros(1, dtype=torch.long))
        self.encoder_q = ConStyleEncoder(in_channels, num_classes, init)
        if self.Train:
            self.encoder_k = ConStyleEncoder(in_channels, num_classes, init)
            self.encoder_k.load_state_dict(self.encoder_q.state_dict())
            self.encoder_k.requires_grad_(False)

    # ------------------------------------------------------------------ inference
    def encode(self, x):
        """(B, 3, H, W) -> (latent (B, 128), [fea1, fea2, fea3]); the query encoder alone."""
        q, feas, _ = self.encoder_q(x)
        return q[1], feas

    def forward(self, im_q, im_k=None):
        if im_k is None:
            q, feas, _ = self.encoder_q(im_q)
            return q, feas
        return self.train_forward(im_q, im_k)

    def freeze(self, bn='eval'):
        """Stop training the prior: no gradients and eval mode from now on, except, with ``bn='train'``, its
        BatchNorm layers, which then follow the network's mode.

        ``bn='eval'``: the head's BatchNorm normalises with its stored running statistics in training as in
        testing, so training and testing see the same prior. ``bn='train'`` (upstream: its frozen prior keeps
        running in train mode): while the network trains, each batch is normalised with its own statistics and the
        running statistics keep moving (momentum 0.1) towards the new data; testing uses those running statistics.
        """
        if bn not in ('eval', 'train'):
            raise ValueError(f'ConStyle.freeze: bn must be "eval" or "train", got {bn!r}')
        self.frozen, self.frozen_bn = True, bn
        self.requires_grad_(False)
        self.train(getattr(self, 'mode_asked', self.training))
        return self

    def train(self, mode=True):
        self.mode_asked = mode
        super().train(mode and not self.frozen)
        if mode and self.frozen and self.frozen_bn == 'train':
            for module in self.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.train(True)
        return self

    # ------------------------------------------------------------------ training
    @torch.no_grad()
    def _momentum_update(self):
        # parameters only: the key encoder's BN statistics follow its own train-mode forward, as upstream
        for p_q, p_k in zip(self.encoder_q.parameters(), self.encoder_k.parameters()):
            p_k.mul_(self.m).add_(p_q.detach(), alpha=1. - self.m)

    @torch.no_grad()
    def _read_negatives(self, batch):
        """Upstream's style-loss negatives, read before enqueueing: [next slice, oldest slice], each (B, 128)."""
        ptr = int(self.queue_ptr)
        idx = torch.arange(batch, device=self.queue.device)
        oldest = self.queue[:, (ptr + idx) % self.K].t()
        following = self.queue[:, (ptr + batch + idx) % self.K].t()
        return [following, oldest]

    @torch.no_grad()
    def _dequeue_and_enqueue(self, latents):
        """Write (N, 128) latents at the pointer, wrapping around, and advance it; any N works."""
        latents = all_gather_cat(latents.detach().to(self.queue.dtype))
        n = latents.shape[0]
        if n >= self.K:  # more than the queue holds: keep the newest K
            latents, n = latents[-self.K:], self.K
        ptr = int(self.queue_ptr)
        idx = (ptr + torch.arange(n, device=self.queue.device)) % self.K
        self.queue[:, idx] = latents.t()
        self.queue_ptr[0] = (ptr + n) % self.K

    def train_forward(self, im_q, im_k):
        """One contrastive step's tensors (B >= 1).

        Returns a dict: ``q`` = [out1, out2] (B, 128) with gradients; ``feas`` the query maps; ``k`` (B, 128) the
        key latent of ``im_k``; ``queue`` (128, K) the negatives as they were before this step; ``neg`` =
        [n0, n1] (B, 128) upstream's style-loss negatives; ``temperature`` T; ``logits_q`` / ``logits_k`` the
        classification head outputs (None without a head). Side effects: momentum update, enqueue.
        """
        if not self.Train:
            raise RuntimeError('ConStyle.train_forward: built with Train=False (no key encoder and no queue)')
        q, feas, logits_q = self.encoder_q(im_q)
        with torch.no_grad():
            self._momentum_update()
            k, _, logits_k = self.encoder_k(im_k)
        # a snapshot: the loss reads the queue after the in-place enqueue below (upstream clones it too)
        queue = self.queue.clone()
        neg = self._read_negatives(q[1].shape[0])
        self._dequeue_and_enqueue(q[1] if self.enqueue == 'query' else k[1])
        return dict(q=q, feas=feas, k=k[1], queue=queue, neg=neg, temperature=self.T,
                    logits_q=logits_q, logits_k=logits_k)
