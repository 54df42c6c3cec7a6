"""Frequency-domain L1 loss, as deblurring networks train with it.

Cho, Ji, Hong, Jung, Ko, "Rethinking Coarse-to-Fine Approach in Single Image Deblurring" (MIMO-UNet), ICCV 2021,
Eq. 4: ``L_MSFR = sum_k ||F(S_k) - F(S'_k)||_1 / t_k`` on the real and imaginary parts of the 2-D FFT, added to the
content loss with weight 0.1; NAFNet-based deblurring models (e.g. the ``FFTLoss`` of BasicSR forks) use the same
term per output.

    loss = loss_weight * mean |Re(F(pred) - F(target))| and |Im(F(pred) - F(target))|

over every coefficient of ``torch.fft.rfft2`` (the one-sided spectrum: a real image's other half is the complex
conjugate, so it carries no further information) of every image and channel.

Normalisation: ``norm='backward'`` by default, the unnormalised DFT ``F(k) = sum_n x(n) e^{-2 pi i k.n / N}``
that MIMO-UNet and the FFTLoss of the NAFNet-based models use, so their published loss weights (MIMO-UNet: 0.1)
carry over. Its coefficients grow with the image (the DC term is H * W times the mean), so the loss of a given
per-pixel error grows as sqrt(H * W) for noise-like errors: a weight tuned on 256 crops is too large on 512 ones.
``norm='ortho'`` (divide by sqrt(H * W)) makes the transform unitary (Parseval: sum |F|^2 = sum |x|^2), so the
loss scale no longer depends on the crop size; its weights are sqrt(H * W) times larger than backward ones.

Shapes: pred, target (B, C, H, W) (images in [0, 1]); returns a scalar (``reduction='mean'`` or ``'sum'``).
"""
import torch
from torch import nn

from irtoolkit.utils.errors import OptionError
from irtoolkit.utils.registry import LOSS_REGISTRY


def rfft2_real_imag(x, norm):
    """(B, C, H, W) -> (B, C, H, W // 2 + 1, 2): real and imaginary parts of the one-sided 2-D FFT (float32 at
    least: the FFT has no half-precision CPU kernel)."""
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    return torch.view_as_real(torch.fft.rfft2(x, norm=norm))


@LOSS_REGISTRY.register()
class FFTLoss(nn.Module):
    """L1 distance between the 2-D spectra of prediction and target (see the module docstring).

    Args:
        loss_weight: multiplier.
        reduction: ``mean`` (over every real and imaginary coefficient) or ``sum``.
        norm: ``backward`` (unnormalised DFT, MIMO-UNet's and NAFNet-variants' scale) or ``ortho`` (unitary DFT,
            independent of the crop size).
    """

    def __init__(self, loss_weight=1.0, reduction='mean', norm='backward'):
        super().__init__()
        if reduction not in ('mean', 'sum'):
            raise OptionError(f'FFTLoss: reduction must be mean or sum, got {reduction!r}')
        if norm not in ('backward', 'ortho'):
            raise OptionError(f'FFTLoss: norm must be backward or ortho, got {norm!r}')
        self.loss_weight, self.reduction, self.norm = loss_weight, reduction, norm

    def forward(self, pred, target):
        diff = (rfft2_real_imag(pred, self.norm) - rfft2_real_imag(target, self.norm)).abs()
        return self.loss_weight * (diff.mean() if self.reduction == 'mean' else diff.sum())
