"""What a network costs: parameters, FLOPs / MACs per input size, CPU latency (the command is ``irtk-complexity``;
peak memory is measured in a fresh process by :mod:`irtoolkit.inference.peak_memory`).

* Parameters: ``sum(p.numel())`` over ``net.parameters()`` (shared tensors once; buffers such as ConStyle's queue
  or BatchNorm statistics are not parameters); trainable = ``requires_grad``. For a network holding a ConStyle
  prior (:class:`~irtoolkit.archs.constyle_arch.ConStyle`) also the prior's parameters and its share.
* FLOPs: :class:`torch.utils.flop_counter.FlopCounterMode` over one forward of a (1, C, H, W) input in
  ``torch.inference_mode``. It counts convolutions (transposed and grouped included) and matrix products (mm,
  addmm, bmm, baddbmm, scaled-dot-product attention kernels other than the CPU flash kernel) at 2 FLOPs per
  multiply-add, and nothing else: not element-wise ops (activations, gating, residual additions, bias of a
  convolution), normalisation, softmax, pooling, padding or resampling. MACs = FLOPs / 2 for exactly those ops,
  which is also what ptflops/thop count for convolutions and linear layers; unlike them it also sees matrix
  products written as ``a @ b`` (attention).
* Latency: ``net.eval()``, ``torch.inference_mode``, warm-up forwards, then the median of timed forwards of the same
  input; the caller sets the thread count (``torch.set_num_threads``).

Input shapes are (1, C, H, W); networks that pad inside (Maxim to a multiple of 64, Uformer to its window grid,
the ConStyle networks to 8) are counted and timed with the padding they do.
"""
import difflib
import inspect
import os
import os.path as osp
import statistics
import time
from copy import deepcopy

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from irtoolkit.archs.constyle_arch import ConStyle
from irtoolkit.config.recipe import load_recipe
from irtoolkit.utils.errors import OptionError
from irtoolkit.utils.registry import ARCH_REGISTRY, build_network, get_from_registry

__all__ = [
    'parse_size', 'restoration_archs', 'base_network_options', 'inference_options', 'build_for_inference',
    'input_channels', 'count_parameters', 'count_flops', 'measure_latency', 'NOT_RESTORATION'
]

# ops FlopCounterMode counts, grouped for the report (the rest of its registry is backward or GPU-only kernels)
CONV_OPS = {'convolution', '_convolution', 'convolution_overrideable', '_slow_conv2d_forward', 'cudnn_convolution'}

# registered irtoolkit archs that are not image -> image restoration networks, and why ``--all`` leaves them out
NOT_RESTORATION = {
    'ConStyle': 'the ConStyle prior alone (an encoder); counted inside every ConStyle* network (prior column)',
    'PatchGANDiscriminator': 'a discriminator: scores images for an adversarial loss, restores nothing',
    'NegativeGenerator': 'makes hard negatives for a contrastive loss from embeddings, not images',
}


def parse_size(text):
    """``'256'`` -> (256, 256); ``'128x96'`` -> (128, 96) as (H, W)."""
    parts = str(text).lower().replace('×', 'x').split('x')
    try:
        h, w = (int(parts[0]), int(parts[0])) if len(parts) == 1 else tuple(int(p) for p in parts)
    except ValueError:
        h = w = 0
    if len(parts) > 2 or h < 1 or w < 1:
        raise OptionError(f'--size: expected N or HxW with positive integers (e.g. 256 or 128x96), got {text!r}')
    return h, w


def base_network_options(name, networks_dir):
    """``network_g`` of ``networks_dir/NAME.yml`` when that file exists, else ``{type: NAME}`` for a registered
    arch (its defaults); an unknown name raises OptionError with the closest names."""
    path = osp.join(networks_dir, f'{name}.yml')
    if osp.isfile(path):
        opt = load_recipe(path).get('network_g')
        if not isinstance(opt, dict):
            raise OptionError(f'{path}: network_g: missing (expected the network options)')
        return dict(opt), path
    archs = dict(iter(ARCH_REGISTRY))
    if name in archs:
        return {'type': name}, None
    configs = sorted(f[:-4] for f in os.listdir(networks_dir) if f.endswith('.yml')) if osp.isdir(networks_dir) else []
    close = difflib.get_close_matches(name, sorted(set(archs) | set(configs)), n=5, cutoff=0.5)
    hint = f'closest: {", ".join(close)}' if close else f'configs in {networks_dir}: {", ".join(configs)}'
    raise OptionError(f'--arch: unknown network {name!r} (no {networks_dir}/{name}.yml and no registered arch); {hint}')


def _required_arguments(cls):
    try:
        params = inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):
        return []
    return [n for n, p in params.items() if n != 'self' and p.default is p.empty
            and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def restoration_archs(networks_dir):
    """The restoration networks irtoolkit registers: ``(names, skipped)``, ``names`` sorted, ``skipped`` a dict
    name -> why it is not one (:data:`NOT_RESTORATION`, or a building block that needs arguments and has no
    ``networks_dir/NAME.yml``). Archs registered by plugins or other packages are not listed."""
    names, skipped = [], {}
    for name, cls in sorted(ARCH_REGISTRY):
        if not getattr(cls, '__module__', '').startswith('irtoolkit.archs'):
            continue
        required = _required_arguments(cls)
        if name in NOT_RESTORATION:
            skipped[name] = NOT_RESTORATION[name]
        elif required and not osp.isfile(osp.join(networks_dir, f'{name}.yml')):
            skipped[name] = (f'a building block (needs {", ".join(required)}); counted inside the networks that '
                             'use it')
        else:
            names.append(name)
    return names, skipped


def inference_options(net_opt, keep_train=False, key='network'):
    """``net_opt`` as inference builds it: ``Train: false`` for an arch whose constructor takes ``Train`` (the
    ConStyle networks: no key encoder, no queue) unless ``keep_train``. Returns ``(options, note)``; ``key`` names
    the options in error messages."""
    opt = deepcopy(dict(net_opt))
    cls = get_from_registry(ARCH_REGISTRY, opt.get('type'), key)
    if keep_train or 'Train' not in inspect.signature(cls.__init__).parameters:
        return opt, ''
    opt['Train'] = False
    return opt, 'Train=False'


def build_for_inference(net_opt, key='network', seed=0):
    """Build ``net_opt`` (already through :func:`inference_options`) in eval mode; ``key`` names the options in
    error messages; ``seed`` fixes the weights."""
    torch.manual_seed(seed)
    return build_network(net_opt, key).eval()


def input_channels(net):
    """Image channels the network takes: ``in_channels`` of its first Conv2d (module order), else 3."""
    conv = next((m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))), None)
    return conv.in_channels if conv is not None else 3


def _prior(net):
    """``(name, module)`` of the first ConStyle prior inside ``net`` (not ``net`` itself), else ``(None, None)``."""
    return next(((n, m) for n, m in net.named_modules() if n and isinstance(m, ConStyle)), (None, None))


def count_parameters(net):
    """``{'total', 'trainable', 'prior', 'prior_share'}``; ``prior`` (ConStyle's parameters) and ``prior_share``
    (its fraction of ``total``) are None for a network without a ConStyle prior."""
    total = sum(p.numel() for p in net.parameters())
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    _, prior = _prior(net)
    prior_n = sum(p.numel() for p in prior.parameters()) if prior is not None else None
    share = prior_n / total if prior_n is not None and total else None
    return {'total': total, 'trainable': trainable, 'prior': prior_n, 'prior_share': share}


def _op_name(op):
    # OpOverloadPacket prints as 'aten.convolution'
    return str(op).split('.')[-1]


def _subtree_flops(counts, prefix):
    """FLOPs of the module ``prefix`` from FlopCounterMode's per-module table: its own entry when it was called,
    else the sum over its outermost called descendants (ConStyle's ``encode`` calls ``encoder_q`` directly)."""
    keys = [k for k in counts if k == prefix or k.startswith(prefix + '.')]
    outer = [k for k in keys if not any(k != o and k.startswith(o + '.') for o in keys)]
    return sum(sum(counts[k].values()) for k in outer)


@torch.inference_mode()
def count_flops(net, size, channels=None):
    """FLOPs of one forward of a (1, C, H, W) input (``size`` = (H, W)): ``{'flops', 'macs', 'conv_macs',
    'matmul_macs', 'by_op', 'prior_macs'}``; ``by_op`` maps aten op -> FLOPs; ``prior_macs`` is None without a
    ConStyle prior. Counts only convolutions and matrix products (see the module docstring)."""
    channels = channels or input_channels(net)
    x = torch.rand(1, channels, *size, generator=torch.Generator().manual_seed(0))
    counter = FlopCounterMode(display=False)
    with counter:
        net(x)
    counts = counter.get_flop_counts()
    by_op = {_op_name(op): int(v) for op, v in counts.get('Global', {}).items()}
    total = sum(by_op.values())
    conv = sum(v for op, v in by_op.items() if op in CONV_OPS)
    name, _ = _prior(net)
    prior = _subtree_flops(counts, f'{type(net).__name__}.{name}') // 2 if name else None
    return {'flops': total, 'macs': total // 2, 'conv_macs': conv // 2, 'matmul_macs': (total - conv) // 2,
            'by_op': by_op, 'prior_macs': prior}


@torch.inference_mode()
def measure_latency(net, size, channels=None, warmup=2, runs=5, budget_s=0.0):
    """Median wall time of ``runs`` forwards of one (1, C, H, W) input after ``warmup`` forwards.

    Returns ``{'median_s', 'times_s', 'warmup_s', 'skipped'}``. With ``budget_s`` > 0, the timed runs are skipped
    (``skipped`` says why, ``median_s`` None) when the warm-ups show that they would take longer than that."""
    channels = channels or input_channels(net)
    x = torch.rand(1, channels, *size, generator=torch.Generator().manual_seed(0))
    warm = []
    for _ in range(max(1, warmup)):
        start = time.perf_counter()
        net(x)
        warm.append(time.perf_counter() - start)
    per_run = min(warm)
    if budget_s and per_run * runs > budget_s:
        return {'median_s': None, 'times_s': [], 'warmup_s': warm,
                'skipped': f'not timed: {runs} runs of ~{per_run:.1f} s exceed the {budget_s:g} s budget'}
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        net(x)
        times.append(time.perf_counter() - start)
    return {'median_s': statistics.median(times), 'times_s': times, 'warmup_s': warm, 'skipped': None}
