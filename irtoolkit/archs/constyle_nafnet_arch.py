"""ConStyleNAFNet (IRConStyle, Fan et al., arXiv 2402.15784): the ConStyle U-Net with NAFNet's block.

Upstream's constructor arguments, defaults and state_dict keys: dim 48, NAFBlocks [7, 8, 9] / 9 / [7, 8, 9],
a bias-free 3x3 conv in (``Preprocess_Module.0``) and out (``Finetune_Module.0``), LeakyReLU prior projections.
12,739,872 parameters with ``Train=False``; 13,930,704 with the key encoder. (B, 3, H, W) -> (B, 3, H, W).
"""
from irtoolkit.archs.constyle_unet_arch import ConStyleUNet
from irtoolkit.utils.registry import ARCH_REGISTRY


@ARCH_REGISTRY.register()
class ConStyleNAFNet(ConStyleUNet):
    """See :class:`ConStyleUNet` for the calls (``net(lq)``, ``net(lq, gt)``, ``restore``).

    ``constyle_opt`` passes K, m, T, enqueue, num_classes to :class:`ConStyle` (upstream: K 65760, m 0.999, T 0.07).
    ``block_opt`` passes NAFBlock arguments (DW_Expand, FFN_Expand, drop_out_rate).
    """

    def __init__(self, img_channel=3, dim=48, left_blk_num=(7, 8, 9), bottom_blk_num=9, right_blk_num=(7, 8, 9),
                 Train=True, constyle_opt=None, block_opt=None):
        super().__init__(inp_channels=img_channel, out_channels=img_channel, dim=dim, left_blk_num=left_blk_num,
                         bottom_blk_num=bottom_blk_num, right_blk_num=right_blk_num, block='NAFBlock',
                         block_opt=block_opt, affine_act='lrelu', bias=False, Train=Train, constyle_opt=constyle_opt)
