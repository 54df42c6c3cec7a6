"""LMDB environments opened once per (process, path): what every LMDB reader of irtoolkit and basicsr's patched
``LmdbBackend`` (:mod:`irtoolkit.compat`) go through.

py-lmdb >= 2 refuses a second ``lmdb.open`` of the same path in one process, and an environment must not be used
across ``fork`` (DataLoader workers): each process keeps its own environments, and a forked child closes the copies
it inherited.
"""
import os
import threading

__all__ = ['open_lmdb', 'close_lmdb']

_LMDB_LOCK = threading.Lock()
_LMDB_ENVS = {}


def open_lmdb(path, **kwargs):
    """Open an LMDB environment once per (process, path) and reuse it.

    py-lmdb >= 2 raises ``lmdb.Error: The environment ... is already open in this process`` on a second
    ``lmdb.open`` of the same path, which breaks two datasets reading one database (train + val, tests).
    The cache is keyed by pid too: an environment must not be used across ``fork`` (DataLoader workers),
    so a forked worker opens its own.
    """
    import lmdb
    path = os.path.abspath(os.fspath(path))
    key = (os.getpid(), path)
    with _LMDB_LOCK:
        env = _LMDB_ENVS.get(key)
        if env is None:
            if not os.path.isdir(path) or not os.path.isfile(os.path.join(path, 'data.mdb')):
                raise FileNotFoundError(f'LMDB database not found: {path} (expected a folder with data.mdb)')
            opts = dict(readonly=True, lock=False, readahead=False, max_readers=256)
            opts.update(kwargs)
            env = lmdb.open(path, **opts)
            _LMDB_ENVS[key] = env
        return env


def close_lmdb(path):
    """Close and forget this process's cached environment of ``path`` (e.g. before rebuilding the database)."""
    key = (os.getpid(), os.path.abspath(os.fspath(path)))
    with _LMDB_LOCK:
        env = _LMDB_ENVS.pop(key, None)
    if env is not None:
        env.close()


def _close_inherited_lmdb_envs():
    # After fork (DataLoader workers): py-lmdb >= 2 remembers open environments in a process-wide set that the
    # child inherits, so the worker's own lmdb.open of a database the parent had open fails with "already open
    # in this process". LMDB forbids using an environment across fork anyway: the child closes its inherited
    # copies (its own mappings only; the parent is unaffected) and opens fresh ones on first use.
    pid = os.getpid()
    for key in [k for k in _LMDB_ENVS if k[0] != pid]:
        env = _LMDB_ENVS.pop(key)
        try:
            env.close()
        except Exception:  # a copy that cannot close must not kill the worker; lmdb.open will say what is wrong
            pass


if hasattr(os, 'register_at_fork'):
    os.register_at_fork(after_in_child=_close_inherited_lmdb_envs)
