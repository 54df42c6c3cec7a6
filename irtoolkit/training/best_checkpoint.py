"""``val.save_best``: the best validation so far of one metric on one validation set, kept as a checkpoint.

When a validation improves the tracked metric, the model saves every network as ``models/<net>_best.<pth|safetensors>``
(:meth:`~irtoolkit.models.base_model.BaseModel.save` with ``'best'``) and this class writes
``experiments/<name>/best.json`` after them, atomically::

    {"metric": "psnr", "dataset": "tiny_val", "value": 27.31, "iter": 40, "higher_is_better": true}

On resume the best so far is read back from ``best.json`` (:meth:`BestCheckpoint.restore`), not from the training
state: the file describes the weights that are on disk, so a resumed run overwrites them only with a strictly
better validation, even when it resumes from a state older than that best (the best never regresses). A ``best.json``
of another metric or set (the recipe changed) is ignored with a warning: the next validation starts a new best.
Only rank 0 writes.
"""
import json
import math
import os.path as osp

from irtoolkit.utils.checkpoint import atomic_write
from irtoolkit.utils.errors import OptionError

__all__ = ['BestCheckpoint', 'BEST_JSON']

BEST_JSON = 'best.json'


class BestCheckpoint:
    """The tracked ``metric`` on validation set ``dataset`` (its name), compared in the direction
    ``higher_is_better`` (None: the metric's own, from the metric set at the first validation); the best ``value``
    and its ``iter`` so far; ``path``: the ``best.json`` to write."""

    def __init__(self, metric, dataset, higher_is_better, path):
        self.metric, self.dataset, self.higher_is_better, self.path = metric, dataset, higher_is_better, path
        self.value, self.iter = None, None

    @classmethod
    def from_options(cls, opt, run):
        """The tracker of ``val.save_best`` in a resolved recipe (None when unset). The metric is required; the set
        is named by its ``name`` or its ``datasets`` key (default: the first ``val*`` set); validation must run
        (``val.val_freq``). A wrong value is a one-line option error."""
        cfg = opt['val'].get('save_best')
        if not cfg:
            return None
        if not cfg.get('metric'):
            raise OptionError(f'{run.where("val.save_best.metric")}missing (the validation metric to track, e.g. psnr)')
        metrics = opt['val'].get('metrics')
        if isinstance(metrics, dict) and metrics and cfg['metric'] not in metrics:
            raise OptionError(f'{run.where("val.save_best.metric")}{cfg["metric"]!r} is not in val.metrics '
                              f'({", ".join(metrics)})')
        sets = [(k, (d or {}).get('name', 'val')) for k, d in opt['datasets'].items() if k.startswith('val')]
        if not sets:
            raise OptionError(f'{run.where("val.save_best")}no validation set to track (datasets.val*)')
        if not opt['val'].get('val_freq'):
            raise OptionError(f'{run.where("val.save_best")}needs val.val_freq (validation never runs without it)')
        dataset = cfg.get('dataset') or sets[0][1]
        names = {k: name for k, name in sets}
        if dataset in names:  # the datasets key (val, val_2) names its set
            dataset = names[dataset]
        elif dataset not in names.values():
            raise OptionError(f'{run.where("val.save_best.dataset")}{dataset!r} is no validation set (sets: '
                              f'{", ".join(f"{name} ({k})" for k, name in sets)})')
        return cls(cfg['metric'], dataset, cfg.get('higher_is_better'),
                   osp.join(run.paths['experiments_root'], BEST_JSON))

    def offer(self, dataset, results, lower_is_better, current_iter):
        """Whether validation ``results`` (metric -> value) of set ``dataset`` at ``current_iter`` beat the best so
        far (strictly; a non-finite value never does); if so they become the best. ``lower_is_better(metric)``
        gives the direction when ``higher_is_better`` was not set."""
        if dataset != self.dataset:
            return False
        if self.metric not in results:
            raise OptionError(f'val.save_best.metric: {self.metric!r} is not among the validation results of '
                              f'{dataset} ({", ".join(results) or "none"})')
        if self.higher_is_better is None:
            self.higher_is_better = not lower_is_better(self.metric)
        value = float(results[self.metric])
        if not math.isfinite(value):
            return False
        if self.value is not None and not (value > self.value if self.higher_is_better else value < self.value):
            return False
        self.value, self.iter = value, current_iter
        return True

    def as_dict(self):
        return {'metric': self.metric, 'dataset': self.dataset, 'value': self.value, 'iter': self.iter,
                'higher_is_better': self.higher_is_better}

    def write(self):
        """``best.json``, atomically (temporary file, fsync, rename)."""
        text = json.dumps(self.as_dict(), indent=1) + '\n'
        atomic_write(self.path, lambda f: f.write(text.encode('utf-8')))

    def restore(self, logger=None):
        """The best so far from ``best.json`` when it tracks the same metric, set and direction; else (none, a
        file that does not parse, another metric) it is ignored, with a warning through ``logger`` for the last
        two. Returns whether a best was restored."""
        if not osp.isfile(self.path):
            return False
        try:
            with open(self.path, encoding='utf-8') as f:
                saved = json.load(f)
            value, it, higher = float(saved['value']), saved['iter'], saved['higher_is_better']
            same = (saved['metric'], saved['dataset']) == (self.metric, self.dataset) and \
                self.higher_is_better in (None, higher)
        except (OSError, ValueError, KeyError, TypeError) as err:
            if logger is not None:
                logger.warning(f'val.save_best: {self.path} is not readable ({err}); the next validation starts a '
                               'new best')
            return False
        if not same:
            if logger is not None:
                logger.warning(f'val.save_best: {self.path} tracks {saved["metric"]} on {saved["dataset"]} '
                               f'(higher_is_better {higher}), the recipe {self.metric} on {self.dataset}: the next '
                               'validation starts a new best')
            return False
        self.value, self.iter, self.higher_is_better = value, it, bool(higher)
        if logger is not None:
            logger.info(f'val.save_best: best {self.metric} on {self.dataset} so far {value:.4f} @ iter {it} '
                        f'({self.path})')
        return True
