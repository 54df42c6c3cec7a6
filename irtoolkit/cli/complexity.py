"""Parameters, FLOPs / MACs, CPU latency and peak memory of networks, as a Markdown table (or JSON).

    irtk-complexity --arch NAFNet_width32 --size 256 --size 128x96
    irtk-complexity --all --size 256 --threads 1            # every restoration network irtoolkit registers
    irtk-complexity -opt options/train/NAFNet/train_NAFNet_tiny.yml --size 128 --json
    irtk-complexity --net '{type: NAFNet, width: 64, enc_blk_nums: [1, 1, 1, 28]}' --size 256 --no-latency

(``python tools/complexity.py ...`` is the same command.)

Networks: ``--arch NAME`` takes ``network_g`` of ``options/_base_/networks/NAME.yml`` (or a registered arch's
defaults when there is no such file); ``--all`` every arch registered by irtoolkit's own modules except those that
are not image restoration networks (listed with the reason under the table); ``-opt`` a recipe's ``network_g``
(its ``plugins:`` imported); ``--net`` options given inline. Networks with a ``Train`` argument (ConStyle) are built
as for inference, ``Train=False`` (no key encoder and queue), unless ``--as-configured``.

Per network and ``--size`` (N or HxW, batch 1): parameters (total, trainable, the ConStyle prior's share), MACs
and FLOPs from torch's FlopCounterMode (convolutions and matrix products only, see
:mod:`irtoolkit.inference.complexity`), the median CPU latency of ``--runs`` forwards after ``--warmup`` ones at
``--threads`` threads, and the peak resident memory of one forward in a fresh process
(:mod:`irtoolkit.inference.peak_memory`). Progress goes to stderr; the table (or ``--json``) to stdout. Exit status
0, 2 for bad input (one line), 1 when a network failed at some size (its row says why).
"""
import argparse
import datetime
import json
import os
import os.path as osp
import platform
import sys

REFERENCE_NOTE = ('reference: the authors\' published count for this configuration at 256x256 (params M / GMACs; '
                  'irtoolkit.inference.reference_costs, explained in docs/complexity.md)')


def cpu_model():
    """The CPU's model name (/proc/cpuinfo on Linux), else what ``platform`` knows."""
    try:
        with open('/proc/cpuinfo', encoding='utf-8') as f:
            for line in f:
                if line.lower().startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _load_average():
    """1-minute load average (other processes competing for the CPUs), NaN where unknown."""
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return float('nan')


def collect_targets(args, networks_dir):
    """``([{label, type, source, key, net, note, plugins, base_dir, reference_key}], skipped)``, in the order
    given; ``skipped`` (with ``--all``) maps the archs left out to the reason."""
    from irtoolkit.config.recipe import load_recipe, yaml_load
    from irtoolkit.inference.complexity import base_network_options, inference_options, restoration_archs
    from irtoolkit.utils.errors import OptionError
    from irtoolkit.utils.registry import load_plugins

    targets, skipped = [], {}
    if args.opt:
        opt = load_recipe(args.opt)
        if not isinstance(opt.get('network_g'), dict):
            raise OptionError(f'{args.opt}: network_g: missing (expected the network options, e.g. {{type: NAFNet}})')
        base_dir = osp.dirname(osp.abspath(args.opt))
        load_plugins(opt.get('plugins'), base_dir=base_dir)
        targets.append(dict(label=opt['network_g'].get('type'), source=args.opt, raw=opt['network_g'],
                            key=f'{args.opt}: network_g', plugins=opt.get('plugins'), base_dir=base_dir,
                            reference_key=None))
    if args.net:
        raw = yaml_load(args.net)
        if not isinstance(raw, dict):
            raise OptionError(f'--net: expected a mapping like {{type: NAFNet, ...}}, got {args.net!r}')
        targets.append(dict(label=raw.get('type'), source='--net', raw=raw, key='--net', plugins=None,
                            base_dir=None, reference_key=None))
    names = list(args.arch or [])
    if args.all:
        listed, skipped = restoration_archs(networks_dir)
        names += [n for n in listed if n not in names]
    for name in names:
        raw, path = base_network_options(name, networks_dir)
        source = osp.relpath(path, args.repo) if path else 'registered defaults'
        targets.append(dict(label=name, source=source, raw=raw, key=f'{source}: network_g' if path else name,
                            plugins=None, base_dir=None, reference_key=name))
    for t in targets:
        t['net'], t['note'] = inference_options(t['raw'], args.as_configured, t['key'])
        t['type'] = t['net'].get('type')
    return targets, skipped


def measure_target(target, sizes, args):
    """Rows (one per size) for one network; a failure at one size is recorded in that row."""
    import torch

    from irtoolkit.inference.complexity import build_for_inference, count_flops, count_parameters, measure_latency
    from irtoolkit.inference.peak_memory import peak_forward_memory
    from irtoolkit.inference.reference_costs import REFERENCE_COSTS

    net = build_for_inference(target['net'], target['key'])
    params = count_parameters(net)
    rows = []
    for size in sizes:
        row = {'network': target['label'], 'type': target['type'], 'source': target['source'],
               'config_note': target['note'], 'input': list(size), 'params': params, 'flops': None,
               'latency': None, 'memory': None, 'reference': None, 'error': None}
        ref = REFERENCE_COSTS.get(target['reference_key'])
        if ref is not None and tuple(ref.size) == tuple(size):
            row['reference'] = ref._asdict()
        label = f'{target["label"]} {size[0]}x{size[1]}'
        try:
            row['flops'] = count_flops(net, size, args.channels)
            print(f'{label}: {params["total"] / 1e6:.3f} M params, {row["flops"]["macs"] / 1e9:.2f} GMACs',
                  file=sys.stderr, flush=True)
            if not args.no_latency:
                row['latency'] = measure_latency(net, size, args.channels, args.warmup, args.runs, args.time_budget)
                lat = row['latency']
                print(f'{label}: {lat["skipped"] or "median %.1f ms" % (lat["median_s"] * 1e3)}', file=sys.stderr,
                      flush=True)
            if not args.no_memory:
                row['memory'] = peak_forward_memory(target['net'], size, args.threads, args.channels,
                                                    target['plugins'], target['base_dir'])
                print(f'{label}: peak {row["memory"]["forward_peak_bytes"] / 2**20:.0f} MiB', file=sys.stderr,
                      flush=True)
        except (RuntimeError, ValueError) as err:  # a size the network cannot take, out of memory, ...
            row['error'] = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            print(f'{label}: FAILED: {row["error"]}', file=sys.stderr, flush=True)
        rows.append(row)
    del net
    torch.set_num_threads(args.threads)  # a plugin may have changed it
    return rows


def _m(n):
    return f'{n / 1e6:.3f}'


def _g(n):
    g = n / 1e9
    return f'{g:.2f}' if g >= 1 or g == 0 else f'{g:.3g}'  # three significant digits for small networks


def markdown(report):
    """The report as Markdown: a header line, the table, the notes."""
    load = report['load_average']
    lines = [f'Measured {report["date"]} on {report["cpu"]} ({report["logical_cpus"]} logical CPUs; load average '
             f'{load["start"]:.2f} at the start, {load["end"]:.2f} at the end), torch {report["torch"]}, '
             f'{report["threads"]} thread(s); latency: median of {report["runs"]} forwards after {report["warmup"]} '
             'warm-ups, batch 1, fp32, eval, inference_mode.', '',
             '| network | input | params (M) | trainable (M) | ConStyle prior (M, share) | GMACs | conv GMACs | '
             'matmul GMACs | prior GMACs | GFLOPs | CPU latency, ms (min-max) | peak memory (MiB) | reference |',
             '|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|']
    for r in report['rows']:
        p, f, lat, mem, ref = r['params'], r['flops'], r['latency'], r['memory'], r['reference']
        name = r['network'] + (f' ({r["config_note"]})' if r['config_note'] else '')
        prior = f'{_m(p["prior"])} ({p["prior_share"]:.1%})' if p['prior'] is not None else '-'
        if f is None:
            cells = ['-'] * 5
        else:
            cells = [_g(f['macs']), _g(f['conv_macs']), _g(f['matmul_macs']),
                     _g(f['prior_macs']) if f['prior_macs'] is not None else '-', _g(f['flops'])]
        if lat is None:
            latency = 'not measured'
        else:
            latency = (f'{lat["median_s"] * 1e3:.1f} ({min(lat["times_s"]) * 1e3:.0f}-{max(lat["times_s"]) * 1e3:.0f})'
                       if lat['median_s'] is not None else lat['skipped'])
        memory = f'{mem["forward_peak_bytes"] / 2**20:.1f}' if mem else 'not measured'
        if r['error']:
            latency, memory = f'failed: {r["error"]}', '-'
        reference = '-'
        if ref:
            params_ref = f'{ref["params_m"]:.2f} M' if ref['params_m'] is not None else 'n/a'
            reference = f'{params_ref} / {ref["gmacs"]:.2f} G ({ref["source"]})'
        lines.append(f'| {name} | {r["input"][0]}x{r["input"][1]} | {_m(p["total"])} | {_m(p["trainable"])} | '
                     f'{prior} | ' + ' | '.join(cells) + f' | {latency} | {memory} | {reference} |')
    lines += ['', f'- {report["flop_counter"]}', f'- peak memory: {report["memory_method"]}', f'- {REFERENCE_NOTE}']
    for name, why in report['skipped'].items():
        lines.append(f'- not listed: {name}: {why}')
    return '\n'.join(lines)


def main(argv=None):
    from irtoolkit.cli import checkout_root
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('-opt', '--opt', help='a recipe: measure its network_g')
    p.add_argument('--arch', action='append', metavar='NAME',
                   help='options/_base_/networks/NAME.yml (or a registered arch with its defaults); repeatable')
    p.add_argument('--all', action='store_true', help='every restoration network registered by irtoolkit')
    p.add_argument('--net', help="network options as YAML, e.g. '{type: NAFNet, width: 16}'")
    p.add_argument('--size', action='append', metavar='N|HxW', help='input size, repeatable (default 256)')
    p.add_argument('--channels', type=int, default=None,
                   help="input channels (default: the network's first convolution's input channels)")
    p.add_argument('--threads', type=int, default=1, help='torch CPU threads for latency and memory (default 1)')
    p.add_argument('--warmup', type=int, default=2, help='untimed forwards before timing (default 2)')
    p.add_argument('--runs', type=int, default=5, help='timed forwards, at least 5; the median is reported')
    p.add_argument('--time-budget', type=float, default=0.0, metavar='S',
                   help='skip timing a network/size whose timed runs would take longer than S seconds (0: no limit)')
    p.add_argument('--no-latency', action='store_true', help='skip the latency measurement')
    p.add_argument('--no-memory', action='store_true', help='skip the peak-memory measurement')
    p.add_argument('--as-configured', action='store_true',
                   help='build networks with a Train argument as configured (default: Train=False, for inference)')
    p.add_argument('--json', action='store_true', help='print the report as JSON instead of Markdown')
    p.add_argument('--repo', default=None, help='checkout whose options/_base_/networks is used (default: this one)')
    args = p.parse_args(argv)
    args.repo = args.repo or checkout_root()

    import torch

    from irtoolkit.inference.complexity import parse_size
    from irtoolkit.inference.peak_memory import DELTA_METHOD, RESET_METHOD
    from irtoolkit.utils.errors import UserError
    from irtoolkit.utils.memory import keep_freed_memory

    try:
        if not (args.opt or args.arch or args.all or args.net):
            raise UserError('nothing to measure: give -opt, --arch NAME, --all or --net')
        if args.runs < 5:
            raise UserError(f'--runs: at least 5 timed runs (a median of fewer is not a measurement), got {args.runs}')
        if args.threads < 1 or args.warmup < 0:
            raise UserError(f'--threads must be >= 1 and --warmup >= 0, got {args.threads} and {args.warmup}')
        sizes = [parse_size(s) for s in (args.size or ['256'])]
        targets, skipped = collect_targets(args, osp.join(args.repo, 'options', '_base_', 'networks'))
        load_start = _load_average()
        torch.set_num_threads(args.threads)
        keep_freed_memory()  # the allocator setting irtk-infer uses on the CPU
        rows = []
        for target in targets:
            rows += measure_target(target, sizes, args)
    except UserError as err:  # unknown network, bad options (also found only when a network is built)
        print(f'error: {err}', file=sys.stderr)
        return 2
    methods = {r['memory']['method'] for r in rows if r['memory']}
    report = {
        'date': datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'), 'cpu': cpu_model(),
        'logical_cpus': os.cpu_count(), 'torch': torch.__version__, 'threads': args.threads,
        'warmup': args.warmup, 'runs': args.runs, 'load_average': {'start': load_start, 'end': _load_average()},
        'flop_counter': ('FLOPs: torch.utils.flop_counter.FlopCounterMode, one forward at batch 1: convolutions and '
                         'matrix products (mm/addmm/bmm/baddbmm, attention kernels) only, 2 FLOPs per multiply-add; '
                         'element-wise ops, normalisation, softmax, pooling, resampling and conv biases are not '
                         'counted. GMACs = GFLOPs / 2; "conv" and "matmul" split them; "prior" is the ConStyle '
                         "encoder's part"),
        'memory_method': (' / '.join(sorted(methods)) if methods
                          else f'not measured (method: {RESET_METHOD}; fallback: {DELTA_METHOD})'),
        'rows': rows, 'skipped': skipped,
    }
    print(json.dumps(report, indent=1) if args.json else markdown(report))
    return 1 if any(r['error'] for r in rows) else 0


if __name__ == '__main__':
    sys.exit(main())
