"""Registries (basicsr's), auto-import of irtoolkit's modules, user plugins, and checked builders."""
import difflib
import importlib
import importlib.util
import inspect
import os
import os.path as osp
import sys
from copy import deepcopy

from basicsr.utils.registry import ARCH_REGISTRY, DATASET_REGISTRY, LOSS_REGISTRY, METRIC_REGISTRY, MODEL_REGISTRY

from irtoolkit.utils.errors import OptionError

__all__ = [
    'ARCH_REGISTRY', 'DATASET_REGISTRY', 'LOSS_REGISTRY', 'METRIC_REGISTRY', 'MODEL_REGISTRY',
    'import_package_modules', 'load_plugins', 'get_from_registry', 'build_from_registry', 'build_network', 'build_loss',
    'build_model', 'registry_kind', 'has_basicsr_interface'
]

_PKG_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
# sub-package -> file suffix that marks a registering module
_AUTO_IMPORT = {'archs': '_arch.py', 'losses': '_loss.py', 'models': '_model.py', 'data': '_dataset.py',
                'metrics': '_metric.py'}


def import_package_modules():
    """Import every registering module of irtoolkit (sorted, so registration order is stable)."""
    for sub, suffix in _AUTO_IMPORT.items():
        folder = osp.join(_PKG_ROOT, sub)
        if not osp.isdir(folder):
            continue
        for fname in sorted(os.listdir(folder)):
            if fname.endswith(suffix) and not fname.startswith('_'):
                importlib.import_module(f'irtoolkit.{sub}.{fname[:-3]}')


def load_plugins(plugins, base_dir=None):
    """Import user modules so their ``@ARCH_REGISTRY.register()`` (etc.) run before anything is built.

    Each entry is a dotted module name (``my_pkg.my_arch``) or a path to a ``.py`` file (relative to
    ``base_dir``, the options file's folder, or the current directory). A file is imported once per process
    under a name derived from its absolute path, so building twice never registers twice.
    """
    if plugins is None:
        return []
    if isinstance(plugins, str):
        plugins = [plugins]
    loaded = []
    for i, entry in enumerate(plugins):
        if not isinstance(entry, str):
            raise OptionError(f'plugins[{i}]: expected a module name or .py path, got {type(entry).__name__}')
        if entry.endswith('.py') or os.sep in entry or '/' in entry:
            candidates = [entry] if osp.isabs(entry) else [osp.join(base_dir or '.', entry), entry]
            path = next((osp.abspath(c) for c in candidates if osp.isfile(c)), None)
            if path is None:
                raise OptionError(f'plugins[{i}]: file not found: {entry} (looked in {", ".join(candidates)})')
            mod_name = 'irtoolkit_plugin_' + ''.join(c if c.isalnum() else '_' for c in path)
            if mod_name not in sys.modules:
                spec = importlib.util.spec_from_file_location(mod_name, path)
                module = importlib.util.module_from_spec(spec)
                sys.modules[mod_name] = module
                try:
                    spec.loader.exec_module(module)
                except BaseException:
                    del sys.modules[mod_name]
                    raise
            loaded.append(sys.modules[mod_name])
        else:
            try:
                loaded.append(importlib.import_module(entry))
            except ModuleNotFoundError as err:
                raise OptionError(f'plugins[{i}]: cannot import module {entry!r}: {err}') from err
    return loaded


def registry_kind(registry):
    """'arch', 'loss', 'model', 'dataset' or 'metric'."""
    kinds = {id(ARCH_REGISTRY): 'arch', id(LOSS_REGISTRY): 'loss', id(MODEL_REGISTRY): 'model',
             id(DATASET_REGISTRY): 'dataset', id(METRIC_REGISTRY): 'metric'}
    return kinds.get(id(registry), 'entry')


def get_from_registry(registry, name, key):
    """Look ``name`` up; an unknown name raises OptionError naming the option key and the closest names."""
    if not isinstance(name, str):
        raise OptionError(f'{key}.type: expected a registered name (str), got {type(name).__name__}')
    entries = dict(iter(registry))  # basicsr's Registry iterates over (name, object) pairs
    obj = entries.get(name) or entries.get(name + '_basicsr')
    if obj is None:
        close = difflib.get_close_matches(name, sorted(entries), n=5, cutoff=0.5)
        hint = f'closest registered: {", ".join(close)}' if close else f'registered: {", ".join(sorted(entries))}'
        raise OptionError(f'{key}.type: unknown {registry_kind(registry)} {name!r}; {hint}')
    return obj


def check_kwargs(fn, kwargs, key, what, missing=True):
    """Fail early when ``kwargs`` does not fit ``fn``'s signature (unknown arguments; missing ones with ``missing``;
    models may add arguments they compute, so option checks pass ``missing=False``)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return
    params = sig.parameters
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return
    accepted = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n != 'self']
    for name in kwargs:
        if name not in accepted:
            close = difflib.get_close_matches(name, accepted, n=3, cutoff=0.5)
            hint = f'did you mean {", ".join(close)}?' if close else f'accepted: {", ".join(accepted)}'
            raise OptionError(f'{key}.{name}: unknown argument for {what}; {hint}')
    absent = [n for n, p in params.items() if n != 'self' and p.default is p.empty
              and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n not in kwargs]
    if absent and missing:
        raise OptionError(f'{key}: {what} needs {", ".join(absent)}')


def build_from_registry(registry, opt, key, **extra):
    """Build ``registry[opt['type']](**rest, **extra)``; ``key`` is the option path used in messages."""
    if not isinstance(opt, dict):
        raise OptionError(f'{key}: expected a mapping with a "type", got {type(opt).__name__}')
    opt = deepcopy(opt)
    if 'type' not in opt:
        raise OptionError(f'{key}: missing "type"')
    cls = get_from_registry(registry, opt.pop('type'), key)
    kwargs = {**opt, **extra}
    check_kwargs(cls.__init__ if inspect.isclass(cls) else cls, kwargs, key, cls.__name__)
    return cls(**kwargs)


def build_network(opt, key='network_g'):
    """Build a registered network from its options (``type`` plus constructor arguments)."""
    return build_from_registry(ARCH_REGISTRY, opt, key)


def build_loss(opt, key='train.pixel_opt'):
    """Build a registered loss from its options (``type`` plus constructor arguments)."""
    return build_from_registry(LOSS_REGISTRY, opt, key)


def has_basicsr_interface(cls):
    """basicsr's model interface: its save/resume pair (``save_training_state``, ``resume_training``) and
    ``save(epoch, current_iter)``; irtoolkit's models have ``save(current_iter, epoch, batch_in_epoch)``."""
    if not (hasattr(cls, 'save_training_state') and hasattr(cls, 'resume_training') and hasattr(cls, 'save')):
        return False
    return list(inspect.signature(cls.save).parameters)[1:3] == ['epoch', 'current_iter']


def build_model(opt, run=None):
    """An irtoolkit model of a recipe: ``MODEL_REGISTRY[opt['model_type']](opt, run)`` (``run``: a
    :class:`~irtoolkit.config.run.RunContext`; unset: this process, training, outputs under the current folder)."""
    return get_from_registry(MODEL_REGISTRY, opt['model_type'], 'model_type')(opt, run)
