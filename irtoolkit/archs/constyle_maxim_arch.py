"""ConStyleMaxim (IRConStyle, Fan et al., arXiv 2402.15784): MAXIM-1S's blocks (Tu et al., arXiv 2201.02973) in
the ConStyle U-Net, with upstream's constructor arguments, defaults and state_dict keys
(``archs/ConStyle_Maxim_arch.py`` of Dongqi-Fan/IRConStyle), so its checkpoints load with ``strict=True``.

Structure for an input (B, 3, H, W), f = ``features``:

- three input scales x, x/2, x/4 (nearest) through 3x3 convs into f channels each (``stage_input_conv_*``);
- encoder: MAXIM encoder blocks at H (f), H/2 (2f), H/4 (3f), each fed [features, its input scale]; the first
  one takes the full-scale features twice. Between levels ``DC*``: 3x3 conv to a quarter width, PixelUnshuffle, and
  the ConStyle prior's map of that resolution (projected to f) concatenated (2f at H/2, 3f at H/4, 4f at H/8);
- bottleneck: ``bottom_blk_num`` MAXIM bottleneck blocks at 4f, then ``local_fusion(cat[b, b * mlp(latent)])``
  down to 3f (the latent code's channel-wise modulation);
- cross gating at H/4, H/2, H: the three encoder outputs resized to the level (bilinear, antialiased) and projected
  to f gate, and are gated by, the running global feature (transposed-conv up-sampled from the level below);
- decoder: ``UC*`` (3x3 conv to 4x width, PixelShuffle) then a MAXIM encoder block on [x, the three cross-gating
  outputs resized to the level]: 3f at H/4, 2f at H/2, 2f at H;
- ``Finetune_Module``: 3x3 conv to the image, plus the input.

The input is reflect-padded inside to a multiple of :attr:`pad_multiple` (64 with the defaults: whole MAXIM blocks
and grid cells at every level, as upstream's ``Dataset_Maxim*`` pad outside) and the output cropped back.
(B, 3, H, W) -> (B, num_outputs, H, W). ``Train=True`` builds ConStyle's key encoder and queue (upstream default).
"""
import math

import torch
from torch import nn

from irtoolkit.archs.constyle_arch import ConStyle
from irtoolkit.archs.constyle_unet_arch import DC, AffineTransform, ConStyleNet
from irtoolkit.archs.maxim_arch import (BottleneckBlock, CrossGatingBlock, ResizeConv, UNetDecoderBlock,
                                        UNetEncoderBlock, decoder_bridge, gated_skips, level_sizes,
                                        nearest_downsample, required_multiple, resize)
from irtoolkit.utils.registry import ARCH_REGISTRY


class UpShuffle(nn.Module):
    """3x3 conv (no bias) to 4x channels, PixelShuffle(2): (B, n, H, W) -> (B, n, 2H, 2W). Key ``up.0``."""

    def __init__(self, n_feat):
        super().__init__()
        self.up = nn.Sequential(nn.Conv2d(n_feat, n_feat * 4, 3, padding=1, bias=False), nn.PixelShuffle(2))

    def forward(self, x):
        return self.up(x)


class Resize(nn.Module):
    """Parameter-free bilinear (antialiased) resize by ``ratio``."""

    def __init__(self, ratio=1.):
        super().__init__()
        self.ratio = ratio

    def forward(self, x):
        return resize(x, self.ratio)


@ARCH_REGISTRY.register()
class ConStyleMaxim(ConStyleNet):
    """See the module docstring; calls as :class:`~irtoolkit.archs.constyle_unet_arch.ConStyleNet`.

    Upstream's arguments: ``features`` (32), ``bias`` (False: convs and dense layers; MAXIM's always-biased layers
    keep theirs), ``bottom_blk_num`` (2), ``lrelu_slope``, ``use_global_mlp``, ``high_res_stages``,
    ``block_size_hr``/``block_size_lr``/``grid_size_hr``/``grid_size_lr``, ``block_gmlp_factor``,
    ``grid_gmlp_factor``, ``input_proj_factor``, ``channels_reduction``, ``num_outputs``, ``dropout_rate``, ``Train``
    (as in :class:`~irtoolkit.archs.maxim_arch.Maxim`). Added: ``constyle_opt`` (K, m, T, enqueue, num_classes for
    :class:`ConStyle`). 8,101,664 parameters with ``Train=False``, 9,292,496 with the key encoder.
    """

    def __init__(self, features=32, bias=False, bottom_blk_num=2, lrelu_slope=0.2, use_global_mlp=True,
                 high_res_stages=2, block_size_hr=(16, 16), block_size_lr=(8, 8), grid_size_hr=(16, 16),
                 grid_size_lr=(8, 8), block_gmlp_factor=2, grid_gmlp_factor=2, input_proj_factor=2,
                 channels_reduction=4, num_outputs=3, dropout_rate=0., Train=True, constyle_opt=None):
        super().__init__()
        if features % 4:
            raise ValueError(f'ConStyleMaxim: features must be a multiple of 4 (PixelUnshuffle of features/4), '
                             f'got {features}')
        f = features
        sizes = [level_sizes(i, high_res_stages, block_size_hr, block_size_lr, grid_size_hr) for i in range(3)]
        mh, mw = required_multiple({**{i: list(s) for i, s in enumerate(sizes)},
                                    3: [tuple(block_size_lr), tuple(grid_size_lr)]})
        self.pad_multiple = (math.lcm(mh, 8), math.lcm(mw, 8))
        block = dict(lrelu_slope=lrelu_slope, block_gmlp_factor=block_gmlp_factor, grid_gmlp_factor=grid_gmlp_factor,
                     input_proj_factor=input_proj_factor, channels_reduction=channels_reduction,
                     dropout_rate=dropout_rate, use_bias=bias, use_global_mlp=use_global_mlp)

        self.ConStyle = ConStyle(Train=Train, **(constyle_opt or {}))
        for i in range(3):
            setattr(self, f'stage_input_conv_{i}', nn.Conv2d(3, f, 3, padding=1, bias=bias))

        # encoder: block input widths 2f, 3f, 4f -> widths f, 2f, 3f
        for i, (cin, width) in enumerate([(2 * f, f), (3 * f, 2 * f), (4 * f, 3 * f)]):
            setattr(self, f'Process_Module_l{i + 1}',
                    UNetEncoderBlock(cin, width, *sizes[i], with_down_conv=False, **block))
            setattr(self, f'DC{i + 1}', DC(width))
        self.Process_Module_bottom = nn.Sequential(*[
            BottleneckBlock(4 * f, tuple(block_size_lr), tuple(grid_size_lr), block_gmlp_factor, grid_gmlp_factor,
                            input_proj_factor, channels_reduction, use_bias=bias, dropout_rate=dropout_rate)
            for _ in range(bottom_blk_num)])
        self.local_fusion = nn.Conv2d(8 * f, 3 * f, 1, bias=False)
        self._build_gating_and_decoder(f, sizes, bias, dropout_rate, block)
        self.mlp = nn.Sequential(nn.Linear(128, 4 * f))
        self.AffineTransform2 = AffineTransform(128, f, 'lrelu')
        self.AffineTransform1 = AffineTransform(64, f, 'lrelu')
        self.AffineTransform0 = AffineTransform(32, f, 'lrelu')
        self.Finetune_Module = nn.Sequential(nn.Conv2d(2 * f, num_outputs, 3, padding=1, bias=bias))

    def _build_gating_and_decoder(self, f, sizes, bias, dropout_rate, block):
        """Cross gating at levels 2, 1, 0 and the decoder (upstream's module names, in upstream's order)."""
        # cross gating at levels 2, 1, 0 from the encoder outputs (widths f, 2f, 3f); the level-0 output has f
        # channels already and is only resized (no parameters)
        for level, first, cin_y in ((2, 0, 3 * f), (1, 3, f), (0, 6, f)):
            setattr(self, f'UpSampleRatio_{first}', Resize(2. ** -level))
            for j, width in ((1, 2 * f), (2, 3 * f)):
                setattr(self, f'UpSampleRatio_{first + j}', ResizeConv(width, f, 2. ** (j - level), bias))
            setattr(self, f'cross_gating_block_{level}',
                    CrossGatingBlock(3 * f, f, *sizes[level], cin_y=cin_y, upsample_y=True, use_bias=bias,
                                     dropout_rate=dropout_rate))

        # decoder at levels 2, 1, 0: the cross-gating outputs (levels 2, 1, 0, f channels each) resized to the level
        for level, first, up_width, cin, width in ((2, 9, 3 * f, 6 * f, 3 * f), (1, 12, 3 * f, 6 * f, 2 * f),
                                                   (0, 15, 2 * f, 5 * f, 2 * f)):
            for j, src in enumerate((2, 1, 0)):
                setattr(self, f'UpSampleRatio_{first + j}', Resize(2. ** (src - level)))
            setattr(self, f'UC{level + 1}', UpShuffle(up_width))
            setattr(self, f'Process_Module_r{level + 1}',
                    UNetDecoderBlock(cin, width, *sizes[level], with_up_conv=False, **block))

    def restore(self, inp, latent, feas):
        """Upstream's ``forward(x, q, feas)``: ``inp`` (B, 3, H, W) with H, W multiples of :attr:`pad_multiple`."""
        q = self.mlp(latent)[:, :, None, None]
        priors = [self.AffineTransform0(feas[0]), self.AffineTransform1(feas[1]), self.AffineTransform2(feas[2])]
        scales = [getattr(self, f'stage_input_conv_{i}')(nearest_downsample(inp, 2 ** i)) for i in range(3)]

        x, encs = scales[0], []
        for i in range(3):
            x = getattr(self, f'Process_Module_l{i + 1}')(x, skip=scales[i])
            encs.append(x)
            x = getattr(self, f'DC{i + 1}')(x, priors[i])
        x = self.Process_Module_bottom(x)
        x = self.local_fusion(torch.cat([x, x * q], 1))

        skips = gated_skips(self, encs, x, 'cross_gating_block_')
        for level, first in ((2, 9), (1, 12), (0, 15)):
            x = getattr(self, f'UC{level + 1}')(x)
            x = getattr(self, f'Process_Module_r{level + 1}')(x, bridge=decoder_bridge(self, skips, first))
        return self.Finetune_Module(x) + inp
