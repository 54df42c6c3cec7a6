"""What a recipe names must exist: registered types (networks, datasets, losses) with arguments their constructors
accept, and the files and folders it points to. Each function returns problems as lines (``file: key: what``),
so that :func:`irtoolkit.config.options.validate_options` reports every problem of a file in one run."""
import inspect
import os.path as osp

from irtoolkit.utils.errors import OptionError
from irtoolkit.utils.registry import (ARCH_REGISTRY, DATASET_REGISTRY, LOSS_REGISTRY, check_kwargs,
                                      get_from_registry)

__all__ = ['registry_problems', 'path_problems']


def _registered(registry, spec, key, check_args=True):
    """None, or the problem with ``spec`` (``{type: ..., args}``) at option ``key``."""
    if not isinstance(spec, dict) or 'type' not in spec:
        return f'{key}: missing "type"'
    try:
        cls = get_from_registry(registry, spec['type'], key)
        if check_args:  # unknown arguments only: models may add the ones they compute (sizes, dims)
            args = {k: v for k, v in spec.items() if k != 'type'}
            check_kwargs(cls.__init__ if inspect.isclass(cls) else cls, args, key, cls.__name__, missing=False)
    except OptionError as err:
        return str(err)
    return None


def registry_problems(opt, schema):
    """Unknown ``type`` names and constructor arguments of ``network_*``, ``datasets.*`` and ``train.*_opt``
    (a ``*_opt`` key the model's schema names itself, e.g. an upstream alias, is the model's business)."""
    found = []
    for key, value in opt.items():
        if key.startswith('network_') and isinstance(value, dict):
            found.append(_registered(ARCH_REGISTRY, value, key))
    for key, dataset in (opt.get('datasets') or {}).items():
        if isinstance(dataset, dict) and 'type' in dataset:
            found.append(_registered(DATASET_REGISTRY, dataset, f'datasets.{key}', check_args=False))
    train_schema = schema.get('train')
    train_schema = getattr(train_schema, 'spec', train_schema)
    own = set(train_schema) if isinstance(train_schema, dict) else set()
    for key, value in (opt.get('train') or {}).items():
        if key.endswith('_opt') and key not in own and isinstance(value, dict):
            found.append(_registered(LOSS_REGISTRY, value, f'train.{key}'))
    return [p for p in found if p]


def _missing(paths, key):
    listed = isinstance(paths, list)
    for i, p in enumerate(paths if listed else [paths]):
        if isinstance(p, str) and not osp.exists(osp.expanduser(p)):
            yield f'{key}{f"[{i}]" if listed else ""}: not found: {p}'


def path_problems(opt):
    """Data roots (``datasets.*.dataroot*``, ``meta_info_file``) and checkpoints (``path.pretrain_*``,
    ``path.resume_state``) that do not exist."""
    found = []
    for phase_key, dataset in (opt.get('datasets') or {}).items():
        for k in [k for k in (dataset if isinstance(dataset, dict) else {}) if k.startswith('dataroot')
                  or k == 'meta_info_file']:
            found.extend(_missing(dataset[k], f'datasets.{phase_key}.{k}'))
    for k, v in ((opt.get('path') or {}) if isinstance(opt.get('path'), dict) else {}).items():
        if k.startswith('pretrain_') or k == 'resume_state':
            found.extend(_missing(v, f'path.{k}'))
    return found
