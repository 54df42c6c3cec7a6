"""Options: read a YAML recipe safely, check every key and type, fill BasicSR's derived fields.

A wrong key or type fails here, before any data or network is built, with ``file: key: what was expected``.
Methods add their own keys by giving their model class an ``OPTION_SCHEMA`` (merged into the base schema),
so the runner knows nothing about any method.
"""
import os
import os.path as osp
import re
import shutil
import time
from copy import deepcopy

import yaml

from irtoolkit.utils.registry import OptionError

ANY = object()  # any value accepted (checked later by the builder that consumes it)


class _SafeLoader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-4`` / ``2e5`` as numbers (plain YAML 1.1 reads them as strings)."""


_SafeLoader.add_implicit_resolver(
    'tag:yaml.org,2002:float',
    re.compile(r'''^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                    |\.[0-9_]+(?:[eE][-+][0-9]+)?
                    |[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$''', re.X), list('-+0123456789.'))


def yaml_load(path_or_text):
    """Parse YAML with a safe loader; a file path or a YAML string."""
    if osp.isfile(str(path_or_text)):
        with open(path_or_text, encoding='utf-8') as f:
            return yaml.load(f, Loader=_SafeLoader)
    return yaml.load(path_or_text, Loader=_SafeLoader)


def _int_or_auto(v):
    return (isinstance(v, int) and not isinstance(v, bool)) or v == 'auto'


# A schema maps a key (or a regex in ``re:...``) to a type, a tuple of types, a nested schema (dict), a
# predicate (callable) or ANY. ``None`` values are always accepted (YAML ``~`` means "unset").
NUM = (int, float)
DATASET_SCHEMA = {
    'name': str, 'type': str, 'phase': str, 'scale': int, 'io_backend': dict, 'batch_size_per_gpu': int,
    'num_worker_per_gpu': int, 'use_shuffle': bool, 'dataset_enlarge_ratio': int, 'prefetch_mode': str,
    'persistent_workers': bool, 'pin_memory': bool, 're:.*': ANY,  # the rest is the dataset class's business
}
BASE_SCHEMA = {
    'name': str, 'model_type': str, 'scale': int, 'num_gpu': _int_or_auto, 'manual_seed': int, 'device': str,
    'deterministic': bool, 'cudnn_benchmark': bool, 'plugins': (list, str), 'find_unused_parameters': bool,
    'is_train': bool, 'dist': bool, 'rank': int, 'world_size': int, 'auto_resume': bool, 'root_path': str,
    'opt_path': str, 'dist_params': {'backend': str, 'port': int},
    'datasets': {'re:^(train|val|test)(_.*)?$': DATASET_SCHEMA},
    're:^network_\\w+$': dict,
    'path': {'re:^pretrain_network_\\w+$': str, 're:^strict_load_\\w+$': bool, 're:^param_key_\\w+$': str,
             'resume_state': str, 'experiments_root': str, 'results_root': str, 'models': str,
             'training_states': str, 'log': str, 'visualization': str, 'root': str},
    'train': {'total_iter': int, 'warmup_iter': int, 'ema_decay': NUM, 'scheduler': dict,
              're:^optim_\\w+$': dict, 're:^\\w+_opt$': dict, 'grad_clip': (NUM, dict),
              'amp': {'enabled': bool, 'dtype': lambda v: v in ('bf16', 'fp16', 'bfloat16', 'float16')}},
    'val': {'val_freq': int, 'save_img': bool, 'metrics': dict, 'pbar': bool, 'suffix': str,
            'max_save_images': int, 'val_on_rank0_only': bool},
    'logger': {'print_freq': int, 'save_checkpoint_freq': int, 'use_tb_logger': bool, 'progress_bar': bool,
               'keep_last_checkpoints': int, 'wandb': dict},
}


def merge_schema(base, extra):
    """Recursively merge ``extra`` (a model's OPTION_SCHEMA) into a copy of ``base``."""
    out = dict(base)
    for k, v in (extra or {}).items():
        out[k] = merge_schema(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _expected(spec):
    if isinstance(spec, tuple):
        return ' or '.join(_expected(s) for s in spec)
    if isinstance(spec, dict):
        return 'a mapping'
    if isinstance(spec, type):
        return {NUM: 'a number'}.get(spec, spec.__name__)
    return 'a valid value (see the docs)'


def _matches(value, spec):
    if spec is ANY or value is None:
        return True
    if isinstance(spec, tuple):
        return any(_matches(value, s) for s in spec)
    if isinstance(spec, dict):
        return isinstance(value, dict)
    if spec is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if spec is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(spec, type):
        return isinstance(value, spec)
    return bool(spec(value))


def _lookup(schema, key):
    if key in schema:
        return schema[key]
    for pattern, spec in schema.items():
        if pattern.startswith('re:') and re.match(pattern[3:], key):
            return spec
    return None


def check_options(opt, schema, where='', prefix=''):
    """Raise OptionError on the first unknown key or wrongly-typed value."""
    import difflib
    for key, value in opt.items():
        full = f'{prefix}{key}'
        spec = _lookup(schema, str(key))
        if spec is None:
            known = [k for k in schema if not k.startswith('re:')]
            close = difflib.get_close_matches(str(key), known, n=3, cutoff=0.6)
            hint = f'did you mean {", ".join(close)}?' if close else f'known keys: {", ".join(sorted(known))}'
            raise OptionError(f'{where}{full}: unknown option; {hint}')
        if not _matches(value, spec):
            raise OptionError(f'{where}{full}: expected {_expected(spec)}, got {type(value).__name__} {value!r}')
        if isinstance(spec, dict) and isinstance(value, dict):
            check_options(value, spec, where, full + '.')


def parse_options(opt_path, is_train=True, overrides=None, root_path=None):
    """Read and check ``opt_path``; fill phases, scale, paths and ``num_gpu`` like BasicSR's parse.

    ``overrides`` are ``key.sub=value`` strings (values parsed as YAML), applied before the check.
    """
    if not osp.isfile(opt_path):
        raise OptionError(f'{opt_path}: options file not found')
    try:
        opt = yaml_load(opt_path)
    except yaml.YAMLError as err:
        mark = getattr(err, 'problem_mark', None)
        where = f'line {mark.line + 1}, column {mark.column + 1}: ' if mark else ''
        problem = getattr(err, 'problem', None) or str(err).splitlines()[0]
        raise OptionError(f'{opt_path}: not valid YAML: {where}{problem}') from None
    if not isinstance(opt, dict):
        raise OptionError(f'{opt_path}: expected a mapping at the top level, got {type(opt).__name__}')
    for item in overrides or []:
        if '=' not in item:
            raise OptionError(f'--force_yml {item!r}: expected key.sub=value')
        keys, value = item.split('=', 1)
        node = opt
        for k in keys.split('.')[:-1]:
            node = node.setdefault(k, {})
        node[keys.split('.')[-1]] = yaml.load(value, Loader=_SafeLoader)  # a value, never a file to read
    where = f'{opt_path}: '
    for required in ('name', 'model_type'):
        if required not in opt:
            raise OptionError(f'{where}{required}: missing (required)')
    # plugins first: a plugin may register the model whose schema we need
    from irtoolkit.utils.registry import MODEL_REGISTRY, get_from_registry, load_plugins
    if not isinstance(opt.get('plugins', []), (list, str, type(None))):
        raise OptionError(f'{where}plugins: expected a list of modules or .py files')
    load_plugins(opt.get('plugins'), base_dir=osp.dirname(osp.abspath(opt_path)))
    try:
        model_cls = get_from_registry(MODEL_REGISTRY, opt['model_type'], 'model_type')
    except OptionError as err:
        raise OptionError(where + str(err).replace('model_type.type', 'model_type')) from None
    schema = merge_schema(BASE_SCHEMA, getattr(model_cls, 'OPTION_SCHEMA', None))
    check_options(opt, schema, where)

    opt = deepcopy(opt)
    opt['is_train'] = is_train
    opt['opt_path'] = osp.abspath(opt_path)
    opt.setdefault('scale', 1)
    opt.setdefault('manual_seed', 0)
    opt.setdefault('device', 'auto')
    if opt['device'] not in ('auto', 'cpu', 'cuda'):
        raise OptionError(f'{where}device: expected auto, cpu or cuda, got {opt["device"]!r}')
    import torch
    if opt.get('num_gpu', 'auto') == 'auto':
        opt['num_gpu'] = torch.cuda.device_count() if opt['device'] != 'cpu' else 0
    if opt['device'] == 'cpu':
        opt['num_gpu'] = 0
    if opt['device'] == 'cuda' and not torch.cuda.is_available():
        raise OptionError(f'{where}device: cuda requested but torch.cuda.is_available() is False')

    for phase_key, dataset in (opt.get('datasets') or {}).items():
        if not isinstance(dataset, dict):
            raise OptionError(f'{where}datasets.{phase_key}: expected a mapping')
        dataset['phase'] = phase_key.split('_')[0]
        dataset.setdefault('scale', opt['scale'])
        if 'type' not in dataset:
            raise OptionError(f'{where}datasets.{phase_key}.type: missing')
        for k in [k for k in dataset if k.startswith('dataroot') or k == 'meta_info_file']:
            paths = dataset[k] if isinstance(dataset[k], list) else [dataset[k]]
            paths = [osp.expanduser(p) if isinstance(p, str) else p for p in paths]
            dataset[k] = paths if isinstance(dataset[k], list) else paths[0]
            for i, p in enumerate(paths):  # fail now, not after the model is built
                if isinstance(p, str) and not osp.exists(p):
                    idx = f'[{i}]' if isinstance(dataset[k], list) else ''
                    raise OptionError(f'{where}datasets.{phase_key}.{k}{idx}: not found: {p}')
    if is_train and 'train' not in (opt.get('datasets') or {}):
        raise OptionError(f'{where}datasets.train: missing (a training recipe needs a train dataset)')
    if is_train and not isinstance((opt.get('train') or {}).get('total_iter'), int):
        raise OptionError(f'{where}train.total_iter: missing (an int)')

    root = osp.abspath(root_path or os.getcwd())
    opt['root_path'] = root
    path = opt.setdefault('path', {}) or {}
    opt['path'] = path
    for k, v in list(path.items()):
        if isinstance(v, str) and ('resume_state' in k or 'pretrain_network' in k or k.endswith('_root')):
            path[k] = osp.expanduser(v)
    if is_train:
        exp = path.get('experiments_root') or osp.join(root, 'experiments', opt['name'])
        path.update(experiments_root=exp, models=osp.join(exp, 'models'), log=exp,
                    training_states=osp.join(exp, 'training_states'), visualization=osp.join(exp, 'visualization'))
        opt.setdefault('logger', {})
        opt['logger'] = opt['logger'] or {}
        opt['logger'].setdefault('print_freq', 100)
        opt['logger'].setdefault('save_checkpoint_freq', 5000)
        opt['logger'].setdefault('use_tb_logger', True)
        if 'debug' in opt['name']:
            opt.setdefault('val', {})
            opt['val']['val_freq'] = 8
            opt['logger'].update(print_freq=1, save_checkpoint_freq=8)
    else:
        res = path.get('results_root') or osp.join(root, 'results', opt['name'])
        path.update(results_root=res, log=res, visualization=osp.join(res, 'visualization'))
    return opt


def dict2str(opt, indent=1):
    """Options as indented text, for the log."""
    lines = []
    for k, v in opt.items():
        if isinstance(v, dict):
            lines.append(' ' * (indent * 2) + f'{k}:')
            lines.append(dict2str(v, indent + 1))
        else:
            lines.append(' ' * (indent * 2) + f'{k}: {v}')
    return '\n'.join(lines)


def copy_options(opt, dest_dir):
    """Copy the recipe and write the fully-resolved options into the experiment folder (timestamped)."""
    os.makedirs(dest_dir, exist_ok=True)
    stamp = time.strftime("%Y%m%d_%H%M%S")
    if opt.get('opt_path') and osp.isfile(opt['opt_path']):  # the recipe as written, next to the resolved one
        shutil.copyfile(opt['opt_path'], osp.join(dest_dir, f'{stamp}_{osp.basename(opt["opt_path"])}'))
    out = osp.join(dest_dir, f'options_{stamp}_resolved.yml')
    with open(out, 'w', encoding='utf-8') as f:
        f.write(f'# resolved from {opt.get("opt_path")}\n')
        yaml.safe_dump(_plain(opt), f, sort_keys=False)
    return out


def _plain(obj):
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj
