"""Validation metrics from options: ``val.metrics.<name>: {type: ..., ...}``.

``type`` is a name in basicsr's METRIC_REGISTRY (``calculate_psnr``, ``calculate_ssim``, ``calculate_niqe`` and
anything irtoolkit or a plugin registers). Registered metric functions take ``img`` (restored) and, for
full-reference metrics, ``img2`` (ground truth) as uint8 HWC BGR arrays — basicsr's convention — or, when the
function is marked ``tensor_input = True``, as float RGB tensors in [0, 1] of shape (1, C, H, W).
"""
from copy import deepcopy

from basicsr.utils import tensor2img

from irtoolkit.utils.registry import METRIC_REGISTRY, OptionError, get_from_registry


class MetricSet:
    """Per-image metrics accumulated over a validation set; ``results()`` gives the means."""

    def __init__(self, metrics_opt, where='val.metrics'):
        self.specs = {}
        for name, opt in (metrics_opt or {}).items():
            if not isinstance(opt, dict) or 'type' not in opt:
                raise OptionError(f'{where}.{name}: expected a mapping with a "type"')
            opt = deepcopy(opt)
            fn = get_from_registry(METRIC_REGISTRY, opt.pop('type'), f'{where}.{name}')
            opt.pop('better', None)
            self.specs[name] = (fn, opt)
        self.per_image = []  # [(image name, {metric: value})]

    def __len__(self):
        return len(self.specs)

    def lower_is_better(self, name):
        fn, _ = self.specs[name]
        return bool(getattr(fn, 'lower_better', False)) or 'niqe' in fn.__name__ or 'brisque' in fn.__name__

    def update(self, output, gt=None, name=''):
        """``output``/``gt``: float tensors (1, C, H, W) in [0, 1], RGB. Returns this image's values."""
        values = {}
        img = img2 = None
        for metric, (fn, opt) in self.specs.items():
            if getattr(fn, 'tensor_input', False):
                args = dict(img=output.clamp(0, 1), img2=None if gt is None else gt.clamp(0, 1))
            else:
                if img is None:
                    img = tensor2img(output.detach().cpu())
                    img2 = None if gt is None else tensor2img(gt.detach().cpu())
                args = dict(img=img, img2=img2)
            if args['img2'] is None:
                args.pop('img2')
            values[metric] = float(fn(**args, **opt))
        self.per_image.append((name, values))
        return values

    def results(self):
        if not self.per_image:
            return {}
        return {m: sum(v[m] for _, v in self.per_image) / len(self.per_image) for m in self.specs}
