"""Restormer: "Restormer: Efficient Transformer for High-Resolution Image Restoration", Zamir et al., CVPR 2022
(arXiv 2111.09881).

Written from the paper with the official constructor arguments and state_dict key names (``patch_embed.proj``,
``encoder_level1..3``, ``down1_2``, ``latent``, ``up4_3``, ``reduce_chan_level3``, ``decoder_level1..3``,
``refinement``, ``output``; block keys ``norm1.body``, ``attn.{temperature,qkv,qkv_dwconv,project_out}``,
``ffn.{project_in,dwconv,project_out}``), so official checkpoints load with ``strict=True``.

Shapes: (B, inp_channels, H, W) -> (B, out_channels, H, W) for any H, W: the input is reflect-padded to a multiple
of 8 (what the official test script does outside the network) and the output cropped back.
"""
import torch
import torch.nn.functional as F
from torch import nn

from irtoolkit.archs.arch_util import crop_to, pad_to_multiple
from irtoolkit.utils.registry import ARCH_REGISTRY


class BiasFreeLayerNorm(nn.Module):
    """x / sqrt(var + 1e-5) * weight over the last dim (no mean subtraction, no bias)."""

    def __init__(self, dim):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x / torch.sqrt(x.var(-1, keepdim=True, unbiased=False) + 1e-5) * self.weight


class WithBiasLayerNorm(nn.Module):
    """Standard LayerNorm over the last dim with eps 1e-5 (``weight`` and ``bias``)."""

    def __init__(self, dim):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x):
        mu = x.mean(-1, keepdim=True)
        return (x - mu) / torch.sqrt(x.var(-1, keepdim=True, unbiased=False) + 1e-5) * self.weight + self.bias


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channels of (B, C, H, W); the official ``LayerNorm`` with its ``body`` submodule."""

    def __init__(self, dim, LayerNorm_type='WithBias'):
        super().__init__()
        self.body = BiasFreeLayerNorm(dim) if LayerNorm_type == 'BiasFree' else WithBiasLayerNorm(dim)

    def forward(self, x):
        return self.body(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class MDTA(nn.Module):
    """Multi-Dconv-head Transposed Attention: attention across channels (C/h x C/h per head), linear in H*W."""

    def __init__(self, dim, num_heads, bias):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f'Restormer attention: dim {dim} is not divisible by num_heads {num_heads}')
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.qkv = nn.Conv2d(dim, dim * 3, 1, bias=bias)
        self.qkv_dwconv = nn.Conv2d(dim * 3, dim * 3, 3, padding=1, groups=dim * 3, bias=bias)
        self.project_out = nn.Conv2d(dim, dim, 1, bias=bias)

    def forward(self, x):
        b, c, h, w = x.shape
        q, k, v = self.qkv_dwconv(self.qkv(x)).chunk(3, dim=1)
        q, k, v = (t.reshape(b, self.num_heads, c // self.num_heads, h * w) for t in (q, k, v))
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        attn = (q @ k.transpose(-2, -1) * self.temperature).softmax(dim=-1)
        return self.project_out((attn @ v).reshape(b, c, h, w))


class GDFN(nn.Module):
    """Gated-Dconv Feed-forward: 1x1 to 2*hidden, 3x3 depthwise, GELU(x1) * x2, 1x1 back; hidden = int(dim*f)."""

    def __init__(self, dim, ffn_expansion_factor, bias):
        super().__init__()
        hidden = int(dim * ffn_expansion_factor)
        self.project_in = nn.Conv2d(dim, hidden * 2, 1, bias=bias)
        self.dwconv = nn.Conv2d(hidden * 2, hidden * 2, 3, padding=1, groups=hidden * 2, bias=bias)
        self.project_out = nn.Conv2d(hidden, dim, 1, bias=bias)

    def forward(self, x):
        x1, x2 = self.dwconv(self.project_in(x)).chunk(2, dim=1)
        return self.project_out(F.gelu(x1) * x2)


@ARCH_REGISTRY.register()
class RestormerBlock(nn.Module):
    """Restormer's ``TransformerBlock``: x + MDTA(LN(x)), then x + GDFN(LN(x)). (B, dim, H, W) -> same shape.

    Registered so ConStyleUNet (``block: RestormerBlock``) and plugins can use it.
    """

    def __init__(self, dim, num_heads=1, ffn_expansion_factor=2.66, bias=False, LayerNorm_type='WithBias'):
        super().__init__()
        self.norm1 = ChannelLayerNorm(dim, LayerNorm_type)
        self.attn = MDTA(dim, num_heads, bias)
        self.norm2 = ChannelLayerNorm(dim, LayerNorm_type)
        self.ffn = GDFN(dim, ffn_expansion_factor, bias)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


TransformerBlock = RestormerBlock  # the official class name


class OverlapPatchEmbed(nn.Module):
    """3x3 conv embedding (key ``proj``)."""

    def __init__(self, in_c=3, embed_dim=48, bias=False):
        super().__init__()
        self.proj = nn.Conv2d(in_c, embed_dim, 3, padding=1, bias=bias)

    def forward(self, x):
        return self.proj(x)


class Downsample(nn.Sequential):
    def __init__(self, n_feat):  # (B, C, H, W) -> (B, 2C, H/2, W/2)
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(n_feat, n_feat // 2, 3, padding=1, bias=False), nn.PixelUnshuffle(2))


class Upsample(nn.Sequential):
    def __init__(self, n_feat):  # (B, C, H, W) -> (B, C/2, 2H, 2W)
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(n_feat, n_feat * 2, 3, padding=1, bias=False), nn.PixelShuffle(2))


@ARCH_REGISTRY.register()
class Restormer(nn.Module):
    """4-level Restormer with the official defaults (26.13 M parameters)."""

    def __init__(self, inp_channels=3, out_channels=3, dim=48, num_blocks=(4, 6, 6, 8), num_refinement_blocks=4,
                 heads=(1, 2, 4, 8), ffn_expansion_factor=2.66, bias=False, LayerNorm_type='WithBias',
                 dual_pixel_task=False):
        super().__init__()
        if len(num_blocks) != 4 or len(heads) != 4:
            raise ValueError(f'Restormer: num_blocks and heads need 4 entries, got {list(num_blocks)}, {list(heads)}')

        def level(ch, n, h):
            return nn.Sequential(*[RestormerBlock(ch, h, ffn_expansion_factor, bias, LayerNorm_type)
                                   for _ in range(n)])

        self.patch_embed = OverlapPatchEmbed(inp_channels, dim)
        self.encoder_level1 = level(dim, num_blocks[0], heads[0])
        self.down1_2 = Downsample(dim)
        self.encoder_level2 = level(dim * 2, num_blocks[1], heads[1])
        self.down2_3 = Downsample(dim * 2)
        self.encoder_level3 = level(dim * 4, num_blocks[2], heads[2])
        self.down3_4 = Downsample(dim * 4)
        self.latent = level(dim * 8, num_blocks[3], heads[3])
        self.up4_3 = Upsample(dim * 8)
        self.reduce_chan_level3 = nn.Conv2d(dim * 8, dim * 4, 1, bias=bias)
        self.decoder_level3 = level(dim * 4, num_blocks[2], heads[2])
        self.up3_2 = Upsample(dim * 4)
        self.reduce_chan_level2 = nn.Conv2d(dim * 4, dim * 2, 1, bias=bias)
        self.decoder_level2 = level(dim * 2, num_blocks[1], heads[1])
        self.up2_1 = Upsample(dim * 2)  # no channel reduction at level 1: it works at 2*dim
        self.decoder_level1 = level(dim * 2, num_blocks[0], heads[0])
        self.refinement = level(dim * 2, num_refinement_blocks, heads[0])
        self.dual_pixel_task = dual_pixel_task
        if dual_pixel_task:
            self.skip_conv = nn.Conv2d(dim, dim * 2, 1, bias=bias)
        self.output = nn.Conv2d(dim * 2, out_channels, 3, padding=1, bias=bias)

    def forward(self, inp_img):
        inp, size = pad_to_multiple(inp_img, 8, mode='reflect')
        x1 = self.patch_embed(inp)
        e1 = self.encoder_level1(x1)
        e2 = self.encoder_level2(self.down1_2(e1))
        e3 = self.encoder_level3(self.down2_3(e2))
        x = self.latent(self.down3_4(e3))
        x = self.decoder_level3(self.reduce_chan_level3(torch.cat([self.up4_3(x), e3], 1)))
        x = self.decoder_level2(self.reduce_chan_level2(torch.cat([self.up3_2(x), e2], 1)))
        x = self.refinement(self.decoder_level1(torch.cat([self.up2_1(x), e1], 1)))
        if self.dual_pixel_task:  # input is two stacked views: no global image residual
            out = self.output(x + self.skip_conv(x1))
        else:
            out = self.output(x) + inp
        return crop_to(out, size)
