"""Atomic checkpoint writes and safe (``weights_only=True``) reads."""
import glob
import os
import os.path as osp
import random
import re

import numpy as np
import torch

from irtoolkit.utils.dist import bare
from irtoolkit.utils.errors import UserError


def atomic_save(obj, path):
    """Write with ``torch.save`` to a temporary file in the same folder, fsync, then rename.

    A crash mid-write leaves the previous file intact; a reader never sees a half-written checkpoint.
    """
    tmp = f'{path}.tmp.{os.getpid()}'
    try:
        os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
        with open(tmp, 'wb') as f:
            torch.save(obj, f)
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
    """``torch.load(..., weights_only=True)`` with a one-line error for a missing or unreadable file."""
    if not osp.isfile(path):
        raise MissingCheckpointError(f'checkpoint not found: {path}')
    try:
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


def latest_usable_state(states_dir, models_dir, warn=print):
    """``(path, state)`` of the newest training state that loads and whose network files (``*_<iter>.pth`` in
    ``models_dir``) all load, or ``(None, None)``. Unusable files (a copy cut short, a sync interrupted) are named
    through ``warn`` and left in place."""
    for path in _training_states(states_dir):
        problems, state = [], None
        try:
            state = safe_load(path)
            nets = glob.glob(osp.join(models_dir, f'*_{state["iter"]}.pth'))
            if not nets:
                problems.append(f'no network files *_{state["iter"]}.pth in {models_dir}')
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
        for f in glob.glob(osp.join(models_dir, f'*_{it}.pth')) + [osp.join(states_dir, f'{it}.state')]:
            if osp.exists(f):
                os.remove(f)


def read_state_dict(path, param_key='params'):
    """``(state dict, entry used)`` of a checkpoint file, read with ``weights_only=True``, ``module.`` prefixes
    (DDP) removed.

    BasicSR-style files (``{'params': ..., 'params_ema': ...}``, as irtoolkit and upstream IRConStyle write them)
    give the named entry; ``param_key='auto'`` (or None) takes ``params_ema`` when present, else ``params``. A file
    holding a bare state dict is used whole (the entry is then None), whatever ``param_key`` says.
    """
    ckpt = safe_load(path)
    if not isinstance(ckpt, dict):
        raise ValueError(f'{path}: not a state dict (got {type(ckpt).__name__})')
    used = None
    if any(k in ckpt for k in ('params', 'params_ema')):
        used = param_key if param_key not in ('auto', None) else ('params_ema' if 'params_ema' in ckpt else 'params')
        if used not in ckpt:
            raise KeyError(f'{path}: no {used!r} entry; has {", ".join(map(str, ckpt))}')
        ckpt = ckpt[used]
    return {k[7:] if k.startswith('module.') else k: v for k, v in ckpt.items()}, used


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
