"""MAXIM-1S: the single-stage MAXIM of "MAXIM: Multi-Axis MLP for Image Processing", Tu et al., CVPR 2022
(arXiv 2201.02973), in the PyTorch form and with the state_dict key names of IRConStyle's ``Maxim`` (Fan et al.,
arXiv 2402.15784, ``archs/Maxim_arch.py`` of Dongqi-Fan/IRConStyle), so its checkpoints load with ``strict=True``.

Written from the papers and upstream's key names and shapes. One stage, three levels, three input scales:

- input scales x, x/2, x/4 (nearest: the pixel at the centre of each s x s cell) through 3x3 convs into f, 2f, 4f
  channels and concatenated with the features entering each encoder level;
- encoder level i (f * 2**i channels at H / 2**i): 1x1 conv, twice [multi-axis gated MLP block (MAB) then residual
  channel-attention block (RCAB)], long residual; a 4x4 stride-2 conv down-samples;
- bottleneck at H/8: two blocks of 1x1 conv, twice [MAB, residual dense channel-attention block (RDCAB)];
- cross-gating blocks (CGB) at H/4, H/2, H: the three encoder outputs, resized (bilinear, antialiased) and
  projected to the level, gate and are gated by the running "global" feature up-sampled from the level below;
- decoder level i: 2x2 transposed conv, concat the three CGB outputs resized to the level, an encoder block;
- 3x3 conv to the image, plus the input.

Layouts: the MLP blocks work channels-last, (B, H, W, C); the rest channels-first. Block (local) mixing splits
the map into windows of ``block_size`` pixels and mixes the pixels within a window; grid (global) mixing splits it
into a ``grid_size`` grid of cells and mixes the cells at the same position. Both use fixed-size Dense layers, so
every level's size must be a multiple of its block and grid sizes: :class:`Maxim` pads the input (reflect, bottom
and right, as upstream's ``Dataset_Maxim*`` do outside the network) to :attr:`Maxim.pad_multiple` (64 with the
defaults) and crops the output back, so any H x W works. (B, 3, H, W) -> (B, num_outputs, H, W).

Upstream details kept because they shape checkpoints or outputs: at low-resolution levels (index >=
``high_res_stages``) the grid size is ``block_size_lr`` (``grid_size_lr`` only reaches the bottleneck); every
encoder block owns a cross-gating block and a stride-2 conv that single-stage MAXIM never calls (they are in the
state_dict); the bottleneck's 1x1 conv, the stride-2 convs, the gMLP gating Dense layers and the RCABs' channel
attention always have a bias, whatever ``use_bias`` says.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from irtoolkit.archs.arch_util import crop_to, pad_to_multiple
from irtoolkit.utils.registry import ARCH_REGISTRY


# ---------------------------------------------------------------------------------------------------- helpers
def nearest_downsample(x, scale):
    """(B, C, H, W) -> (B, C, H // s, W // s), keeping the pixel at offset s // 2 of every s x s cell."""
    if scale == 1:
        return x
    h, w = x.shape[-2] // scale, x.shape[-1] // scale
    return x[..., scale // 2::scale, scale // 2::scale][..., :h, :w]


def resize(x, ratio):
    """Bilinear (antialiased) resize of (B, C, H, W) by ``ratio``; identity for ratio 1."""
    if ratio == 1:
        return x
    h, w = x.shape[-2:]
    return F.interpolate(x, size=(int(h * ratio), int(w * ratio)), mode='bilinear', antialias=True)


def to_blocks(x, fh, fw):
    """(B, H, W, C) -> (B, (H/fh)*(W/fw), fh*fw, C): windows of fh x fw pixels, window-major."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // fh, fh, w // fw, fw, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (h // fh) * (w // fw), fh * fw, c)


def from_blocks(x, h, w, fh, fw):
    """Inverse of :func:`to_blocks` for an (h, w) map."""
    b, c = x.shape[0], x.shape[-1]
    x = x.reshape(b, h // fh, w // fw, fh, fw, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, w, c)


def level_sizes(level, high_res_stages, block_size_hr, block_size_lr, grid_size_hr):
    """(block_size, grid_size) of a U-Net level as upstream picks them (low-res levels use block_size_lr twice)."""
    if level < high_res_stages:
        return tuple(block_size_hr), tuple(grid_size_hr)
    return tuple(block_size_lr), tuple(block_size_lr)


def required_multiple(sizes_per_level):
    """Smallest (mh, mw) such that an input of that multiple gives every level whole blocks and grid cells.

    ``sizes_per_level``: {level: [(h, w), ...]} with level the number of 2x down-samplings."""
    mh = mw = 1
    for level, sizes in sizes_per_level.items():
        for sh, sw in sizes:
            mh = math.lcm(mh, sh * 2 ** level)
            mw = math.lcm(mw, sw * 2 ** level)
    return mh, mw


class MaximLayerNorm(nn.Module):
    """LayerNorm over the last dimension, eps 1e-6, with upstream's parameter names ``beta`` (shift) and ``gamma``
    (scale)."""

    def __init__(self, channels, eps=1e-6):
        super().__init__()
        self.beta = nn.Parameter(torch.zeros(channels))
        self.gamma = nn.Parameter(torch.ones(channels))
        self.eps = eps

    def forward(self, x):
        return F.layer_norm(x, x.shape[-1:], self.gamma, self.beta, self.eps)


# ---------------------------------------------------------------------------------------------------- gMLP parts
class _SpatialGate(nn.Module):
    """gMLP's spatial gating on (B, groups, tokens, C): split C in halves u, v; normalise v, mix it along
    ``axis`` (1: across windows, the grid; 2: within a window, the block) with a Dense of size ``n``; u * (v + 1)."""

    axis = 2

    def _gate(self, x):
        u, v = x.chunk(2, dim=-1)
        v = self.intermediate_layernorm(v).transpose(self.axis, -1)
        return u * (self.Dense_0(v).transpose(self.axis, -1) + 1.)


class BlockGatingUnit(_SpatialGate):
    axis = 2

    def __init__(self, c, n, use_bias=True):
        super().__init__()
        self.Dense_0 = nn.Linear(n, n, bias=use_bias)
        self.intermediate_layernorm = MaximLayerNorm(c // 2)

    def forward(self, x):
        return self._gate(x)


class GridGatingUnit(_SpatialGate):
    axis = 1

    def __init__(self, c, n, use_bias=True):
        super().__init__()
        self.intermediate_layernorm = MaximLayerNorm(c // 2)
        self.Dense_0 = nn.Linear(n, n, bias=use_bias)

    def forward(self, x):
        return self._gate(x)


class _GmlpLayer(nn.Module):
    """x + Dropout(out_project(gate(GELU(in_project(LN(x)))))) on windows; subclasses choose the windows."""

    def _build(self, num_channels, factor, use_bias, dropout_rate, gate_name, gate):
        self.LayerNorm = MaximLayerNorm(num_channels)
        self.in_project = nn.Linear(num_channels, num_channels * factor, bias=use_bias)
        setattr(self, gate_name, gate)
        self.out_project = nn.Linear(num_channels * factor // 2, num_channels, bias=use_bias)
        self.dropout = nn.Dropout(dropout_rate)
        self._gate_name = gate_name

    def _mix(self, x):
        y = F.gelu(self.in_project(self.LayerNorm(x)))
        y = getattr(self, self._gate_name)(y)
        return x + self.dropout(self.out_project(y))


class GridGmlpLayer(_GmlpLayer):
    """Global mixing: a ``grid_size`` grid of cells; (B, H, W, C) -> same."""

    def __init__(self, grid_size, num_channels, use_bias=True, factor=2, dropout_rate=0.):
        super().__init__()
        self.gh, self.gw = grid_size
        self._build(num_channels, factor, use_bias, dropout_rate, 'GridGatingUnit',
                    GridGatingUnit(num_channels * factor, self.gh * self.gw))  # upstream: bias always

    def forward(self, x):
        h, w = x.shape[1:3]
        fh, fw = h // self.gh, w // self.gw
        return from_blocks(self._mix(to_blocks(x, fh, fw)), h, w, fh, fw)


class BlockGmlpLayer(_GmlpLayer):
    """Local mixing: windows of ``block_size`` pixels; (B, H, W, C) -> same."""

    def __init__(self, block_size, num_channels, use_bias=True, factor=2, dropout_rate=0.):
        super().__init__()
        self.fh, self.fw = block_size
        self._build(num_channels, factor, use_bias, dropout_rate, 'BlockGatingUnit',
                    BlockGatingUnit(num_channels * factor, self.fh * self.fw))

    def forward(self, x):
        h, w = x.shape[1:3]
        return from_blocks(self._mix(to_blocks(x, self.fh, self.fw)), h, w, self.fh, self.fw)


class ResidualSplitHeadMultiAxisGmlpLayer(nn.Module):
    """The multi-axis gated MLP block (MAB): LN, expand by ``input_proj_factor``, GELU, one half through grid mixing
    and the other through block mixing, project back, residual. (B, H, W, C) -> same."""

    def __init__(self, block_size, grid_size, num_channels, input_proj_factor=2, block_gmlp_factor=2,
                 grid_gmlp_factor=2, use_bias=True, dropout_rate=0.):
        super().__init__()
        half = num_channels * input_proj_factor // 2
        self.LayerNorm_in = MaximLayerNorm(num_channels)
        self.in_project = nn.Linear(num_channels, num_channels * input_proj_factor, bias=use_bias)
        self.GridGmlpLayer = GridGmlpLayer(grid_size, half, use_bias=use_bias, factor=grid_gmlp_factor)
        self.BlockGmlpLayer = BlockGmlpLayer(block_size, half, use_bias=use_bias, factor=block_gmlp_factor)
        self.out_project = nn.Linear(num_channels * input_proj_factor, num_channels, bias=use_bias)
        self.dropout = nn.Dropout(dropout_rate)

    def forward(self, x):
        u, v = F.gelu(self.in_project(self.LayerNorm_in(x))).chunk(2, dim=-1)
        y = torch.cat([self.GridGmlpLayer(u), self.BlockGmlpLayer(v)], dim=-1)
        return x + self.dropout(self.out_project(y))


class GetSpatialGatingWeights(nn.Module):
    """Gating weights of the cross-gating block: LN, expand x2, GELU; one half mixed across grid cells
    (``Dense_0``), the other within blocks (``Dense_1``), concatenated and projected back. No residual."""

    def __init__(self, num_channels, grid_size, block_size, input_proj_factor=2, use_bias=True, dropout_rate=0.):
        super().__init__()
        self.gh, self.gw = grid_size
        self.fh, self.fw = block_size
        self.LayerNorm_in = MaximLayerNorm(num_channels)
        self.in_project = nn.Linear(num_channels, num_channels * input_proj_factor, bias=use_bias)
        self.Dense_0 = nn.Linear(self.gh * self.gw, self.gh * self.gw, bias=use_bias)
        self.Dense_1 = nn.Linear(self.fh * self.fw, self.fh * self.fw, bias=use_bias)
        self.out_project = nn.Linear(num_channels * input_proj_factor, num_channels, bias=use_bias)
        self.dropout = nn.Dropout(dropout_rate)

    def forward(self, x):
        h, w = x.shape[1:3]
        u, v = F.gelu(self.in_project(self.LayerNorm_in(x))).chunk(2, dim=-1)
        ch, cw = h // self.gh, w // self.gw
        u = self.Dense_0(to_blocks(u, ch, cw).transpose(1, -1)).transpose(1, -1)
        u = from_blocks(u, h, w, ch, cw)
        v = self.Dense_1(to_blocks(v, self.fh, self.fw).transpose(2, -1)).transpose(2, -1)
        v = from_blocks(v, h, w, self.fh, self.fw)
        return self.dropout(self.out_project(torch.cat([u, v], dim=-1)))


# ---------------------------------------------------------------------------------------------------- conv parts
class CALayer(nn.Module):
    """Squeeze-and-excitation on (B, H, W, C): global mean, 1x1 conv to C/r, ReLU, 1x1 conv back, sigmoid, scale."""

    def __init__(self, features, reduction=4, use_bias=True):
        super().__init__()
        self.Conv_0 = nn.Conv2d(features, features // reduction, 1, bias=use_bias)
        self.Conv_1 = nn.Conv2d(features // reduction, features, 1, bias=use_bias)

    def forward(self, x):
        y = x.mean(dim=(1, 2)).reshape(x.shape[0], -1, 1, 1)
        y = torch.sigmoid(self.Conv_1(F.relu(self.Conv_0(y))))
        return x * y.reshape(x.shape[0], 1, 1, -1)


class RCAB(nn.Module):
    """Residual channel-attention block on (B, H, W, C): LN, 3x3 conv, LeakyReLU, 3x3 conv, channel attention."""

    def __init__(self, features, reduction=4, lrelu_slope=0.2, use_bias=True):
        super().__init__()
        self.lrelu_slope = lrelu_slope
        self.LayerNorm = MaximLayerNorm(features)
        self.conv1 = nn.Conv2d(features, features, 3, padding=1, bias=use_bias)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1, bias=use_bias)
        self.channel_attention = CALayer(features, reduction)  # upstream: always with bias

    def forward(self, x):
        y = self.LayerNorm(x).permute(0, 3, 1, 2)
        y = self.conv2(F.leaky_relu(self.conv1(y), self.lrelu_slope)).permute(0, 2, 3, 1)
        return x + self.channel_attention(y)


class MlpBlock(nn.Module):
    """Dense, GELU, Dropout, Dense over the last dimension (width unchanged)."""

    def __init__(self, mlp_dim, dropout_rate=0., use_bias=True):
        super().__init__()
        self.Dense_0 = nn.Linear(mlp_dim, mlp_dim, bias=use_bias)
        self.dropout = nn.Dropout(dropout_rate)
        self.Dense_1 = nn.Linear(mlp_dim, mlp_dim, bias=use_bias)

    def forward(self, x):
        return self.Dense_1(self.dropout(F.gelu(self.Dense_0(x))))


class RDCAB(nn.Module):
    """Residual dense channel-attention block on (B, H, W, C): x + CA(MLP(LN(x)))."""

    def __init__(self, features, reduction=4, dropout_rate=0., use_bias=True):
        super().__init__()
        self.LayerNorm = MaximLayerNorm(features)
        self.channel_mixing = MlpBlock(features, dropout_rate, use_bias)
        self.channel_attention = CALayer(features, reduction, use_bias)

    def forward(self, x):
        return x + self.channel_attention(self.channel_mixing(self.LayerNorm(x)))


class CrossGatingBlock(nn.Module):
    """Cross-gating block: x (B, x_features, H, W) and y (B, cin_y, H/2, W/2 when ``upsample_y``, else H, W) are
    projected to ``num_channels``; each one's spatial gating weights gate the other. Returns (x', y') in
    (B, num_channels, H, W), with x' = x + gated x + y'."""

    def __init__(self, x_features, num_channels, block_size, grid_size, cin_y, upsample_y=True, use_bias=True,
                 use_global_mlp=True, dropout_rate=0.):
        super().__init__()
        self.upsample_y = upsample_y
        if upsample_y:
            self.ConvTranspose_0 = nn.ConvTranspose2d(cin_y, num_channels, 2, stride=2, bias=use_bias)
        self.Conv_0 = nn.Conv2d(x_features, num_channels, 1, bias=use_bias)
        self.Conv_1 = nn.Conv2d(num_channels, num_channels, 1, bias=use_bias)
        self.LayerNorm_x = MaximLayerNorm(num_channels)
        self.in_project_x = nn.Linear(num_channels, num_channels, bias=use_bias)
        self.SplitHeadMultiAxisGating_x = GetSpatialGatingWeights(num_channels, grid_size, block_size,
                                                                  use_bias=use_bias, dropout_rate=dropout_rate)
        self.LayerNorm_y = MaximLayerNorm(num_channels)
        self.in_project_y = nn.Linear(num_channels, num_channels, bias=use_bias)
        self.SplitHeadMultiAxisGating_y = GetSpatialGatingWeights(num_channels, grid_size, block_size,
                                                                  use_bias=use_bias, dropout_rate=dropout_rate)
        self.out_project_y = nn.Linear(num_channels, num_channels, bias=use_bias)
        self.dropout1 = nn.Dropout(dropout_rate)
        self.out_project_x = nn.Linear(num_channels, num_channels, bias=use_bias)
        self.dropout2 = nn.Dropout(dropout_rate)

    def forward(self, x, y):
        if self.upsample_y:
            y = self.ConvTranspose_0(y)
        x = self.Conv_0(x).permute(0, 2, 3, 1)
        y = self.Conv_1(y).permute(0, 2, 3, 1)
        if x.shape != y.shape:
            raise ValueError(f'CrossGatingBlock: x {tuple(x.shape)} and y {tuple(y.shape)} differ (channels last)')
        x_in, y_in = x, y
        x = F.gelu(self.in_project_x(self.LayerNorm_x(x)))
        y = F.gelu(self.in_project_y(self.LayerNorm_y(y)))
        gate_x, gate_y = self.SplitHeadMultiAxisGating_x(x), self.SplitHeadMultiAxisGating_y(y)
        y = y_in + self.dropout1(self.out_project_y(y * gate_x))
        x = self.dropout2(self.out_project_x(x * gate_y)) + y + x_in
        return x.permute(0, 3, 1, 2), y.permute(0, 3, 1, 2)


class UNetEncoderBlock(nn.Module):
    """(B, cin - skip channels, H, W) [+ skip concatenated] -> 1x1 conv to ``num_channels``, twice (MAB, RCAB),
    long residual. Returns (stride-2 conv of it, it) when ``downsample``, else it.

    ``cross_gating_block`` and (when ``with_down_conv``) ``Conv_1`` are always built, as upstream does;
    ``ConStyleMaxim``'s blocks have no ``Conv_1`` (``with_down_conv=False``)."""

    def __init__(self, cin, num_channels, block_size, grid_size, dec=False, lrelu_slope=0.2, block_gmlp_factor=2,
                 grid_gmlp_factor=2, input_proj_factor=2, channels_reduction=4, dropout_rate=0., use_bias=True,
                 downsample=True, use_global_mlp=True, with_down_conv=True):
        super().__init__()
        self.downsample = downsample and with_down_conv
        self.use_global_mlp = use_global_mlp
        self.Conv_0 = nn.Conv2d(cin, num_channels, 1, bias=use_bias)
        mab = dict(block_size=block_size, grid_size=grid_size, num_channels=num_channels,
                   input_proj_factor=input_proj_factor, block_gmlp_factor=block_gmlp_factor,
                   grid_gmlp_factor=grid_gmlp_factor, dropout_rate=dropout_rate, use_bias=use_bias)
        self.SplitHeadMultiAxisGmlpLayer_0 = ResidualSplitHeadMultiAxisGmlpLayer(**mab)
        self.SplitHeadMultiAxisGmlpLayer_1 = ResidualSplitHeadMultiAxisGmlpLayer(**mab)
        self.channel_attention_block_10 = RCAB(num_channels, channels_reduction, lrelu_slope, use_bias)
        self.channel_attention_block_11 = RCAB(num_channels, channels_reduction, lrelu_slope, use_bias)
        self.cross_gating_block = CrossGatingBlock(num_channels, num_channels, block_size, grid_size, cin_y=0,
                                                   upsample_y=False, use_bias=use_bias,
                                                   use_global_mlp=use_global_mlp, dropout_rate=dropout_rate)
        if with_down_conv:
            self.Conv_1 = nn.Conv2d(num_channels, num_channels, 4, stride=2, padding=1)

    def forward(self, x, skip=None):
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        x = self.Conv_0(x)
        y = x.permute(0, 2, 3, 1)
        if self.use_global_mlp:
            y = self.SplitHeadMultiAxisGmlpLayer_0(y)
        y = self.channel_attention_block_10(y)
        if self.use_global_mlp:
            y = self.SplitHeadMultiAxisGmlpLayer_1(y)
        y = self.channel_attention_block_11(y)
        x = x + y.permute(0, 3, 1, 2)
        return (self.Conv_1(x), x) if self.downsample else x


class UNetDecoderBlock(nn.Module):
    """2x2 transposed conv (``cin`` -> ``num_channels``, x2 size; only ``with_up_conv``), then an encoder block
    (no down-sampling) on [x, bridge]. The encoder block's input width is ``4 * num_channels`` (MAXIM) or
    ``cin`` (``ConStyleMaxim``, which up-samples outside)."""

    def __init__(self, cin, num_channels, block_size, grid_size, lrelu_slope=0.2, block_gmlp_factor=2,
                 grid_gmlp_factor=2, input_proj_factor=2, channels_reduction=4, dropout_rate=0., use_bias=True,
                 downsample=True, use_global_mlp=True, with_up_conv=True):
        super().__init__()
        self.with_up_conv = with_up_conv
        if with_up_conv:
            self.ConvTranspose_0 = nn.ConvTranspose2d(cin, num_channels, 2, stride=2, bias=use_bias)
        self.UNetEncoderBlock_0 = UNetEncoderBlock(
            4 * num_channels if with_up_conv else cin, num_channels, block_size, grid_size, dec=True,
            lrelu_slope=lrelu_slope, block_gmlp_factor=block_gmlp_factor, grid_gmlp_factor=grid_gmlp_factor,
            input_proj_factor=input_proj_factor, channels_reduction=channels_reduction, dropout_rate=dropout_rate,
            use_bias=use_bias, downsample=False, use_global_mlp=use_global_mlp, with_down_conv=with_up_conv)

    def forward(self, x, bridge=None):
        if self.with_up_conv:
            x = self.ConvTranspose_0(x)
        return self.UNetEncoderBlock_0(x, skip=bridge)


class BottleneckBlock(nn.Module):
    """1x1 conv (with bias), twice (MAB, RDCAB) channels-last, long residual. (B, C, H, W) -> same."""

    def __init__(self, features, block_size, grid_size, block_gmlp_factor=2, grid_gmlp_factor=2, input_proj_factor=2,
                 channels_reduction=4, use_bias=True, dropout_rate=0.):
        super().__init__()
        self.input_proj = nn.Conv2d(features, features, 1)
        mab = dict(block_size=block_size, grid_size=grid_size, num_channels=features,
                   input_proj_factor=input_proj_factor, block_gmlp_factor=block_gmlp_factor,
                   grid_gmlp_factor=grid_gmlp_factor, use_bias=use_bias)
        self.SplitHeadMultiAxisGmlpLayer_0 = ResidualSplitHeadMultiAxisGmlpLayer(**mab)
        self.SplitHeadMultiAxisGmlpLayer_1 = ResidualSplitHeadMultiAxisGmlpLayer(**mab)
        # upstream passes neither channels_reduction nor the MAB's dropout here: reduction 4, no MAB dropout
        self.channel_attention_block_1_0 = RDCAB(features, dropout_rate=dropout_rate, use_bias=use_bias)
        self.channel_attention_block_1_1 = RDCAB(features, dropout_rate=dropout_rate, use_bias=use_bias)

    def forward(self, x):
        x = self.input_proj(x)
        y = x.permute(0, 2, 3, 1)
        y = self.channel_attention_block_1_0(self.SplitHeadMultiAxisGmlpLayer_0(y))
        y = self.channel_attention_block_1_1(self.SplitHeadMultiAxisGmlpLayer_1(y))
        return x + y.permute(0, 3, 1, 2)


class ResizeConv(nn.Module):
    """Resize by ``ratio`` (bilinear, antialiased; none for 1), then a 1x1 conv ``cin`` -> ``cout`` (key
    ``Conv_0``): upstream's ``UpSampleRatio*`` family."""

    def __init__(self, cin, cout, ratio=1., use_bias=True):
        super().__init__()
        self.ratio = ratio
        self.Conv_0 = nn.Conv2d(cin, cout, 1, bias=use_bias)

    def forward(self, x):
        return self.Conv_0(resize(x, self.ratio))


# ---------------------------------------------------------------------------------------------------- network
def gated_skips(net, encs, glob, gate):
    """MAXIM's cross-gated skips: per level (2, 1, 0), the three encoder outputs resized to it
    (``UpSampleRatio_<k>``) gate against the global feature through ``<gate><level>``. Returns {level: skip}."""
    skips = {}
    for level, first in ((2, 0), (1, 3), (0, 6)):
        signal = torch.cat([getattr(net, f'UpSampleRatio_{first + j}')(encs[j]) for j in range(3)], dim=1)
        skips[level], glob = getattr(net, f'{gate}{level}')(signal, glob)
    return skips


def decoder_bridge(net, skips, first):
    """The decoder's bridge at one level: the three gated skips resized to it (``UpSampleRatio_<first + j>``)."""
    return torch.cat([getattr(net, f'UpSampleRatio_{first + j}')(skips[src]) for j, src in enumerate((2, 1, 0))],
                     dim=1)


@ARCH_REGISTRY.register()
class Maxim(nn.Module):
    """MAXIM-1S (one stage, depth 3, three input scales) with upstream IRConStyle's arguments and defaults
    (8,175,683 parameters). See the module docstring for the structure and the padding.

    Args:
        features: width at full resolution (f, 2f, 4f at H, H/2, H/4; 4f at the H/8 bottleneck).
        depth, num_supervision_scales: must be 3 (upstream's forward is written for three levels and scales).
        use_bias: bias of the convs and dense layers (see the module docstring for the exceptions).
        lrelu_slope: LeakyReLU slope in the RCABs. use_global_mlp: use the MABs in the encoder/decoder blocks.
        high_res_stages: levels < this use ``block_size_hr`` / ``grid_size_hr``; others ``block_size_lr`` for both.
        block_size_hr, block_size_lr, grid_size_hr, grid_size_lr: (h, w) of blocks / grids (bottleneck: the lr pair).
        block_gmlp_factor, grid_gmlp_factor, input_proj_factor: widening factors of the MAB parts.
        channels_reduction: squeeze ratio of the RCABs. num_outputs: output channels. dropout_rate: dropout.
    """

    def __init__(self, features=32, depth=3, use_bias=True, num_supervision_scales=3, lrelu_slope=0.2,
                 use_global_mlp=True, high_res_stages=2, block_size_hr=(16, 16), block_size_lr=(8, 8),
                 grid_size_hr=(16, 16), grid_size_lr=(8, 8), block_gmlp_factor=2, grid_gmlp_factor=2,
                 input_proj_factor=2, channels_reduction=4, num_outputs=3, dropout_rate=0.):
        super().__init__()
        if depth != 3 or num_supervision_scales != 3:
            raise ValueError(f'Maxim: depth and num_supervision_scales must be 3 (as upstream builds it), got '
                             f'{depth} and {num_supervision_scales}')
        f = features
        sizes = [level_sizes(i, high_res_stages, block_size_hr, block_size_lr, grid_size_hr) for i in range(3)]
        block = dict(lrelu_slope=lrelu_slope, block_gmlp_factor=block_gmlp_factor, grid_gmlp_factor=grid_gmlp_factor,
                     input_proj_factor=input_proj_factor, channels_reduction=channels_reduction,
                     dropout_rate=dropout_rate, use_bias=use_bias, use_global_mlp=use_global_mlp)
        bottleneck = dict(features=4 * f, block_size=tuple(block_size_lr), grid_size=tuple(grid_size_lr),
                          block_gmlp_factor=block_gmlp_factor, grid_gmlp_factor=grid_gmlp_factor,
                          input_proj_factor=input_proj_factor, channels_reduction=channels_reduction,
                          use_bias=use_bias, dropout_rate=dropout_rate)
        self.pad_multiple = required_multiple({**{i: list(s) for i, s in enumerate(sizes)},
                                               3: [tuple(block_size_lr), tuple(grid_size_lr)]})

        # encoder: (input width, cin of the block, block width) per level
        for i, (c_in, c_block) in enumerate([(f, 2 * f), (2 * f, 3 * f), (4 * f, 6 * f)]):
            setattr(self, f'stage_0_input_conv_{i}', nn.Conv2d(3, c_in, 3, padding=1, bias=use_bias))
            setattr(self, f'stage_0_encoder_block_{i}',
                    UNetEncoderBlock(c_block, f * 2 ** i, *sizes[i], downsample=True, **block))
        self.stage_0_global_block_0 = BottleneckBlock(**bottleneck)
        self.stage_0_global_block_1 = BottleneckBlock(**bottleneck)

        # cross gating at level 2, 1, 0: every encoder output resized to the level and projected
        def resize_convs(first, level):
            for j in range(3):  # from encoder level j (width f * 2**j) to level `level` (width f * 2**level)
                setattr(self, f'UpSampleRatio_{first + j}',
                        ResizeConv(f * 2 ** j, f * 2 ** level, 2. ** (j - level), use_bias))

        for level, first in ((2, 0), (1, 3), (0, 6)):
            resize_convs(first, level)
            setattr(self, f'stage_0_cross_gating_block_{level}',
                    CrossGatingBlock(3 * f * 2 ** level, f * 2 ** level, *sizes[level],
                                     cin_y=4 * f if level > 0 else 2 * f, upsample_y=True, use_bias=use_bias,
                                     dropout_rate=dropout_rate))

        # decoder at level 2, 1, 0: the cross-gating outputs (levels 2, 1, 0) resized to the level
        for level, first in ((2, 9), (1, 12), (0, 15)):
            for j, src in enumerate((2, 1, 0)):
                setattr(self, f'UpSampleRatio_{first + j}',
                        ResizeConv(f * 2 ** src, f * 2 ** level, 2. ** (src - level), use_bias))
            setattr(self, f'stage_0_decoder_block_{level}',
                    UNetDecoderBlock(4 * f if level > 0 else 2 * f, f * 2 ** level, *sizes[level], **block))
        self.stage_0_output_conv_0 = nn.Conv2d(f, num_outputs, 3, padding=1, bias=use_bias)

    def forward(self, x):
        inp, size = pad_to_multiple(x, self.pad_multiple, mode='reflect')
        scales = [getattr(self, f'stage_0_input_conv_{i}')(nearest_downsample(inp, 2 ** i)) for i in range(3)]
        feat, encs = scales[0], []
        for i in range(3):
            feat, bridge = getattr(self, f'stage_0_encoder_block_{i}')(feat, skip=scales[i])
            encs.append(bridge)
        feat = self.stage_0_global_block_1(self.stage_0_global_block_0(feat))

        skips = gated_skips(self, encs, feat, 'stage_0_cross_gating_block_')
        for level, first in ((2, 9), (1, 12), (0, 15)):
            feat = getattr(self, f'stage_0_decoder_block_{level}')(feat, bridge=decoder_bridge(self, skips, first))
        return crop_to(self.stage_0_output_conv_0(feat) + inp, size)
