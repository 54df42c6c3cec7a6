"""Atomic checkpoint writes and safe (``weights_only=True``) reads.

Network files are ``models/<net>_<iter>.pth`` (torch) or ``.safetensors`` (``logger.checkpoint_format``; layout in
:mod:`irtoolkit.utils.safetensors_file`); every reader here takes either. Training states (``<iter>.state``:
optimisers, schedulers, RNG streams) are always torch files, read with ``weights_only=True``.
"""
import glob
import os
import os.path as osp
import random
import re

import numpy as np
import torch

from irtoolkit.utils.dist import bare
from irtoolkit.utils.errors import UserError
from irtoolkit.utils.safetensors_file import SUFFIX, is_safetensors, read_safetensors, safetensors_bytes


def atomic_save(obj, path):
    """Write with ``torch.save`` (a ``.safetensors`` path: in the safetensors format,
    :func:`~irtoolkit.utils.safetensors_file.safetensors_bytes`) to a temporary file in the same folder, fsync,
    then rename.

    A crash mid-write leaves the previous file intact; a reader never sees a half-written checkpoint.
    """
    path = os.fspath(path)
    if path.endswith(SUFFIX):
        try:
            data = safetensors_bytes(obj, path)
        except TypeError as err:
            raise CheckpointWriteError(f'cannot write checkpoint {err}') from None
        atomic_write(path, lambda f: f.write(data))
    else:
        atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write(path, write):
    """``write(f)`` into a temporary binary file in the same folder as ``path``, fsync, then rename to ``path``.
    A failure is a one-line :class:`CheckpointWriteError`, the previous file untouched."""
    tmp = f'{path}.tmp.{os.getpid()}'
    try:
        os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
        with open(tmp, 'wb') as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:  # disk full, permissions, a vanished mount: one line, the previous file untouched
        raise CheckpointWriteError(f'cannot write checkpoint {path}: {err.strerror or err}; the previous '
                                   'checkpoint is intact') from err
    finally:
        if osp.exists(tmp):
            os.remove(tmp)


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that is missing or cannot be read safely (a user error: one line, exit status 2)."""


class MissingCheckpointError(CheckpointError, FileNotFoundError):
    pass


class CheckpointWriteError(CheckpointError):
    """A checkpoint that could not be written (the previous one is left as it was)."""


def safe_load(path, map_location='cpu'):
    """``torch.load(..., weights_only=True)``, or for a safetensors file
    :func:`~irtoolkit.utils.safetensors_file.read_safetensors` (``{'params', 'params_ema'}`` or a flat state dict),
    with a one-line error for a missing or unreadable file."""
    if not osp.isfile(path):
        raise MissingCheckpointError(f'checkpoint not found: {path}')
    try:
        if is_safetensors(path):
            return read_safetensors(path, map_location if isinstance(map_location, (str, torch.device)) else 'cpu')
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # pickle, zip and unpickler errors all mean "not a checkpoint we trust"
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f'cannot load checkpoint {path}: {msg}') from err


def get_rng_state():
    """Python, numpy and torch RNG states in weights_only-loadable types."""
    np_state = np.random.get_state()
    state = {'python': random.getstate(), 'torch': torch.get_rng_state(),
             'numpy': [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]]}
    if torch.cuda.is_available():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    py = state['python']
    random.setstate((py[0], tuple(py[1]), py[2]))
    torch.set_rng_state(state['torch'])
    np_state = state['numpy']
    np.random.set_state((np_state[0], np_state[1].numpy().astype(np.uint32), *np_state[2:]))
    if 'cuda' in state and torch.cuda.is_available() and len(state['cuda']) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state['cuda'])


def _training_states(states_dir):
    """``<iter>.state`` files of ``states_dir``, newest first."""
    files = [f for f in glob.glob(osp.join(states_dir, '*.state')) if re.fullmatch(r'\d+\.state', osp.basename(f))]
    return sorted(files, key=lambda f: int(osp.basename(f).split('.')[0]), reverse=True)


NETWORK_FORMATS = ('pth', 'safetensors')  # logger.checkpoint_format: the suffixes of network files


def network_files(models_dir, tag):
    """Network files of ``models_dir`` for ``tag`` (an iteration, ``latest``, ``best``): ``*_<tag>.pth`` and
    ``*_<tag>.safetensors``, sorted."""
    return sorted(f for fmt in NETWORK_FORMATS for f in glob.glob(osp.join(models_dir, f'*_{tag}.{fmt}')))


def find_network_file(models_dir, stem):
    """``models_dir/<stem>.pth`` or ``<stem>.safetensors``, whichever exists (both: the one written last);
    :class:`MissingCheckpointError` naming both when neither does."""
    found = [p for p in (osp.join(models_dir, f'{stem}.{fmt}') for fmt in NETWORK_FORMATS) if osp.isfile(p)]
    if not found:
        raise MissingCheckpointError(f'checkpoint not found: {osp.join(models_dir, stem)}.pth (or .safetensors)')
    return max(found, key=osp.getmtime)


def write_network_file(state, models_dir, stem, fmt='pth'):
    """Write ``state`` (``{'params', 'params_ema'}``) to ``models_dir/<stem>.<fmt>`` atomically, then remove the
    other format's ``<stem>`` file: one file per network and tag, so a run that switches format leaves no stale
    ``net_g_latest`` of the old one. Returns the path."""
    if fmt not in NETWORK_FORMATS:
        raise ValueError(f'checkpoint format {fmt!r}: expected one of {", ".join(NETWORK_FORMATS)}')
    path = osp.join(models_dir, f'{stem}.{fmt}')
    atomic_save(state, path)
    for other in NETWORK_FORMATS:
        stale = osp.join(models_dir, f'{stem}.{other}')
        if other != fmt and osp.exists(stale):
            os.remove(stale)
    return path


def latest_usable_state(states_dir, models_dir, warn=print):
    """``(path, state)`` of the newest training state that loads and whose network files (``*_<iter>.pth`` or
    ``.safetensors`` in ``models_dir``) all load, or ``(None, None)``. Unusable files (a copy cut short, a sync
    interrupted) are named through ``warn`` and left in place."""
    for path in _training_states(states_dir):
        problems, state = [], None
        try:
            state = safe_load(path)
            nets = network_files(models_dir, state['iter'])
            if not nets:
                problems.append(f'no network files *_{state["iter"]}.pth or .safetensors in {models_dir}')
            for net in nets:
                try:
                    safe_load(net)
                except CheckpointError as err:
                    problems.append(str(err))
        except (CheckpointError, KeyError, TypeError) as err:
            problems.append(str(err))
        if not problems:
            return path, state
        warn(f'--auto_resume: {path} is not usable ({"; ".join(problems)}); trying an older state, the files '
             'are left in place')
    return None, None


def prune_checkpoints(models_dir, states_dir, keep):
    """Keep the ``keep`` most recent periodic checkpoints (``latest`` is never removed)."""
    if not keep or keep <= 0:
        return
    iters = sorted({int(osp.basename(f).split('.')[0]) for f in glob.glob(osp.join(states_dir, '*.state'))
                    if re.fullmatch(r'\d+\.state', osp.basename(f))})
    for it in iters[:-keep]:
        for f in network_files(models_dir, it) + [osp.join(states_dir, f'{it}.state')]:
            if osp.exists(f):
                os.remove(f)


# Entries other projects wrap their state dict in (training scripts that save {'epoch', 'state_dict', 'optimizer'}),
# in the order spandrel's canonicalize_state_dict tries them (spandrel/__helpers/canonicalize.py)
STATE_DICT_WRAPPERS = ('model_state_dict', 'state_dict', 'params-ema', 'model', 'net')


def read_state_dict(path, param_key='params'):
    """``(state dict, entry used)`` of a checkpoint file, read with ``weights_only=True``, ``module.`` prefixes
    (DDP) removed.

    BasicSR-style files (``{'params': ..., 'params_ema': ...}``, as irtoolkit and upstream IRConStyle write them;
    irtoolkit's ``.safetensors`` network files read back as the same entries) give the named entry;
    ``param_key='auto'`` (or None) takes ``params_ema`` when present, else ``params``. A file holding a bare state
    dict (a plain torch file, a Hugging Face ``model.safetensors``) is used whole (the entry is then None), whatever
    ``param_key`` says; one that wraps it in an entry of :data:`STATE_DICT_WRAPPERS` (``state_dict``, ``model``, ...)
    gives that entry.
    """
    return state_dict_entry(safe_load(path), path, param_key)


def state_dict_entry(ckpt, path, param_key='params'):
    """:func:`read_state_dict` of a checkpoint already loaded (``ckpt``, from ``path``)."""
    if not isinstance(ckpt, dict):
        raise ValueError(f'{path}: not a state dict (got {type(ckpt).__name__})')
    used = None
    if any(k in ckpt for k in ('params', 'params_ema')):
        used = param_key if param_key not in ('auto', None) else ('params_ema' if 'params_ema' in ckpt else 'params')
        if used not in ckpt:
            raise KeyError(f'{path}: no {used!r} entry; has {", ".join(map(str, ckpt))}')
        ckpt = ckpt[used]
    else:
        used = next((k for k in STATE_DICT_WRAPPERS if isinstance(ckpt.get(k), dict)), None)
        ckpt = ckpt[used] if used else ckpt
    return {k[7:] if k.startswith('module.') else k: v for k, v in ckpt.items()}, used


def plain_options(options):
    """``options`` (a network's ``{type: ..., ...}``) as plain types (dict with str keys, list, str, int, float,
    bool, None; tuples become lists), which ``weights_only=True`` loading and JSON both take; None when something in
    it is not one (a class, a module, a tensor): such options cannot travel in a checkpoint."""
    if isinstance(options, dict):
        out = {}
        for k, v in options.items():
            v = plain_options(v)
            if not isinstance(k, str) or (v is None and options[k] is not None):
                return None
            out[k] = v
        return out
    if isinstance(options, (list, tuple)):
        out = [plain_options(v) for v in options]
        return None if any(o is None and v is not None for o, v in zip(out, options)) else out
    return options if options is None or isinstance(options, (str, int, float, bool)) else None


def load_state_into(net, state, strict=True, source='state dict'):
    """Load ``state`` into ``net`` (its bare module); archs with their own key handling (``load_checkpoint_state``,
    e.g. ConStyle's upstream key map) get it first. A key or shape mismatch names ``source`` and the network."""
    target = bare(net)
    try:
        if hasattr(target, 'load_checkpoint_state'):
            return target.load_checkpoint_state(state, strict=strict)
        return target.load_state_dict(state, strict=strict)
    except RuntimeError as err:
        lines = [ln.strip() for ln in str(err).splitlines()[1:] if ln.strip()]
        detail = (' ' + ' | '.join(lines)[:400]) if lines else ''
        first = str(err).splitlines()[0]
        raise RuntimeError(f'{source} does not fit {type(target).__name__}: {first}{detail}') from err


def load_checkpoint(net, path, param_key='params', strict=True):
    """Read ``path`` (:func:`read_state_dict`) and load it into ``net``; returns the checkpoint entry used."""
    state, used = read_state_dict(path, param_key)
    load_state_into(net, state, strict, f'{path} ({used or "state dict"})')
    return used


def convert_network_file(src, dst):
    """Write network file ``src`` (.pth or .safetensors) as ``dst``, in the format of ``dst``'s suffix
    (``.safetensors``, else torch), atomically: ``params`` and ``params_ema`` (or a bare state dict) with every
    tensor bit for bit. Returns the entries written (``[]`` for a bare state dict). Entries safetensors cannot hold
    (anything but those state dicts) are a :class:`CheckpointWriteError` naming them."""
    ckpt = safe_load(src)
    if not isinstance(ckpt, dict):
        raise CheckpointError(f'{src}: not a state dict (got {type(ckpt).__name__})')
    atomic_save(ckpt, dst)
    return [k for k, v in ckpt.items() if isinstance(v, dict)]
