"""CUT's ResNet generator (Park et al., "Contrastive Learning for Unpaired Image-to-Image Translation", ECCV 2020;
the Johnson et al. layout of CycleGAN's ``resnet_9blocks``), as NEGCUT and — by the notes' reconstruction — CDD-GAN
train it from scratch. Written from the published layout; no upstream code.

Layout (``self.model``, an ``nn.Sequential`` whose indices are CUT's, so CUT's ``nce_layers 0,4,8,12,16`` are the
module names ``model.0``, ``model.4``, ``model.8``, ``model.12``, ``model.16``)::

    0 ReflectionPad(3)   1 Conv 7x7 (C -> ngf)   2 norm   3 ReLU
    4 Conv 3x3 (ngf -> 2 ngf)     5 norm  6 ReLU  7 blur-pool /2      (antialias; else one stride-2 conv block)
    8 Conv 3x3 (2 ngf -> 4 ngf)   9 norm 10 ReLU 11 blur-pool /2
    12 .. 12+n-1  ResNet blocks (4 ngf): reflect-pad, conv 3x3, norm, ReLU, reflect-pad, conv 3x3, norm, + skip
    then 2 x (anti-aliased up-sampling x2, conv 3x3 halving the channels, norm, ReLU),
    ReflectionPad(3), Conv 7x7 (ngf -> C), tanh

``model.0`` is the padded input, ``model.4`` / ``model.8`` the two down-sampling convolutions (before their norm;
full and half resolution with anti-aliasing), ``model.12`` / ``model.16`` the 1st and 5th ResNet blocks (quarter
resolution). Instance norm without affine parameters, xavier-normal initialisation with gain 0.02 (CUT's
``normG instance``, ``init_type xavier``, ``init_gain 0.02``). About 11.4M parameters at ngf 64, 9 blocks.

**Value range.** CUT works on images in [-1, 1]. irtoolkit's images are in [0, 1]: with ``unit_range=True`` (the
default) the input is mapped by ``x -> 2x - 1`` before ``model.0`` and the tanh output by ``y -> (y + 1) / 2``, so
the network inside — its features, its tanh — is exactly CUT's on CUT's inputs, and the images in and out are in
[0, 1]. ``unit_range=False`` passes the tensors through unchanged ([-1, 1] data).

Inputs whose sides are not multiples of 4 are reflect-padded on the bottom/right and the output is cropped back.
"""
import torch
import torch.nn.functional as F
from torch import nn

from irtoolkit.archs.arch_util import crop_to, init_weights, pad_to_multiple
from irtoolkit.archs.patchgan_arch import BlurPool
from irtoolkit.utils.registry import ARCH_REGISTRY


class BlurUpsample(nn.Module):
    """Anti-aliased x2 up-sampling: replicate-pad 1, transposed convolution with the separable [1, 3, 3, 1] / 8
    filter (times 4 to keep the mean), stride 2, cropped to exactly twice the input size (per channel)."""

    def __init__(self, channels):
        super().__init__()
        k = torch.tensor([1., 3., 3., 1.])
        k = k[:, None] * k[None, :]
        self.register_buffer('kernel', (4 * k / k.sum())[None, None].repeat(channels, 1, 1, 1))
        self.channels = channels

    def forward(self, x):
        y = F.conv_transpose2d(F.pad(x, (1, 1, 1, 1), mode='replicate'), self.kernel, stride=2, padding=2,
                               groups=self.channels)
        return y[..., 1:-1, 1:-1]


def _norm(kind, c):
    if kind == 'instance':
        return nn.InstanceNorm2d(c, affine=False, track_running_stats=False)
    if kind == 'batch':
        return nn.BatchNorm2d(c)
    if kind == 'none':
        return nn.Identity()
    raise ValueError(f'ResnetGenerator: norm must be instance, batch or none, got {kind!r}')


class ResnetBlock(nn.Module):
    """x + (reflect-pad, conv 3x3, norm, ReLU, [dropout], reflect-pad, conv 3x3, norm)(x)."""

    def __init__(self, dim, norm='instance', dropout=False, bias=True):
        super().__init__()
        layers = [nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=bias), _norm(norm, dim), nn.ReLU(True)]
        if dropout:
            layers.append(nn.Dropout(0.5))
        layers += [nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=bias), _norm(norm, dim)]
        self.conv_block = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv_block(x)


@ARCH_REGISTRY.register()
class ResnetGenerator(nn.Module):
    """Args:
        in_channels / out_channels: image channels.
        ngf: channels of the first conv (CUT: 64).
        num_blocks: ResNet blocks (CUT's ``resnet_9blocks``: 9).
        norm: ``instance`` (CUT), ``batch`` or ``none``.
        antialias / antialias_up: blur-pool down-sampling / blur up-sampling (CUT's default) instead of stride-2
            (transposed) convolutions.
        dropout: dropout in the ResNet blocks (CUT: off).
        init_type / init_gain: weight initialisation (CUT: xavier, 0.02; ``default`` keeps PyTorch's).
        unit_range: images in [0, 1] in and out, mapped to CUT's [-1, 1] inside (see the module docstring).
    """

    def __init__(self, in_channels=3, out_channels=3, ngf=64, num_blocks=9, norm='instance', antialias=True,
                 antialias_up=True, dropout=False, init_type='xavier', init_gain=0.02, unit_range=True):
        super().__init__()
        bias = norm == 'instance'  # CUT: convolutions followed by instance norm keep their bias
        layers = [nn.ReflectionPad2d(3), nn.Conv2d(in_channels, ngf, 7, bias=bias), _norm(norm, ngf), nn.ReLU(True)]
        for i in range(2):  # down-sampling
            c = ngf * 2 ** i
            if antialias:
                layers += [nn.Conv2d(c, 2 * c, 3, 1, 1, bias=bias), _norm(norm, 2 * c), nn.ReLU(True), BlurPool(2 * c)]
            else:
                layers += [nn.Conv2d(c, 2 * c, 3, 2, 1, bias=bias), _norm(norm, 2 * c), nn.ReLU(True)]
        layers += [ResnetBlock(4 * ngf, norm, dropout, bias) for _ in range(num_blocks)]
        for i in range(2):  # up-sampling
            c = ngf * 2 ** (2 - i)
            if antialias_up:
                layers += [BlurUpsample(c), nn.Conv2d(c, c // 2, 3, 1, 1, bias=bias)]
            else:
                layers += [nn.ConvTranspose2d(c, c // 2, 3, 2, 1, output_padding=1, bias=bias)]
            layers += [_norm(norm, c // 2), nn.ReLU(True)]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, out_channels, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)
        self.unit_range = unit_range
        init_weights(self, init_type, init_gain)

    def forward(self, x):
        if self.unit_range:
            x = 2 * x - 1
        x, size = pad_to_multiple(x, 4, mode='reflect')
        y = crop_to(self.model(x), size)
        return (y + 1) / 2 if self.unit_range else y
