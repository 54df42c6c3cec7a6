"""Uformer: "Uformer: A General U-Shaped Transformer for Image Restoration", Wang et al., CVPR 2022
(arXiv 2106.03106), with the constructor arguments, defaults and state_dict keys of IRConStyle's ``Uformer``
(``archs/Uformer_arch.py`` of Dongqi-Fan/IRConStyle, the official Uformer's definition), so its checkpoints load
with ``strict=True``.

Written from the paper and upstream's key names and shapes. A 4-level U-Net of LeWin transformer layers on tokens
(B, H*W, C): ``input_proj`` (3x3 conv + LeakyReLU) to ``embed_dim``, encoder layers at C, 2C, 4C, 8C each followed by
a 4x4 stride-2 conv, a bottleneck layer at 16C (``conv``), decoder levels of 2x2 transposed conv, concatenation
with the encoder tokens and a layer at 16C, 8C, 4C, 2C, then ``output_proj`` (3x3 conv) plus the input.

LeWin block: x + W-MSA(LN(x)) with windows of ``win_size`` (every second block shifted by half a window, with the
shifted-window attention mask), a learnable relative position bias per head, optionally a learnable ``modulator``
added to every window's tokens and a ``cross_modulator`` (cross-attention of all tokens to a learnable window);
then x + LeFF(LN(x)) (Linear, GELU, 3x3 depthwise conv, GELU, Linear) or an MLP (``token_mlp``).

Shapes: (B, dd_in, H, W) -> (B, in_chans, H, W) for any H, W. Upstream needs square inputs (it recovers the side
from sqrt(H*W)) whose side is a multiple of 2**level x the window at every level; here sizes travel with the tokens,
so rectangular inputs work, and the input is reflect-padded (bottom, right) to :attr:`Uformer.pad_multiple`
(128 with the defaults) and the output cropped back. On square inputs of that multiple the result is upstream's.
Not supported: ``token_mlp='fastleff'`` (needs the ``torch_dwconv`` package) and the optional ``mask`` argument of
upstream's ``forward`` (IRConStyle never passes one).
"""
import logging
import math

import torch
import torch.utils.checkpoint as torch_checkpoint
from torch import nn

from irtoolkit.archs.arch_util import crop_to, pad_to_multiple
from irtoolkit.utils.registry import ARCH_REGISTRY

logger = logging.getLogger('irtoolkit')


def to_tokens(x):
    """(B, C, H, W) -> (B, H*W, C)."""
    return x.flatten(2).transpose(1, 2)


def to_map(x, hw):
    """(B, H*W, C) -> (B, C, H, W)."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], *hw)


def window_partition(x, ws):
    """(B, H, W, C) -> (B * H/ws * W/ws, ws, ws, C), windows in row-major order within each image."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ws, ws, c)


def window_reverse(windows, ws, h, w):
    """Inverse of :func:`window_partition` for (h, w) maps."""
    c = windows.shape[-1]
    x = windows.reshape(-1, h // ws, w // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, w, c)


def effective_window(input_resolution, win_size):
    """Upstream's rule: a layer whose (construction-time) resolution is not above the window uses that resolution
    as its window and no shift."""
    low = min(input_resolution)
    return low if low <= win_size else win_size


class DropPath(nn.Module):
    """Stochastic depth: in training, zero a sample's branch with probability p and scale the rest by 1 / (1 - p)."""

    def __init__(self, drop_prob=0.):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x):
        if not self.training or self.drop_prob == 0.:
            return x
        keep = 1. - self.drop_prob
        mask = x.new_empty((x.shape[0], ) + (1, ) * (x.dim() - 1)).bernoulli_(keep)
        return x * (mask / keep if keep > 0 else mask)


# ---------------------------------------------------------------------------------------------------- projections
class LinearProjection(nn.Module):
    """q from the tokens, k and v from ``attn_kv`` ((N_kv, C), shared by the batch) or the tokens. Keys ``to_q``,
    ``to_kv``. Returns q (B, h, N, C/h), k, v (B, h, N_kv, C/h)."""

    def __init__(self, dim, heads=8, dim_head=64, dropout=0., bias=True):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim_head * heads, bias=bias)
        self.to_kv = nn.Linear(dim, dim_head * heads * 2, bias=bias)

    def forward(self, x, attn_kv=None):
        b, n, c = x.shape
        kv_in = x if attn_kv is None else attn_kv.unsqueeze(0).expand(b, -1, -1)
        q = self.to_q(x).reshape(b, n, self.heads, c // self.heads).transpose(1, 2)
        kv = self.to_kv(kv_in).reshape(b, kv_in.shape[1], 2, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        return q, kv[0], kv[1]


class SepConv2d(nn.Module):
    """Depthwise k x k conv, activation, pointwise 1x1 conv (keys ``depthwise``, ``pointwise``)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, act_layer=nn.ReLU):
        super().__init__()
        self.depthwise = nn.Conv2d(in_channels, in_channels, kernel_size, stride, padding, groups=in_channels)
        self.act_layer = act_layer() if act_layer is not None else nn.Identity()
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x):
        return self.pointwise(self.act_layer(self.depthwise(x)))


class ConvProjection(nn.Module):
    """q, k, v by separable convs over a square window of tokens. Keys ``to_q``, ``to_k``, ``to_v``."""

    def __init__(self, dim, heads=8, dim_head=64, kernel_size=3, q_stride=1, k_stride=1, v_stride=1, dropout=0.,
                 last_stage=False, bias=True):
        super().__init__()
        self.heads = heads
        pad = (kernel_size - q_stride) // 2
        inner = dim_head * heads
        self.to_q = SepConv2d(dim, inner, kernel_size, q_stride, pad)
        self.to_k = SepConv2d(dim, inner, kernel_size, k_stride, pad)
        self.to_v = SepConv2d(dim, inner, kernel_size, v_stride, pad)

    def forward(self, x, attn_kv=None):
        side = math.isqrt(x.shape[1])
        kv_in = x if attn_kv is None else attn_kv

        def heads(conv, t):
            y = conv(to_map(t, (side, side)))
            return y.reshape(y.shape[0], self.heads, -1, y.shape[2] * y.shape[3]).transpose(2, 3)

        return heads(self.to_q, x), heads(self.to_k, kv_in), heads(self.to_v, kv_in)


def _attend(q, k, v, scale, bias=None, mask=None):
    """softmax(q k^T * scale + bias [+ mask per window]) v for q (B_, h, N, d); ``mask`` (nW, N, N_kv)."""
    attn = (q * scale) @ k.transpose(-2, -1)
    if bias is not None:
        attn = attn + bias.unsqueeze(0)
    if mask is not None:
        b_, h, n, m = attn.shape
        attn = (attn.reshape(b_ // mask.shape[0], mask.shape[0], h, n, m) + mask[None, :, None]).reshape(b_, h, n, m)
    return attn.softmax(dim=-1)


def _attention_out(m, x, q, k, v, bias=None, mask=None):
    """The heads' attended values, merged and projected (``m.proj``, with ``m``'s dropouts): (B_, N, C)."""
    attn = m.attn_drop(_attend(q, k, v, m.scale, bias, mask))
    return m.proj_drop(m.proj((attn @ v).transpose(1, 2).reshape(x.shape)))


class WindowAttention(nn.Module):
    """Multi-head self-attention within (B*nW, ws*ws, C) windows, with a relative position bias table
    ((2ws-1)^2, heads) indexed by ``relative_position_index`` (a saved buffer, as upstream)."""

    def __init__(self, dim, win_size, num_heads, token_projection='linear', qkv_bias=True, qk_scale=None,
                 attn_drop=0., proj_drop=0.):
        super().__init__()
        wh, ww = win_size
        self.win_size, self.num_heads = (wh, ww), num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * wh - 1) * (2 * ww - 1), num_heads))
        ys, xs = torch.meshgrid(torch.arange(wh), torch.arange(ww), indexing='ij')
        ys, xs = ys.flatten(), xs.flatten()
        index = (ys[:, None] - ys[None, :] + wh - 1) * (2 * ww - 1) + (xs[:, None] - xs[None, :] + ww - 1)
        self.register_buffer('relative_position_index', index)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=.02)
        if token_projection == 'conv':
            self.qkv = ConvProjection(dim, num_heads, dim // num_heads, bias=qkv_bias)
        elif token_projection == 'linear':
            self.qkv = LinearProjection(dim, num_heads, dim // num_heads, bias=qkv_bias)
        else:
            raise ValueError(f"Uformer: token_projection must be 'linear' or 'conv', got {token_projection!r}")
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x, attn_kv=None, mask=None):
        q, k, v = self.qkv(x, attn_kv)
        n_win = self.win_size[0] * self.win_size[1]
        bias = self.relative_position_bias_table[self.relative_position_index.reshape(-1)]
        bias = bias.reshape(n_win, n_win, -1).permute(2, 0, 1)
        ratio = k.shape[2] // n_win
        if ratio > 1:  # longer keys than the window: each bias column repeated
            bias = bias.repeat_interleave(ratio, dim=-1)
            mask = mask.repeat_interleave(ratio, dim=-1) if mask is not None else None
        return _attention_out(self, x, q, k, v, bias, mask)


class Attention(nn.Module):
    """Multi-head (cross-)attention without position bias; keys ``qkv`` (LinearProjection), ``proj``."""

    def __init__(self, dim, num_heads, token_projection='linear', qkv_bias=True, qk_scale=None, attn_drop=0.,
                 proj_drop=0.):
        super().__init__()
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.qkv = LinearProjection(dim, num_heads, dim // num_heads, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x, attn_kv=None, mask=None):
        q, k, v = self.qkv(x, attn_kv)
        return _attention_out(self, x, q, k, v, mask=mask)


# ---------------------------------------------------------------------------------------------------- feed-forward
class Mlp(nn.Module):
    """fc1, activation, dropout, fc2, dropout on tokens."""

    def __init__(self, in_features, hidden_features=None, out_features=None, act_layer=nn.GELU, drop=0.):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features or in_features)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_features or in_features, out_features or in_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x, hw=None):
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class LeFF(nn.Module):
    """Locally-enhanced feed-forward: Linear + act, 3x3 depthwise conv + act on the (H, W) map, Linear. Keys
    ``linear1.0``, ``dwconv.0``, ``linear2.0``."""

    def __init__(self, dim=32, hidden_dim=128, act_layer=nn.GELU, drop=0.):
        super().__init__()
        self.linear1 = nn.Sequential(nn.Linear(dim, hidden_dim), act_layer())
        self.dwconv = nn.Sequential(nn.Conv2d(hidden_dim, hidden_dim, 3, padding=1, groups=hidden_dim), act_layer())
        self.linear2 = nn.Sequential(nn.Linear(hidden_dim, dim))

    def forward(self, x, hw):
        return self.linear2(to_tokens(self.dwconv(to_map(self.linear1(x), hw))))


# ---------------------------------------------------------------------------------------------------- blocks
class LeWinTransformerBlock(nn.Module):
    """LeWin block on tokens (B, H*W, C) of an (H, W) map; H and W multiples of the (effective) window."""

    def __init__(self, dim, input_resolution, num_heads, win_size=8, shift_size=0, mlp_ratio=4., qkv_bias=True,
                 qk_scale=None, drop=0., attn_drop=0., drop_path=0., act_layer=nn.GELU, norm_layer=nn.LayerNorm,
                 token_projection='linear', token_mlp='leff', modulator=False, cross_modulator=False):
        super().__init__()
        self.win_size = effective_window(input_resolution, win_size)
        self.shift_size = 0 if min(input_resolution) <= win_size else shift_size
        if not 0 <= self.shift_size < self.win_size:
            raise ValueError(f'Uformer: shift_size {self.shift_size} must be in [0, win_size {self.win_size})')
        # the modulators are sized by the requested window, as upstream (they need an unshrunk window to run)
        self.modulator = nn.Embedding(win_size * win_size, dim) if modulator else None
        if cross_modulator:
            self.cross_modulator = nn.Embedding(win_size * win_size, dim)
            self.cross_attn = Attention(dim, num_heads, token_projection, qkv_bias, qk_scale, attn_drop, drop)
            self.norm_cross = norm_layer(dim)  # built (and saved) by upstream, whose forward discards its output
        else:
            self.cross_modulator = None
        self.norm1 = norm_layer(dim)
        self.attn = WindowAttention(dim, (self.win_size, self.win_size), num_heads, token_projection, qkv_bias,
                                    qk_scale, attn_drop, drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = norm_layer(dim)
        hidden = int(dim * mlp_ratio)
        if token_mlp in ('ffn', 'mlp'):
            self.mlp = Mlp(dim, hidden, act_layer=act_layer, drop=drop)
        elif token_mlp == 'leff':
            self.mlp = LeFF(dim, hidden, act_layer=act_layer, drop=drop)
        else:
            raise ValueError(f"Uformer: token_mlp must be 'leff', 'ffn' or 'mlp', got {token_mlp!r} ('fastleff' "
                             'needs the torch_dwconv package and is not supported)')

    def shift_mask(self, h, w, like):
        """(nW, ws*ws, ws*ws): 0 between tokens of the same region of the shifted map, -100 across regions."""
        ws, s = self.win_size, self.shift_size
        region = torch.zeros(1, h, w, 1, dtype=like.dtype, device=like.device)
        cuts = (slice(0, -ws), slice(-ws, -s), slice(-s, None))
        label = 0
        for rows in cuts:
            for cols in cuts:
                region[:, rows, cols, :] = label
                label += 1
        region = window_partition(region, ws).reshape(-1, ws * ws)
        diff = region[:, None, :] - region[:, :, None]
        return torch.where(diff != 0, torch.full_like(diff, -100.), torch.zeros_like(diff))

    def forward(self, x, hw):
        h, w = hw
        b, n, c = x.shape
        ws, s = self.win_size, self.shift_size
        if h % ws or w % ws:
            raise ValueError(f'Uformer: a {h}x{w} map is not a whole number of {ws}x{ws} windows')
        if self.cross_modulator is not None:
            x = x + self.cross_attn(x, self.cross_modulator.weight)
        shortcut = x
        y = self.norm1(x).reshape(b, h, w, c)
        if s:
            y = torch.roll(y, shifts=(-s, -s), dims=(1, 2))
        windows = window_partition(y, ws).reshape(-1, ws * ws, c)
        if self.modulator is not None:
            if self.modulator.weight.shape[0] != ws * ws:
                raise ValueError('Uformer: modulator sized for a larger window than this layer uses (img_size too '
                                 'small for win_size at this level)')
            windows = windows + self.modulator.weight
        windows = self.attn(windows, mask=self.shift_mask(h, w, x) if s else None)
        y = window_reverse(windows.reshape(-1, ws, ws, c), ws, h, w)
        if s:
            y = torch.roll(y, shifts=(s, s), dims=(1, 2))
        x = shortcut + self.drop_path(y.reshape(b, n, c))
        return x + self.drop_path(self.mlp(self.norm2(x), hw))


class BasicUformerLayer(nn.Module):
    """``depth`` LeWin blocks (key ``blocks``); with ``shift_flag`` every odd one uses shifted windows."""

    def __init__(self, dim, output_dim, input_resolution, depth, num_heads, win_size, mlp_ratio=4., qkv_bias=True,
                 qk_scale=None, drop=0., attn_drop=0., drop_path=0., norm_layer=nn.LayerNorm, use_checkpoint=False,
                 token_projection='linear', token_mlp='ffn', shift_flag=True, modulator=False,
                 cross_modulator=False):
        super().__init__()
        self.use_checkpoint = use_checkpoint
        self.blocks = nn.ModuleList([
            LeWinTransformerBlock(dim, input_resolution, num_heads, win_size,
                                  shift_size=win_size // 2 if shift_flag and i % 2 else 0, mlp_ratio=mlp_ratio,
                                  qkv_bias=qkv_bias, qk_scale=qk_scale, drop=drop, attn_drop=attn_drop,
                                  drop_path=drop_path[i] if isinstance(drop_path, (list, tuple)) else drop_path,
                                  norm_layer=norm_layer, token_projection=token_projection, token_mlp=token_mlp,
                                  modulator=modulator, cross_modulator=cross_modulator)
            for i in range(depth)])

    def forward(self, x, hw):
        for blk in self.blocks:
            if self.use_checkpoint and torch.is_grad_enabled():
                x = torch_checkpoint.checkpoint(blk, x, hw, use_reentrant=False)
            else:
                x = blk(x, hw)
        return x

    def window_multiple(self):
        """The size a map must be a multiple of for this layer (its effective window)."""
        return max((blk.win_size for blk in self.blocks), default=1)


class Downsample(nn.Module):
    """4x4 stride-2 conv on tokens: (B, H*W, C_in) of (H, W) -> (B, H*W/4, C_out). Key ``conv.0``."""

    def __init__(self, in_channel, out_channel):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(in_channel, out_channel, 4, stride=2, padding=1))

    def forward(self, x, hw):
        return to_tokens(self.conv(to_map(x, hw)))


class Upsample(nn.Module):
    """2x2 stride-2 transposed conv on tokens: (H, W) -> (2H, 2W). Key ``deconv.0``."""

    def __init__(self, in_channel, out_channel):
        super().__init__()
        self.deconv = nn.Sequential(nn.ConvTranspose2d(in_channel, out_channel, 2, stride=2))

    def forward(self, x, hw):
        return to_tokens(self.deconv(to_map(x, hw)))


class InputProj(nn.Module):
    """3x3 conv + activation (LeakyReLU), (B, C, H, W) -> tokens (B, H*W, out). Key ``proj.0``."""

    def __init__(self, in_channel=3, out_channel=64, kernel_size=3, stride=1, norm_layer=None,
                 act_layer=nn.LeakyReLU):
        super().__init__()
        self.proj = nn.Sequential(nn.Conv2d(in_channel, out_channel, 3, stride, kernel_size // 2),
                                  act_layer(inplace=True))
        self.norm = norm_layer(out_channel) if norm_layer is not None else None

    def forward(self, x):
        x = to_tokens(self.proj(x))
        return self.norm(x) if self.norm is not None else x


class OutputProj(nn.Module):
    """Tokens of an (H, W) map -> 3x3 conv -> (B, out, H, W). Key ``proj.0``."""

    def __init__(self, in_channel=64, out_channel=3, kernel_size=3, stride=1, norm_layer=None, act_layer=None):
        super().__init__()
        self.proj = nn.Sequential(nn.Conv2d(in_channel, out_channel, 3, stride, kernel_size // 2))
        if act_layer is not None:
            self.proj.add_module('1', act_layer(inplace=True))
        self.norm = norm_layer(out_channel) if norm_layer is not None else None

    def forward(self, x, hw):
        x = self.proj(to_map(x, hw))
        return self.norm(x) if self.norm is not None else x


def stage_builder(depths, num_heads, img_size, args):
    """``layer(i, width, level, drop_path, **extra)``: stage ``i`` (a BasicUformerLayer at resolution level
    ``level``) with the options every stage of a Uformer shares, read from the constructor's arguments ``args``."""
    common = dict(win_size=args['win_size'], mlp_ratio=args['mlp_ratio'], qkv_bias=args['qkv_bias'],
                  qk_scale=args['qk_scale'], drop=args['drop_rate'], attn_drop=args['attn_drop_rate'],
                  norm_layer=args['norm_layer'], use_checkpoint=args['use_checkpoint'],
                  token_projection=args['token_projection'], token_mlp=args['token_mlp'],
                  shift_flag=args['shift_flag'])

    def layer(i, width, level, drop_path, **extra):
        res = (img_size // 2 ** level, img_size // 2 ** level)
        return BasicUformerLayer(width, width, res, depths[i], num_heads[i], drop_path=drop_path, **common, **extra)

    return layer


def warn_unused(arch, kwargs):
    if kwargs:
        logger.warning(f'{arch}: ignoring arguments {sorted(kwargs)} (accepted and unused, as upstream)')


def pad_multiple_of(layers_by_level):
    """lcm over levels of 2**level x the layer's window: the input multiple that gives whole windows everywhere."""
    multiple = 1
    for level, layer in layers_by_level:
        multiple = math.lcm(multiple, 2 ** level * layer.window_multiple())
    return multiple


# ---------------------------------------------------------------------------------------------------- network
@ARCH_REGISTRY.register()
class Uformer(nn.Module):
    """Uformer with upstream IRConStyle's (the official) arguments and defaults: embed_dim 32, depths 2 x 9, heads
    [1, 2, 4, 8, 16, 16, 8, 4, 2], window 8, LeFF, linear token projection: 20,628,317 parameters (20,751,197
    with ``modulator=True``, the configuration behind the "20.75 M" note in upstream's file).

    ``img_size`` sets the construction-time resolution of each level (a level at or below ``win_size`` uses its
    own size as the window: it changes parameter shapes). ``dd_in`` input channels, ``in_chans`` output channels
    (the input is added back only when ``dd_in == 3``). ``norm_layer``, ``dowsample``, ``upsample`` are classes, as
    upstream. ``patch_norm`` and unknown keyword arguments are accepted and unused, as upstream.
    """

    def __init__(self, img_size=256, in_chans=3, dd_in=3, embed_dim=32, depths=(2, 2, 2, 2, 2, 2, 2, 2, 2),
                 num_heads=(1, 2, 4, 8, 16, 16, 8, 4, 2), win_size=8, mlp_ratio=4., qkv_bias=True, qk_scale=None,
                 drop_rate=0., attn_drop_rate=0., drop_path_rate=0.1, norm_layer=nn.LayerNorm, patch_norm=True,
                 use_checkpoint=False, token_projection='linear', token_mlp='leff', dowsample=Downsample,
                 upsample=Upsample, shift_flag=True, modulator=False, cross_modulator=False, **kwargs):
        super().__init__()
        if len(depths) != 9 or len(num_heads) != 9:
            raise ValueError(f'Uformer: depths and num_heads need 9 entries, got {list(depths)}, {list(num_heads)}')
        warn_unused('Uformer', kwargs)
        self.dd_in = dd_in
        enc_dpr = torch.linspace(0, drop_path_rate, sum(depths[:4]), device='cpu').tolist()
        dec_dpr = enc_dpr[::-1]
        layer = stage_builder(depths, num_heads, img_size, locals())

        self.pos_drop = nn.Dropout(p=drop_rate)
        self.input_proj = InputProj(dd_in, embed_dim, 3, 1, act_layer=nn.LeakyReLU)
        self.output_proj = OutputProj(2 * embed_dim, in_chans, 3, 1)
        for i in range(4):
            dim = embed_dim * 2 ** i
            setattr(self, f'encoderlayer_{i}', layer(i, dim, i, enc_dpr[sum(depths[:i]):sum(depths[:i + 1])]))
            setattr(self, f'dowsample_{i}', dowsample(dim, dim * 2))
        self.conv = layer(4, embed_dim * 16, 4, [drop_path_rate] * depths[4])
        for j in range(4):
            up_in = embed_dim * 16 if j < 2 else embed_dim * 2 ** (5 - j)
            setattr(self, f'upsample_{j}', upsample(up_in, embed_dim * 2 ** (3 - j)))
            setattr(self, f'decoderlayer_{j}',
                    layer(5 + j, embed_dim * 2 ** (4 - j), 3 - j, dec_dpr[sum(depths[5:5 + j]):sum(depths[5:6 + j])],
                          modulator=modulator, cross_modulator=cross_modulator))
        self.pad_multiple = pad_multiple_of([(i, getattr(self, f'encoderlayer_{i}')) for i in range(4)] +
                                            [(4, self.conv)] +
                                            [(3 - j, getattr(self, f'decoderlayer_{j}')) for j in range(4)])
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m):
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, x):
        inp, size = pad_to_multiple(x, self.pad_multiple, mode='reflect')
        hw = tuple(inp.shape[-2:])
        y = self.pos_drop(self.input_proj(inp))
        skips = []
        for i in range(4):
            y = getattr(self, f'encoderlayer_{i}')(y, hw)
            skips.append(y)
            y = getattr(self, f'dowsample_{i}')(y, hw)
            hw = (hw[0] // 2, hw[1] // 2)
        y = self.conv(y, hw)
        for j in range(4):
            y = getattr(self, f'upsample_{j}')(y, hw)
            hw = (hw[0] * 2, hw[1] * 2)
            y = getattr(self, f'decoderlayer_{j}')(torch.cat([y, skips[3 - j]], -1), hw)
        out = self.output_proj(y, hw)
        return crop_to(inp + out if self.dd_in == 3 else out, size)
