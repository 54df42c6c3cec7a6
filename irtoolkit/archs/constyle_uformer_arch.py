"""ConStyleUformer (IRConStyle, Fan et al., arXiv 2402.15784): Uformer's LeWin layers (Wang et al., arXiv
2106.03106) in the ConStyle U-Net, with upstream's constructor arguments, defaults and state_dict keys
(``archs/ConStyle_Uformer_arch.py`` of Dongqi-Fan/IRConStyle), so its checkpoints load with ``strict=True``.

Structure (widths dim, 2dim, 3dim | 4dim | 4dim, 3dim, 2dim at H, H/2, H/4 | H/8 | H/4, H/2, H, as every ConStyle
network): ``Preprocess_Module`` (Uformer's input projection: 3x3 conv + LeakyReLU) -> LeWin layers
``Process_Module_l1..l3`` with ``DC*`` between them (3x3 conv to a quarter width, PixelUnshuffle, concat the prior's
map projected to dim) -> ``Process_Module_bottom`` -> ``local_fusion.fusion(cat[b, b * mlp(latent)])`` -> ``UC*``
(3x3 conv x4, PixelShuffle, concat the skip, 1x1 conv) and LeWin layers ``Process_Module_r3..r1`` (with the
``modulator`` by default) -> ``Finetune_Module`` (3x3 conv) + the input.

Defaults: img_size 128, dim 32, depths 2 x 7, heads [1, 2, 4, 8, 8, 4, 2], window 8: 4,142,893 parameters with
``Train=False``, 5,333,725 with the key encoder. (B, dd_in, H, W) -> (B, in_chans, H, W), any H, W: reflect-padded
inside to :attr:`pad_multiple` (64 with the defaults; upstream needs square inputs of such a side, here rectangles
work too) and cropped back.
"""
import math

import torch
from torch import nn

from irtoolkit.archs.constyle_arch import ConStyle
from irtoolkit.archs.constyle_unet_arch import DC, UC, AffineTransform, ConStyleNet
from irtoolkit.archs.uformer_arch import (InputProj, OutputProj, pad_multiple_of, stage_builder, to_map, to_tokens,
                                          warn_unused)
from irtoolkit.utils.registry import ARCH_REGISTRY


class LocalFusion(nn.Module):
    """cat[b, b * q] -> 1x1 conv (8dim -> 3dim, no bias). Key ``fusion``."""

    def __init__(self, dim):
        super().__init__()
        self.fusion = nn.Conv2d(dim * 8, dim * 3, 1, bias=False)

    def forward(self, x, q):
        return self.fusion(torch.cat([x, x * q], 1))


@ARCH_REGISTRY.register()
class ConStyleUformer(ConStyleNet):
    """See the module docstring; calls as :class:`~irtoolkit.archs.constyle_unet_arch.ConStyleNet`.

    Upstream's arguments: ``img_size``, ``in_chans`` (output channels), ``dd_in`` (input channels), ``dim``,
    ``depths`` / ``num_heads`` (7 entries: l1, l2, l3, bottom, r3, r2, r1), ``win_size``, ``mlp_ratio``,
    ``qkv_bias``, ``qk_scale``, ``drop_rate``, ``attn_drop_rate``, ``drop_path_rate``, ``norm_layer``,
    ``patch_norm`` (unused), ``use_checkpoint``, ``token_projection``, ``token_mlp``, ``shift_flag``, ``modulator``
    (decoder layers), ``Train``, ``cross_modulator``. Added: ``constyle_opt`` (K, m, T, enqueue, num_classes).
    """

    def __init__(self, img_size=128, in_chans=3, dd_in=3, dim=32, depths=(2, 2, 2, 2, 2, 2, 2),
                 num_heads=(1, 2, 4, 8, 8, 4, 2), win_size=8, mlp_ratio=4., qkv_bias=True, qk_scale=None,
                 drop_rate=0., attn_drop_rate=0., drop_path_rate=0.1, norm_layer=nn.LayerNorm, patch_norm=True,
                 use_checkpoint=False, token_projection='linear', token_mlp='leff', shift_flag=True, modulator=True,
                 Train=True, cross_modulator=False, constyle_opt=None, **kwargs):
        super().__init__()
        if len(depths) != 7 or len(num_heads) != 7:
            raise ValueError(f'ConStyleUformer: depths and num_heads need 7 entries, got {list(depths)}, '
                             f'{list(num_heads)}')
        if dim % 4:
            raise ValueError(f'ConStyleUformer: dim must be a multiple of 4 (PixelUnshuffle of dim/4), got {dim}')
        warn_unused('ConStyleUformer', kwargs)
        enc_dpr = torch.linspace(0, drop_path_rate, sum(depths[:3]), device='cpu').tolist()
        dec_dpr = enc_dpr[::-1]
        layer = stage_builder(depths, num_heads, img_size, locals())

        decoder = dict(modulator=modulator, cross_modulator=cross_modulator)
        self.ConStyle = ConStyle(Train=Train, **(constyle_opt or {}))
        self.Preprocess_Module = InputProj(dd_in, dim, 3, 1, act_layer=nn.LeakyReLU)
        self.Process_Module_l1 = layer(0, dim, 0, enc_dpr[0:depths[0]])
        self.DC1 = DC(dim)
        self.Process_Module_l2 = layer(1, dim * 2, 1, enc_dpr[depths[0]:sum(depths[:2])])
        self.DC2 = DC(dim * 2)
        self.Process_Module_l3 = layer(2, dim * 3, 2, enc_dpr[sum(depths[:2]):sum(depths[:3])])
        self.DC3 = DC(dim * 3)
        self.Process_Module_bottom = layer(3, dim * 4, 3, drop_path_rate)  # upstream: [drop_path_rate] * depths[4]
        self.local_fusion = LocalFusion(dim)
        self.UC3 = UC(dim * 3, dim * 6, dim * 4)
        self.Process_Module_r3 = layer(4, dim * 4, 2, dec_dpr[:depths[4]], **decoder)
        self.UC2 = UC(dim * 4, dim * 6, dim * 3)
        self.Process_Module_r2 = layer(5, dim * 3, 1, dec_dpr[depths[4]:sum(depths[4:6])], **decoder)
        self.UC1 = UC(dim * 3, dim * 4, dim * 2)
        self.Process_Module_r1 = layer(6, dim * 2, 0, dec_dpr[sum(depths[4:6]):sum(depths[4:7])], **decoder)
        self.Finetune_Module = OutputProj(2 * dim, in_chans, 3, 1)
        self.mlp = nn.Sequential(nn.Linear(128, dim * 4))
        self.AffineTransform2 = AffineTransform(128, dim, 'lrelu')
        self.AffineTransform1 = AffineTransform(64, dim, 'lrelu')
        self.AffineTransform0 = AffineTransform(32, dim, 'lrelu')
        levels = [(0, self.Process_Module_l1), (1, self.Process_Module_l2), (2, self.Process_Module_l3),
                  (3, self.Process_Module_bottom), (2, self.Process_Module_r3), (1, self.Process_Module_r2),
                  (0, self.Process_Module_r1)]
        self.pad_multiple = math.lcm(8, pad_multiple_of(levels))

    @staticmethod
    def _run(layer, x):
        """A LeWin layer on a (B, C, H, W) map."""
        hw = tuple(x.shape[-2:])
        return to_map(layer(to_tokens(x), hw), hw)

    def restore(self, inp, latent, feas):
        """Upstream's ``forward(inp_img, q, feas)``: H, W multiples of :attr:`pad_multiple`."""
        q = self.mlp(latent)[:, :, None, None]
        fea2 = self.AffineTransform2(feas[2])
        fea1 = self.AffineTransform1(feas[1])
        fea0 = self.AffineTransform0(feas[0])
        x = to_map(self.Preprocess_Module(inp), tuple(inp.shape[-2:]))
        l1 = self._run(self.Process_Module_l1, x)
        l2 = self._run(self.Process_Module_l2, self.DC1(l1, fea0))
        l3 = self._run(self.Process_Module_l3, self.DC2(l2, fea1))
        b = self._run(self.Process_Module_bottom, self.DC3(l3, fea2))
        b = self.local_fusion(b, q)
        x = self._run(self.Process_Module_r3, self.UC3(b, l3))
        x = self._run(self.Process_Module_r2, self.UC2(x, l2))
        x = self._run(self.Process_Module_r1, self.UC1(x, l1))
        return self.Finetune_Module(to_tokens(x), tuple(x.shape[-2:])) + inp
