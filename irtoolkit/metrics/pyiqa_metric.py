"""pyiqa metrics by name, offline, as batched functions for evaluation and validation.

Metrics are built by :func:`irtoolkit.utils.pyiqa_offline.build_pyiqa_metric` (weights from the irtoolkit weights
folder, a missing file is a ``MissingWeightsError`` naming it; NIQE from basicsr's parameters; LPIPS's linear layers
from the lpips package). Instances are cached per (name, options, device): validation builds its MetricSet every
``val_freq`` iterations.
"""
import threading

import torch

from irtoolkit.utils.pyiqa_offline import build_pyiqa_metric

_CACHE = {}
_LOCK = threading.Lock()


def pyiqa_names():
    """All metric names pyiqa knows (importing pyiqa is slow, so only when needed)."""
    import pyiqa
    return pyiqa.list_models()


def create_pyiqa_metric(name, device='cpu', **kwargs):
    """``pyiqa.create_metric(name, device=device, **kwargs)`` with offline weights (cached).

    Raises ``KeyError`` for an unknown name and ``MissingWeightsError`` for a missing weight file.
    """
    device = torch.device(device)
    key = (name, repr(sorted(kwargs.items())), str(device))
    with _LOCK:
        metric = _CACHE.get(key)
        if metric is None:
            metric = _CACHE[key] = build_pyiqa_metric(name, device, **kwargs)
        return metric


def pyiqa_ssim(img, img2, test_y_channel, crop_border=0, color_space='yiq'):
    """pyiqa's ``ssim`` / ``ssimc`` arithmetic (``pyiqa.archs.ssim_arch.SSIM`` with ``downsample=False``) with the
    11x11 Gaussian applied separably: the same values to float64 rounding, ~20x faster on a CPU.

    pyiqa's own preprocessing is used (8-bit rounding, its Y of YIQ), then Wang et al.'s SSIM with pyiqa's
    ``relu`` on the contrast-structure term. (B, C, H, W) in [0, 1] -> (B,) float64.
    """
    from pyiqa.archs.func_util import preprocess_rgb
    from irtoolkit.metrics.paper_metric import gaussian_kernel_1d, ssim_map_stats
    if crop_border:
        img = img[..., crop_border:-crop_border, crop_border:-crop_border]
        img2 = img2[..., crop_border:-crop_border, crop_border:-crop_border]
    a = preprocess_rgb(img, test_y_channel, 255, color_space).to(torch.float64)
    b = preprocess_rgb(img2, test_y_channel, 255, color_space).to(torch.float64)
    lum, cs = ssim_map_stats(a, b, (0.01 * 255) ** 2, (0.03 * 255) ** 2, gaussian_kernel_1d(device=a.device))
    return (lum * torch.relu(cs)).mean(dim=(1, 2, 3))


# pyiqa metric -> (fast equivalent, its fixed arguments); used when no option other than crop_border is given
_FAST = {'ssim': (pyiqa_ssim, {'test_y_channel': True}), 'ssimc': (pyiqa_ssim, {'test_y_channel': False})}


class PyiqaMetric:
    """A pyiqa metric as a batched function: ``(output, gt=None) -> (B,) float64 tensor`` on the metric's device.

    ``output`` / ``gt``: float RGB tensors in [0, 1], shape (B, C, H, W); values outside [0, 1] are clamped
    (pyiqa asserts the range).
    """
    batched = True
    tensor_input = True

    def __init__(self, name, device='cpu', **kwargs):
        self.name = name
        self.metric = create_pyiqa_metric(name, device, **kwargs)
        self.metric_mode = self.metric.metric_mode
        self.lower_better = bool(self.metric.lower_better)
        self.device = torch.device(device)
        self.fast = None
        if name in _FAST and set(kwargs) <= {'crop_border'}:  # equal to pyiqa: tests/metrics/test_metrics_values
            fn, fixed = _FAST[name]
            self.fast = lambda a, b: fn(a, b, crop_border=int(kwargs.get('crop_border', 0)), **fixed)

    @torch.no_grad()
    def __call__(self, img, img2=None):
        img = img.to(self.device, torch.float32).clamp(0, 1)
        if self.metric_mode == 'FR':
            if img2 is None:
                raise ValueError(f'pyiqa metric {self.name} is full-reference: it needs a ground-truth image')
            img2 = img2.to(self.device, torch.float32).clamp(0, 1)
            score = self.fast(img, img2) if self.fast else self.metric(img, img2)
        else:
            score = self.metric(img)
        score = torch.as_tensor(score).detach().reshape(-1).to(torch.float64)
        if score.numel() != img.shape[0]:
            raise RuntimeError(f'pyiqa metric {self.name} returned {score.numel()} scores for {img.shape[0]} images')
        return score.cpu()
