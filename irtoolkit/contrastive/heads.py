"""Projection heads sized at construction (no lazy layers), their momentum copy, and feature projectors.

CUT builds its per-layer MLPs lazily at the first forward (hence ``data_dependent_initialize`` and optimisers
created late). Here the input channels are given (from options, or from a dry run of the encoder with
:meth:`irtoolkit.contrastive.feature_tap.FeatureTap.channels`) so every optimiser can be built in
``init_training_settings``, as BasicSR expects.
"""
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ['PatchProjectionHeads', 'FeatureProjector', 'momentum_update']


class PatchProjectionHeads(nn.Module):
    """One head per layer: Linear(C_l, hidden) -> ReLU -> Linear(hidden, out_dim), then L2 normalisation
    (CUT's ``PatchSampleF`` with ``use_mlp``; NLCL's samplers). ``use_mlp=False`` keeps the raw features
    (normalised) — a parameter-free ablation.

    ``init_type`` / ``init_gain``: ``xavier`` — xavier_normal weights of gain ``init_gain`` (CUT's ``PatchSampleF``
    and NLCL's heads: ``init_net`` with ``xavier``, 0.02); ``normal`` — N(0, ``init_gain``) weights (irtoolkit's
    init before issue 20, ~16x larger at 256 -> 256); biases zero in both; ``init_gain`` 0 keeps PyTorch's init.

    Shapes: forward(list of (B, P, C_l)) -> list of (B, P, out_dim) (or (B, P, C_l) without MLP), unit norm.
    """

    def __init__(self, in_channels, out_dim=256, hidden_dim=256, use_mlp=True, init_gain=0.02, init_type='xavier'):
        super().__init__()
        if init_type not in ('xavier', 'normal'):
            raise ValueError(f'PatchProjectionHeads: init_type must be xavier or normal, got {init_type!r}')
        self.in_channels = [int(c) for c in in_channels]
        self.out_dim = out_dim if use_mlp else None
        self.use_mlp = use_mlp
        self.mlps = nn.ModuleList(
            nn.Sequential(nn.Linear(c, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim))
            if use_mlp else nn.Identity() for c in self.in_channels)
        # Adam's steps do not scale with the weights, so the init scale sets how fast the heads move at first: from
        # xavier 0.02 (std ~1e-3) the first steps outweigh the weights and the zero-init biases soon dominate the
        # output (near-constant embeddings) unless the contrast forbids it (docs/contrastive.md, CDD-GAN)
        for m in self.modules():
            if isinstance(m, nn.Linear) and init_gain:
                if init_type == 'xavier':
                    nn.init.xavier_normal_(m.weight, gain=init_gain)
                else:
                    nn.init.normal_(m.weight, 0.0, init_gain)
                nn.init.zeros_(m.bias)

    def out_dims(self):
        return [self.out_dim or c for c in self.in_channels]

    def forward(self, feats):
        if len(feats) != len(self.mlps):
            raise ValueError(f'PatchProjectionHeads: got {len(feats)} feature lists for {len(self.mlps)} heads')
        out = []
        for i, (f, mlp) in enumerate(zip(feats, self.mlps)):
            if f.shape[-1] != self.in_channels[i]:
                raise ValueError(f'PatchProjectionHeads: layer {i} has {f.shape[-1]} channels, head expects '
                                 f'{self.in_channels[i]}')
            out.append(F.normalize(mlp(f), dim=-1))
        return out


class FeatureProjector(nn.Module):
    """Two 1x1 convolutions (C_in -> C_out -> C_out, ReLU between) mapping a feature map into a common space
    (TKL&MR's projectors, used by Uni-Removal's feature grain). (B, C_in, H, W) -> (B, C_out, H, W)."""

    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1), nn.ReLU(inplace=True),
                                  nn.Conv2d(out_channels, out_channels, 1))

    def forward(self, x):
        return self.body(x)


@torch.no_grad()
def momentum_update(target, source, momentum):
    """``target <- momentum * target + (1 - momentum) * source`` for parameters; buffers copied."""
    src = dict(source.named_parameters())
    for name, p in target.named_parameters():
        p.mul_(momentum).add_(src[name].detach(), alpha=1 - momentum)
    src_b = dict(source.named_buffers())
    for name, b in target.named_buffers():
        b.copy_(src_b[name])
