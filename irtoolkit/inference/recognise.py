"""Recognise a checkpoint's network from its contents, so ``irtk-infer --weights X.pth`` (``irtk-test`` with a
recipe without ``network_g``, ``irtk-weights inspect``) needs no options naming the architecture.

Tried in this order; the first that fits wins:

1. **irtoolkit's options in the file.** irtoolkit's network files carry the options that built the network (the
   ``network`` entry of a .pth, the ``irtoolkit.network`` metadata of a .safetensors;
   :meth:`irtoolkit.models.base_model.BaseModel.save_network_file`): the registered arch is built from them.
2. **Key layouts irtoolkit reads** (:mod:`irtoolkit.inference.key_layouts`: Restormer, which spandrel 0.4.2 does
   not know): irtoolkit's arch with the arguments read off the key names and shapes.
3. **spandrel** (chaiNNer-org/spandrel), which detects some 40 architectures and their hyper-parameters from the key
   names and shapes. Where irtoolkit registers the same network (:data:`SPANDREL_TO_IRTOOLKIT`: NAFNet, KBNet's
   ``KBNet_s``, Uformer) irtoolkit's arch is built with spandrel's hyper-parameters (the class-valued ones, e.g.
   Uformer's ``norm_layer``, are spandrel's copies of irtoolkit's defaults and are left to them); any other network
   (SwinIR, HAT, Real-ESRGAN's RRDBNet and SRVGGNetCompact, SCUNet, DRUNet, KBNet_l ...) runs as spandrel's model
   behind its descriptor (:class:`SpandrelNetwork`: padding to the model's size requirements, output in [0, 1]).

Every network gets the state dict strictly: a layout or hyper-parameter read wrongly is a load error, never a
silently different network. Loading stays safe: the file is read by irtoolkit's reader (``weights_only=True``
torch files, safetensors; :func:`irtoolkit.utils.checkpoint.safe_load`) and spandrel only sees the tensors; its own
file loader is never called. The state dict is the ``params_ema``/``params`` entry (``param_key``), a wrapped one
(``state_dict``, ``model``, ...) or the whole file (:func:`irtoolkit.utils.checkpoint.state_dict_entry`).

A checkpoint nothing recognises is an :class:`UnrecognisedCheckpointError`: one line saying what was tried and what
to pass instead (``-opt recipe.yml`` or ``--net '{type: ..., ...}'``).
"""
import inspect
from dataclasses import dataclass

from torch import nn

from irtoolkit.inference.key_layouts import LAYOUTS
from irtoolkit.utils.checkpoint import CheckpointError, load_state_into, plain_options, safe_load, state_dict_entry
from irtoolkit.utils.errors import UserError
from irtoolkit.utils.registry import ARCH_REGISTRY, build_network
from irtoolkit.utils.safetensors_file import NETWORK_ENTRY

__all__ = [
    'Recognised', 'UnrecognisedCheckpointError', 'SpandrelNetwork', 'SPANDREL_TO_IRTOOLKIT', 'PASS_OPTIONS',
    'recognise_file', 'recognise_checkpoint', 'recognise_state', 'format_arguments'
]

# spandrel's model class -> irtoolkit's registered arch of the same network (constructor arguments named alike)
SPANDREL_TO_IRTOOLKIT = {'NAFNet': 'NAFNet', 'KBNet_s': 'KBNet', 'Uformer': 'Uformer'}
PASS_OPTIONS = "pass -opt recipe.yml (its network_g) or --net '{type: ..., ...}'"


class UnrecognisedCheckpointError(CheckpointError):
    """A checkpoint whose network could not be recognised from its contents (one line, exit status 2)."""


@dataclass
class Recognised:
    """A recognised checkpoint: ``network`` (the module, state dict loaded, eval mode, on the CPU), the detected
    ``arch`` and ``arguments``, ``how`` it was recognised, ``net_opt`` (the ``{type: ..., ...}`` that builds it
    again; None for spandrel's own model) and ``used`` (the checkpoint entry loaded; None for a bare state dict)."""
    arch: str
    how: str
    network: nn.Module
    arguments: dict
    net_opt: dict = None
    used: str = None
    note: str = ''

    def line(self):
        """One line: ``detected NAFNet (spandrel -> irtoolkit's NAFNet): width=32, enc_blk_nums=[1, 1, 1, 28], ...``."""
        note = f' [{self.note}]' if self.note else ''
        return f'detected {self.arch} ({self.how}){note}: {format_arguments(self.arguments)}'


def format_arguments(arguments):
    """``k=v, ...`` with YAML-like values (lists ``[1, 2]``, mappings ``{K: 64}``, strings bare)."""

    def fmt(v):
        if isinstance(v, dict):
            return '{' + ', '.join(f'{k}: {fmt(x)}' for k, x in v.items()) + '}'
        if isinstance(v, (list, tuple)):
            return '[' + ', '.join(fmt(x) for x in v) + ']'
        return 'null' if v is None else str(v)

    return ', '.join(f'{k}={fmt(v)}' for k, v in arguments.items()) or '(no arguments)'


class SpandrelNetwork(nn.Module):
    """spandrel's model run through its descriptor's call: (B, C, H, W) in [0, 1] -> (B, C', H*s, W*s) in [0, 1],
    the input padded to the model's size requirements (``multiple_of``, ``minimum``, ``square``) and the output
    cropped back; ``padder_size`` is the ``multiple_of``, so tiles align with it."""

    def __init__(self, descriptor):
        super().__init__()
        self.model = descriptor.model  # a submodule: .to() and .eval() reach the descriptor's model
        self.descriptor = descriptor
        self.padder_size = descriptor.size_requirements.multiple_of

    def forward(self, x):
        return self.descriptor(x)


def _first_line(err):
    """The error's first line and its first detail line (a load error's first mismatching key), cut at 300."""
    lines = [ln.strip() for ln in str(err).strip().strip('"').splitlines() if ln.strip()]
    return ' '.join(lines[:2])[:300] or type(err).__name__


def _fits(net_opt, state, where):
    """``(network, None)``: ``net_opt`` built and ``state`` loaded strictly; or ``(None, why not)``."""
    try:
        net = build_network(net_opt, where)
        load_state_into(net, state, True, where)
    except (UserError, ValueError, TypeError, KeyError, RuntimeError) as err:
        return None, _first_line(err)
    return net.eval(), None


def _from_options(network, state):
    """Step 1: the options the file carries."""
    options = plain_options(network)
    if not isinstance(options, dict) or not isinstance(options.get('type'), str):
        return None, f'its {NETWORK_ENTRY!r} entry is not network options ({{type: ..., ...}})'
    if options['type'] not in ARCH_REGISTRY:
        return None, (f'its network options name {options["type"]!r}, which is not registered (a plugin\'s arch? '
                      '-opt with the recipe imports its plugins:)')
    net, why = _fits(options, state, "the file's network options")
    if net is None:
        return None, f'its network options ({options["type"]}) do not fit its weights: {why}'
    args = {k: v for k, v in options.items() if k != 'type'}
    return Recognised(options['type'], "irtoolkit's network options in the file", net, args, options), None


def _from_layouts(state):
    """Step 2: irtoolkit's key layouts."""
    for name, detect, arguments in LAYOUTS:
        if detect(state):
            options = arguments(state)
            net, why = _fits(options, state, f'{name} read from the keys')
            if net is None:
                return None, f'its keys are {name}\'s but the arguments read from them do not fit: {why}'
            args = {k: v for k, v in options.items() if k != 'type'}
            return Recognised(name, f"key layout -> irtoolkit's {options['type']}", net, args, options), None
    return None, None


def _irtoolkit_arguments(arch, hyperparameters):
    """irtoolkit's ``{type: arch, ...}`` from spandrel's hyper-parameters, or ``(None, why not)``: every plain
    hyper-parameter must be a named argument of irtoolkit's constructor; class-valued ones are left to its defaults."""
    params = inspect.signature(ARCH_REGISTRY.get(arch).__init__).parameters
    options, unknown = {'type': arch}, []
    for k, v in hyperparameters.items():
        value = plain_options(v)
        if value is None and v is not None:
            continue
        if k in params and params[k].kind in (params[k].POSITIONAL_OR_KEYWORD, params[k].KEYWORD_ONLY):
            options[k] = value
        else:
            unknown.append(k)
    return (None, f"irtoolkit's {arch} has no argument {', '.join(unknown)}") if unknown else (options, None)


def _from_spandrel(state):
    """Step 3: spandrel's detection; irtoolkit's arch where it has the same one, else spandrel's model."""
    from spandrel import ImageModelDescriptor, ModelLoader, UnsupportedModelError
    try:
        descriptor = ModelLoader().load_from_state_dict(dict(state))  # a copy: some archs rename keys in place
    except UnsupportedModelError:
        return None, 'spandrel knows no architecture with these keys'
    except Exception as err:  # detected, but its loader or the strict load refused the state dict
        return None, f'spandrel detects an architecture but cannot load it: {_first_line(err)}'
    arch = descriptor.architecture.name
    if not isinstance(descriptor, ImageModelDescriptor):
        raise UserError(f'{arch} (recognised by spandrel) is a {descriptor.purpose.lower()} model that takes more '
                        'than an image; irtoolkit runs image-to-image networks')
    hyper = getattr(descriptor.model, 'hyperparameters', {}) or {}
    target = SPANDREL_TO_IRTOOLKIT.get(type(descriptor.model).__name__)
    note = ''
    if target and target in ARCH_REGISTRY:
        options, why = _irtoolkit_arguments(target, hyper)
        net, why = _fits(options, state, f'spandrel\'s {arch} as irtoolkit\'s {target}') if options else (None, why)
        if net is not None:
            args = {k: v for k, v in options.items() if k != 'type'}
            return Recognised(arch, f"spandrel -> irtoolkit's {target}", net, args, options), None
        note = f"irtoolkit's {target} does not take it ({why}); spandrel's model"
    args = {k: plain_options(v) for k, v in hyper.items() if plain_options(v) is not None or v is None}
    model_name = type(descriptor.model).__name__
    how = ('spandrel model' + ('' if model_name == arch else f' {model_name}') +
           ('' if descriptor.scale == 1 else f', x{descriptor.scale}'))
    return Recognised(arch, how, SpandrelNetwork(descriptor).eval(), args, None, note=note), None


def recognise_state(state, network=None, used=None, path='checkpoint', hint=PASS_OPTIONS):
    """The :class:`Recognised` network of ``state`` (a state dict) and ``network`` (the options a file carries, or
    None); :class:`UnrecognisedCheckpointError` naming ``path``, what was tried and ``hint`` when nothing fits."""
    tried = []
    for step in ((lambda: _from_options(network, state)) if network is not None else None, lambda: _from_layouts(state),
                 lambda: _from_spandrel(state)):
        if step is None:
            continue
        found, why = step()
        if found is not None:
            found.used = used
            return found
        if why:
            tried.append(why)
    if network is None:
        tried.insert(0, "it carries no irtoolkit network options")
    raise UnrecognisedCheckpointError(f'{path}: cannot tell the network from the checkpoint ({"; ".join(tried)}); '
                                      f'{hint}')


def recognise_file(path, param_key='auto', hint=PASS_OPTIONS):
    """:func:`recognise_state` of the network file ``path`` (.pth or .safetensors, read with ``weights_only``):
    ``param_key`` picks ``params_ema``/``params`` (``auto``: the EMA when present)."""
    return recognise_checkpoint(safe_load(path), path, param_key, hint)


def recognise_checkpoint(ckpt, path, param_key='auto', hint=PASS_OPTIONS):
    """:func:`recognise_file` of a checkpoint already read (:func:`~irtoolkit.utils.checkpoint.safe_load`)."""
    if not isinstance(ckpt, dict):
        raise UnrecognisedCheckpointError(f'{path}: not a state dict (got {type(ckpt).__name__}); {hint}')
    network = ckpt.get(NETWORK_ENTRY) if isinstance(ckpt.get(NETWORK_ENTRY), dict) else None
    try:
        state, used = state_dict_entry(ckpt, path, param_key)
    except (KeyError, ValueError) as err:
        raise CheckpointError(_first_line(err)) from None
    return recognise_state(state, network, used, path, hint)
