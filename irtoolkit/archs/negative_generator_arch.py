"""Negative generator: instance-conditioned hard negatives for an adversarial PatchNCE (NEGCUT, Wang et al.,
ICCV 2021; CDD-GAN, Chen et al., ECCV 2022, "negative generators ... updated alternately ... by maximising the
adversarial contrastive loss").

Per contrastive layer l an MLP maps ``[cond_l, z_k]`` to a unit vector, k = 1..K:

* ``condition='pooled'`` (NEGCUT): cond_l = spatial mean of the image's (momentum-)projected key features,
  so the K negatives are specific to each image;
* ``condition='none'``: cond_l = 0, negatives depend on the noise only;
* ``condition='param'``: K learned vectors per layer (no MLP, no noise), the AdCo-style "adversarial
  negatives" reading.

An optional FIFO queue per layer (``queue_size > 0``) keeps recent generated negatives (detached) to enlarge
the negative set, one reading of CDD-GAN's "queue of negative adversaries" (notes §2.2, [U]).

Shapes: forward(list of (B, P, D_l) key embeddings) -> list of (B, K, D_l), unit norm.
"""
import torch
import torch.nn.functional as F
from torch import nn

from irtoolkit.archs.arch_util import init_weights
from irtoolkit.contrastive.queue import EmbeddingQueue
from irtoolkit.utils.registry import ARCH_REGISTRY


@ARCH_REGISTRY.register()
class NegativeGenerator(nn.Module):
    """Args:
        dims: embedding size D_l of every contrastive layer (the projection heads' output size).
        num_negatives: K per image and layer (NEGCUT: 256).
        z_dim: noise size (NEGCUT: 64).
        hidden_dim: MLP width (NEGCUT: 256).
        condition: ``pooled`` | ``none`` | ``param`` (see the module docstring).
        queue_size: stored negatives per layer (0: no queue).
        init_gain: gain of the MLPs' xavier_normal weights, biases zero (NEGCUT: CUT's ``init_net`` with
            ``init_type xavier``, ``init_gain 0.02``); 0 keeps PyTorch's default Linear init (weights ~27x larger
            at NEGCUT's sizes, non-zero biases), with which, at one learning rate for every network, the heads
            outrun N and the adversarial NCE collapses to ~0 within ~10 iterations (docs/contrastive.md).
    """

    def __init__(self, dims, num_negatives=256, z_dim=64, hidden_dim=256, condition='pooled', queue_size=0,
                 init_gain=0.02):
        super().__init__()
        if condition not in ('pooled', 'none', 'param'):
            raise ValueError(f'NegativeGenerator: condition must be pooled, none or param, got {condition!r}')
        self.dims, self.k, self.z_dim, self.condition = [int(d) for d in dims], int(num_negatives), z_dim, condition
        if condition == 'param':
            self.params = nn.ParameterList(nn.Parameter(torch.randn(self.k, d)) for d in self.dims)
            self.mlps = nn.ModuleList()
        else:
            self.mlps = nn.ModuleList(
                nn.Sequential(nn.Linear(d + z_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, d))
                for d in self.dims)
            if init_gain:
                init_weights(self.mlps, 'xavier', init_gain)
        self.queues = nn.ModuleList(EmbeddingQueue(queue_size, d) for d in self.dims)

    def forward(self, keys):
        if len(keys) != len(self.dims):
            raise ValueError(f'NegativeGenerator: got {len(keys)} layers, built for {len(self.dims)}')
        out = []
        for i, k in enumerate(keys):
            b = k.shape[0]
            if self.condition == 'param':
                out.append(F.normalize(self.params[i], dim=-1).unsqueeze(0).expand(b, -1, -1))
                continue
            if self.condition == 'pooled':
                cond = k.mean(1, keepdim=True).expand(-1, self.k, -1)
            else:
                cond = k.new_zeros(b, self.k, self.dims[i])
            z = torch.randn(b, self.k, self.z_dim, device=k.device, dtype=k.dtype)
            out.append(F.normalize(self.mlps[i](torch.cat((cond, z), -1)), dim=-1))
        return out

    def with_queue(self, negatives):
        """Each layer's (B, K, D) negatives extended by that layer's queue: (B, K + Q, D); queue entries are
        constants (no gradient)."""
        out = []
        for neg, q in zip(negatives, self.queues):
            stored = q.get()
            if len(stored):
                stored = stored.to(neg.dtype).unsqueeze(0).expand(neg.shape[0], -1, -1)
                neg = torch.cat((neg, stored), 1)
            out.append(neg)
        return out

    def enqueue(self, negatives):
        for neg, q in zip(negatives, self.queues):
            q.push(neg.reshape(-1, neg.shape[-1]))

    @staticmethod
    def diversity(neg):
        """NEGCUT's mode-seeking term: mean |n_{1..K/2} - n_{K/2+1..K}| (to be maximised). (B, K, D) -> scalar."""
        half = neg.shape[1] // 2
        if half == 0:
            return neg.new_zeros(())
        return (neg[:, :half] - neg[:, half:2 * half]).abs().mean()
