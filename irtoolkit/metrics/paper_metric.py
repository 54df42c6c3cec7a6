"""PSNR / SSIM with the papers' protocol (BasicSR's ``calculate_psnr`` / ``calculate_ssim``), batched in torch.

The protocol restoration papers report (and BasicSR implements in numpy, one image at a time):
the output is clamped to [0, 1] and rounded to 8 bit; optionally ``crop_border`` pixels are removed on every side;
optionally only the Y channel of ITU-R BT.601 YCbCr is used (``Y = 16 + (65.481 R + 128.553 G + 24.966 B)``,
inputs in [0, 1]); PSNR uses a peak of 255; SSIM is Wang et al. 2004 with an 11x11 Gaussian window
(sigma 1.5), 'valid' filtering, float64, averaged over channels.

Here the same arithmetic runs on (B, C, H, W) tensors, on any device, so a folder is scored in batches; the
values match BasicSR's functions to float precision (checked in ``tests/metrics/test_metrics_values.py``).

Registered in basicsr's ``METRIC_REGISTRY`` as ``psnr_rgb``, ``psnr_y``, ``ssim_rgb``, ``ssim_y`` (option
``crop_border``). They take float RGB tensors in [0, 1], shape (B, C, H, W), and return a (B,) float64 tensor.
"""
import math

import torch

from irtoolkit.utils.registry import METRIC_REGISTRY
from irtoolkit.utils.ssim_terms import ssim_terms

_Y_COEF = (65.481, 128.553, 24.966)  # R, G, B


def quantize(x):
    """Float RGB in [0, 1] -> 8-bit values as float64 in [0, 255] (what saving to PNG and re-reading gives)."""
    return (x.detach().float().clamp(0, 1) * 255.0).round().to(torch.float64)


def y_channel(x255):
    """(B, 3, H, W) 8-bit values -> (B, 1, H, W) BT.601 Y in [16, 235], with BasicSR's float32 round trips."""
    f = (x255.float() / 255.0).double()  # to_y_channel divides in float32
    r, g, b = f[:, 0:1], f[:, 1:2], f[:, 2:3]
    y = r * _Y_COEF[0] + g * _Y_COEF[1] + b * _Y_COEF[2] + 16.0  # float64 dot, as numpy does
    return ((y / 255.0).float() * 255.0).double()  # stored as float32, scaled back in float32


def _prepare(img, img2, crop_border, test_y_channel):
    if img.shape != img2.shape:
        raise ValueError(f'image shapes differ: {tuple(img.shape)} vs {tuple(img2.shape)}')
    a, b = quantize(img), quantize(img2)
    if crop_border:
        a = a[..., crop_border:-crop_border, crop_border:-crop_border]
        b = b[..., crop_border:-crop_border, crop_border:-crop_border]
    if test_y_channel and a.shape[1] == 3:
        a, b = y_channel(a), y_channel(b)
    return a, b


def psnr(img, img2, crop_border=0, test_y_channel=False):
    """PSNR in dB per image, (B,); ``inf`` for identical images (as BasicSR)."""
    a, b = _prepare(img, img2, crop_border, test_y_channel)
    mse = (a - b).pow(2).mean(dim=(1, 2, 3))
    return torch.where(mse == 0, torch.full_like(mse, math.inf), 10.0 * torch.log10(255.0 ** 2 / mse))


def gaussian_kernel_1d(size=11, sigma=1.5, device=None):
    """Normalised 1-D Gaussian, float64 (cv2.getGaussianKernel(11, 1.5); its outer product is MATLAB's fspecial)."""
    k = torch.exp(-(torch.arange(size, dtype=torch.float64, device=device) - (size - 1) / 2) ** 2 / (2 * sigma ** 2))
    return k / k.sum()


def gaussian_filter_valid(x, kernel):
    """'valid' 2-D filtering of (B, C, H, W) with the separable window ``outer(kernel, kernel)``.

    Same values as ``F.conv2d`` with the 2-D window (up to float64 rounding), ~20x faster on a CPU: float64
    convolutions take a slow path, while this is 2 x len(kernel) fused multiply-adds over shifted views.
    """
    n = kernel.numel()
    w = x.shape[-1] - n + 1
    k = kernel.tolist()
    rows = x[..., 0:w] * k[0]
    for i in range(1, n):
        rows.add_(x[..., i:i + w], alpha=k[i])
    h = rows.shape[-2] - n + 1
    out = rows[..., 0:h, :] * k[0]
    for i in range(1, n):
        out.add_(rows[..., i:i + h, :], alpha=k[i])
    return out


def ssim_map_stats(a, b, c1, c2, kernel):
    """SSIM ingredients of Wang et al. 2004 on float64 maps: (luminance term, contrast-structure term)."""
    return ssim_terms(a, b, c1, c2, lambda t: gaussian_filter_valid(t, kernel))


def ssim(img, img2, crop_border=0, test_y_channel=False):
    """SSIM per image (mean over channels), (B,)."""
    a, b = _prepare(img, img2, crop_border, test_y_channel)
    lum, cs = ssim_map_stats(a, b, (0.01 * 255) ** 2, (0.03 * 255) ** 2, gaussian_kernel_1d(device=a.device))
    return (lum * cs).mean(dim=(2, 3)).mean(dim=1)


def _register(name, fn, y, doc):
    def metric(img, img2, crop_border=0):
        return fn(img, img2, crop_border=crop_border, test_y_channel=y)

    metric.__name__ = name
    metric.__doc__ = doc
    metric.tensor_input = True  # float RGB tensors in [0, 1], not uint8 BGR arrays
    metric.batched = True  # (B, C, H, W) in, (B,) out
    metric.metric_mode = 'FR'
    metric.lower_better = False
    METRIC_REGISTRY.register()(metric)
    return metric


psnr_rgb = _register('psnr_rgb', psnr, False, 'PSNR on RGB, 8-bit, BasicSR protocol (dB).')
psnr_y = _register('psnr_y', psnr, True, 'PSNR on BT.601 Y, 8-bit, BasicSR protocol (dB).')
ssim_rgb = _register('ssim_rgb', ssim, False, 'SSIM on RGB (mean of channels), 8-bit, BasicSR protocol.')
ssim_y = _register('ssim_y', ssim, True, 'SSIM on BT.601 Y, 8-bit, BasicSR protocol.')
