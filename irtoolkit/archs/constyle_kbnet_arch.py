"""ConStyleKBNet (IRConStyle, Fan et al., arXiv 2402.15784): the ConStyle U-Net with KBNet's kernel basis block
(Zhang et al., arXiv 2303.02881), with upstream's constructor arguments, defaults and state_dict keys
(``archs/ConStyle_KBNet_arch.py`` of Dongqi-Fan/IRConStyle), so its checkpoints load with ``strict=True``.

:class:`~irtoolkit.archs.constyle_unet_arch.ConStyleUNet` with ``KBBlock_s``: dim 32, blocks [3, 3, 4] / 4 /
[3, 3, 4] (widths dim, 2dim, 3dim | 4dim | 4dim, 3dim, 2dim), a 3x3 conv with bias in (``Preprocess_Module.0``),
a bias-free 3x3 conv out (``Finetune_Module.0``), LeakyReLU prior projections. 7,094,128 parameters with
``Train=False``; 8,284,960 with the key encoder. (B, 3, H, W) -> (B, 3, H, W), any H, W (reflect-padded to a
multiple of 8 inside).
"""
from torch import nn

from irtoolkit.archs.constyle_unet_arch import ConStyleUNet
from irtoolkit.archs.kbnet_arch import KBBlock_s  # noqa: F401  (registers the block)
from irtoolkit.utils.registry import ARCH_REGISTRY


@ARCH_REGISTRY.register()
class ConStyleKBNet(ConStyleUNet):
    """See :class:`ConStyleUNet` for the calls (``net(lq)``, ``net(lq, gt)``, ``restore``).

    Upstream's arguments: ``img_channel``, ``dim``, ``left_blk_num``, ``bottom_blk_num``, ``right_blk_num``,
    ``basicblock`` (registered block name), ``lightweight`` and ``ffn_scale`` (passed to every block as
    ``lightweight`` / ``FFN_Expand``), ``Train``. Added: ``constyle_opt`` (K, m, T, enqueue, num_classes).
    """

    def __init__(self, img_channel=3, dim=32, left_blk_num=(3, 3, 4), bottom_blk_num=4, right_blk_num=(3, 3, 4),
                 basicblock='KBBlock_s', lightweight=False, ffn_scale=2, Train=True, constyle_opt=None):
        super().__init__(inp_channels=img_channel, out_channels=img_channel, dim=dim, left_blk_num=left_blk_num,
                         bottom_blk_num=bottom_blk_num, right_blk_num=right_blk_num, block=basicblock,
                         block_opt=dict(FFN_Expand=ffn_scale, lightweight=lightweight), affine_act='lrelu',
                         bias=False, Train=Train, constyle_opt=constyle_opt)

    def _make_preprocess(self, inp_channels, dim):
        return nn.Sequential(nn.Conv2d(inp_channels, dim, 3, padding=1))
