"""PatchGAN discriminator (pix2pix / CycleGAN's ``NLayerDiscriminator``; CUT's anti-aliased variant) that can
also return its intermediate features, so it can serve as a contrastive encoder (NLCL's layer contrast).

Isola et al., "Image-to-Image Translation with Conditional Adversarial Networks", CVPR 2017; anti-aliased
down-sampling after Zhang, "Making Convolutional Networks Shift-Invariant Again", ICML 2019, as used in CUT.
With ``num_layers=3`` the receptive field is 70x70.

Stages (module names, usable by :class:`irtoolkit.contrastive.FeatureTap`): ``body.0`` conv + LeakyReLU (+
blur-pool), ``body.1 .. body.{n-1}`` conv + norm + LeakyReLU (+ blur-pool), ``body.n`` stride-1 conv + norm +
LeakyReLU, then ``head`` (1-channel logits). Input (B, C, H, W) -> logits (B, 1, ~H/2^n, ~W/2^n).
"""
import torch
import torch.nn.functional as F
from torch import nn

from irtoolkit.archs.arch_util import init_weights
from irtoolkit.utils.registry import ARCH_REGISTRY


class BlurPool(nn.Module):
    """Reflect-pad, [1, 2, 1] x [1, 2, 1] / 16 blur, stride 2 (per channel)."""

    def __init__(self, channels):
        super().__init__()
        k = torch.tensor([1., 2., 1.])
        k = (k[:, None] * k[None, :]) / 16
        self.register_buffer('kernel', k[None, None].repeat(channels, 1, 1, 1))
        self.channels = channels

    def forward(self, x):
        return F.conv2d(F.pad(x, (1, 1, 1, 1), mode='reflect'), self.kernel, stride=2, groups=self.channels)


def _norm(kind, c):
    if kind == 'instance':
        return nn.InstanceNorm2d(c, affine=False)
    if kind == 'batch':
        return nn.BatchNorm2d(c)
    if kind == 'none':
        return nn.Identity()
    raise ValueError(f'PatchGANDiscriminator: norm must be instance, batch or none, got {kind!r}')


@ARCH_REGISTRY.register()
class PatchGANDiscriminator(nn.Module):
    """Args:
        in_channels: image channels.
        num_feat: channels of the first conv (ndf, 64 in pix2pix/CUT/NLCL).
        num_layers: number of down-sampling stages (3: the 70x70 PatchGAN).
        norm: ``instance`` (CUT/NLCL), ``batch`` (pix2pix) or ``none``.
        antialias: blur-pool down-sampling (CUT) instead of stride-2 convolutions.
        init_type / init_gain: weight initialisation (:func:`~irtoolkit.archs.arch_util.init_weights`); CUT and NLCL
            use ``xavier`` with gain 0.02, ``default`` keeps PyTorch's.

    Feature taps: ``body.i`` is stage i's output (after LeakyReLU and blur-pool), ``body.i.0`` its convolution's
    raw output — CUT's flat ``NLayerDiscriminator`` indices 0, 3, 7 (NLCL's ``adv_nce_layers``) are ``body.0.0``,
    ``body.1.0``, ``body.2.0`` (255 / 127 / 63 px on a 256 px crop with ``antialias``).
    """

    def __init__(self, in_channels=3, num_feat=64, num_layers=3, norm='instance', antialias=True, init_type='default',
                 init_gain=0.02):
        super().__init__()
        use_bias = norm != 'batch'
        stages = []
        prev = in_channels
        for i in range(num_layers + 1):
            out = num_feat * min(2 ** i, 8)
            last = i == num_layers
            stride = 1 if (antialias or last) else 2
            layers = [nn.Conv2d(prev, out, 4, stride, 1, bias=use_bias or i == 0)]
            if i > 0:
                layers.append(_norm(norm, out))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            if antialias and not last:
                layers.append(BlurPool(out))
            stages.append(nn.Sequential(*layers))
            prev = out
        self.body = nn.Sequential(*stages)
        self.head = nn.Conv2d(prev, 1, 4, 1, 1)
        self.feat_channels = [s[0].out_channels for s in stages]
        init_weights(self, init_type, init_gain)

    def forward(self, x, return_feats=False):
        """Logits; with ``return_feats`` also the list of every stage's output (``body.0`` ... ``body.n``)."""
        feats = []
        for stage in self.body:
            x = stage(x)
            feats.append(x)
        logits = self.head(x)
        return (logits, feats) if return_feats else logits
