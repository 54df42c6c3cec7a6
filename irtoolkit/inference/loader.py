"""Build any registered network from options and load a checkpoint for inference.

Checkpoints are BasicSR-style dicts (``{'params': ..., 'params_ema': ...}``, as irtoolkit and upstream
IRConStyle write them) or a bare state dict; they are read with ``weights_only=True``. Keys with a ``module.``
prefix (DDP) are accepted; an arch with ``load_checkpoint_state(state, strict)`` (e.g. ConStyle's upstream key
map) handles its own keys, exactly as :meth:`irtoolkit.models.base_model.BaseModel.load_network` does.
"""
import os.path as osp

from irtoolkit.utils.checkpoint import safe_load
from irtoolkit.utils.recipe import load_recipe
from irtoolkit.utils.registry import OptionError, build_network, load_plugins


def network_options(path, key='network_g'):
    """The ``key`` network options of a train/test recipe, ``_base_`` files merged in (its ``plugins:`` imported)."""
    opt = load_recipe(path)
    if not isinstance(opt, dict) or not isinstance(opt.get(key), dict):
        raise OptionError(f'{path}: {key}: missing (expected the network options, e.g. {{type: NAFNet, ...}})')
    load_plugins(opt.get('plugins'), base_dir=osp.dirname(osp.abspath(path)))
    return opt[key]


def pick_state(ckpt, path, param_key='auto'):
    """The state dict inside a checkpoint: ``params_ema`` > ``params`` for ``auto``, or the named entry."""
    if not isinstance(ckpt, dict):
        raise ValueError(f'{path}: not a state dict (got {type(ckpt).__name__})')
    has_entries = any(k in ckpt for k in ('params', 'params_ema'))
    if param_key == 'auto':
        if not has_entries:
            return ckpt, None
        param_key = 'params_ema' if 'params_ema' in ckpt else 'params'
    if param_key not in ckpt:
        raise KeyError(f'{path}: no {param_key!r} entry; has {", ".join(map(str, ckpt))}')
    return ckpt[param_key], param_key


def load_network(net_opt, ckpt_path=None, param_key='auto', strict=True, device='cpu'):
    """Build ``net_opt`` (``{type: ..., ...}``), load ``ckpt_path`` into it, move to ``device``, set eval mode.

    Returns ``(net, used_key)``; ``used_key`` is the checkpoint entry that was loaded (None for a bare dict or
    when no checkpoint was given).
    """
    net = build_network(net_opt, 'network_g')
    used = None
    if ckpt_path:
        state, used = pick_state(safe_load(ckpt_path), ckpt_path, param_key)
        state = {k[7:] if k.startswith('module.') else k: v for k, v in state.items()}
        try:
            if hasattr(net, 'load_checkpoint_state'):
                net.load_checkpoint_state(state, strict=strict)
            else:
                net.load_state_dict(state, strict=strict)
        except RuntimeError as err:  # key/shape mismatch: name the file, keep torch's first line
            raise RuntimeError(f'{ckpt_path} ({used or "state dict"}) does not fit {net_opt.get("type")}: '
                               f'{str(err).splitlines()[0]} {_mismatch_summary(str(err))}') from err
    return net.to(device).eval(), used


def _mismatch_summary(message):
    lines = [ln.strip() for ln in message.splitlines()[1:] if ln.strip()]
    return (' | '.join(lines)[:400]) if lines else ''
