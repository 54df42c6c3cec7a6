"""ConStyleRestormer (IRConStyle, Fan et al., arXiv 2402.15784): the ConStyle U-Net with Restormer's block.

Upstream's constructor arguments, defaults and state_dict keys: dim 48, transformer blocks [4, 6, 6] / 8 / [4, 6, 6]
with heads 1, 2, 4 | 8 | 4, 2, 1 (l1, l2, l3 | bottom | r3, r2, r1 — the right side reuses the left side's heads
although r3 works at 4*dim), 4 refinement blocks before the last conv, an ``OverlapPatchEmbed`` input
(``Preprocess_Module.proj``), PReLU prior projections. 15,574,960 parameters with ``Train=False``.
(B, 3, H, W) -> (B, 3, H, W).
"""
from irtoolkit.archs.constyle_unet_arch import ConStyleUNet
from irtoolkit.archs.restormer_arch import OverlapPatchEmbed
from irtoolkit.utils.registry import ARCH_REGISTRY


@ARCH_REGISTRY.register()
class ConStyleRestormer(ConStyleUNet):
    """See :class:`ConStyleUNet` for the calls; ``constyle_opt`` as in :class:`ConStyleNAFNet`."""

    def __init__(self, inp_channels=3, dim=48, left_blk_num=(4, 6, 6), bottom_blk_num=8, right_blk_num=(4, 6, 6),
                 num_refinement_blocks=4, heads=(1, 2, 4, 8), ffn_expansion_factor=2.66, bias=False,
                 LayerNorm_type='WithBias', out_channels=3, Train=True, constyle_opt=None):
        if len(heads) != 4:
            raise ValueError(f'ConStyleRestormer: heads needs 4 entries (l1, l2, l3, bottom), got {list(heads)}')
        super().__init__(inp_channels=inp_channels, out_channels=out_channels, dim=dim, left_blk_num=left_blk_num,
                         bottom_blk_num=bottom_blk_num, right_blk_num=right_blk_num, block='RestormerBlock',
                         block_opt=dict(ffn_expansion_factor=ffn_expansion_factor, bias=bias,
                                        LayerNorm_type=LayerNorm_type),
                         block_level_opt=dict(num_heads=[heads[0], heads[1], heads[2], heads[3],
                                                         heads[2], heads[1], heads[0]]),
                         num_refinement_blocks=num_refinement_blocks, affine_act='prelu', bias=bias, Train=Train,
                         constyle_opt=constyle_opt)

    def _make_preprocess(self, inp_channels, dim):
        return OverlapPatchEmbed(inp_channels, dim, bias=False)
