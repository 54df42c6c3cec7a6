"""The MS-SSIM + L1 mix of Zhao, Gallo, Frosio, Kautz, "Loss Functions for Image Restoration with Neural
Networks", IEEE TCI 2017 (their "Mix" loss, alpha = 0.84):

    loss = loss_weight * (alpha * (1 - MS-SSIM(pred, target)) + (1 - alpha) * GL1)
    GL1  = mean over batch, channels and pixels p of  sum_q G_sigma(p - q) |pred(q) - target(q)|

MS-SSIM is :class:`~irtoolkit.losses.ms_ssim_loss.MSSSIMLoss`'s (Wang et al. 2003: 5 scales, 11x11 Gaussian window,
sigma 1.5, so images of at least 161x161 unless ``scales`` is lowered; see that module). The L1 term is weighted by a
Gaussian as in the paper, where the loss of a patch is evaluated at its centre pixel and the L1 error weighted by
G_sigma of the coarsest MS-SSIM scale (their sigma_G^M = 8 pixels, the default of ``l1_sigma``). Here every pixel is a
patch centre: ``G_sigma * |pred - target|`` is filtered with the image zero-extended ('same' size, window truncated
at 3 sigma) and averaged, which equals an L1 whose pixels within ~3 sigma of the border count less (a corner pixel
by the quadrant of the Gaussian inside the image, 0.28 for sigma 8), as they are covered by fewer windows; away from
the border it is the plain L1.

Shapes: pred, target (B, C, H, W) in [0, 1]; returns a scalar.
"""
import math

from torch import nn

from irtoolkit.losses.ms_ssim_loss import check_scales, gaussian_filter, gaussian_window, ms_ssim, to_luma
from irtoolkit.utils.errors import OptionError
from irtoolkit.utils.registry import LOSS_REGISTRY


def gaussian_weighted_l1(pred, target, sigma):
    """Per-image mean of the Gaussian-filtered absolute error (zero-extended, 'same' size), (B,)."""
    radius = math.ceil(3 * sigma)
    kernel = gaussian_window(2 * radius + 1, sigma, pred.dtype, pred.device)
    return gaussian_filter((pred - target).abs(), kernel, padding=radius).mean(dim=(1, 2, 3))


@LOSS_REGISTRY.register()
class MSSSIML1Loss(nn.Module):
    """Zhao et al.'s mix ``alpha * (1 - MS-SSIM) + (1 - alpha) * Gaussian-weighted L1`` (see the module docstring).

    Args:
        loss_weight: multiplier of the whole mix.
        alpha: weight of the MS-SSIM term (0.84 in the paper).
        scales: MS-SSIM scales (5; fewer for crops under 161x161, weights renormalised).
        l1_sigma: sigma in pixels of the Gaussian weighting the L1 term (the paper's sigma_G^M = 8).
        y_channel: MS-SSIM on the luma of RGB inputs (the L1 term stays on every channel).
        data_range: 1.0 for images in [0, 1].
    """

    def __init__(self, loss_weight=1.0, alpha=0.84, scales=5, l1_sigma=8.0, y_channel=False, data_range=1.0):
        super().__init__()
        check_scales(scales, 'MSSSIML1Loss')
        if not 0 <= alpha <= 1:
            raise OptionError(f'MSSSIML1Loss: alpha must be in [0, 1], got {alpha}')
        if l1_sigma <= 0:
            raise OptionError(f'MSSSIML1Loss: l1_sigma must be > 0, got {l1_sigma}')
        self.loss_weight, self.alpha, self.scales, self.l1_sigma = loss_weight, alpha, scales, l1_sigma
        self.y_channel, self.data_range = y_channel, data_range

    def forward(self, pred, target):
        a, b = (to_luma(pred), to_luma(target)) if self.y_channel and pred.shape[1] == 3 else (pred, target)
        similarity = ms_ssim(a, b, self.scales, data_range=self.data_range, who=type(self).__name__)
        l1 = gaussian_weighted_l1(pred, target, self.l1_sigma) / self.data_range
        return self.loss_weight * (self.alpha * (1 - similarity) + (1 - self.alpha) * l1).mean()
