"""Export a restoration network to ONNX (dynamic batch, height and width) or TorchScript, and check it.

    irtk-export -opt options/test/NAFNet/test_NAFNet_tiny.yml --weights net_g_latest.pth --out nafnet.onnx --check
    irtk-export --arch ConStyleNAFNet --weights constyle.pth --out constyle.onnx --check
    irtk-export --net '{type: NAFNet, width: 8}' --format torchscript --out nafnet.pt --check
    OMP_NUM_THREADS=2 irtk-export --all --threads 2          # every arch: export, parity, ORT vs PyTorch speed
    python tools/export.py ...                               # the same command

The network is ``network_g`` of an options file (``-opt``), the options of ``--arch NAME``
(``options/_base_/networks/NAME.yml`` when it exists, else the constructor's defaults) or ``--net`` YAML;
``--weights`` loads a checkpoint into it (``params_ema`` before ``params``, see ``--param-key``; without it the
network keeps its initialisation). ConStyle networks are built with ``Train=False``: the prior is computed inside
the exported graph from the degraded image, the only input. The exported model takes ``lq`` (B, C, H, W) float32
in [0, 1] at any H, W and returns ``output`` (B, C, H, W) (times the scale for super-resolution networks); the
padding archs do inside is part of the graph (:mod:`irtoolkit.inference.export`).

``--check`` runs the exported file (onnxruntime, or torch.jit.load) and the PyTorch network at 64x64 and 75x97
and fails (exit status 1, one line) when the max |difference| exceeds 1e-4. Bad input (a missing file, an unknown
arch, a checkpoint that does not fit) ends with one line and exit status 2. ``--all`` prints a Markdown table
(docs/deployment.md) and exits 1 when an exported model disagrees with its network.
"""
import argparse
import datetime
import difflib
import os
import os.path as osp
import platform
import sys

RATIO_NOTE = 'ratio = ORT ms / PyTorch ms (below 1: onnxruntime is faster)'


def _cpu_name():
    try:
        with open('/proc/cpuinfo', encoding='utf-8') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _network_options(args, networks_dir):
    from irtoolkit.config.options import yaml_load
    from irtoolkit.inference.export_survey import network_config, registered_archs
    from irtoolkit.inference.loader import network_options
    from irtoolkit.utils.errors import OptionError
    from irtoolkit.utils.registry import ARCH_REGISTRY
    if args.opt:
        return network_options(args.opt), args.opt
    if args.arch:
        if args.arch not in ARCH_REGISTRY:
            close = difflib.get_close_matches(args.arch, list(ARCH_REGISTRY.keys()), n=5, cutoff=0.5)
            hint = (f'closest registered: {", ".join(close)}' if close else
                    f'irtoolkit\'s: {", ".join(registered_archs())}')
            raise OptionError(f'--arch: unknown arch {args.arch!r}; {hint}')
        return network_config(args.arch, networks_dir)
    try:
        net_opt = yaml_load(args.net)
    except Exception as err:
        raise OptionError(f'--net: not valid YAML: {str(err).splitlines()[0]}') from None
    if not isinstance(net_opt, dict) or 'type' not in net_opt:
        raise OptionError(f'--net: expected a mapping like {{type: NAFNet, ...}}, got {args.net!r}')
    return net_opt, '--net'


def export_one(args, networks_dir):
    from irtoolkit.inference.export import (CHECK_SIZES, INPUT_NAME, OUTPUT_NAME, PARITY_TOLERANCE, ExportError,
                                            build_for_export, export_onnx, export_torchscript, onnx_max_diff,
                                            torchscript_max_diff)
    from irtoolkit.utils.errors import UserError
    if not args.out:
        raise UserError('--out: required (the file to write)')
    if args.weights and not osp.isfile(args.weights):
        raise UserError(f'--weights: not found: {args.weights}')
    net_opt, source = _network_options(args, networks_dir)
    try:
        net, used = build_for_export(net_opt, args.weights, args.param_key, not args.no_strict)
    except (KeyError, ValueError, RuntimeError) as err:  # a checkpoint or an argument that does not fit
        if isinstance(err, UserError):
            raise
        raise UserError(str(err).strip('"').splitlines()[0]) from None
    if not args.weights:
        print('warning: no --weights: the network keeps its initialisation', file=sys.stderr)
    try:
        if args.format == 'onnx':
            exporter, failures = export_onnx(net, args.out, args.opset, args.exporter)
            for name, why in failures.items():
                print(f'note: the {name} exporter failed ({why}); used {exporter}', file=sys.stderr)
            what = f'ONNX opset {args.opset}, {exporter} exporter'
        else:
            export_torchscript(net, args.out)
            what = 'TorchScript (torch.jit.trace)'
    except ExportError as err:
        print(f'error: {net_opt["type"]}: {args.format} export failed: {err}', file=sys.stderr)
        return 1
    weights = used or ('state dict' if args.weights else 'no weights')
    print(f'wrote {args.out}: {net_opt["type"]} from {source} [{weights}], {what}; input {INPUT_NAME} (B, C, H, W) '
          f'float32, output {OUTPUT_NAME} (B, C, H*s, W*s)')
    if args.check:
        diffs = (onnx_max_diff if args.format == 'onnx' else torchscript_max_diff)(net, args.out, CHECK_SIZES)
        text = ', '.join(f'{h}x{w} {d:.2e}' for (h, w), d in zip(CHECK_SIZES, diffs))
        if max(diffs) > PARITY_TOLERANCE:
            print(f'error: {args.out}: max |exported - PyTorch| {text}: above {PARITY_TOLERANCE:g}', file=sys.stderr)
            return 1
        print(f'check: max |exported - PyTorch| {text} (<= {PARITY_TOLERANCE:g})')
    return 0


def _fmt_ms(value):
    return '-' if value is None else f'{value:.0f}' if value >= 100 else f'{value:.1f}'


def _fmt_diffs(diffs, tolerance):
    if diffs is None:
        return '-'
    text = ' / '.join(f'{d:.1e}' for d in diffs)
    return text if max(diffs) <= tolerance else f'**{text}** (above {tolerance:g})'


def _cell(text):
    return str(text).replace('|', '\\|').replace('\n', ' ')


def table_lines(rows, tolerance, sizes):
    """The Markdown table of ``survey_arch`` rows (skipped archs listed below it)."""
    at = ' / '.join(f'{h}x{w}' for h, w in sizes)
    lines = [f'| arch | configuration | ONNX exported (or why not) | max abs diff {at} | TorchScript (yes / why not) '
             '| ORT ms | PyTorch ms | ratio |', '|---|---|---|---|---|---:|---:|---:|']
    for r in rows:
        if r['skipped']:
            continue
        config = f'{r["config"]}, {r["params"] / 1e6:.2f} M'
        onnx = f'yes ({r["exporter"]})' if r['onnx'] else f'no: {r["onnx_error"]}'
        if r['onnx'] and r['onnx_error']:
            onnx += f'; {r["onnx_error"]}'
        ts = ('yes (trace)' if r['ts_diffs'] and max(r['ts_diffs']) <= tolerance else
              f'no: traced graph differs by {max(r["ts_diffs"]):.1e}' if r['ts_diffs'] else f'no: {r["ts_error"]}')
        ratio = f'{r["ort_ms"] / r["torch_ms"]:.2f}' if r['ort_ms'] and r['torch_ms'] else '-'
        lines.append(f'| {r["arch"]} | {_cell(config)} | {_cell(onnx)} | {_fmt_diffs(r["diffs"], tolerance)} | '
                     f'{_cell(ts)} | {_fmt_ms(r["ort_ms"])} | {_fmt_ms(r["torch_ms"])} | {ratio} |')
    skipped = [r for r in rows if r['skipped']]
    if skipped:
        lines += ['', 'Not image-to-image restoration networks (skipped):', '']
        lines += [f'- {r["arch"]}: {r["skipped"]}' for r in skipped]
    return lines


def export_all(args, networks_dir):
    import onnxruntime
    import torch

    from irtoolkit.inference.export import CHECK_SIZES, DEFAULT_OPSET, PARITY_TOLERANCE, one_line
    from irtoolkit.inference.export_survey import empty_row, registered_archs, survey_arch
    from irtoolkit.utils.errors import UserError
    names = registered_archs()
    if args.only:
        wanted = [n.strip() for n in args.only.split(',') if n.strip()]
        unknown = [n for n in wanted if n not in names]
        if unknown:
            raise UserError(f'--only: not an irtoolkit arch: {", ".join(unknown)}; registered: {", ".join(names)}')
        names = wanted
    size = tuple(int(v) for v in args.time_size.lower().split('x')) if args.time_size != '0' else None
    log = (lambda msg: print(msg, file=sys.stderr, flush=True))
    rows = []
    for name in names:
        try:
            rows.append(survey_arch(name, networks_dir, args.work_dir, time_size=size, threads=args.threads,
                                    runs=args.runs, opset=args.opset or DEFAULT_OPSET, exporter=args.exporter,
                                    log=log))
        except Exception as err:  # one arch's failure (memory, a crash in a runtime) must not end the survey
            rows.append(dict(empty_row(name, '?'), onnx=False, onnx_error=f'survey failed: {one_line(err)}',
                             params=0))
        if rows[-1]['skipped']:
            log(f'{name}: skipped ({rows[-1]["skipped"]})')
    timing = (f'timing at {size[0]}x{size[1]}, batch 1, median of {args.runs} runs after 2 warm-ups, PyTorch and '
              f'onnxruntime alternating' if size else 'no timing')
    print(f'irtk-export --all: {datetime.date.today()}, CPU {_cpu_name()}, torch {torch.__version__}, onnxruntime '
          f'{onnxruntime.__version__}, opset {args.opset}, {args.threads} thread(s) for both (torch.set_num_threads, '
          f'ORT intra-op; OMP_NUM_THREADS={os.environ.get("OMP_NUM_THREADS", "unset")}), ONNX exporter '
          f'{args.exporter}, {timing}; '
          f'{RATIO_NOTE}; random (seeded) weights\n')
    print('\n'.join(table_lines(rows, PARITY_TOLERANCE, CHECK_SIZES)))
    bad = [r['arch'] for r in rows if r['diffs'] and max(r['diffs']) > PARITY_TOLERANCE]
    if bad:
        print(f'error: exported model differs from PyTorch by more than {PARITY_TOLERANCE:g}: {", ".join(bad)}',
              file=sys.stderr)
    return 1 if bad else 0


def main(argv=None):
    from irtoolkit.inference.export import DEFAULT_OPSET
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument('-opt', '--opt', help='options YAML with a network_g block')
    src.add_argument('--arch', help='a registered arch; its options/_base_/networks/<arch>.yml, else its defaults')
    src.add_argument('--net', help="network options as YAML, e.g. '{type: NAFNet, width: 16}'")
    src.add_argument('--all', action='store_true', help='every irtoolkit arch: export, parity, speed; Markdown table')
    p.add_argument('--weights', help='checkpoint (.pth / .safetensors) to load into the network')
    p.add_argument('--param-key', default='auto', help='auto (params_ema, else params), params, params_ema')
    p.add_argument('--no-strict', action='store_true', help='allow missing/unexpected checkpoint keys')
    p.add_argument('--format', choices=('onnx', 'torchscript'), default='onnx')
    p.add_argument('--out', help='the file to write (.onnx or .pt)')
    p.add_argument('--check', action='store_true', help='compare with PyTorch at 64x64 and 75x97 (max |diff| 1e-4)')
    p.add_argument('--opset', type=int, default=DEFAULT_OPSET, help='ONNX opset (default %(default)s)')
    p.add_argument('--exporter', choices=('auto', 'dynamo', 'torchscript'), default='auto',
                   help='ONNX exporter: dynamo (torch.export), torchscript, auto = dynamo else torchscript')
    p.add_argument('--networks-dir', help='folder of <arch>.yml network options (default: options/_base_/networks)')
    p.add_argument('--threads', type=int, default=2, help='--all: threads for PyTorch and onnxruntime alike')
    p.add_argument('--time-size', default='128x128', help='--all: HxW of the timed input; 0 = no timing')
    p.add_argument('--runs', type=int, default=3, help='--all: timed runs per runtime (median)')
    p.add_argument('--only', help='--all: a comma-separated subset of archs')
    p.add_argument('--work-dir', help='--all: where the exported files are written (and removed) one at a time')
    p.add_argument('--debug', action='store_true', help='show tracebacks')
    args = p.parse_args(argv)

    from irtoolkit.cli import checkout_root
    from irtoolkit.utils.errors import UserError
    networks_dir = args.networks_dir or osp.join(checkout_root(), 'options', '_base_', 'networks')
    try:
        if args.all and (args.weights or args.out):
            raise UserError('--all: exports every arch with its initial weights to temporary files; '
                            'drop --weights/--out')
        if args.networks_dir and not osp.isdir(args.networks_dir):
            raise UserError(f'--networks-dir: not a folder: {args.networks_dir}')
        return export_all(args, networks_dir) if args.all else export_one(args, networks_dir)
    except UserError as err:
        if args.debug or os.environ.get('IRTK_TRACEBACK') == '1':
            raise
        print(f'error: {err}', file=sys.stderr)
        return 2


if __name__ == '__main__':
    sys.exit(main())
