"""pyiqa metrics built offline: weights from the irtoolkit weights folder, NIQE from basicsr's parameters.

:func:`build_pyiqa_metric` is the one place that calls ``pyiqa.create_metric``: the evaluation metrics
(:mod:`irtoolkit.metrics.pyiqa_metric`, cached there) and the ``IQALoss`` training loss both go through it. It
builds the metric inside :func:`irtoolkit.utils.weights.offline_weights`, so every file pyiqa would download is
looked up in ``$IRTOOLKIT_WEIGHTS`` and a missing one raises ``MissingWeightsError`` naming the file and the folder
(pyiqa itself would try the network, or for some metrics continue with an ImageNet-less backbone). NIQE needs no
file: pyiqa's ``niqe_modelparameters.mat`` holds the same pristine-image Gaussian (mu 1x36, cov 36x36) that
basicsr ships as ``niqe_pris_params.npz``, so that is used unless the ``.mat`` is in the weights folder. LPIPS needs
only its ImageNet trunk: the calibrated linear layers ship with the lpips package.
"""
import contextlib
import io
import os.path as osp

import numpy as np
import torch

from irtoolkit.utils.weights import find_weight, offline_weights


def _niqe_params_file():
    """A file object with pyiqa's NIQE .mat layout built from basicsr's shipped ``niqe_pris_params.npz``."""
    import basicsr.metrics
    import scipy.io
    npz = np.load(osp.join(osp.dirname(basicsr.metrics.__file__), 'niqe_pris_params.npz'))
    buf = io.BytesIO()
    scipy.io.savemat(buf, {'mu_prisparam': npz['mu_pris_param'], 'cov_prisparam': npz['cov_pris_param']})
    buf.seek(0)
    return buf


# pyiqa LPIPS variant -> (its weights file, trunk of the lpips package's calibrated linear layers)
LPIPS_FILES = {'lpips': ('LPIPS_v0.1_alex-df73285e.pth', 'alex'),
               'lpips+': ('LPIPS_v0.1_alex-df73285e.pth', 'alex'),
               'lpips-vgg': ('LPIPS_v0.1_vgg-a78928a0.pth', 'vgg'),
               'lpips-vgg+': ('LPIPS_v0.1_vgg-a78928a0.pth', 'vgg')}


def _lpips_lin_layers(name, purpose):
    """pyiqa's LPIPS file if present, else the v0.1 linear layers the lpips package ships (same calibration).

    pyiqa loads this file with ``strict=False`` into the whole LPIPS module; the trunk (AlexNet / VGG16) still
    comes from the weights folder through the torchvision hook.
    """
    filename, net = LPIPS_FILES[name]
    try:
        return find_weight(filename, purpose)
    except FileNotFoundError:
        import lpips
        return osp.join(osp.dirname(lpips.__file__), 'weights', 'v0.1', f'{net}.pth')


def build_pyiqa_metric(name, device='cpu', purpose=None, **kwargs):
    """``pyiqa.create_metric(name, device=device, **kwargs)`` with offline weights, in eval mode (not cached).

    ``kwargs`` go to pyiqa (``as_loss``, ``loss_reduction``, the metric's own options). ``purpose`` names the
    consumer in a missing-weights error (default ``'pyiqa metric <name>'``). Raises ``KeyError`` for an unknown
    name and ``MissingWeightsError`` for a missing weight file.
    """
    import pyiqa
    from pyiqa.default_model_configs import DEFAULT_CONFIGS
    if name not in DEFAULT_CONFIGS:
        raise KeyError(f'unknown pyiqa metric {name!r}')
    purpose = purpose or f'pyiqa metric {name}'
    opts = dict(kwargs)
    if name == 'niqe' and 'pretrained_model_path' not in opts:
        try:
            opts['pretrained_model_path'] = find_weight('niqe_modelparameters.mat', purpose)
        except FileNotFoundError:
            opts['pretrained_model_path'] = _niqe_params_file()  # scipy.io.loadmat reads file objects
    elif name in LPIPS_FILES and 'pretrained_model_path' not in opts:
        opts['pretrained_model_path'] = _lpips_lin_layers(name, purpose)
    # pyiqa prints "Loading pretrained model ..." on stdout, which would end up in tools' tables
    with offline_weights(purpose), contextlib.redirect_stdout(io.StringIO()):
        metric = pyiqa.create_metric(name, device=torch.device(device), **opts)
    return metric.eval()
