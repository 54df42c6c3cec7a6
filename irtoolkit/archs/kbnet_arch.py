"""KBNet: "KBNet: Kernel Basis Network for Image Restoration", Zhang et al., arXiv 2303.02881, in the form and with
the constructor arguments and state_dict keys of IRConStyle's ``KBNet`` (``archs/KBNet_arch.py`` of
Dongqi-Fan/IRConStyle), so its checkpoints load with ``strict=True``.

Written from the paper and upstream's key names and shapes. The network is NAFNet's U-Net (``intro``, ``encoders``,
``downs``, ``middle_blks``, ``ups``, ``decoders``, ``ending``) with the kernel basis block :class:`KBBlock_s`.

Kernel basis attention (KBA), for a map x of c channels split into g = c / gc groups of gc channels:
``nset`` learnable kernel bases w (each a grouped k x k conv, gc -> gc per group) and biases b are mixed per pixel
by attention weights a(p) (``nset`` of them, predicted from the normalised input): the pixel's output is
sum_i a_i(p) * (w_i applied to the k x k neighbourhood of p) + sum_i a_i(p) * b_i. Plain autograd gives its
gradient (upstream hand-writes a backward that computes the same, to save memory).

Shapes: (B, img_channel, H, W) -> same, any H, W (zero-padded to a multiple of 2 ** len(enc_blk_nums) as upstream
does, then cropped back).
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from irtoolkit.archs.arch_util import unet_forward
from irtoolkit.archs.nafnet_arch import LayerNorm2d, SimpleGate
from irtoolkit.utils.registry import ARCH_REGISTRY, get_from_registry


def kernel_basis_attention(x, att, k, groups, bias, weight):
    """KBA: x (B, c, H, W), att (B, nset, H, W), bias (1, nset, c), weight (1, nset, c * (c / groups) * k * k)
    -> (B, c, H, W)."""
    b, c, h, w = x.shape
    cg = c // groups
    att = att.flatten(2).transpose(1, 2)  # (B, HW, nset)
    kernels = (att @ weight).reshape(b, h * w, groups, cg, cg * k * k)  # per pixel: groups x (cg x cg*k*k)
    patches = F.unfold(x, k, padding=k // 2).reshape(b, groups, cg * k * k, h * w).permute(0, 3, 1, 2)
    out = (kernels @ patches.unsqueeze(-1)).reshape(b, h * w, c) + att @ bias
    return out.transpose(1, 2).reshape(b, c, h, w)


@ARCH_REGISTRY.register()
class KBBlock_s(nn.Module):
    """KBNet's block (the "s" variant of upstream): LayerNorm, then KBA on a 1x1 + 3x3-depthwise branch, gated by a
    grouped 5x5 branch (3x3 depthwise when ``lightweight``) and simplified channel attention, 1x1 conv, residual
    scaled by ``beta``; then NAFNet's gated FFN, residual scaled by ``gamma``. (B, c, H, W) -> same; c a multiple of
    4 (and of min(c, 32)). Registered so ConStyle networks can use it by name."""

    def __init__(self, c, DW_Expand=2, FFN_Expand=2, nset=32, k=3, gc=4, lightweight=False):
        super().__init__()
        self.k, self.nset = k, nset
        self.g = c // gc
        dw_ch, ffn_ch = int(c * DW_Expand), int(FFN_Expand * c)
        # parameters first, as upstream registers them (state_dict order)
        self.w = nn.Parameter(torch.zeros(1, nset, c * c // self.g * k ** 2))
        self.b = nn.Parameter(torch.zeros(1, nset, c))
        self.ga1 = nn.Parameter(torch.full((1, c, 1, 1), 1e-2))
        self.attgamma = nn.Parameter(torch.full((1, nset, 1, 1), 1e-2))
        self.beta = nn.Parameter(torch.full((1, c, 1, 1), 1e-2))
        self.gamma = nn.Parameter(torch.full((1, c, 1, 1), 1e-2))
        self.reset_kernel_basis()

        self.norm1 = LayerNorm2d(c)
        self.norm2 = LayerNorm2d(c)
        self.sca = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, c, 1))
        if lightweight:
            local = nn.Conv2d(c, c, 3, padding=1, groups=c)
        else:
            local = nn.Conv2d(c, c, 5, padding=2, groups=c // 4)
        self.conv11 = nn.Sequential(nn.Conv2d(c, c, 1), local)
        self.conv1 = nn.Conv2d(c, c, 1)
        self.conv21 = nn.Conv2d(c, c, 3, padding=1, groups=c)
        interc = min(c, 32)
        self.conv2 = nn.Sequential(nn.Conv2d(c, interc, 3, padding=1, groups=interc), SimpleGate(),
                                   nn.Conv2d(interc // 2, nset, 1))
        self.conv211 = nn.Conv2d(c, nset, 1)
        self.conv3 = nn.Conv2d(dw_ch // 2, c, 1)
        self.conv4 = nn.Conv2d(c, ffn_ch, 1)
        self.conv5 = nn.Conv2d(ffn_ch // 2, c, 1)
        self.sg = SimpleGate()

    def reset_kernel_basis(self):
        """Upstream's init of the bases: Kaiming-uniform (a = sqrt(5)) weights, biases U(+-1/sqrt(fan_in))."""
        nn.init.kaiming_uniform_(self.w, a=math.sqrt(5))
        fan_in = self.w.shape[1] * self.w.shape[2]
        nn.init.uniform_(self.b, -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))

    def forward(self, inp):
        x = self.norm1(inp)
        sca = self.sca(x)
        x1 = self.conv11(x)
        att = self.conv2(x) * self.attgamma + self.conv211(x)
        uf = self.conv21(self.conv1(x))
        x = kernel_basis_attention(uf, att, self.k, self.g, self.b, self.w) * self.ga1 + uf
        x = self.conv3(x * x1 * sca)
        y = inp + x * self.beta
        x = self.conv5(self.sg(self.conv4(self.norm2(y))))
        return y + x * self.gamma


@ARCH_REGISTRY.register()
class KBNet(nn.Module):
    """KBNet with upstream IRConStyle's defaults (width 64, encoder [2, 2, 2, 2], 12 middle blocks, decoder
    [4, 2, 2, 2]: 130,249,283 parameters).

    Args:
        img_channel: input/output channels. width: channels after ``intro``, doubled by every down-sampling.
        middle_blk_num, enc_blk_nums, dec_blk_nums: blocks at the bottom / per encoder / per decoder level.
        basicblock: the block's registered name (upstream has only ``KBBlock_s``).
        lightweight: 3x3 depthwise instead of the grouped 5x5 conv in the blocks. ffn_scale: the FFN expansion.
    """

    def __init__(self, img_channel=3, width=64, middle_blk_num=12, enc_blk_nums=(2, 2, 2, 2),
                 dec_blk_nums=(4, 2, 2, 2), basicblock='KBBlock_s', lightweight=False, ffn_scale=2):
        super().__init__()
        if len(enc_blk_nums) != len(dec_blk_nums):
            raise ValueError(f'KBNet: enc_blk_nums {list(enc_blk_nums)} and dec_blk_nums {list(dec_blk_nums)} '
                             'must have the same length')
        block = get_from_registry(ARCH_REGISTRY, basicblock, 'basicblock')

        def stage(chan, num):
            return nn.Sequential(*[block(chan, FFN_Expand=ffn_scale, lightweight=lightweight) for _ in range(num)])

        # attribute order = upstream's state_dict order
        self.intro = nn.Conv2d(img_channel, width, 3, padding=1)
        self.encoders, self.middle_blks, self.decoders = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        self.ending = nn.Conv2d(width, img_channel, 3, padding=1)
        self.ups, self.downs = nn.ModuleList(), nn.ModuleList()
        chan = width
        for num in enc_blk_nums:
            self.encoders.append(stage(chan, num))
            self.downs.append(nn.Conv2d(chan, 2 * chan, 2, 2))
            chan *= 2
        self.middle_blks = stage(chan, middle_blk_num)
        for num in dec_blk_nums:
            self.ups.append(nn.Sequential(nn.Conv2d(chan, chan * 2, 1, bias=False), nn.PixelShuffle(2)))
            chan //= 2
            self.decoders.append(stage(chan, num))
        self.padder_size = 2 ** len(self.encoders)

    def forward(self, inp):
        return unet_forward(self, inp)
