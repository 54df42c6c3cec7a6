"""Options: a recipe read safely (with its ``_base_`` files), overridden, checked against its model's schema and
resolved, in four named steps (:func:`parse_options` runs them in order).

A wrong key or type fails in :func:`validate_options`, before any data or network is built, with
``file: key: what was expected``. :data:`BASE_SCHEMA` holds the runner's keys; a model's keys come from the
``OPTION_SCHEMA`` of its class and of every class above it (:func:`class_schema`), so the runner knows nothing about
any method. The resolved recipe holds what the YAML says plus defaults; what belongs to one run of it (rank, world
size, device, output folders, the file) is a :class:`~irtoolkit.config.run.RunContext`.
"""
import os
import os.path as osp
import shutil
import time
from copy import deepcopy

import yaml

from irtoolkit.config.checks import path_problems, registry_problems
from irtoolkit.config.recipe import SafeLoader, load_recipe, yaml_load
from irtoolkit.config.schema import ANY, NUM, Option, fill_defaults, merge_schema, option_problems
from irtoolkit.utils.errors import OptionError
from irtoolkit.utils.registry import MODEL_REGISTRY, get_from_registry, has_basicsr_interface, load_plugins

__all__ = ['BASE_SCHEMA', 'DATASET_SCHEMA', 'SECTIONS', 'yaml_load', 'load_options', 'apply_overrides',
           'validate_options', 'resolve_options', 'parse_options', 'class_schema', 'model_class', 'model_schema',
           'renamed_keys', 'renamed_problems',
           'dict2str', 'copy_options']


def _int_or_auto(v):
    """an int or auto"""
    return (isinstance(v, int) and not isinstance(v, bool)) or v == 'auto'


DATASET_SCHEMA = {
    'name': str, 'type': str, 'phase': str, 'scale': int, 'io_backend': dict, 'batch_size_per_gpu': int,
    'num_worker_per_gpu': int, 'use_shuffle': bool, 'dataset_enlarge_ratio': int, 'prefetch_mode': str,
    'persistent_workers': bool, 'pin_memory': bool,
    'bad_samples': Option(str, choices=('error', 'skip'), doc='an unreadable sample: stop with its name (error, the '
                          'default) or read another one (skip)'),
    'bad_samples_max_fraction': Option(NUM, doc='skip: stop when more than this share is bad (default 0.01)'),
    'global_batch_size': Option(int, doc='train: batch per optimiser step over all ranks; per-GPU batch and '
                                'train.accumulate are derived for the world size'),
    're:.*': ANY,  # the rest is the dataset class's business
}
BASE_SCHEMA = {
    'name': str, 'model_type': str, 'scale': int, 'num_gpu': _int_or_auto, 'manual_seed': int,
    'device': Option(str, choices=('auto', 'cpu', 'cuda'), doc='auto: CUDA when present, else the CPU'),
    'deterministic': bool, 'cudnn_benchmark': bool, 'plugins': (list, str), 'find_unused_parameters': bool,
    'dist_params': {'backend': str, 'port': int},
    'datasets': {'re:^(train|val|test)(_.*)?$': DATASET_SCHEMA},
    're:^network_\\w+$': dict,
    'path': {'re:^pretrain_network_\\w+$': str, 're:^strict_load_\\w+$': bool, 're:^param_key_\\w+$': str,
             'resume_state': Option(str, doc='a training state to resume from (else --auto_resume finds one)'),
             'experiments_root': Option(str, doc='training outputs; unset: experiments/<name>'),
             'results_root': Option(str, doc='test outputs; unset: results/<name>')},
    'train': {
        'total_iter': Option(int, doc='iterations to train (required for training)'),
        'warmup_iter': Option(int, -1, doc='linear learning-rate warm-up over the first N iterations (-1: none)'),
        'accumulate': Option(int, doc='micro-batches per optimiser step (gradient accumulation; DDP no_sync)'),
    },
    'val': {'val_freq': int, 'save_img': bool, 'metrics': dict, 'pbar': bool, 'suffix': str,
            'max_save_images': int, 'val_on_rank0_only': bool,
            'save_best': Option({
                'metric': Option(str, doc='the val.metrics name to track (required)'),
                'higher_is_better': Option(bool, doc="unset: the metric's own direction"),
                'dataset': Option(str, doc='the validation set (its name or datasets key); unset: the first')},
                doc='keep the best validation as models/<net>_best.* and best.json (survives resume)')},
    'logger': {'print_freq': Option(int, 100, doc='iterations between log lines'),
               'save_checkpoint_freq': Option(int, 5000, doc='iterations between checkpoints'),
               'checkpoint_format': Option(str, 'pth', choices=('pth', 'safetensors'),
                                           doc='network files: models/<net>_<iter>.pth (torch) or .safetensors; '
                                           'training states stay torch files'),
               'use_tb_logger': Option(bool, True, doc='TensorBoard events in tb_logger/<name>'),
               'progress_bar': bool,
               'keep_last_checkpoints': int, 'wandb': Option({
                   'project': Option(str, doc='W&B project (turns tracking on)'),
                   'entity': Option(str, doc='W&B team or user; unset: your default'),
                   'name': Option(str, doc="the run's display name; unset: the recipe's name"),
                   'resume_id': Option(str, doc='continue this W&B run; unset: the id kept in the experiment folder'),
                   'mode': Option(str, choices=('online', 'offline', 'disabled'), doc='unset: WANDB_MODE, else online'),
                   'tags': Option(list, doc='tags of the run')}, doc='Weights & Biases tracking (optional package)')},
}
# Every resolved recipe holds these sections (empty when the YAML has none), so code reads opt['train'][...].
SECTIONS = ('datasets', 'path', 'train', 'val', 'logger')


# A model with basicsr's interface declares no schema: the keys it reads (train.net_d_iters, RealESRGAN's top-level
# degradation settings ...) are its business. The base keys are still checked; other keys pass.
BASICSR_MODEL_SCHEMA = {'re:.*': ANY, 'train': {'re:.*': ANY}, 'val': {'re:.*': ANY}, 'path': {'re:.*': ANY},
                        'logger': {'re:.*': ANY}}


def load_options(opt_path):
    """Step 1: the recipe at ``opt_path`` with its ``_base_`` files merged in (safe YAML)."""
    return load_recipe(opt_path)


def apply_overrides(opt, overrides):
    """Step 2: ``key.sub=value`` strings (``--force_yml``) written into ``opt``; values parsed as YAML."""
    for item in overrides or []:
        if '=' not in item:
            raise OptionError(f'--force_yml {item!r}: expected key.sub=value')
        keys, value = item.split('=', 1)
        node = opt
        for k in keys.split('.')[:-1]:
            node = node.setdefault(k, {})
        node[keys.split('.')[-1]] = yaml.load(value, Loader=SafeLoader)  # a value, never a file to read
    return opt


def class_schema(cls):
    """The option schema of a model class: the ``OPTION_SCHEMA`` of every class from the top of its hierarchy down
    to ``cls`` merged in that order, so a subclass adds to (or overrides) what it inherits and repeats nothing."""
    schema = {}
    for klass in reversed(cls.__mro__):
        schema = merge_schema(schema, klass.__dict__.get('OPTION_SCHEMA'))
    return schema


def renamed_keys(cls):
    """``{old dotted key: new dotted key}`` of a model class and the classes above it (``RENAMED_OPTIONS``)."""
    out = {}
    for klass in reversed(cls.__mro__):
        out.update(klass.__dict__.get('RENAMED_OPTIONS') or {})
    return out


def model_class(model_type):
    """The registered model class ``model_type``; an unknown name is a one-line option error."""
    try:
        return get_from_registry(MODEL_REGISTRY, model_type, 'model_type')
    except OptionError as err:
        raise OptionError(str(err).replace('model_type.type', 'model_type')) from None


def model_schema(model_type):
    """BASE_SCHEMA merged with the schema of the registered model ``model_type`` (a name or a class); a model with
    basicsr's interface declares none: its own keys are its business, the base keys are checked."""
    cls = model_class(model_type) if isinstance(model_type, str) else model_type
    if has_basicsr_interface(cls) and not class_schema(cls):
        return merge_schema(BASE_SCHEMA, BASICSR_MODEL_SCHEMA)
    return merge_schema(BASE_SCHEMA, class_schema(cls))


def _get(opt, dotted):
    node = opt
    for part in dotted.split('.'):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def renamed_problems(opt, model_type):
    """One line per key of ``opt`` that its model (a name or a class) has renamed: ``old: renamed to new``."""
    try:
        renames = renamed_keys(model_class(model_type) if isinstance(model_type, str) else model_type)
    except OptionError:
        return []
    return [f'{old}: renamed to {new} (tools/convert_options.py rewrites old recipes)'
            for old, new in renames.items() if _get(opt, old)]


def validate_options(opt, opt_path, is_train=True):
    """Step 3: plugins imported (they may register the model), then every problem of the file at once, one line
    each: renamed keys (naming the new key), missing required keys, unknown keys and wrong types (the model's
    schema), unknown registered names and constructor arguments, paths that do not exist. Returns the model's
    schema."""
    where = f'{opt_path}: '
    if not isinstance(opt.get('plugins', []), (list, str, type(None))):
        raise OptionError(f'{where}plugins: expected a list of modules or .py files')
    load_plugins(opt.get('plugins'), base_dir=osp.dirname(osp.abspath(opt_path)))
    found = [f'{k}: missing (required)' for k in ('name', 'model_type') if k not in opt]
    model_type = opt.get('model_type', 'RestorationModel')
    try:
        schema = model_schema(model_type)
    except OptionError as err:  # the other keys are still checked, against the runner's schema
        schema = merge_schema(BASE_SCHEMA, BASICSR_MODEL_SCHEMA)
        found.append(str(err))
    renamed = renamed_problems(opt, model_type)
    old = {line.split(':')[0] for line in renamed}
    found += renamed + [p for p in option_problems(opt, schema) if p.split(':')[0] not in old]
    found += registry_problems(opt, schema) + path_problems(opt)
    if is_train and 'train' not in (opt.get('datasets') or {}):
        found.append('datasets.train: missing (a training recipe needs a train dataset)')
    if is_train and (opt.get('train') or {}).get('total_iter') is None:
        found.append('train.total_iter: missing (an int)')
    if found:
        raise OptionError('\n'.join(where + p for p in found))
    return schema


def resolve_options(opt, schema, opt_path, is_train=True):
    """Step 4: a copy of ``opt`` with every section (:data:`SECTIONS`) and the schema's defaults, dataset phases and
    paths filled in (data paths checked now, not after the model is built); nothing about the run (see
    :class:`~irtoolkit.config.run.RunContext`)."""
    where = f'{opt_path}: '
    opt = deepcopy(opt)
    for section in SECTIONS:
        if opt.get(section) is None:
            opt[section] = {}
    opt = fill_defaults(opt, schema)
    for key, value in (('scale', 1), ('manual_seed', 0), ('device', 'auto'), ('num_gpu', 'auto')):
        opt.setdefault(key, value)
    for phase_key, dataset in opt['datasets'].items():
        _resolve_dataset(dataset, phase_key, opt['scale'], where)
    for k, v in list(opt['path'].items()):
        if isinstance(v, str) and ('resume_state' in k or 'pretrain_' in k or k.endswith('_root')):
            opt['path'][k] = osp.expanduser(v)
    if is_train and 'debug' in opt['name']:  # BasicSR's debug runs: log every iteration, validate and save often
        opt['val']['val_freq'] = 8
        opt['logger'].update(print_freq=1, save_checkpoint_freq=8)
    return opt


def parse_options(opt_path, is_train=True, overrides=None):
    """Load, override, validate and resolve ``opt_path``: the recipe a run uses, fully resolved."""
    opt = apply_overrides(load_options(opt_path), overrides)
    schema = validate_options(opt, opt_path, is_train)
    return resolve_options(opt, schema, opt_path, is_train)


def _resolve_dataset(dataset, phase_key, scale, where):
    if not isinstance(dataset, dict):
        raise OptionError(f'{where}datasets.{phase_key}: expected a mapping')
    dataset['phase'] = phase_key.split('_')[0]
    dataset.setdefault('scale', scale)
    if 'type' not in dataset:
        raise OptionError(f'{where}datasets.{phase_key}.type: missing')
    for k in [k for k in dataset if k.startswith('dataroot') or k == 'meta_info_file']:
        paths = dataset[k] if isinstance(dataset[k], list) else [dataset[k]]
        paths = [osp.expanduser(p) if isinstance(p, str) else p for p in paths]
        dataset[k] = paths if isinstance(dataset[k], list) else paths[0]


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


def copy_options(opt, dest_dir, opt_path=''):
    """Copy the recipe and write the fully resolved recipe (bases merged, defaults filled) into the experiment
    folder, timestamped."""
    os.makedirs(dest_dir, exist_ok=True)
    stamp = time.strftime("%Y%m%d_%H%M%S")
    if opt_path and osp.isfile(opt_path):  # the recipe as written, next to the resolved one
        shutil.copyfile(opt_path, osp.join(dest_dir, f'{stamp}_{osp.basename(opt_path)}'))
    out = osp.join(dest_dir, f'options_{stamp}_resolved.yml')
    with open(out, 'w', encoding='utf-8') as f:
        f.write(f'# resolved from {opt_path or "(a recipe built in code)"}\n')
        yaml.safe_dump(_plain(opt), f, sort_keys=False)
    return out


def _plain(obj):
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj
