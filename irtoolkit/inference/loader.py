"""Build any registered network from options and load a checkpoint for inference.

Checkpoints are read by :func:`irtoolkit.utils.checkpoint.read_state_dict` (a torch file with ``weights_only=True``
or a ``.safetensors`` file; BasicSR-style ``{'params', 'params_ema'}``, irtoolkit's safetensors entries or a bare
state dict such as a Hugging Face ``model.safetensors``; ``module.`` prefixes dropped), the same function models use for
``path.pretrain_network_*`` and resume, so an arch with ``load_checkpoint_state`` (ConStyle's upstream key map)
loads here exactly as in training.
"""
import os.path as osp

from irtoolkit.config.recipe import load_recipe
from irtoolkit.utils.checkpoint import load_checkpoint
from irtoolkit.utils.errors import OptionError
from irtoolkit.utils.registry import build_network, load_plugins


def network_options(path, key='network_g'):
    """The network options of a train/test recipe (``_base_`` files merged; its ``plugins:`` are imported)."""
    opt = load_recipe(path)
    if not isinstance(opt.get(key), dict):
        raise OptionError(f'{path}: {key}: missing (expected the network options, e.g. {{type: NAFNet, ...}})')
    load_plugins(opt.get('plugins'), base_dir=osp.dirname(osp.abspath(path)))
    return opt[key]


def load_network(net_opt, ckpt_path=None, param_key='auto', strict=True, device='cpu'):
    """Build ``net_opt`` (``{type: ..., ...}``), load ``ckpt_path`` into it, move to ``device``, set eval mode.

    Returns ``(net, used_key)``; ``used_key`` is the checkpoint entry that was loaded (``params_ema`` before
    ``params`` for ``auto``; None for a bare state dict or when no checkpoint was given).
    """
    net = build_network(net_opt, 'network_g')
    used = load_checkpoint(net, ckpt_path, param_key, strict) if ckpt_path else None
    return net.to(device).eval(), used
