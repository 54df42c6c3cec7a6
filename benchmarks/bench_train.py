"""Training throughput and peak memory of the ConStyle models against their baselines.

One full ``optimize_parameters`` step of the real model class (losses, AdamW, EMA 0.999 — upstream's settings) on
random (B, 3, P, P) pairs, for:
    NAFNet                  the paper's NAFNet baseline configuration (width 64, [5, 6, 7, 7] / 7 / [5, 6, 7, 7])
    ConStyleNAFNet          upstream defaults, K 65760, iter <= constyle.iter (prior trained: all four losses)
    ConStyleNAFNet-frozen   the same after constyle.iter (prior frozen, pixel loss only)
    ConStyleRestormer       upstream defaults, prior trained
    Restormer               official defaults (not in the default list: slow on CPU)
Each model runs in its own subprocess so that the peak memory (CPU: max RSS of the process; GPU:
``torch.cuda.max_memory_allocated``) belongs to that model alone.

    python benchmarks/bench_train.py                       # CPU, batch 8, 128x128, all default models
    python benchmarks/bench_train.py --device cuda --iters 20
    python benchmarks/bench_train.py --models NAFNet ConStyleNAFNet --batch 4 --size 64 --threads 2

Side by side with upstream (``--vs-upstream DIR``): DIR holds read-only checkouts ``IRConStyle`` (Dongqi-Fan/IRConStyle)
and/or ``NAFNet`` (megvii-research/NAFNet), never copied into this repository. Each configuration runs in its own
subprocess, upstream and irtoolkit alternating, ``--repeats`` times; the table gives medians, ratios and peak RSS, and
the first step's losses of both (same weights, same batch) with their largest difference:

    python benchmarks/bench_train.py --vs-upstream /tmp/up15 --batch 4 --size 128 --repeats 3
"""
import argparse
import json
import os
import os.path as osp
import resource
import subprocess
import sys
import time

UPSTREAM_LOSSES = {'infonce_opt': {'type': 'QueueInfoNCELoss'}, 'content_opt': {'type': 'ContentLoss'},
                   'style_opt': {'type': 'StyleLoss'}}
MODELS = {  # name: (model_type, network_g, extra train.* options, other sections of the recipe)
    'NAFNet': ('RestorationModel', {'type': 'NAFNet', 'width': 64, 'enc_blk_nums': [5, 6, 7, 7], 'middle_blk_num': 7,
                                    'dec_blk_nums': [5, 6, 7, 7]}, {}, {}),
    'ConStyleNAFNet': ('ConStyleModel', {'type': 'ConStyleNAFNet'}, UPSTREAM_LOSSES, {'constyle': {'iter': 10 ** 9}}),
    'ConStyleNAFNet-frozen': ('ConStyleModel', {'type': 'ConStyleNAFNet'}, UPSTREAM_LOSSES, {'constyle': {'iter': 0}}),
    'ConStyleRestormer': ('ConStyleModel', {'type': 'ConStyleRestormer'}, UPSTREAM_LOSSES,
                          {'constyle': {'iter': 10 ** 9}}),
    'Restormer': ('RestorationModel', {'type': 'Restormer'}, {}, {}),
}
DEFAULT = ['NAFNet', 'ConStyleNAFNet', 'ConStyleNAFNet-frozen', 'ConStyleRestormer']


def worker(name, device, batch, size, warmup, iters):
    import torch
    model = irtoolkit_model(name, device)
    n_params = sum(p.numel() for p in model.net_g.parameters())
    g = torch.Generator().manual_seed(0)
    batch_data = {'lq': torch.rand(batch, 3, size, size, generator=g),
                  'gt': torch.rand(batch, 3, size, size, generator=g)}
    sync = torch.cuda.synchronize if device == 'cuda' else (lambda: None)
    for it in range(1, warmup + 1):
        model.feed_data(batch_data)
        model.optimize_parameters(it)
    if device == 'cuda':
        torch.cuda.reset_peak_memory_stats()
    sync()
    start = time.perf_counter()
    for it in range(warmup + 1, warmup + iters + 1):
        model.feed_data(batch_data)
        model.optimize_parameters(it)
    sync()
    elapsed = time.perf_counter() - start
    if device == 'cuda':
        peak = torch.cuda.max_memory_allocated() / 2 ** 20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
    print(json.dumps({'model': name, 'params': n_params, 'it_s': iters / elapsed, 's_it': elapsed / iters,
                      'peak_mib': peak, 'losses': sorted(model.get_current_log())}))


# ---------------------------------------------------------------------------------------------- --vs-upstream
VS_CONFIGS = {  # name: (checkout sub-folder, irtoolkit model of MODELS)
    'ConStyleNAFNet': ('IRConStyle', 'ConStyleNAFNet'),
    'NAFNet': ('NAFNet', 'NAFNet'),
}
ADAMW = {'lr': 3e-4, 'weight_decay': 1e-4, 'betas': (0.9, 0.999)}  # upstream's optim_g


def _stub_package(name, path=None, **attrs):
    """A module object in sys.modules whose __init__ is not run (upstream's package __init__s import every arch,
    the data pipeline and the whole basicsr fork); with ``path`` its submodules import from that folder."""
    import types
    mod = types.ModuleType(name)
    if path is not None:
        mod.__path__ = [path]
    mod.__dict__.update(attrs)
    sys.modules[name] = mod
    return mod


def import_upstream(config, root):
    """Upstream's own modules, read from the checkout ``root`` (arch file; for IRConStyle also its loss file)."""
    import importlib
    import logging

    class NoRegistry:
        def register(self, obj=None):
            return obj if obj is not None else (lambda o: o)

    if config == 'ConStyleNAFNet':
        _stub_package('utils', osp.join(root, 'utils'))
        _stub_package('utils.registry', ARCH_REGISTRY=NoRegistry(), LOSS_REGISTRY=NoRegistry(),
                      MODEL_REGISTRY=NoRegistry())
        _stub_package('archs', osp.join(root, 'archs'))
        _stub_package('losses', osp.join(root, 'losses'))
        return (importlib.import_module('archs.ConStyle_NAFNet_arch'), importlib.import_module('losses.basic_loss'))
    _stub_package('basicsr', osp.join(root, 'basicsr'))
    _stub_package('basicsr.utils', get_root_logger=lambda *a, **k: logging.getLogger('upstream'))
    _stub_package('basicsr.models', osp.join(root, 'basicsr', 'models'))
    _stub_package('basicsr.models.archs', osp.join(root, 'basicsr', 'models', 'archs'))
    return importlib.import_module('basicsr.models.archs.NAFNet_arch'), None


def upstream_step_fn(config, root, weights, device):
    """Upstream's training step, built from its own arch (and loss) code with irtoolkit's initial weights.

    ConStyleNAFNet follows upstream's ``ConStyleModel.optimize_parameters`` (models/ConStyle_model.py, which needs the
    whole basicsr fork to import, so its few lines are restated here): ``net.ConStyle(lq, gt)`` then ``net(lq, q[1],
    feas)``; L1 + CrossEntropy(logits, 0) + Content(q[1], k) + Style of the (B x B) similarities / n; EMA 0.999 of
    the parameters (before the step, as upstream); backward; AdamW. NAFNet: L1, EMA, backward, AdamW.
    """
    import copy

    import torch
    arch, losses = import_upstream(config, root)
    if config == 'ConStyleNAFNet':
        if not torch.cuda.is_available():  # upstream's train_forward builds its labels with .cuda()
            torch.Tensor.cuda = lambda self, *a, **k: self
        net = arch.ConStyleNAFNet()
        l1, content, style = losses.L1Loss(), losses.ContentLoss(), losses.StyleLoss()
        cross_entropy = torch.nn.CrossEntropyLoss()
    else:
        net = arch.NAFNet(**{k: v for k, v in MODELS['NAFNet'][1].items() if k != 'type'})
        l1 = torch.nn.L1Loss()
    theirs = net.state_dict()
    missing = [k for k in theirs if k not in weights or weights[k].shape != theirs[k].shape]
    if missing:
        raise RuntimeError(f'upstream {config}: {len(missing)} keys without an irtoolkit counterpart: {missing[:5]}')
    net.load_state_dict({k: weights[k] for k in theirs})
    net = net.to(device).train()
    ema = copy.deepcopy(net).eval()
    optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], **ADAMW)

    def model_ema(decay=0.999):  # upstream's BaseModel.model_ema
        src = dict(net.named_parameters())
        for k, p in ema.named_parameters():
            p.data.mul_(decay).add_(src[k].data, alpha=1 - decay)

    def step(lq, gt):
        optimizer.zero_grad()
        terms = {}
        if config == 'ConStyleNAFNet':
            query, pos, neg, logits, labels, feas = net.ConStyle(lq, gt)
            output = net(lq, query[1], feas)
            terms['pix'] = l1(output, gt)
            terms['infonce'] = cross_entropy(logits, labels)
            terms['content'] = content(query[1], pos)
            n = query[0].shape[-1] * query[0].shape[-2]
            terms['style'] = (style(query[0] @ query[0].T / n, neg[0] @ neg[0].T / n)
                              + style(query[1] @ query[1].T / n, neg[1] @ neg[1].T / n))
        else:
            terms['pix'] = l1(net(lq), gt)
        total = sum(terms.values())
        model_ema(0.999)
        total.backward()
        optimizer.step()
        return dict({k: float(v.detach()) for k, v in terms.items()}, total=float(total.detach()))
    return step


def irtoolkit_model(name, device, speed=None):
    from copy import deepcopy

    import torch  # noqa: F401

    import irtoolkit  # noqa: F401  (registers everything)
    from irtoolkit.engine.runner import set_random_seed
    from irtoolkit.config.options import model_schema
    from irtoolkit.utils.registry import build_model
    from irtoolkit.config.schema import fill_defaults
    model_type, net, extra, sections = MODELS[name]
    train = {'optim_g': dict(ADAMW, type='AdamW', betas=list(ADAMW['betas'])), 'pixel_opt': {'type': 'L1Loss'},
             'ema_decay': 0.999, **extra, **(speed or {})}
    opt = {'name': 'bench', 'model_type': model_type, 'num_gpu': int(device == 'cuda'),
           'device': device, 'manual_seed': 0, 'network_g': net, 'train': train, 'path': {}, **deepcopy(sections)}
    set_random_seed(0)
    return build_model(fill_defaults(opt, model_schema(model_type)))  # the defaults a recipe run gets


def vs_worker(impl, config, root, device, batch, size, warmup, iters, profile=0, speed=None):
    """One process, one implementation: per-step times, first-step losses, peak memory (CPU: max RSS; CUDA: max
    allocated) and, on CUDA, the FLOPs of one step (torch's FlopCounterMode), as JSON on stdout."""
    import gc

    import torch
    sub, name = VS_CONFIGS[config]
    if impl == 'upstream':
        # irtoolkit's initial weights (same seed as irtoolkit_model, whose first draw is the network): the network
        # alone, so that no irtoolkit model setting (e.g. the CPU allocator's) reaches upstream's process
        import irtoolkit  # noqa: F401  (registers everything)
        from irtoolkit.engine.runner import set_random_seed
        from irtoolkit.utils.registry import build_network
        set_random_seed(0)
        net = build_network(dict(MODELS[name][1]))
        weights = {k: v.detach().clone() for k, v in net.state_dict().items()}
        del net
        gc.collect()
        step = upstream_step_fn(config, osp.join(root, sub), weights, device)
        del weights
    else:
        model = irtoolkit_model(name, device, speed)

        def step(lq, gt):
            model.feed_data({'lq': lq, 'gt': gt})
            model.optimize_parameters(step.it)
            step.it += 1
            log = model.get_current_log()
            out = {k[2:]: float(v) for k, v in log.items() if k.startswith('l_')}
            out['pix'] = out.pop('pix', out.pop('pixel', float('nan')))
            out.setdefault('total', sum(v for k, v in out.items()))
            return out
        step.it = 1
    g = torch.Generator().manual_seed(0)
    lq, gt = torch.rand(batch, 3, size, size, generator=g), torch.rand(batch, 3, size, size, generator=g)
    lq, gt = lq.to(device), gt.to(device)
    flops = None
    if device == 'cuda' and not (speed or {}).get('compile'):  # counted eagerly; a compiled step has the same math
        from torch.utils.flop_counter import FlopCounterMode
        with FlopCounterMode(display=False) as counter:
            first = step(lq, gt)
        flops = counter.get_total_flops()
    else:
        first = step(lq, gt)
    for _ in range(warmup - 1):
        step(lq, gt)
    if device == 'cuda':
        torch.cuda.reset_peak_memory_stats()
    if profile:
        from torch.profiler import ProfilerActivity, profile as prof
        with prof(activities=[ProfilerActivity.CPU]) as p:
            step(lq, gt)
        print(p.key_averages().table(sort_by='self_cpu_time_total', row_limit=profile), file=sys.stderr)
    times = []
    before = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(iters):
        start = time.perf_counter()
        step(lq, gt)
        times.append(time.perf_counter() - start)
    after = resource.getrusage(resource.RUSAGE_SELF)
    import statistics
    # each step returns its losses as Python floats, so on CUDA every timed step ends synchronised
    peak = torch.cuda.max_memory_allocated() / 2 ** 20 if device == 'cuda' else after.ru_maxrss / 1024
    print(json.dumps({'impl': impl, 'config': config, 's_it': statistics.median(times), 'times': times,
                      'user_s': (after.ru_utime - before.ru_utime) / iters,
                      'sys_s': (after.ru_stime - before.ru_stime) / iters, 'flops': flops,
                      'peak_mib': peak, 'losses': first}))


def usage_error(message):
    """Bad command-line input: one line on stderr, exit status 2 (as argparse's own errors)."""
    print(f'bench_train.py: {message}', file=sys.stderr)
    sys.exit(2)


def parse_variants(items):
    """``LABEL=JSON`` items of ``--ours`` -> {label: train options}; a bad item stops with one line."""
    variants = {}
    for item in items:
        label, sep, text = item.partition('=')
        try:
            variants[label] = json.loads(text) if sep else None
        except json.JSONDecodeError as e:
            usage_error(f'--ours {item}: not LABEL=JSON ({e})')
        if not sep or not isinstance(variants[label], dict):
            usage_error(f'--ours {item}: expected LABEL=JSON with a JSON object of train.* options')
        if label == 'upstream':
            usage_error(f'--ours {item}: "upstream" names the upstream side; choose another label')
    return variants


def vs_run(args, root, config, impl, speed):
    """One worker process; its JSON result, or None (reported) when it failed."""
    cmd = [sys.executable, osp.abspath(__file__), '--vs-worker', impl, config, '--vs-upstream', root,
           '--device', args.device, '--batch', str(args.batch), '--size', str(args.size), '--warmup',
           str(args.warmup), '--iters', str(args.iters), '--speed', json.dumps(speed or {})] + \
        (['--threads', str(args.threads)] if args.threads else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith('{')]
    if proc.returncode or not lines:
        print(f'# {config} {impl}: failed: {proc.stderr.strip()[-2000:]}', flush=True)
        return None
    return json.loads(lines[-1])


def vs_main(args):
    """Upstream and every irtoolkit variant of ``--ours``, one process each, in an order rotated every repeat."""
    import torch
    root = osp.abspath(args.vs_upstream)
    configs = [c for c in args.vs_configs if osp.isdir(osp.join(root, VS_CONFIGS[c][0]))]
    if not configs:
        usage_error(f'--vs-upstream {root}: none of {[VS_CONFIGS[c][0] for c in args.vs_configs]} in it')
    variants = parse_variants(args.ours)
    sides = [('upstream', None)] + list(variants.items())
    load = os.getloadavg()
    print(f'# training step vs upstream ({root}), batch {args.batch}, {args.size}x{args.size}, {args.device}, '
          f'{torch.get_num_threads()} threads, torch {torch.__version__}, {args.warmup} warm-up + {args.iters} timed '
          f'steps per process, {args.repeats} rotating processes each; irtoolkit variants '
          f'{", ".join(f"{k}={json.dumps(v)}" for k, v in variants.items())}; load average {load[0]:.2f} at start',
          flush=True)
    results = {(c, label): [] for c in configs for label, _ in sides}
    for rep in range(args.repeats):
        for c in configs:
            order = sides[rep % len(sides):] + sides[:rep % len(sides)]
            for label, speed in order:
                r = vs_run(args, root, c, 'upstream' if speed is None else 'irtoolkit', speed)
                if r is None:
                    continue
                results[(c, label)].append(r)
                print(f'# run {rep} {c:15s} {label:12s} {r["s_it"]:7.2f} s/step  peak {r["peak_mib"]:7.0f} MiB  '
                      f'steps {" ".join(f"{t:.2f}" for t in r["times"])}  user {r["user_s"]:.1f} '
                      f'sys {r["sys_s"]:.1f} s/step  load {os.getloadavg()[0]:.2f}', flush=True)
    print(f'\nload average at end {os.getloadavg()[0]:.2f}')
    print_vs_table(configs, sides, results, args.peak_tflops)


def print_vs_table(configs, sides, results, peak_tflops=None):
    """Medians per (configuration, side), the ratio to upstream, memory, and on CUDA the achieved TFLOP/s (the
    step's counted FLOPs over its median time) and its share of ``peak_tflops``."""
    import statistics
    memory = 'peak RSS MiB' if not any(r.get('flops') for rs in results.values() for r in rs) else 'peak MiB'
    print(f'| step | implementation | s/step (median) | speed-up vs upstream | {memory} (median) | TFLOP/s | '
          'of peak | runs | first-step losses (max abs diff to upstream) |')
    print('|---|---|---:|---:|---:|---:|---:|---:|---|')
    for c in configs:
        up = results[(c, 'upstream')]
        t_up = statistics.median(r['s_it'] for r in up) if up else float('nan')
        flops = max((r.get('flops') or 0 for label, _ in sides for r in results[(c, label)]), default=0)
        for label, _ in sides:
            rs = results[(c, label)]
            if not rs:
                print(f'| {c} | {label} | missing runs |||||||')
                continue
            t = statistics.median(r['s_it'] for r in rs)
            lo = rs[0]['losses']
            lu = up[0]['losses'] if up else {}
            diff = max((abs(lu[k] - lo[k]) for k in lu if k in lo), default=float('nan'))
            terms = ', '.join(f'{k} {v:.5g}' for k, v in lo.items())
            tflops = flops / t / 1e12 if flops else None
            share = f'{100 * tflops / peak_tflops:.1f}%' if tflops and peak_tflops else '-'
            step = f'{t:.2f}' if t >= 1 else f'{t * 1000:.1f} ms'  # GPU steps take milliseconds
            print(f'| {c} | {"upstream" if label == "upstream" else "irtoolkit " + label} | {step} | '
                  f'{t_up / t:.2f}x | {statistics.median(r["peak_mib"] for r in rs):.0f} | '
                  f'{f"{tflops:.1f}" if tflops else "-"} | {share} | {len(rs)} | {terms} ({diff:.2e}) |', flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--models', nargs='+', default=DEFAULT, choices=list(MODELS))
    p.add_argument('--device', default='cpu', choices=['cpu', 'cuda'])
    p.add_argument('--batch', type=int, default=8)
    p.add_argument('--size', type=int, default=128)
    p.add_argument('--warmup', type=int, default=1)
    p.add_argument('--iters', type=int, default=3)
    p.add_argument('--threads', type=int, default=None, help='torch CPU threads (default: torch decides)')
    p.add_argument('--vs-upstream', metavar='DIR', default=None,
                   help='time upstream (DIR/IRConStyle, DIR/NAFNet checkouts) against irtoolkit, alternating')
    p.add_argument('--vs-configs', nargs='+', default=list(VS_CONFIGS), choices=list(VS_CONFIGS))
    p.add_argument('--repeats', type=int, default=3, help='--vs-upstream: processes per implementation')
    p.add_argument('--profile', type=int, default=0, metavar='N',
                   help='--vs-worker: print the top N ops of one step (torch.profiler) to stderr')
    p.add_argument('--ours', nargs='+', default=['default={}'], metavar='LABEL=JSON',
                   help='--vs-upstream: irtoolkit variants, each a label and its train.* speed options, e.g. '
                   '\'cl={"channels_last": true}\' (default: default={})')
    p.add_argument('--peak-tflops', type=float, default=None,
                   help="--vs-upstream on CUDA: the card's peak (e.g. 989 for an H100/H200 SXM's dense bf16) for "
                   'the utilisation column')
    p.add_argument('--speed', default='{}', metavar='JSON',
                   help="--vs-worker irtoolkit: the train.* speed options of that one process, e.g. with --profile")
    p.add_argument('--worker', default=None, help=argparse.SUPPRESS)
    p.add_argument('--vs-worker', nargs=2, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    if args.worker:
        return worker(args.worker, args.device, args.batch, args.size, args.warmup, args.iters)
    if args.vs_worker:
        return vs_worker(args.vs_worker[0], args.vs_worker[1], args.vs_upstream, args.device, args.batch, args.size,
                         args.warmup, args.iters, args.profile, json.loads(args.speed))
    if args.vs_upstream:
        return vs_main(args)
    import torch
    info = torch.cuda.get_device_name(0) if args.device == 'cuda' else f'CPU, {torch.get_num_threads()} threads'
    print(f'# training step, batch {args.batch}, {args.size}x{args.size}, {args.device} ({info}), '
          f'torch {torch.__version__}, {args.warmup} warm-up + {args.iters} timed iterations')
    print('| model | params | it/s | s/it | peak memory (MiB) | loss terms |')
    print('|---|---:|---:|---:|---:|---|')
    for name in args.models:
        cmd = [sys.executable, osp.abspath(__file__), '--worker', name, '--device', args.device,
               '--batch', str(args.batch), '--size', str(args.size), '--warmup', str(args.warmup),
               '--iters', str(args.iters)] + (['--threads', str(args.threads)] if args.threads else [])
        proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith('{')]
        if proc.returncode or not lines:
            why = 'killed (SIGKILL: out of memory?)' if proc.returncode in (-9, 137) else \
                (proc.stderr.strip().splitlines() or [f'exit {proc.returncode}'])[-1]
            print(f'| {name} | failed: {why} |||||', flush=True)
            continue
        r = json.loads(lines[-1])
        print(f'| {name} | {r["params"]:,} | {r["it_s"]:.3f} | {r["s_it"]:.2f} | {r["peak_mib"]:.0f} | '
              f'{" ".join(x for x in r["losses"] if x.startswith("l_") and x != "l_total")} |', flush=True)


if __name__ == '__main__':
    main()
