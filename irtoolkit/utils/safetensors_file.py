"""Network files in the safetensors format (https://github.com/huggingface/safetensors): a JSON header naming every
tensor (dtype, shape, byte range) followed by the raw bytes. Reading one runs no code (no pickle), and a file cut
short fails when it is opened, because the header's byte ranges no longer fit the file.

A safetensors file holds one flat ``{name: tensor}`` mapping and ``{str: str}`` metadata. irtoolkit's network files
(``models/<net>_<iter>.safetensors``, ``logger.checkpoint_format: safetensors``) carry BasicSR's entries in it as key
prefixes::

    params.<state-dict key>        the network's weights            (the .pth file's ``params``)
    params_ema.<state-dict key>    its EMA copy, when there is one  (the .pth file's ``params_ema``)

    metadata: {"format": "pt", "irtoolkit.entries": "params,params_ema",
               "irtoolkit.network": "{\"type\": \"NAFNet\", \"width\": 32, ...}"}

``irtoolkit.entries`` names the entries in order (an entry with no tensors survives the round trip); ``format: pt``
is the Hugging Face convention for torch tensors. ``irtoolkit.network`` (JSON) is the .pth file's ``network`` entry:
the options the network was built from, when the model knows them
(:meth:`irtoolkit.models.base_model.BaseModel.save_network_file`), so that the file alone says what to build
(:mod:`irtoolkit.inference.recognise`). :func:`read_safetensors` gives the nested ``{'params': {...},
'params_ema': {...}}`` back, exactly as ``torch.load`` gives a .pth file's. A file without ``irtoolkit.entries``
(a Hugging Face ``model.safetensors``, any plain state dict) is returned flat, as the state dict it is, unless every
key starts with ``params.`` or ``params_ema.`` (entries written by hand, without the metadata).
"""
import json
import os.path as osp

import torch

__all__ = ['SUFFIX', 'ENTRIES', 'ENTRIES_KEY', 'NETWORK_ENTRY', 'NETWORK_KEY', 'is_safetensors', 'safetensors_bytes',
           'read_safetensors']

SUFFIX = '.safetensors'
ENTRIES = ('params', 'params_ema')  # the checkpoint entries that are state dicts (BasicSR's names)
ENTRIES_KEY = 'irtoolkit.entries'
NETWORK_ENTRY = 'network'  # the checkpoint entry holding the network's options ({type: ..., ...}; plain types)
NETWORK_KEY = 'irtoolkit.network'  # ... and the metadata key that carries it in a safetensors file (JSON)


def is_safetensors(path):
    """Whether ``path`` is a safetensors file: its suffix, or (for any other name) its first bytes: an 8-byte
    little-endian header length that fits the file, then the header's ``{``. A torch zip file starts with ``PK`` and
    a legacy torch pickle with ``\\x80``, so neither is mistaken for one."""
    if path.endswith(SUFFIX):
        return True
    try:
        with open(path, 'rb') as f:
            head = f.read(9)
        size = osp.getsize(path)
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b'{' and 8 + int.from_bytes(head[:8], 'little') <= size


def _flat_tensors(state, prefix, where, seen):
    """``{prefix + key: tensor}`` of a state dict: contiguous CPU tensors, a copy of any whose storage is in
    ``seen`` (safetensors refuses tensors that share memory: tied weights, an entry saved twice)."""
    out = {}
    for key, value in state.items():
        if not torch.is_tensor(value):
            raise TypeError(f'{where}: {prefix}{key} is a {type(value).__name__}, not a tensor; safetensors holds '
                            'tensors only (write this checkpoint as .pth)')
        t = value.detach().cpu().contiguous()
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen:
            t = t.clone()
        elif t.numel():
            seen.add(ptr)
        out[prefix + str(key)] = t
    return out


def safetensors_bytes(obj, where='checkpoint'):
    """The safetensors bytes of a network checkpoint: ``{'params': state dict, 'params_ema': state dict}`` (entries
    as key prefixes, see the module docstring) or a bare state dict (written flat, as Hugging Face files are).
    ``where`` names the file in errors. A value that is not a tensor is a TypeError naming its key."""
    from safetensors.torch import save
    if not isinstance(obj, dict):
        raise TypeError(f'{where}: a safetensors checkpoint is a state dict or {{params, params_ema}}, not a '
                        f'{type(obj).__name__}')
    metadata = {'format': 'pt'}
    if isinstance(obj.get(NETWORK_ENTRY), dict):  # the network's options travel in the metadata
        obj = dict(obj)
        try:
            metadata[NETWORK_KEY] = json.dumps(obj.pop(NETWORK_ENTRY))
        except (TypeError, ValueError) as err:
            raise TypeError(f'{where}: {NETWORK_ENTRY}: not plain options ({err})') from None
    if any(isinstance(v, dict) for v in obj.values()):
        unknown = [k for k, v in obj.items() if k not in ENTRIES or not isinstance(v, dict)]
        if unknown:
            raise TypeError(f'{where}: entries {", ".join(map(str, unknown))} are not state dicts named '
                            f'{" or ".join(ENTRIES)}; safetensors holds only those (write this checkpoint as .pth)')
        tensors, seen = {}, set()
        for entry, state in obj.items():
            tensors.update(_flat_tensors(state, f'{entry}.', where, seen))
        metadata[ENTRIES_KEY] = ','.join(obj)
    else:
        tensors = _flat_tensors(obj, '', where, set())
    return save(tensors, metadata=metadata)


def read_safetensors(path, device='cpu'):
    """A safetensors file as a checkpoint: ``{'params': ..., 'params_ema': ...}`` (and ``'network'``, the network's
    options, when the metadata has them) for irtoolkit's network files (or files whose every key carries one of
    those prefixes), else the flat state dict it holds."""
    from safetensors import safe_open
    with safe_open(path, framework='pt', device=str(device)) as f:
        metadata = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    entries = [e for e in (metadata.get(ENTRIES_KEY) or '').split(',') if e]
    if not entries and tensors and all(k.split('.', 1)[0] in ENTRIES and '.' in k for k in tensors):
        entries = [e for e in ENTRIES if any(k.startswith(e + '.') for k in tensors)]
    if not entries:
        return tensors
    nested = {e: {} for e in entries}
    for key, t in tensors.items():
        entry, _, name = key.partition('.')
        if entry not in nested:
            raise ValueError(f'{path}: tensor {key!r} belongs to no entry of {ENTRIES_KEY}={json.dumps(entries)}')
        nested[entry][name] = t
    if metadata.get(NETWORK_KEY):
        nested[NETWORK_ENTRY] = json.loads(metadata[NETWORK_KEY])
    return nested
