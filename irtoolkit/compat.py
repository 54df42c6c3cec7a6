"""Every workaround irtoolkit needs for basicsr 1.4.2 on torch 2.14 / torchvision 0.29 / lmdb 3.

``import irtoolkit`` calls :func:`apply` before anything imports basicsr. Each patch says what breaks
and when it can go. Nothing here changes behaviour that works; the patches only make broken paths work.
Patches that basicsr does not need on CPU (CUDA resume, dist init, DDP device ids) are not here: irtoolkit
has its own runner (``irtoolkit/engine``) and never calls basicsr's ``train_pipeline``.
"""
import os
import sys
import threading

_APPLIED = False
_LMDB_LOCK = threading.Lock()
_LMDB_ENVS = {}


def _alias_functional_tensor():
    # basicsr/data/degradations.py imports torchvision.transforms.functional_tensor, removed in
    # torchvision 0.17 (kept as the private _functional_tensor). Go when basicsr > 1.4.2 is released.
    try:
        import torchvision.transforms.functional_tensor  # noqa: F401
    except ImportError:
        import torchvision.transforms._functional_tensor as _ft
        sys.modules.setdefault('torchvision.transforms.functional_tensor', _ft)


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


def _patch_lmdb_backend():
    # basicsr's LmdbBackend calls lmdb.open per FileClient; with lmdb >= 2 the second one fails. Route it
    # through open_lmdb, and make a missing key a clear error instead of imfrombytes(None) crashing later.
    # Can go when basicsr caches environments or lmdb drops the single-open rule.
    from basicsr.utils import file_client

    def __init__(self, db_paths, client_keys='default', readonly=True, lock=False, readahead=False, **kwargs):
        if isinstance(client_keys, str):
            client_keys = [client_keys]
        if isinstance(db_paths, (str, os.PathLike)):
            db_paths = [db_paths]
        if len(client_keys) != len(db_paths):
            raise ValueError(f'LMDB backend: {len(db_paths)} db_paths but {len(client_keys)} client_keys')
        self.db_paths = [os.fspath(p) for p in db_paths]
        self.client_keys = list(client_keys)
        self._env_kwargs = dict(readonly=readonly, lock=lock, readahead=readahead, **kwargs)

    @property
    def _client(self):
        return {k: open_lmdb(p, **self._env_kwargs) for k, p in zip(self.client_keys, self.db_paths)}

    def get(self, filepath, client_key):
        filepath = str(filepath)
        if client_key not in self.client_keys:
            raise KeyError(f'LMDB backend: unknown client key {client_key!r}; have {self.client_keys}')
        db_path = self.db_paths[self.client_keys.index(client_key)]
        with open_lmdb(db_path, **self._env_kwargs).begin(write=False) as txn:
            value = txn.get(filepath.encode('ascii'))
        if value is None:
            raise KeyError(f'LMDB key {filepath!r} not found in {db_path} ({client_key})')
        return value

    file_client.LmdbBackend.__init__ = __init__
    file_client.LmdbBackend._client = _client
    file_client.LmdbBackend.get = get


def _patch_perceptual_l2():
    # basicsr.losses.basic_loss.PerceptualLoss(criterion='l2') builds torch.nn.L2loss, which does not
    # exist (AttributeError). Give it the MSE it means. Can go when basicsr fixes the typo (fixed on master).
    import torch
    if not hasattr(torch.nn, 'L2loss'):
        torch.nn.L2loss = torch.nn.MSELoss


def apply():
    """Apply every patch once; safe to call repeatedly."""
    global _APPLIED
    if _APPLIED:
        return
    _alias_functional_tensor()
    _patch_perceptual_l2()
    _patch_lmdb_backend()
    if hasattr(os, 'register_at_fork'):
        os.register_at_fork(after_in_child=_close_inherited_lmdb_envs)
    _APPLIED = True
