"""LPIPS as a training loss: Zhang, Isola, Efros, Shechtman, Wang, "The Unreasonable Effectiveness of Deep
Features as a Perceptual Metric", CVPR 2018 (the ``lpips`` package, v0.1 calibration).

The trunk (AlexNet / VGG16 / SqueezeNet 1.1) loads its ImageNet weights from the irtoolkit weights folder under
torchvision's file names (``alexnet-owt-7be5be79.pth``, ``vgg16-397923af.pth``, ``squeezenet1_1-b8a52dc0.pth``);
the calibrated linear layers ship with the lpips package. A missing trunk file raises ``MissingWeightsError``
naming it: lpips would otherwise download it, and its ``pnet_rand`` option gives a random trunk whose distances
mean nothing.

Shapes: ``forward(x, gt)`` with (B, 3, H, W) RGB in [0, 1] (or in [-1, 1] with ``input_range: "-1,1"``);
returns ``loss_weight * mean LPIPS`` (per sample, (B,), with ``reduction: none``).
The network is frozen and always in eval mode (its dropout layers must not fire during training).
"""
from torch import nn

from irtoolkit.utils.registry import LOSS_REGISTRY
from irtoolkit.utils.weights import TV_ALEXNET, TV_SQUEEZE, TV_VGG16, offline_weights, register_weights

_TRUNK_FILES = {'alex': TV_ALEXNET, 'vgg': TV_VGG16, 'squeeze': TV_SQUEEZE}
for _net, _file in _TRUNK_FILES.items():
    register_weights(f'loss LPIPSLoss ({_net})', [_file], 'linear layers shipped with the lpips package')


def build_lpips(net='alex', version='0.1', purpose=None):
    """A frozen ``lpips.LPIPS`` whose trunk comes from the weights folder (never downloaded, never random)."""
    import lpips
    if net not in _TRUNK_FILES:
        raise ValueError(f'LPIPS net must be one of {", ".join(_TRUNK_FILES)}, got {net!r}')
    with offline_weights(purpose or f'LPIPS ({net})'):
        model = lpips.LPIPS(net=net, version=version, verbose=False)
    return model.eval().requires_grad_(False)


@LOSS_REGISTRY.register()
class LPIPSLoss(nn.Module):
    """LPIPS distance as a loss (see the module docstring).

    Args:
        net: ``alex`` (the paper's recommended metric), ``vgg`` (closer to a perceptual loss) or ``squeeze``.
        loss_weight: multiplier.
        reduction: ``mean`` or ``none`` (per-sample values).
        input_range: ``'0,1'`` (default) or ``'-1,1'`` for inputs already in LPIPS's native range.
    """

    def __init__(self, net='alex', loss_weight=1.0, reduction='mean', input_range='0,1', version='0.1'):
        super().__init__()
        if reduction not in ('mean', 'none'):
            raise ValueError(f'LPIPSLoss: reduction must be mean or none, got {reduction!r}')
        if input_range not in ('0,1', '-1,1'):
            raise ValueError(f"LPIPSLoss: input_range must be '0,1' or '-1,1', got {input_range!r}")
        self.lpips = build_lpips(net, version, f'loss LPIPSLoss ({net})')
        self.loss_weight, self.reduction, self.normalize = loss_weight, reduction, input_range == '0,1'

    def train(self, mode=True):
        super().train(mode)
        self.lpips.eval()
        return self

    def forward(self, x, gt):
        d = self.lpips(x, gt.detach(), normalize=self.normalize).reshape(x.shape[0])
        d = d.mean() if self.reduction == 'mean' else d
        return d * self.loss_weight
