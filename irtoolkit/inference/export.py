"""Export a restoration network to ONNX (any height and width) and TorchScript, and check the exported model
against the network it came from.

What is exported: :class:`ImageToImage` around the network, ``lq`` (B, C, H, W) float32 in [0, 1] ->
``output`` (B, C_out, H * s, W * s) (the network's own output: tensors, tuples and dicts are reduced to the image
as :mod:`irtoolkit.inference.tiling` does). Batch, height and width are dynamic. A ConStyle network
(``ConStyleNAFNet`` & co., IRConStyle, arXiv 2402.15784) is built with ``Train=False`` (:func:`inference_options`),
so its forward runs the query encoder on the degraded image and feeds the prior to the restorer: the prior is part
of the exported graph and the model takes the degraded image alone.

Why two arch helpers are swapped while exporting: the archs pad the input to a multiple of their down-sampling
factor with :func:`irtoolkit.archs.arch_util.pad_to_multiple`, which decides in Python (``if ph or pw``, reflect
or replicate). ``torch.export`` turns such a decision on a dynamic size into a guard and then specialises the
height and width to multiples of the factor (``h = 4 * _h``); ``torch.onnx.export`` alone silently falls back to
such a graph, which carries a free ``h`` but fails or mis-shapes at any other size. MAXIM's ``resize`` computes
sizes as ``int(h * ratio)`` through a float, which fixes ``h`` outright. :func:`graph_pad_to_multiple` computes the
same padded tensor with no Python branch on a size (index gathers for reflect/replicate, a zero pad of a possibly
empty width for constant) and :func:`graph_resize` the same size in integers; :func:`traceable_sizes` puts them in
place of the originals in every module that imported those for the time of an export, so the exported graph pads
and resizes exactly as the network does at every size (``tests/tools/test_export.py`` checks the padding agrees
bit for bit, small sizes where reflect falls back to replicate included). ``arch_util`` and ``maxim_arch`` could
adopt the two and drop the swap.

Exporters: ONNX through ``torch.export`` + ``torch.onnx.export(dynamo=True)`` (needs ``onnxscript``); when that
fails, the TorchScript-based exporter (``dynamo=False``, ``dynamic_axes``). TorchScript through ``torch.jit.trace``
(sizes are traced, so the trace holds at other sizes; checked by :func:`torchscript_max_diff`).
"""
import contextlib
import inspect
import io
import math
import os
import os.path as osp
import sys
import warnings
from fractions import Fraction

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from irtoolkit.archs import arch_util, maxim_arch
from irtoolkit.inference.loader import load_network
from irtoolkit.inference.tiling import _as_output
from irtoolkit.utils.registry import ARCH_REGISTRY, get_from_registry

DEFAULT_OPSET = 20  # torch 2.14's exporter default (it supports 18-23); onnxruntime 1.32 runs all of them
CHECK_SIZES = ((64, 64), (75, 97))  # square, and odd sides that no arch's multiple divides: the padding runs
PARITY_TOLERANCE = 1e-4
INPUT_NAME, OUTPUT_NAME = 'lq', 'output'
_FLOAT_RESIZE = maxim_arch.resize  # the original, also while traceable_sizes has swapped the module's name


class ExportError(RuntimeError):
    """An exporter failed on a network; the message is one line saying why."""


# ---------------------------------------------------------------------------------------------- the network
class ImageToImage(nn.Module):
    """``net`` with one image in and one image out: (B, C, H, W) -> (B, C_out, H * s, W * s)."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, lq):
        return _as_output(self.net(lq))


def inference_options(net_opt):
    """``net_opt`` for inference: ``Train: false`` when the arch takes ``Train`` (ConStyle networks: no momentum key
    encoder and no queue, the prior computed from the input inside ``forward``)."""
    cls = get_from_registry(ARCH_REGISTRY, net_opt.get('type'), 'network_g')
    opt = dict(net_opt)
    if 'Train' in inspect.signature(cls.__init__).parameters:
        opt['Train'] = False
    return opt


def build_for_export(net_opt, weights=None, param_key='auto', strict=True):
    """(:class:`ImageToImage` in eval mode on the CPU, checkpoint entry used or None)."""
    net, used = load_network(inference_options(net_opt), weights, param_key, strict, 'cpu')
    return ImageToImage(net).eval(), used


# ---------------------------------------------------------------------------------------------- padding
def graph_pad_to_multiple(x, multiple, mode='constant'):
    """:func:`irtoolkit.archs.arch_util.pad_to_multiple` without a Python branch on a size.

    Bottom/right padding of (B, C, H, W) to multiples of ``multiple`` (int or (mh, mw)); returns (x, (H, W)).
    ``reflect`` falls back to ``replicate`` on both axes when a pad reaches the size (as ``pad_to_multiple``
    does); that choice is made on tensors (the smallest reflected index is negative), so it stays in the graph.
    """
    mh, mw = (multiple, multiple) if isinstance(multiple, int) else multiple
    h, w = x.shape[-2:]
    ph, pw = (-h) % mh, (-w) % mw  # as a modulo the exporter knows 0 <= pad < multiple (no guard on the sign)
    if mode == 'constant':
        return F.pad(x, (0, pw, 0, ph)), (h, w)
    rows, cols = torch.arange(h + ph, device=x.device), torch.arange(w + pw, device=x.device)
    if mode == 'reflect':
        ref_rows = torch.where(rows < h, rows, 2 * (h - 1) - rows)
        ref_cols = torch.where(cols < w, cols, 2 * (w - 1) - cols)
        replicate = (ref_rows.min() < 0) | (ref_cols.min() < 0)
        rows = torch.where(replicate, rows.clamp(max=h - 1), ref_rows)
        cols = torch.where(replicate, cols.clamp(max=w - 1), ref_cols)
    elif mode == 'replicate':
        rows, cols = rows.clamp(max=h - 1), cols.clamp(max=w - 1)
    else:
        raise ValueError(f'graph_pad_to_multiple: mode must be constant, reflect or replicate, got {mode!r}')
    return x.index_select(-2, rows).index_select(-1, cols), (h, w)


def graph_resize(x, ratio):
    """:func:`irtoolkit.archs.maxim_arch.resize` with the output size in integer arithmetic.

    ``int(h * ratio)`` goes through a float, which ``torch.export`` can only follow by fixing ``h``; for a ratio
    p / 2**k (MAXIM's 1/4 ... 4) ``h * p // 2**k`` is the same integer (the float product is exact), and stays
    symbolic. Other ratios keep the float formula."""
    if ratio == 1:
        return x
    frac = Fraction(ratio)
    if frac.denominator & (frac.denominator - 1):  # not a power of two: h * ratio may round in float
        return _FLOAT_RESIZE(x, ratio)
    h, w = x.shape[-2:]
    size = (h * frac.numerator // frac.denominator, w * frac.numerator // frac.denominator)
    return F.interpolate(x, size=size, mode='bilinear', antialias=True)


def _graph_versions():
    """{arch helper: its export-friendly equivalent}."""
    return {arch_util.pad_to_multiple: graph_pad_to_multiple, _FLOAT_RESIZE: graph_resize}


@contextlib.contextmanager
def traceable_sizes():
    """Within the block, every loaded module that imported one of the archs' size helpers (``pad_to_multiple``,
    MAXIM's ``resize``; irtoolkit's archs and plugins alike) calls its export-friendly equivalent
    (:func:`graph_pad_to_multiple`, :func:`graph_resize`); restored on exit."""
    swapped = []
    for original, replacement in _graph_versions().items():
        name = original.__name__
        for module in list(sys.modules.values()):
            if getattr(module, name, None) is original:
                setattr(module, name, replacement)
                swapped.append((module, name, original))
    try:
        yield
    finally:
        for module, name, original in swapped:
            setattr(module, name, original)


# ---------------------------------------------------------------------------------------------- exporters
def example_input(net, size=(64, 64), batch=1, seed=0):
    channels = input_channels(net)
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(batch, channels, *size, generator=gen)


def input_channels(net):
    """Channels of the first convolution (3 when there is none)."""
    conv = next((m for m in net.modules() if isinstance(m, nn.Conv2d)), None)
    return conv.in_channels if conv is not None else 3


def one_line(err):
    """``Type: first line`` of an exception, for tables and error messages."""
    text = next((ln.strip() for ln in str(err).splitlines() if ln.strip()), '')
    return f'{type(err).__name__}: {text}'[:300]


@contextlib.contextmanager
def _quiet():
    """Keep the exporters' progress lines and the TorchScript exporter's graph dump (printed on failure) off the
    terminal; what went wrong is in the exception. The dump comes from C++, so the file descriptors are redirected."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with open(os.devnull, 'w') as null, contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            os.dup2(null.fileno(), 1)
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)


def size_multiple(net):
    """The largest multiple a module of ``net`` pads its input to (``pad_multiple`` / ``padder_size``), else 8."""
    multiple = 8
    for module in net.modules():
        for name in ('pad_multiple', 'padder_size'):
            value = getattr(module, name, None)
            if isinstance(value, int):
                multiple = max(multiple, value)
            elif isinstance(value, (tuple, list)):
                multiple = max([multiple, *value])
    return multiple


def export_size(net):
    """(H, W) of the example input ``torch.export`` traces with: twice the padding multiple (at least 64).

    The example's sizes are the hints for every size decision left in the network; where a hint makes a count
    equal to 1 (one MAXIM window, one Uformer window at the lowest level, a 1x1 map), the exporter can only keep
    that by fixing the size to the example's, so the example has at least two of everything."""
    side = max(64, 2 * size_multiple(net))
    return side, side


def export_onnx(net, path, opset=DEFAULT_OPSET, exporter='auto', example_size=None):
    """Write ``net`` (an :class:`ImageToImage`) to ``path`` as ONNX with dynamic batch, height and width.

    ``exporter``: ``dynamo`` (``torch.export`` with dynamic dims, then ``torch.onnx.export``), ``torchscript``
    (the TorchScript-based exporter) or ``auto`` (dynamo, else torchscript). Returns ``(exporter used,
    {exporter: one-line error of those that failed})``; raises :class:`ExportError` when none worked.
    """
    order = {'auto': ('dynamo', 'torchscript'), 'dynamo': ('dynamo', ), 'torchscript': ('torchscript', )}[exporter]
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    # batch 1 would be specialised too: export treats sizes 0 and 1 as constants
    x = example_input(net, example_size or export_size(net), batch=2)
    failures = {}
    for name in order:
        try:
            with traceable_sizes(), warnings.catch_warnings(), torch.no_grad(), _quiet():
                warnings.simplefilter('ignore')
                (_export_dynamo if name == 'dynamo' else _export_torchscript_based)(net, x, path, opset)
            return name, failures
        except Exception as err:  # any exporter failure is a finding to report, not a crash
            failures[name] = one_line(err)
    raise ExportError('; '.join(f'{k}: {v}' for k, v in failures.items()))


def _export_dynamo(net, x, path, opset):
    try:
        import onnxscript  # noqa: F401  (the dynamo exporter's op library)
    except ImportError:
        raise ExportError('onnxscript is not installed (pip install onnxscript)') from None
    batch, height, width = (torch.export.Dim(name, min=1) for name in ('batch', 'height', 'width'))
    # torch.export first: it refuses to specialise a dynamic size (torch.onnx.export would fall back to a draft
    # export that silently fixes sizes to a multiple)
    # the guards left are about sizes equal to 1 (contiguity and broadcasting checks, e.g. NAFNet's LayerNorm2d
    # asking for a channels-last layout); they change no value, so they become runtime asserts, which the ONNX
    # graph does not carry (tests/tools/test_export.py runs sizes down to 1x1)
    program = torch.export.export(net, (x, ), dynamic_shapes={'lq': {0: batch, 2: height, 3: width}}, strict=False,
                                  prefer_deferred_runtime_asserts_over_guards=True)
    onnx_program = torch.onnx.export(program, (x, ), dynamo=True, opset_version=opset, input_names=[INPUT_NAME],
                                     output_names=[OUTPUT_NAME], optimize=True, verbose=False, report=False)
    onnx_program.save(path)


def _export_torchscript_based(net, x, path, opset):
    axes = {0: 'batch', 2: 'height', 3: 'width'}
    torch.onnx.export(net, (x, ), path, dynamo=False, opset_version=min(opset, 20), input_names=[INPUT_NAME],
                      output_names=[OUTPUT_NAME], dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: axes})


def export_torchscript(net, path, example_size=(61, 45)):
    """Write ``torch.jit.trace(net)`` to ``path`` (traced at a size no arch's multiple divides, so the padding is
    in the trace). Raises :class:`ExportError` with one line when tracing fails."""
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    try:
        with traceable_sizes(), warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter('ignore')
            traced = torch.jit.trace(net, example_input(net, example_size), check_trace=False)
        traced.save(path)
    except Exception as err:
        raise ExportError(one_line(err)) from err


# ---------------------------------------------------------------------------------------------- checks
def onnx_session(path, threads=None):
    """An onnxruntime CPU session; ``threads`` sets intra-op threads (inter-op 1), None leaves ORT's default."""
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # buffer-reuse warnings on dynamic shapes are noise here
    if threads:
        opts.intra_op_num_threads, opts.inter_op_num_threads = int(threads), 1
    return ort.InferenceSession(path, opts, providers=['CPUExecutionProvider'])


def _max_diff(reference, candidate):
    if tuple(reference.shape) != tuple(candidate.shape):
        return math.inf
    diff = np.abs(reference.astype(np.float64) - candidate.astype(np.float64))
    return float(diff.max()) if diff.size else 0.0


@torch.no_grad()
def onnx_max_diff(net, path, sizes=CHECK_SIZES, seed=0, session=None):
    """Max |PyTorch - onnxruntime| of ``net`` and the ONNX file at each (H, W) of ``sizes`` (inf on a shape
    mismatch); the input is uniform noise in [0, 1) from ``seed``."""
    session = session or onnx_session(path)
    diffs = []
    for i, size in enumerate(sizes):
        x = example_input(net, size, seed=seed + i)
        ref = net(x).numpy()
        out = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
        diffs.append(_max_diff(ref, out))
    return diffs


@torch.no_grad()
def torchscript_max_diff(net, path, sizes=CHECK_SIZES, seed=0):
    """Max |PyTorch - loaded TorchScript| at each (H, W) of ``sizes``."""
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        module = torch.jit.load(path)
    diffs = []
    for i, size in enumerate(sizes):
        x = example_input(net, size, seed=seed + i)
        diffs.append(_max_diff(net(x).numpy(), module(x).numpy()))
    return diffs
