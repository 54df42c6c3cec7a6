"""Options: a recipe read safely (with its ``_base_`` files), overridden, checked against its model's schema and
resolved into BasicSR's derived fields, in four named steps (:func:`parse_options` runs them in order).

A wrong key or type fails in :func:`validate_options`, before any data or network is built, with
``file: key: what was expected``. Methods add their own keys (with defaults and meanings) by giving their model
class an ``OPTION_SCHEMA`` (merged into :data:`BASE_SCHEMA`), so the runner knows nothing about any method.
"""
import os
import os.path as osp
import shutil
import time
from copy import deepcopy

import yaml

from irtoolkit.config.recipe import SafeLoader, load_recipe, yaml_load
from irtoolkit.utils.registry import (MODEL_REGISTRY, get_from_registry, has_basicsr_interface,
                                      load_plugins)
from irtoolkit.training.nonfinite import NONFINITE_SCHEMA
from irtoolkit.config.checks import path_problems, registry_problems
from irtoolkit.config.schema import ANY, NUM, Option, fill_defaults, merge_schema, option_problems
from irtoolkit.utils.errors import OptionError

__all__ = ['BASE_SCHEMA', 'DATASET_SCHEMA', 'yaml_load', 'load_options', 'apply_overrides', 'validate_options',
           'resolve_options', 'parse_options', 'model_schema', 'dict2str', 'copy_options']


def _int_or_auto(v):
    """an int or auto"""
    return (isinstance(v, int) and not isinstance(v, bool)) or v == 'auto'


def _amp_dtype(v):
    """bf16 or fp16"""
    return v in ('bf16', 'fp16', 'bfloat16', 'float16')


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
    'name': str, 'model_type': str, 'scale': int, 'num_gpu': _int_or_auto, 'manual_seed': int, 'device': str,
    'deterministic': bool, 'cudnn_benchmark': bool, 'plugins': (list, str), 'find_unused_parameters': bool,
    'is_train': bool, 'dist': bool, 'rank': int, 'world_size': int, 'auto_resume': bool, 'root_path': str,
    'opt_path': str, 'dist_params': {'backend': str, 'port': int},
    'datasets': {'re:^(train|val|test)(_.*)?$': DATASET_SCHEMA},
    're:^network_\\w+$': dict,
    'path': {'re:^pretrain_network_\\w+$': str, 're:^strict_load_\\w+$': bool, 're:^param_key_\\w+$': str,
             'resume_state': str, 'experiments_root': str, 'results_root': str, 'models': str,
             'training_states': str, 'log': str, 'visualization': str, 'root': str},
    'train': {
        'total_iter': Option(int, doc='iterations to train (required for training)'),
        'warmup_iter': Option(int, doc='linear learning-rate warm-up over the first N iterations (-1: none)'),
        'ema_decay': Option(NUM, doc='keep an EMA copy of net_g (validated and saved as params_ema); 0: none'),
        'scheduler': Option(dict, doc='learning-rate scheduler ({type: ..., ...}) applied to every optimiser'),
        'use_grad_clip': Option(bool, doc="NAFNet's switch: clip gradients at max-norm 0.01"),
        'grad_clip': Option((NUM, dict), doc='max-norm, or clip_grad_norm_ arguments, before every step'),
        're:^optim_\\w+$': Option(dict, doc='an optimiser ({type: Adam|AdamW|..., lr, ...}) named by the model'),
        're:^\\w+_opt$': Option(dict, doc='a loss ({type: <registered loss>, ...}) named by the model'),
        'amp': Option({'enabled': bool, 'dtype': _amp_dtype}, doc='mixed precision: {enabled, dtype: bf16|fp16}'),
        'nonfinite': Option(NONFINITE_SCHEMA, doc='the non-finite guard before every optimiser step'),
        'accumulate': Option(int, doc='micro-batches per optimiser step (gradient accumulation; DDP no_sync)'),
        'compile': Option((bool, {'mode': str, 'backend': str}), doc='torch.compile the trainable networks: true, '
                          'or {mode: default|reduce-overhead|max-autotune, backend: inductor|aot_eager|...}'),
        'channels_last': Option(bool, doc='channels-last memory format for networks and image batches'),
        'keep_freed_memory': Option(bool, default=True, doc='CPU, glibc: keep freed activations in the process '
                                    'for the next step instead of unmapping them (saves page faults and zero-fill; '
                                    'peak RSS about the same)'),
    },
    'val': {'val_freq': int, 'save_img': bool, 'metrics': dict, 'pbar': bool, 'suffix': str,
            'max_save_images': int, 'val_on_rank0_only': bool},
    'logger': {'print_freq': int, 'save_checkpoint_freq': int, 'use_tb_logger': bool, 'progress_bar': bool,
               'keep_last_checkpoints': int, 'wandb': Option({
                   'project': Option(str, doc='W&B project (turns tracking on)'),
                   'entity': Option(str, doc='W&B team or user; unset: your default'),
                   'name': Option(str, doc="the run's display name; unset: the recipe's name"),
                   'resume_id': Option(str, doc='continue this W&B run; unset: the id kept in the experiment folder'),
                   'mode': Option(str, choices=('online', 'offline', 'disabled'), doc='unset: WANDB_MODE, else online'),
                   'tags': Option(list, doc='tags of the run')}, doc='Weights & Biases tracking (optional package)')},
}


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


def model_schema(model_type, where=''):
    """BASE_SCHEMA merged with the ``OPTION_SCHEMA`` of the registered model ``model_type``."""
    try:
        model_cls = get_from_registry(MODEL_REGISTRY, model_type, 'model_type')
    except OptionError as err:
        raise OptionError(where + str(err).replace('model_type.type', 'model_type')) from None
    own = getattr(model_cls, 'OPTION_SCHEMA', None)
    if own is None and has_basicsr_interface(model_cls):
        own = BASICSR_MODEL_SCHEMA
    return merge_schema(BASE_SCHEMA, own)


def validate_options(opt, opt_path, is_train=True):
    """Step 3: plugins imported (they may register the model), then every problem of the file at once, one line
    each: missing required keys, unknown keys and wrong types (the model's schema), unknown registered names and
    constructor arguments, paths that do not exist. Returns the model's schema."""
    where = f'{opt_path}: '
    if not isinstance(opt.get('plugins', []), (list, str, type(None))):
        raise OptionError(f'{where}plugins: expected a list of modules or .py files')
    load_plugins(opt.get('plugins'), base_dir=osp.dirname(osp.abspath(opt_path)))
    found = [f'{k}: missing (required)' for k in ('name', 'model_type') if k not in opt]
    try:
        schema = model_schema(opt.get('model_type', 'RestorationModel'))
    except OptionError as err:  # the other keys are still checked, against the base schema
        schema = merge_schema(BASE_SCHEMA, {'re:.*': ANY})
        found.append(str(err))
    found += option_problems(opt, schema) + registry_problems(opt, schema) + path_problems(opt)
    if opt.get('device', 'auto') not in ('auto', 'cpu', 'cuda'):
        found.append(f'device: expected auto, cpu or cuda, got {opt["device"]!r}')
    if is_train and 'train' not in (opt.get('datasets') or {}):
        found.append('datasets.train: missing (a training recipe needs a train dataset)')
    if is_train and (opt.get('train') or {}).get('total_iter') is None:
        found.append('train.total_iter: missing (an int)')
    if found:
        raise OptionError('\n'.join(where + p for p in found))
    return schema


def resolve_options(opt, schema, opt_path, is_train=True, root_path=None):
    """Step 4: a copy of ``opt`` with the schema's defaults, the device, dataset phases (paths checked now, not after
    the model is built) and the experiment / results folders filled in, as BasicSR's parse does."""
    where = f'{opt_path}: '
    had_train = 'train' in opt
    opt = fill_defaults(deepcopy(opt), schema)
    if not is_train and not had_train:  # training defaults mean nothing to a test run
        opt.pop('train', None)
    opt.update(is_train=is_train, opt_path=osp.abspath(opt_path))
    for key, value in (('scale', 1), ('manual_seed', 0), ('device', 'auto')):
        opt.setdefault(key, value)
    _resolve_device(opt, where)
    for phase_key, dataset in (opt.get('datasets') or {}).items():
        _resolve_dataset(dataset, phase_key, opt['scale'], where)
    opt['root_path'] = osp.abspath(root_path or os.getcwd())
    opt['path'] = opt.get('path') or {}
    for k, v in list(opt['path'].items()):
        if isinstance(v, str) and ('resume_state' in k or 'pretrain_network' in k or k.endswith('_root')):
            opt['path'][k] = osp.expanduser(v)
    (_resolve_train_outputs if is_train else _resolve_test_outputs)(opt)
    return opt


def parse_options(opt_path, is_train=True, overrides=None, root_path=None):
    """Load, override, validate and resolve ``opt_path``: the options a run uses, fully resolved."""
    opt = apply_overrides(load_options(opt_path), overrides)
    schema = validate_options(opt, opt_path, is_train)
    return resolve_options(opt, schema, opt_path, is_train, root_path)


def _resolve_device(opt, where):
    import torch  # late: option checks and --describe need no torch
    if opt.get('num_gpu', 'auto') == 'auto':
        opt['num_gpu'] = torch.cuda.device_count() if opt['device'] != 'cpu' else 0
    if opt['device'] == 'cpu':
        opt['num_gpu'] = 0
    if opt['device'] == 'cuda' and not torch.cuda.is_available():
        raise OptionError(f'{where}device: cuda requested but torch.cuda.is_available() is False')


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


def _resolve_train_outputs(opt):
    """BasicSR's layout: ``experiments/<name>/{models,training_states,visualization}``; logger defaults."""
    path = opt['path']
    exp = path.get('experiments_root') or osp.join(opt['root_path'], 'experiments', opt['name'])
    path.update(experiments_root=exp, models=osp.join(exp, 'models'), log=exp,
                training_states=osp.join(exp, 'training_states'), visualization=osp.join(exp, 'visualization'))
    opt['logger'] = opt.get('logger') or {}
    for key, value in (('print_freq', 100), ('save_checkpoint_freq', 5000), ('use_tb_logger', True)):
        opt['logger'].setdefault(key, value)
    if 'debug' in opt['name']:
        opt['val'] = opt.get('val') or {}
        opt['val']['val_freq'] = 8
        opt['logger'].update(print_freq=1, save_checkpoint_freq=8)


def _resolve_test_outputs(opt):
    path = opt['path']
    res = path.get('results_root') or osp.join(opt['root_path'], 'results', opt['name'])
    path.update(results_root=res, log=res, visualization=osp.join(res, 'visualization'))


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
    """Copy the recipe and write the fully resolved options (bases merged, defaults filled) into the experiment
    folder, timestamped."""
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
