"""1 - MS-SSIM as a loss: Wang, Simoncelli, Bovik, "Multi-Scale Structural Similarity for Image Quality
Assessment", Asilomar 2003.

At scales j = 1..M (M = 5; each scale the previous one 2x2-average-pooled), with the 11x11 Gaussian window
(sigma 1.5) and 'valid' filtering, C1 = (0.01 R)^2, C2 = (0.03 R)^2 (R = data_range = 1 for images in [0, 1]):

    l_j = (2 mu_x mu_y + C1) / (mu_x^2 + mu_y^2 + C1)           luminance map
    cs_j = max(0, (2 s_xy + C2) / (s_x^2 + s_y^2 + C2))          contrast-structure map
    MS-SSIM = mean(l_M cs_M)^w_M * prod_{j<M} mean(cs_j)^w_j,   w = [0.0448, 0.2856, 0.3001, 0.2363, 0.1333]
    loss = loss_weight * mean over the batch of (1 - MS-SSIM)

The means run over the pixels and channels of each image (RGB: the channels' maps are averaged before the product),
the negative part of each contrast-structure map is clipped, and odd sizes are pooled with one zero row / column
counted in the average: the arithmetic of pyiqa's ``ms_ssim`` (``test_y_channel=False``; with
``y_channel: true`` this loss computes on pyiqa's Y = 0.299 R + 0.587 G + 0.114 B like its default), without its
8-bit rounding, which would make the loss piecewise constant. ``tests/losses/test_restoration_losses.py`` checks the
values against pyiqa. Each mean is floored at 1e-8 before its fractional power, whose gradient is infinite at 0.

Small images: the window must fit the coarsest scale, so 5 scales need H, W >= 161 (``min_size(scales)`` =
10 * 2^(scales - 1) + 1). A smaller image is refused with one line naming the size it needs; typical training crops
(64-128) need ``scales`` < 5, which uses the first ``scales`` weights renormalised to sum to 1 (a different,
coarser-scale-free quantity: state it when reporting). The loss never drops scales silently.

Shapes: pred, target (B, C, H, W) in [0, 1]; returns a scalar.
"""
import torch
import torch.nn.functional as F
from torch import nn

from irtoolkit.utils.errors import OptionError
from irtoolkit.utils.registry import LOSS_REGISTRY
from irtoolkit.utils.ssim_terms import ssim_terms

MSSSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang et al. 2003, Sec. 3.2 (sum 1.0001, used as is)
_Y_COEF = (0.299, 0.587, 0.114)  # Y of YIQ (BT.601 luma without the 16..235 offset), as pyiqa's to_y_channel


def min_size(scales, window=11):
    """Smallest H, W whose coarsest of ``scales`` scales (ceil-halved ``scales - 1`` times) still holds the window."""
    return (window - 1) * 2 ** (scales - 1) + 1


def gaussian_window(size=11, sigma=1.5, dtype=torch.float32, device=None):
    """Normalised 1-D Gaussian of ``size`` taps; its outer product is MATLAB's ``fspecial('gaussian', size, sigma)``."""
    x = torch.arange(size, dtype=torch.float64, device=device) - (size - 1) / 2
    k = torch.exp(-x ** 2 / (2 * sigma ** 2))
    return (k / k.sum()).to(dtype)


def gaussian_filter(x, kernel, padding=0):
    """Separable depthwise filtering of (B, C, H, W) with ``outer(kernel, kernel)``; ``padding`` zeros each side
    (0: 'valid')."""
    c, n = x.shape[1], kernel.numel()
    k = kernel.to(x.dtype)
    x = F.conv2d(x, k.view(1, 1, 1, n).expand(c, 1, 1, n), padding=(0, padding), groups=c)
    return F.conv2d(x, k.view(1, 1, n, 1).expand(c, 1, n, 1), padding=(padding, 0), groups=c)


def ssim_maps(x, y, kernel, c1, c2):
    """Luminance and contrast-structure maps (Wang et al. 2004) of (B, C, H, W), 'valid' filtering."""
    return ssim_terms(x, y, c1, c2, lambda t: gaussian_filter(t, kernel))


def scale_weights(scales):
    """The first ``scales`` of Wang et al.'s weights; renormalised to sum to 1 when fewer than 5."""
    w = torch.tensor(MSSSIM_WEIGHTS[:scales], dtype=torch.float64)
    return w if scales == len(MSSSIM_WEIGHTS) else w / w.sum()


def to_luma(x):
    """(B, 3, H, W) RGB -> (B, 1, H, W) Y = 0.299 R + 0.587 G + 0.114 B."""
    return sum(c * x[:, i:i + 1] for i, c in enumerate(_Y_COEF))


def ms_ssim(x, y, scales=5, window=11, sigma=1.5, data_range=1.0, who='MS-SSIM'):
    """MS-SSIM per image (see the module docstring): (B, C, H, W) x 2 -> (B,), differentiable in both."""
    h, w = x.shape[-2:]
    need = min_size(scales, window)
    if min(h, w) < need:
        raise OptionError(f'{who}: images of {h}x{w} are too small for {scales} scales with an {window}x{window} '
                          f'window: it needs at least {need}x{need} (larger crops, or fewer scales: '
                          f'{", ".join(f"scales {s} from {min_size(s, window)}" for s in range(scales - 1, 0, -1))})')
    kernel = gaussian_window(window, sigma, x.dtype, x.device)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    means = []
    for j in range(scales):
        lum, cs = ssim_maps(x, y, kernel, c1, c2)
        cs = torch.relu(cs)
        if j == scales - 1:
            means.append((lum * cs).mean(dim=(1, 2, 3)))
        else:
            means.append(cs.mean(dim=(1, 2, 3)))
            pad = (x.shape[-2] % 2, x.shape[-1] % 2)  # odd sizes: one zero row / column, counted in the average
            x, y = F.avg_pool2d(x, 2, padding=pad), F.avg_pool2d(y, 2, padding=pad)
    means = torch.stack(means).clamp_min(1e-8)  # (scales, B)
    weights = scale_weights(scales).to(means.dtype).to(means.device)
    return torch.prod(means ** weights[:, None], dim=0)


def check_scales(scales, who):
    if not isinstance(scales, int) or not 1 <= scales <= len(MSSSIM_WEIGHTS):
        raise OptionError(f'{who}: scales must be an int from 1 to {len(MSSSIM_WEIGHTS)}, got {scales!r}')


@LOSS_REGISTRY.register()
class MSSSIMLoss(nn.Module):
    """``loss_weight * (1 - MS-SSIM(pred, target))``, batch mean (see the module docstring).

    Args:
        loss_weight: multiplier.
        scales: number of scales (5: Wang et al.; fewer for crops under 161x161, weights renormalised).
        y_channel: compute on the luma of RGB inputs (pyiqa's default ``ms_ssim``) instead of on R, G and B.
        data_range: 1.0 for images in [0, 1].
    """

    def __init__(self, loss_weight=1.0, scales=5, y_channel=False, data_range=1.0):
        super().__init__()
        check_scales(scales, 'MSSSIMLoss')
        self.loss_weight, self.scales, self.y_channel, self.data_range = loss_weight, scales, y_channel, data_range

    def similarity(self, pred, target):
        """MS-SSIM per image, (B,)."""
        if self.y_channel and pred.shape[1] == 3:
            pred, target = to_luma(pred), to_luma(target)
        return ms_ssim(pred, target, self.scales, data_range=self.data_range, who=type(self).__name__)

    def forward(self, pred, target):
        return self.loss_weight * (1 - self.similarity(pred, target)).mean()
