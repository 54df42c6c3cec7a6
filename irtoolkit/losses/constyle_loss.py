"""ConStyle's prior losses (IRConStyle, Fan et al., arXiv 2402.15784) and ConStyle v2's class-head terms (arXiv
2406.18242). Defaults reproduce upstream exactly; options fix its weaknesses (see ``docs/constyle.md``). The prior
losses take latents (B, C), the class-head ones logits (B, N); all return a scalar.
"""
import torch
import torch.nn.functional as F
from torch import nn

from irtoolkit.utils.registry import LOSS_REGISTRY


@LOSS_REGISTRY.register()
class QueueInfoNCELoss(nn.Module):
    """InfoNCE against a queue of negatives (MoCo, arXiv 1911.05722; upstream's ``CrossEntropy_opt``).

    ``logits = [q.k, q @ queue] / T`` of shape (B, 1 + K); ``loss = w * CE(logits, 0)``, mean over the batch.

    Args:
        temperature: T; None uses the value the network hands over (ConStyle's ``T``, 0.07 upstream).
        normalize: L2-normalise q, k and every queue column first (MoCo). Upstream does not, so at T = 0.07 its
            logits are large and this term dominates the pixel loss.
    forward(q (B, C), k (B, C), queue (C, K), temperature=None).
    """

    def __init__(self, loss_weight=1.0, temperature=None, normalize=False):
        super().__init__()
        self.loss_weight, self.temperature, self.normalize = loss_weight, temperature, normalize

    def forward(self, q, k, queue, temperature=None):
        t = self.temperature if self.temperature is not None else temperature
        if t is None or t <= 0:
            raise ValueError(f'QueueInfoNCELoss: temperature must be > 0, got {t}')
        k, queue = k.detach(), queue.detach()
        if self.normalize:
            q, k, queue = F.normalize(q, dim=1), F.normalize(k, dim=1), F.normalize(queue, dim=0)
        logits = torch.cat([(q * k).sum(1, keepdim=True), q @ queue], dim=1) / t
        labels = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
        return self.loss_weight * F.cross_entropy(logits, labels)


@LOSS_REGISTRY.register()
class ContentLoss(nn.Module):
    """``w * mean((q - k)^2)`` between the degraded image's latent and the clean image's key latent.

    ``normalize``: compare L2-normalised latents (then equal to ``w * (2 - 2 cos(q, k)) / C``, bounded).
    """

    def __init__(self, loss_weight=1.0, normalize=False):
        super().__init__()
        self.loss_weight, self.normalize = loss_weight, normalize

    def forward(self, q, k):
        k = k.detach()
        if self.normalize:
            q, k = F.normalize(q, dim=1), F.normalize(k, dim=1)
        return self.loss_weight * F.mse_loss(q, k)


@LOSS_REGISTRY.register()
class StyleLoss(nn.Module):
    """Pushes the batch-similarity ("Gram") structure of current latents away from that of queue latents.

    For pairs (a_i, b_i) of (B, C) tensors (upstream: (out1, queue slice n0) and (out2, n1)):
        ``mode: neg_mse`` (upstream): G(x) = x x^T / (B C) (B x B); ``loss = -w * sum_i MSE(G(a_i), G(b_i))``.
            Unbounded below: the encoder can lower it forever by inflating its latents.
        ``mode: bounded``: G(x) = x^ x^T with L2-normalised rows (cosine similarities in [-1, 1]);
            ``loss = -w * sum_i MSE(G(a_i), G(b_i)) / 4``, so each pair lies in [-w, 0].
    forward(a: list of (B, C), b: list of (B, C)); the b's (queue entries) carry no gradient.
    """

    def __init__(self, loss_weight=1.0, mode='neg_mse'):
        super().__init__()
        if mode not in ('neg_mse', 'bounded'):
            raise ValueError(f'StyleLoss: mode must be "neg_mse" or "bounded", got {mode!r}')
        self.loss_weight, self.mode = loss_weight, mode

    def gram(self, x):
        if self.mode == 'bounded':
            x = F.normalize(x, dim=1)
            return x @ x.t()
        return x @ x.t() / x.numel()

    def forward(self, a, b):
        if len(a) != len(b):
            raise ValueError(f'StyleLoss: {len(a)} latents vs {len(b)} negatives')
        scale = 0.25 if self.mode == 'bounded' else 1.
        total = sum(F.mse_loss(self.gram(x), self.gram(y.detach())) for x, y in zip(a, b))
        return -self.loss_weight * scale * total


@LOSS_REGISTRY.register()
class LabelCrossEntropyLoss(nn.Module):
    """``w * CE(logits (B, N), labels (B,))``: ConStyle v2's classification pretext task (upstream: the ImageNet
    class of the image; here also the degradation, see ``ConStylePretrainModel``'s ``cls_labels``)."""

    def __init__(self, loss_weight=1.0, label_smoothing=0.0):
        super().__init__()
        self.loss_weight, self.label_smoothing = loss_weight, label_smoothing

    def forward(self, logits, labels):
        return self.loss_weight * F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)


@LOSS_REGISTRY.register()
class KLDistillLoss(nn.Module):
    """ConStyle v2's knowledge distillation between the class heads of the two encoders (arXiv 2406.18242).

    ``loss = w * T^2 * KL(p_t || p_s)``, ``p = softmax(logits / T)``, summed over classes and averaged over the
    batch (torch's ``batchmean``). The teacher (upstream: the momentum key encoder on the clean image) carries no
    gradient; the student is the query encoder on the degraded image. Upstream: T = 1, weight 1, every iteration.
    forward(student_logits (B, N), teacher_logits (B, N)).
    """

    def __init__(self, loss_weight=1.0, temperature=1.0):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f'KLDistillLoss: temperature must be > 0, got {temperature}')
        self.loss_weight, self.temperature = loss_weight, temperature

    def forward(self, student, teacher):
        t = self.temperature
        log_p_s = F.log_softmax(student / t, dim=1)
        log_p_t = F.log_softmax(teacher.detach() / t, dim=1)
        kl = F.kl_div(log_p_s, log_p_t, reduction='batchmean', log_target=True)
        return self.loss_weight * t * t * kl
