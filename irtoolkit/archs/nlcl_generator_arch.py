"""NLCL's generator: a small full-resolution residual network (Ye et al., "Unsupervised Deraining: Where
Contrastive Learning Meets Self-similarity", CVPR 2022; shapes and layout from the notes, §3.1).

conv3x3 (C -> nf), ``num_blocks`` residual blocks (conv3x3 -> InstanceNorm -> ReLU -> conv3x3 -> InstanceNorm,
plus skip), a conv -> IN -> ReLU -> conv fusion block, conv3x3 (nf -> C). No down-sampling, no output
activation. ``global_residual`` (off in NLCL) adds the input to the output.

Module names for feature taps: ``conv_first``, ``blocks.0`` ... ``blocks.{n-1}``, ``fuse``, ``conv_last``.
Input (B, C, H, W) -> output (B, C, H, W), any size.
"""
from torch import nn

from irtoolkit.utils.registry import ARCH_REGISTRY


class _ResBlock(nn.Module):
    def __init__(self, nf):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(nf, nf, 3, 1, 1), nn.InstanceNorm2d(nf), nn.ReLU(inplace=True),
                                  nn.Conv2d(nf, nf, 3, 1, 1), nn.InstanceNorm2d(nf))

    def forward(self, x):
        return x + self.body(x)


@ARCH_REGISTRY.register()
class NLCLResGenerator(nn.Module):
    """Args: in_channels / out_channels, nf (NLCL: 32), num_blocks (NLCL: 16), global_residual."""

    def __init__(self, in_channels=3, out_channels=3, nf=32, num_blocks=16, global_residual=False):
        super().__init__()
        if global_residual and in_channels != out_channels:
            raise ValueError('NLCLResGenerator: global_residual needs in_channels == out_channels')
        self.conv_first = nn.Conv2d(in_channels, nf, 3, 1, 1)
        self.blocks = nn.Sequential(*[_ResBlock(nf) for _ in range(num_blocks)])
        self.fuse = nn.Sequential(nn.Conv2d(nf, nf, 3, 1, 1), nn.InstanceNorm2d(nf), nn.ReLU(inplace=True),
                                  nn.Conv2d(nf, nf, 3, 1, 1))
        self.conv_last = nn.Conv2d(nf, out_channels, 3, 1, 1)
        self.global_residual = global_residual

    def forward(self, x):
        out = self.conv_last(self.fuse(self.blocks(self.conv_first(x))))
        return out + x if self.global_residual else out
