"""A plain residual convolution block, the "vanilla CNN" block of ConStyle v2 (Fan et al., arXiv 2406.18242).

Registered so that ``ConStyleUNet`` (``block: ResConvBlock``) can build a pure-CNN ConStyle network.
(B, c, H, W) -> (B, c, H, W).
"""
from torch import nn

from irtoolkit.utils.registry import ARCH_REGISTRY


@ARCH_REGISTRY.register()
class ResConvBlock(nn.Module):
    """x + conv3x3(act(conv3x3(x))), with ``expand`` times more channels inside; act: 'prelu' (v2) or 'lrelu'."""

    def __init__(self, c, expand=1, act='prelu', bias=True):
        super().__init__()
        if act not in ('prelu', 'lrelu'):
            raise ValueError(f'ResConvBlock: act must be "prelu" or "lrelu", got {act!r}')
        hidden = int(c * expand)
        self.conv1 = nn.Conv2d(c, hidden, 3, padding=1, bias=bias)
        self.act = nn.PReLU(hidden) if act == 'prelu' else nn.LeakyReLU(0.1, inplace=True)
        self.conv2 = nn.Conv2d(hidden, c, 3, padding=1, bias=bias)

    def forward(self, x):
        return x + self.conv2(self.act(self.conv1(x)))
