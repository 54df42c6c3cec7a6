"""Re-validate every saved checkpoint of a run: ``irtk-validate-checkpoints``
(:mod:`irtoolkit.cli.validate_checkpoints`).

The model of the run's recipe is built for testing, as ``irtk-test`` builds it (a
:class:`~irtoolkit.config.run.RunContext` with ``is_train=False``, :func:`~irtoolkit.engine.runner.build_run_model`).
Each ``models/net_g_<iter>.pth`` / ``.safetensors`` is loaded into its ``net_g`` in iteration order, then
``net_g_latest`` and ``net_g_best``, and the recipe's validation sets run through the model's own ``validation``,
the code the run validated with. ``params_ema`` is loaded when the file has it (``param_key='auto'``), which is the
network the run validated (its EMA copy), so a row equals the run's validation at that iteration: the checkpoint of
an iteration is written before that iteration's validation (tested).
"""
import os
import os.path as osp
import re

from irtoolkit.engine.runner import build_run_model, validation_loaders
from irtoolkit.utils.checkpoint import NETWORK_FORMATS, find_network_file
from irtoolkit.utils.errors import OptionError, UserError

__all__ = ['Checkpoint', 'run_checkpoints', 'validate_checkpoints']

SPECIAL_TAGS = ('latest', 'best')


class Checkpoint:
    """One network file of a run: ``tag`` (``net_g_40``, ``net_g_latest``, ``net_g_best``), ``iter`` (None when
    unknown: ``latest``; ``best`` takes it from ``best.json``) and ``path``."""

    def __init__(self, tag, iter, path):
        self.tag, self.iter, self.path = tag, iter, path

    @property
    def periodic(self):
        return not self.tag.endswith(tuple(f'_{t}' for t in SPECIAL_TAGS))

    def __repr__(self):
        return f'Checkpoint({self.tag!r}, {self.iter!r}, {self.path!r})'


def run_checkpoints(models_dir, net='net_g', best_iter=None):
    """The checkpoints of network ``net`` in ``models_dir``: ``<net>_<iter>`` in iteration order, then
    ``<net>_latest`` and ``<net>_best`` (iteration ``best_iter``) when present; a tag saved in both formats counts
    once (the file written last)."""
    pattern = re.compile(rf'{re.escape(net)}_(\d+|{"|".join(SPECIAL_TAGS)})\.({"|".join(NETWORK_FORMATS)})')
    tags = {m.group(1) for m in map(pattern.fullmatch, os.listdir(models_dir)) if m}
    ordered = sorted((t for t in tags if t.isdigit()), key=int) + [t for t in SPECIAL_TAGS if t in tags]
    iters = {'latest': None, 'best': best_iter}
    return [Checkpoint(f'{net}_{t}', int(t) if t.isdigit() else iters[t], find_network_file(models_dir, f'{net}_{t}'))
            for t in ordered]


def validate_checkpoints(opt, run, checkpoints, param_key='auto', prefix=None, logger=None):
    """One row per checkpoint: ``{'checkpoint', 'iter', 'param_key', 'file', '<set>/<metric>': value, ...}``, the
    model of ``opt`` (built for ``run``, a testing run context) validated with each checkpoint's ``net_g`` on the
    sets whose ``datasets`` key starts with ``prefix`` (default: ``val``, or ``test`` for a recipe without
    ``val*`` sets)."""
    if prefix is None:
        prefix = 'val' if any(k.startswith('val') for k in opt['datasets']) else 'test'
    model = build_run_model(opt, run)
    net = (getattr(model, 'networks', None) or {}).get('net_g')
    if net is None:
        raise OptionError(f'{run.where("model_type")}{opt["model_type"]} has no irtoolkit net_g to load checkpoints '
                          'into')
    loaders = validation_loaders(model, opt, run, prefix)
    if not loaders:
        raise OptionError(f'{run.where("datasets")}no {prefix}* dataset to validate on')
    rows = []
    for ckpt in checkpoints:
        try:
            used = model.load_network(net, ckpt.path, True, param_key)
        except (KeyError, ValueError, RuntimeError) as err:
            raise UserError(f'{ckpt.path}: {str(err).splitlines()[0]}') from None
        if logger is not None:
            logger.info(f'{ckpt.tag}: {ckpt.path} [{used or "state dict"}]')
        row = {'checkpoint': ckpt.tag, 'iter': ckpt.iter, 'param_key': used or 'state dict', 'file': ckpt.path}
        for loader in loaders:
            name = loader.dataset.opt.get('name', prefix)
            results = model.validation(loader, ckpt.iter if ckpt.iter is not None else ckpt.tag, None, False,
                                       logger=logger)
            row.update((f'{name}/{m}', float(v)) for m, v in (results or {}).items())
        rows.append(row)
    return rows


def metric_columns(rows):
    """The ``<set>/<metric>`` columns of ``rows``, in first-seen order."""
    return list(dict.fromkeys(k for r in rows for k in r if '/' in k))


def experiment_models(experiment):
    """``<experiment>/models`` with at least one ``net_g`` file; a missing folder or file is a one-line error."""
    models = osp.join(experiment, 'models')
    if not osp.isdir(experiment):
        raise UserError(f'{experiment}: no such experiment folder (--experiment experiments/<name>)')
    if not osp.isdir(models) or not run_checkpoints(models):
        raise UserError(f'{models}: no net_g_<iter>.pth or .safetensors checkpoints')
    return models
