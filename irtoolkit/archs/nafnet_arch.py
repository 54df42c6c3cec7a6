"""NAFNet: "Simple Baselines for Image Restoration", Chen, Chu, Zhang, Sun, ECCV 2022 (arXiv 2204.04676).

Written from the paper and the official constructor/key names (``intro``, ``encoders``, ``downs``,
``middle_blks``, ``ups``, ``decoders``, ``ending``; block keys ``conv1..conv5``, ``sca.1``, ``norm1/2``,
``beta``, ``gamma``), so official NAFNet checkpoints load with ``strict=True``.

Shapes: input (B, img_channel, H, W), any H, W (zero-padded to a multiple of 2**len(enc_blk_nums) as the
official code does, then cropped back); output has the input's shape and is ``input + residual``.
"""
import torch
import torch.nn.functional as F
from torch import nn

from irtoolkit.archs.arch_util import unet_forward
from irtoolkit.utils.registry import ARCH_REGISTRY


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel dimension of (B, C, H, W) with per-channel affine ``weight``/``bias``.

    Computed by torch's fused ``layer_norm`` on the channels-last view: the same normalisation as the official
    code's hand-written mean/variance (outputs equal to ~1e-6), and faster forward + backward on the CPU (measured
    in docs/performance.md). The output is made contiguous again: left channels-last strided, the next ops mixed it
    with NCHW tensors and copied layouts (docs/performance.md).
    """

    def __init__(self, channels, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x):
        # back to contiguous NCHW: a channels-last strided output made the next 1x1 conv and the residual adds
        # convert layouts (copy_ was ~1.5 s of an 8 s ConStyleNAFNet step at one thread; docs/performance.md)
        y = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1], ), self.weight, self.bias, self.eps).permute(0, 3, 1, 2)
        return y if x.is_contiguous(memory_format=torch.channels_last) else y.contiguous()


class SimpleGate(nn.Module):
    """Split channels in two halves and multiply them: (B, 2C, H, W) -> (B, C, H, W)."""

    def forward(self, x):
        a, b = x.chunk(2, dim=1)
        return a * b


@ARCH_REGISTRY.register()
class NAFBlock(nn.Module):
    """NAFNet's block: LN -> 1x1 -> 3x3 depthwise -> SimpleGate -> simplified channel attention -> 1x1, then a
    gated FFN; both branches are residual with learnable zero-initialised scales ``beta``/``gamma``.

    (B, c, H, W) -> (B, c, H, W). Registered so ConStyleUNet and plugins can pick it by name.
    """

    def __init__(self, c, DW_Expand=2, FFN_Expand=2, drop_out_rate=0.):
        super().__init__()
        dw = c * DW_Expand
        self.conv1 = nn.Conv2d(c, dw, 1)
        self.conv2 = nn.Conv2d(dw, dw, 3, padding=1, groups=dw)
        self.conv3 = nn.Conv2d(dw // 2, c, 1)
        self.sca = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(dw // 2, dw // 2, 1))
        self.sg = SimpleGate()
        ffn = FFN_Expand * c
        self.conv4 = nn.Conv2d(c, ffn, 1)
        self.conv5 = nn.Conv2d(ffn // 2, c, 1)
        self.norm1 = LayerNorm2d(c)
        self.norm2 = LayerNorm2d(c)
        self.dropout1 = nn.Dropout(drop_out_rate) if drop_out_rate > 0 else nn.Identity()
        self.dropout2 = nn.Dropout(drop_out_rate) if drop_out_rate > 0 else nn.Identity()
        self.beta = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, c, 1, 1))

    def forward(self, inp):
        x = self.sg(self.conv2(self.conv1(self.norm1(inp))))
        x = self.conv3(x * self.sca(x))
        y = inp + self.dropout1(x) * self.beta
        x = self.conv5(self.sg(self.conv4(self.norm2(y))))
        return y + self.dropout2(x) * self.gamma


@ARCH_REGISTRY.register()
class NAFNet(nn.Module):
    """U-shaped NAFNet. Defaults give the smallest official config; e.g. GoPro width 32/64 uses
    ``enc_blk_nums=[1, 1, 1, 28], middle_blk_num=1, dec_blk_nums=[1, 1, 1, 1]``.

    Args:
        img_channel: input/output channels.
        width: channels after ``intro``; doubled by every down-sampling.
        middle_blk_num: blocks at the lowest resolution.
        enc_blk_nums / dec_blk_nums: blocks per encoder / decoder level (same length).
    """

    def __init__(self, img_channel=3, width=16, middle_blk_num=1, enc_blk_nums=(), dec_blk_nums=()):
        super().__init__()
        if len(enc_blk_nums) != len(dec_blk_nums):
            raise ValueError(f'NAFNet: enc_blk_nums {list(enc_blk_nums)} and dec_blk_nums {list(dec_blk_nums)} '
                             'must have the same length')
        self.intro = nn.Conv2d(img_channel, width, 3, padding=1)
        self.ending = nn.Conv2d(width, img_channel, 3, padding=1)
        self.encoders, self.decoders = nn.ModuleList(), nn.ModuleList()
        self.ups, self.downs = nn.ModuleList(), nn.ModuleList()
        chan = width
        for num in enc_blk_nums:
            self.encoders.append(nn.Sequential(*[NAFBlock(chan) for _ in range(num)]))
            self.downs.append(nn.Conv2d(chan, 2 * chan, 2, 2))
            chan *= 2
        self.middle_blks = nn.Sequential(*[NAFBlock(chan) for _ in range(middle_blk_num)])
        for num in dec_blk_nums:
            self.ups.append(nn.Sequential(nn.Conv2d(chan, chan * 2, 1, bias=False), nn.PixelShuffle(2)))
            chan //= 2
            self.decoders.append(nn.Sequential(*[NAFBlock(chan) for _ in range(num)]))
        self.padder_size = 2 ** len(self.encoders)

    def forward(self, inp):
        return unet_forward(self, inp)
