"""pyiqa metrics by name, offline: weights from the irtoolkit weights folder, NIQE from basicsr's parameters.

``create_pyiqa_metric('lpips')`` builds pyiqa's metric inside :func:`irtoolkit.utils.weights.offline_weights`, so
every file it would download is looked up in ``$IRTOOLKIT_WEIGHTS`` and a missing one raises
``MissingWeightsError`` naming the file and the folder (pyiqa itself would try the network, or for some metrics
continue with an ImageNet-less backbone). NIQE needs no file: pyiqa's ``niqe_modelparameters.mat`` holds the same
pristine-image Gaussian (mu 1x36, cov 36x36) that basicsr ships as ``niqe_pris_params.npz``, so that is used
unless the ``.mat`` is in the weights folder. LPIPS needs only its ImageNet trunk: the calibrated linear layers
ship with the lpips package.

Instances are cached per (name, options, device): validation builds its MetricSet every ``val_freq`` iterations.
"""
import contextlib
import io
import os.path as osp
import threading

import numpy as np
import torch

from irtoolkit.utils.weights import find_weight, offline_weights

_CACHE = {}
_LOCK = threading.Lock()


def pyiqa_names():
    """All metric names pyiqa knows (importing pyiqa is slow, so only when needed)."""
    import pyiqa
    return pyiqa.list_models()


def _niqe_params_file():
    """A file object with pyiqa's NIQE .mat layout built from basicsr's shipped ``niqe_pris_params.npz``."""
    import scipy.io
    import basicsr.metrics
    npz = np.load(osp.join(osp.dirname(basicsr.metrics.__file__), 'niqe_pris_params.npz'))
    buf = io.BytesIO()
    scipy.io.savemat(buf, {'mu_prisparam': npz['mu_pris_param'], 'cov_prisparam': npz['cov_pris_param']})
    buf.seek(0)
    return buf


# pyiqa LPIPS variant -> (its weights file, trunk of the lpips package's calibrated linear layers)
_LPIPS_FILES = {'lpips': ('LPIPS_v0.1_alex-df73285e.pth', 'alex'),
                'lpips+': ('LPIPS_v0.1_alex-df73285e.pth', 'alex'),
                'lpips-vgg': ('LPIPS_v0.1_vgg-a78928a0.pth', 'vgg'),
                'lpips-vgg+': ('LPIPS_v0.1_vgg-a78928a0.pth', 'vgg')}


def _lpips_lin_layers(name):
    """pyiqa's LPIPS file if present, else the v0.1 linear layers the lpips package ships (same calibration).

    pyiqa loads this file with ``strict=False`` into the whole LPIPS module; the trunk (AlexNet / VGG16) still
    comes from the weights folder through the torchvision hook.
    """
    filename, net = _LPIPS_FILES[name]
    try:
        return find_weight(filename, f'pyiqa metric {name}')
    except FileNotFoundError:
        import lpips
        return osp.join(osp.dirname(lpips.__file__), 'weights', 'v0.1', f'{net}.pth')


def create_pyiqa_metric(name, device='cpu', **kwargs):
    """``pyiqa.create_metric(name, device=device, **kwargs)`` with offline weights (cached).

    Raises ``KeyError`` for an unknown name and ``MissingWeightsError`` for a missing weight file.
    """
    import pyiqa
    from pyiqa.default_model_configs import DEFAULT_CONFIGS
    if name not in DEFAULT_CONFIGS:
        raise KeyError(f'unknown pyiqa metric {name!r}')
    device = torch.device(device)
    key = (name, repr(sorted(kwargs.items())), str(device))
    with _LOCK:
        metric = _CACHE.get(key)
        if metric is not None:
            return metric
        opts = dict(kwargs)
        if name == 'niqe' and 'pretrained_model_path' not in opts:
            try:
                opts['pretrained_model_path'] = find_weight('niqe_modelparameters.mat', 'pyiqa metric niqe')
            except FileNotFoundError:
                opts['pretrained_model_path'] = _niqe_params_file()  # scipy.io.loadmat reads file objects
        elif name in _LPIPS_FILES and 'pretrained_model_path' not in opts:
            opts['pretrained_model_path'] = _lpips_lin_layers(name)
        # pyiqa prints "Loading pretrained model ..." on stdout, which would end up in tools' tables
        with offline_weights(f'pyiqa metric {name}'), contextlib.redirect_stdout(io.StringIO()):
            metric = pyiqa.create_metric(name, device=device, **opts)
        metric.eval()
        _CACHE[key] = metric
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
