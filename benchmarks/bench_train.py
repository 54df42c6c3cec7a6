"""Training throughput and peak memory of the ConStyle models against their baselines.

One full ``optimize_parameters`` step of the real model class (losses, AdamW, EMA 0.999 — upstream's settings) on
random (B, 3, P, P) pairs, for:
    NAFNet                  the paper's NAFNet baseline configuration (width 64, [5, 6, 7, 7] / 7 / [5, 6, 7, 7])
    ConStyleNAFNet          upstream defaults, K 65760, iter <= ConStyle_iter (prior trained: all four losses)
    ConStyleNAFNet-frozen   the same after ConStyle_iter (prior frozen, pixel loss only)
    ConStyleRestormer       upstream defaults, prior trained
    Restormer               official defaults (not in the default list: slow on CPU)
Each model runs in its own subprocess so that the peak memory (CPU: max RSS of the process; GPU:
``torch.cuda.max_memory_allocated``) belongs to that model alone.

    python benchmarks/bench_train.py                       # CPU, batch 8, 128x128, all default models
    python benchmarks/bench_train.py --device cuda --iters 20
    python benchmarks/bench_train.py --models NAFNet ConStyleNAFNet --batch 4 --size 64 --threads 2
"""
import argparse
import json
import os
import os.path as osp
import resource
import subprocess
import sys
import time

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
if ROOT not in sys.path:  # run as a script from anywhere, or imported by a test: this checkout's package
    sys.path.insert(0, ROOT)

UPSTREAM_LOSSES = {'infonce_opt': {'type': 'QueueInfoNCELoss'}, 'content_opt': {'type': 'ContentLoss'},
                   'style_opt': {'type': 'StyleLoss'}}
MODELS = {
    'NAFNet': ('RestorationModel', {'type': 'NAFNet', 'width': 64, 'enc_blk_nums': [5, 6, 7, 7], 'middle_blk_num': 7,
                                    'dec_blk_nums': [5, 6, 7, 7]}, {}),
    'ConStyleNAFNet': ('ConStyleModel', {'type': 'ConStyleNAFNet'}, dict(UPSTREAM_LOSSES, ConStyle_iter=10 ** 9)),
    'ConStyleNAFNet-frozen': ('ConStyleModel', {'type': 'ConStyleNAFNet'}, dict(UPSTREAM_LOSSES, ConStyle_iter=0)),
    'ConStyleRestormer': ('ConStyleModel', {'type': 'ConStyleRestormer'}, dict(UPSTREAM_LOSSES, ConStyle_iter=10 ** 9)),
    'Restormer': ('RestorationModel', {'type': 'Restormer'}, {}),
}
DEFAULT = ['NAFNet', 'ConStyleNAFNet', 'ConStyleNAFNet-frozen', 'ConStyleRestormer']


def worker(name, device, batch, size, warmup, iters):
    import torch

    import irtoolkit  # noqa: F401  (registers everything)
    from irtoolkit.engine.runner import set_random_seed
    from irtoolkit.utils.registry import build_model
    model_type, net, extra = MODELS[name]
    train = {'optim_g': {'type': 'AdamW', 'lr': 3e-4, 'weight_decay': 1e-4, 'betas': [0.9, 0.999]},
             'pixel_opt': {'type': 'L1Loss'}, 'ema_decay': 0.999, **extra}
    opt = {'name': 'bench', 'model_type': model_type, 'is_train': True, 'num_gpu': int(device == 'cuda'),
           'device': device, 'manual_seed': 0, 'network_g': net, 'train': train, 'path': {}}
    set_random_seed(0)
    model = build_model(opt)
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


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--models', nargs='+', default=DEFAULT, choices=list(MODELS))
    p.add_argument('--device', default='cpu', choices=['cpu', 'cuda'])
    p.add_argument('--batch', type=int, default=8)
    p.add_argument('--size', type=int, default=128)
    p.add_argument('--warmup', type=int, default=1)
    p.add_argument('--iters', type=int, default=3)
    p.add_argument('--threads', type=int, default=None, help='torch CPU threads (default: torch decides)')
    p.add_argument('--worker', default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    if args.worker:
        return worker(args.worker, args.device, args.batch, args.size, args.warmup, args.iters)
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
