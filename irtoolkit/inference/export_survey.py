"""Which registered networks export, how exactly, and how fast onnxruntime runs them against PyTorch on the CPU:
the rows of ``irtk-export --all`` (docs/deployment.md).

For every arch registered by a module under ``irtoolkit.archs``: its configuration is ``network_g`` of
``options/_base_/networks/<Name>.yml`` when that file exists, else the constructor's defaults (``Train`` false
for ConStyle networks, :func:`irtoolkit.inference.export.inference_options`). Archs that are not image-to-image
networks are skipped with the reason :func:`image_to_image_problem` finds (a block whose constructor needs a
channel count, a critic whose output is not an image of the input's size, a prior encoder that returns latents).
The weights are the constructor's initialisation (seeded): parity and speed do not depend on trained values.
"""
import os
import os.path as osp
import statistics
import tempfile
import time

import torch

from irtoolkit.config.recipe import load_recipe
from irtoolkit.inference.export import (CHECK_SIZES, DEFAULT_OPSET, ExportError, build_for_export, example_input,
                                        export_onnx, export_torchscript, one_line, onnx_max_diff, onnx_session,
                                        torchscript_max_diff)
from irtoolkit.utils.errors import UserError
from irtoolkit.utils.registry import ARCH_REGISTRY


def registered_archs(prefix='irtoolkit.archs'):
    """Names of the archs registered by modules under ``prefix``, sorted."""
    return sorted(name for name, cls in ARCH_REGISTRY if cls.__module__.startswith(prefix))


def network_config(name, networks_dir):
    """(``network_g`` options, where they come from) for arch ``name``."""
    path = osp.join(networks_dir, f'{name}.yml') if networks_dir else None
    if path and osp.isfile(path):
        net_opt = load_recipe(path).get('network_g')
        if isinstance(net_opt, dict) and net_opt.get('type') == name:
            return dict(net_opt), osp.relpath(path)
    return {'type': name}, 'constructor defaults'


@torch.no_grad()
def image_to_image_problem(net, size=(32, 32)):
    """None when ``net`` (an :class:`~irtoolkit.inference.export.ImageToImage`) maps (1, C, H, W) to an image
    (1, C', sH, sW) with an integer scale s >= 1; else one line saying what it returns instead."""
    x = example_input(net, size)
    raw = net.net(x)
    try:
        out = net(x)
    except TypeError:  # _as_output found no image tensor
        return f'returns {_describe(raw)} for an image {tuple(x.shape)}, not an image'
    h, w = out.shape[-2:]
    if out.dim() != 4 or h < size[0] or h % size[0] or w * size[0] != h * size[1]:
        return f'output {tuple(out.shape)} for input {tuple(x.shape)}: not an image at a multiple of the input size'
    return None


def _describe(value, depth=0):
    """``(1, 128)``-style shapes of a network's return value, nested lists/tuples/dicts spelt out (two levels)."""
    if torch.is_tensor(value):
        return str(tuple(value.shape))
    if isinstance(value, (list, tuple)) and depth < 2:
        return '[' + ', '.join(_describe(v, depth + 1) for v in value) + ']'
    if isinstance(value, dict) and depth < 2:
        return '{' + ', '.join(f'{k}: {_describe(v, depth + 1)}' for k, v in value.items()) + '}'
    return type(value).__name__


def parameter_count(net):
    return sum(p.numel() for p in net.parameters())


@torch.no_grad()
def time_side_by_side(net, session, size, threads, warmup=2, runs=3):
    """Median ms of PyTorch eager and of onnxruntime on one (1, C, H, W) input, each with ``threads`` threads;
    the two are run alternately, so both see the same machine load. Returns (ort_ms, torch_ms)."""
    from irtoolkit.inference.export import INPUT_NAME, OUTPUT_NAME
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = example_input(net, size)
        feed = {INPUT_NAME: x.numpy()}
        for _ in range(warmup):
            net(x)
            session.run([OUTPUT_NAME], feed)
        torch_ms, ort_ms = [], []
        for _ in range(runs):
            start = time.perf_counter()
            net(x)
            torch_ms.append((time.perf_counter() - start) * 1e3)
            start = time.perf_counter()
            session.run([OUTPUT_NAME], feed)
            ort_ms.append((time.perf_counter() - start) * 1e3)
        return statistics.median(ort_ms), statistics.median(torch_ms)
    finally:
        torch.set_num_threads(previous)


def empty_row(name, config):
    return dict(arch=name, config=config, skipped=None, params=None, onnx=None, exporter=None, onnx_error=None,
                diffs=None, torchscript=None, ts_error=None, ts_diffs=None, ort_ms=None, torch_ms=None, export_s=None)


def survey_arch(name, networks_dir, work_dir=None, sizes=CHECK_SIZES, time_size=(128, 128), threads=2, runs=3,
                opset=DEFAULT_OPSET, seed=0, exporter='auto', log=print):
    """One row of the ``--all`` table for arch ``name`` (a dict; ``skipped`` holds a reason for non-restoration
    archs). ONNX and TorchScript files go to ``work_dir`` (a temporary folder, removed, when None); ``exporter`` as
    in :func:`~irtoolkit.inference.export.export_onnx`."""
    net_opt, source = network_config(name, networks_dir)
    row = empty_row(name, source)
    torch.manual_seed(seed)
    try:
        net, _ = build_for_export(net_opt)
    except (UserError, TypeError, ValueError) as err:
        row['skipped'] = f'not a network built from options alone: {one_line(err)}'
        return row
    problem = image_to_image_problem(net)
    if problem:
        row['skipped'] = problem
        return row
    row['params'] = parameter_count(net)
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        onnx_path, ts_path = osp.join(tmp, f'{name}.onnx'), osp.join(tmp, f'{name}.pt')
        start = time.perf_counter()
        try:
            row['exporter'], failures = export_onnx(net, onnx_path, opset, exporter)
            row['onnx'] = True
            row['onnx_error'] = '; '.join(f'{k}: {v}' for k, v in failures.items()) or None
        except ExportError as err:
            row['onnx'], row['onnx_error'] = False, str(err)
        row['export_s'] = time.perf_counter() - start
        log(f'{name}: ONNX {"by " + row["exporter"] if row["onnx"] else "failed"} in {row["export_s"]:.0f} s')
        if row['onnx']:
            try:
                session = onnx_session(onnx_path, threads)
                row['diffs'] = onnx_max_diff(net, onnx_path, sizes, seed, session)
            except Exception as err:  # exported, but onnxruntime cannot run it at some size
                row['onnx'], row['onnx_error'] = False, f'exported, but onnxruntime fails: {one_line(err)}'
        if row['onnx'] and time_size:
            row['ort_ms'], row['torch_ms'] = time_side_by_side(net, session, time_size, threads, runs=runs)
        session = None
        if osp.exists(onnx_path):
            os.remove(onnx_path)
        try:
            export_torchscript(net, ts_path)
        except ExportError as err:
            row['torchscript'], row['ts_error'] = False, str(err)
        else:
            try:
                row['ts_diffs'] = torchscript_max_diff(net, ts_path, sizes, seed)
                row['torchscript'] = True
            except Exception as err:  # a trace that fixed a size fails at another one
                row['torchscript'], row['ts_error'] = False, f'the trace fails at another size: {one_line(err)}'
    return row
