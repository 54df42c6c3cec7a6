"""Metrics from options: ``val.metrics.<name>: {type: ..., <options>}`` — the one code path for validation and
``tools/evaluate.py``.

``type`` is looked up in this order:

1. basicsr's ``METRIC_REGISTRY``: irtoolkit's paper-protocol ``psnr_rgb``, ``psnr_y``, ``ssim_rgb``, ``ssim_y``
   (BasicSR's arithmetic, batched; option ``crop_border``), basicsr's ``calculate_psnr`` / ``calculate_ssim`` /
   ``calculate_niqe`` and anything a plugin registers;
2. any pyiqa metric name (``psnr``, ``ssim``, ``lpips``, ``niqe``, ``brisque``, ``musiq``, ...; the other keys are
   pyiqa options, e.g. ``crop_border``, ``test_y_channel``); ``pyiqa:<name>`` forces pyiqa.

An entry with no ``type`` (``niqe: ~`` or ``niqe: {}``) uses its key as the type. Weight files come from the
weights folder (:mod:`irtoolkit.utils.weights`); a missing one fails when the MetricSet is built.

Registered functions follow basicsr's convention — ``fn(img, img2, **opt)`` on uint8 HWC BGR arrays, one image
at a time — unless marked ``tensor_input = True`` (float RGB tensors in [0, 1], (1, C, H, W)) and, in addition,
``batched = True`` ((B, C, H, W) in, (B,) out). Metrics always see the un-padded output the caller passes,
rounded to 8-bit levels (``quantize``), i.e. exactly what the saved PNG gives to ``tools/evaluate.py``.
"""
import difflib
import inspect
import math
from copy import deepcopy

import torch
from basicsr.utils import tensor2img

from irtoolkit.utils.registry import METRIC_REGISTRY, check_kwargs
from irtoolkit.utils.errors import OptionError

PYIQA_PREFIX = 'pyiqa:'


class Metric:
    """One configured metric: ``__call__(output, gt=None) -> (B,) float64 tensor`` on (B, C, H, W) RGB in [0, 1]."""

    def __init__(self, name, fn, opt, full_reference, lower_better, batched, tensor_input, source):
        self.name, self.fn, self.opt = name, fn, opt
        self.full_reference, self.lower_better = full_reference, lower_better
        self.batched, self.tensor_input, self.source = batched, tensor_input, source

    def __call__(self, output, gt=None):
        if self.full_reference and gt is None:
            raise ValueError(f'metric {self.name} is full-reference: it needs a ground-truth image')
        if self.batched:
            args = (output, gt) if self.full_reference else (output,)
            return torch.as_tensor(self.fn(*args, **self.opt), dtype=torch.float64).reshape(-1).cpu()
        values = []
        for i in range(output.shape[0]):
            if self.tensor_input:
                img, img2 = output[i:i + 1].clamp(0, 1), None if gt is None else gt[i:i + 1].clamp(0, 1)
            else:  # basicsr's convention: uint8 HWC BGR, rounded as when saving a PNG
                img = tensor2img(output[i].detach().float().cpu())
                img2 = None if gt is None else tensor2img(gt[i].detach().float().cpu())
            args = dict(img=img, img2=img2) if self.full_reference else dict(img=img)
            values.append(float(self.fn(**args, **self.opt)))
        return torch.tensor(values, dtype=torch.float64)


def _registered_metric(name, fn, opt, key):
    params = inspect.signature(fn).parameters
    full_reference = getattr(fn, 'metric_mode', 'FR' if 'img2' in params else 'NR') == 'FR'
    check_kwargs(fn, dict(opt, img=None, **({'img2': None} if full_reference else {})), key, fn.__name__)
    missing = [p for p, v in params.items() if v.default is v.empty and p not in ('img', 'img2', *opt)
               and v.kind in (v.POSITIONAL_OR_KEYWORD, v.KEYWORD_ONLY)]
    if missing:  # check_kwargs skips functions with **kwargs, as basicsr's all have
        raise OptionError(f'{key}: {fn.__name__} needs {", ".join(missing)}')
    lower = getattr(fn, 'lower_better', None)
    if lower is None:  # basicsr's functions carry no flag; its no-reference ones are "lower is better"
        lower = any(s in fn.__name__ for s in ('niqe', 'brisque', 'lpips', 'fid'))
    return Metric(name, fn, opt, full_reference, bool(lower), getattr(fn, 'batched', False),
                  getattr(fn, 'tensor_input', False), 'irtoolkit/basicsr')


def _pyiqa_metric(name, metric_name, opt, key, device):
    from irtoolkit.metrics.pyiqa_metric import PyiqaMetric
    try:
        m = PyiqaMetric(metric_name, device, **opt)
    except TypeError as err:  # unknown option for the pyiqa arch
        raise OptionError(f'{key}: bad option for pyiqa metric {metric_name}: {err}') from err
    return Metric(name, m, {}, m.metric_mode == 'FR', m.lower_better, True, True, 'pyiqa')


def build_metric(name, opt, where='val.metrics', device='cpu'):
    """Resolve one ``<name>: {type: ..., ...}`` entry into a :class:`Metric` (see the module docstring)."""
    key = f'{where}.{name}'
    if opt is None:
        opt = {}
    if not isinstance(opt, dict):
        raise OptionError(f'{key}: expected a mapping (e.g. {{type: psnr_y, crop_border: 4}}), got {opt!r}')
    opt = deepcopy(opt)
    mtype = opt.pop('type', name)
    opt.pop('better', None)  # basicsr options carry it; direction comes from the metric itself
    if not isinstance(mtype, str):
        raise OptionError(f'{key}.type: expected a metric name, got {type(mtype).__name__}')
    if not mtype.startswith(PYIQA_PREFIX):
        fn = METRIC_REGISTRY._obj_map.get(mtype)
        if fn is not None:
            return _registered_metric(name, fn, opt, key)
    from irtoolkit.metrics.pyiqa_metric import pyiqa_names
    pyiqa_name = mtype[len(PYIQA_PREFIX):] if mtype.startswith(PYIQA_PREFIX) else mtype
    names = pyiqa_names()
    if pyiqa_name in names:
        return _pyiqa_metric(name, pyiqa_name, opt, key, device)
    known = sorted(n for n, _ in METRIC_REGISTRY) + list(names)
    close = difflib.get_close_matches(pyiqa_name, known, n=5, cutoff=0.5)
    raise OptionError(f'{key}.type: unknown metric {mtype!r}; ' + (f'closest: {", ".join(close)}' if close else
                      'use a registered metric (psnr_y, ssim_y, calculate_psnr, ...) or a pyiqa name'))


def _to_8bit(x):
    return (x.detach().float().clamp(0, 1) * 255.0).round() / 255.0


class MetricSet:
    """Per-image metrics accumulated over a set of images; ``results()`` gives the means.

    ``update(output, gt, name)`` scores one image, ``update_batch(output, gt, names)`` a batch; ``output``/``gt``
    are float RGB tensors (B, C, H, W) in [0, 1]. ``per_image`` holds ``(name, {metric: value})``.
    """

    def __init__(self, metrics_opt, where='val.metrics', device='cpu', quantize=True):
        self.quantize = quantize
        if metrics_opt is not None and not isinstance(metrics_opt, dict):
            raise OptionError(f'{where}: expected a mapping of metric name -> options, '
                              f'got {type(metrics_opt).__name__}')
        self.metrics = {name: build_metric(name, opt, where, device) for name, opt in (metrics_opt or {}).items()}
        self.per_image = []  # [(image name, {metric: value})]

    @classmethod
    def from_metrics(cls, metrics, quantize=True):
        """A new, empty accumulator over already built :class:`Metric` objects (``{name: Metric}``)."""
        obj = cls(None, quantize=quantize)
        obj.metrics = dict(metrics)
        return obj

    def __len__(self):
        return len(self.metrics)

    @property
    def names(self):
        return list(self.metrics)

    def lower_is_better(self, name):
        return self.metrics[name].lower_better

    def is_full_reference(self, name):
        return self.metrics[name].full_reference

    def score(self, output, gt=None, names=None):
        """Values of every metric for a batch, without recording them: ``{metric: (B,) tensor}``.

        With ``quantize`` (the default) images are first rounded to 8-bit levels, so a network output scores what
        its saved PNG scores in tools/evaluate.py (papers evaluate saved images; pyiqa's metrics round only after
        their own colour conversion, which would differ).
        """
        if self.quantize:
            output = _to_8bit(output)
            gt = None if gt is None else _to_8bit(gt)
        out = {}
        for metric_name, metric in self.metrics.items():
            try:
                out[metric_name] = metric(output, gt)
            except (ValueError, RuntimeError, AssertionError) as err:
                where = f' on {", ".join(names)}' if names else ''
                raise type(err)(f'metric {metric_name}{where}: {err}') from err
        return out

    def update_batch(self, output, gt=None, names=None):
        names = list(names) if names is not None else [str(len(self.per_image) + i) for i in range(len(output))]
        if len(names) != output.shape[0]:
            raise ValueError(f'{len(names)} names for a batch of {output.shape[0]} images')
        return self.record(names, self.score(output, gt, names))

    def record(self, names, scores):
        """Append per-image rows from ``score()``'s ``{metric: (B,) tensor}`` (computed here or elsewhere)."""
        rows = [{m: float(v[i]) for m, v in scores.items()} for i in range(len(names))]
        self.per_image.extend(zip(names, rows))
        return rows

    def update(self, output, gt=None, name=''):
        """Score one image (B = 1); returns its values."""
        return self.update_batch(output[:1], None if gt is None else gt[:1], [name])[0]

    def results(self):
        """Mean of each metric over the images seen (``inf`` if any PSNR was infinite, as BasicSR)."""
        if not self.per_image:
            return {}
        return {m: math.fsum(v[m] for _, v in self.per_image) / len(self.per_image) for m in self.metrics}
