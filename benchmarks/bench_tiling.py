"""Benchmark: time and peak memory of whole-image inference, blended ("naive") tiles and exact tiles (issue 23).

    OMP_NUM_THREADS=2 flock /tmp/heavy.lock python benchmarks/bench_tiling.py --sizes 1024 2048 4096
    python benchmarks/bench_tiling.py --nets nafnet32 --sizes 2048 --arms exact whole-cl     # one question
    python benchmarks/bench_tiling.py --device cuda --sizes 2048 4096 8192                   # a lent GPU

Networks (random weights, seeded: time and memory do not depend on their values):
``nafnet32`` is NAFNet width 32 in the SIDD configuration (enc [2, 2, 4, 8], middle 12, dec [2, 2, 2, 2]);
``restormer`` the official Restormer (dim 48, blocks [4, 6, 6, 8], 4 refinement blocks; 26.1 M parameters).

Arms, each in a fresh process (so that ``ru_maxrss``, the peak resident memory of the whole process including torch
and the weights, is the arm's own):

* ``whole``: ``net(img)``;  ``whole-cl``: the same with network and image in channels-last memory format;
* ``blended``: :func:`irtoolkit.inference.tiling.tiled_forward`, 512 px tiles, overlap 32, on the padding grid
  (not equal to the whole-image output for these networks: their global operations see each tile alone);
* ``exact``: :func:`irtoolkit.inference.exact_tiling.exact_tiled_forward`, 512 px tiles (equal to ``whole``).

An arm that runs past ``--timeout`` seconds is stopped and reported as such; one that needs more than
``--mem-limit`` GiB of address space fails its allocation (RLIMIT_AS) and is reported as out of memory, rather
than pushing a shared machine into swap. Where ``whole`` finished, the largest difference of the other arms'
outputs from it is printed as well. On CUDA, peak memory is ``torch.cuda.max_memory_allocated``; the image and the
exact schedule's full-size maps stay on the CPU (tiles are moved to the GPU), ``whole`` runs on the GPU entirely.
"""
import argparse
import json
import os
import os.path as osp
import subprocess
import sys
import tempfile
import time

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
NETS = {
    'nafnet32': {'type': 'NAFNet', 'img_channel': 3, 'width': 32, 'middle_blk_num': 12, 'enc_blk_nums': [2, 2, 4, 8],
                 'dec_blk_nums': [2, 2, 2, 2]},
    'restormer': {'type': 'Restormer'},
}
ALIGN = {'nafnet32': 16, 'restormer': 8}  # the padding multiples: NAFNet 2**levels, Restormer 8


def worker(net_name, size, arm, tile, overlap, device, out_path, mem_limit_gib):
    """One arm in this (fresh) process; prints one JSON line."""
    import resource
    if mem_limit_gib > 0:
        limit = int(mem_limit_gib * 2 ** 30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    import torch

    import irtoolkit  # noqa: F401
    from irtoolkit.inference.exact_tiling import exact_tiled_forward
    from irtoolkit.inference.tiling import tiled_forward
    from irtoolkit.utils.memory import keep_freed_memory
    from irtoolkit.utils.registry import build_network
    keep_freed_memory()  # as tiled_forward does; the same allocator setting in every arm
    torch.manual_seed(0)
    net = build_network(NETS[net_name]).eval().to(device)
    img = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    cuda = device.startswith('cuda')
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    with torch.inference_mode():
        if arm in ('whole', 'whole-cl'):
            x = img.to(device)
            if arm == 'whole-cl':
                net, x = net.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
            out = net(x).cpu()
        elif arm == 'blended':
            out = tiled_forward(net, img, tile, overlap, align=ALIGN[net_name], device=device)
        else:
            out = exact_tiled_forward(net, img, tile, device=device)
        if cuda:
            torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    if out_path:
        torch.save(out.contiguous(), out_path)
    print(json.dumps({'seconds': seconds, 'user_s': after.ru_utime - before.ru_utime,
                      'sys_s': after.ru_stime - before.ru_stime, 'peak_gib': after.ru_maxrss / 2 ** 20,
                      'before_gib': before.ru_maxrss / 2 ** 20,
                      'cuda_peak_gib': torch.cuda.max_memory_allocated() / 2 ** 30 if cuda else None}))


def run_arm(args, net_name, size, arm, out_path):
    cmd = [sys.executable, osp.abspath(__file__), '--worker', net_name, str(size), arm, str(args.tile),
           str(args.overlap), args.device, out_path or '', str(args.mem_limit)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {'status': f'stopped after {args.timeout} s'}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith('{')]
    if proc.returncode == 0 and lines:
        return dict(json.loads(lines[-1]), status='ok')
    err = (proc.stderr.strip().splitlines() or ['?'])[-1]
    if 'memory' in err.lower() or proc.returncode in (-9, 137):
        return {'status': f'out of memory (limit {args.mem_limit:g} GiB)'}
    return {'status': f'failed ({proc.returncode}): {err[:120]}'}


def max_diff(path_a, path_b):
    import torch
    return (torch.load(path_a) - torch.load(path_b)).abs().max().item()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--nets', nargs='+', default=list(NETS), choices=list(NETS))
    p.add_argument('--sizes', nargs='+', type=int, default=[1024, 2048, 4096])
    p.add_argument('--arms', nargs='+', default=['whole', 'blended', 'exact'],
                   choices=['whole', 'whole-cl', 'blended', 'exact'])
    p.add_argument('--tile', type=int, default=512)
    p.add_argument('--overlap', type=int, default=32, help='blended tiles only')
    p.add_argument('--device', default='cpu')
    p.add_argument('--timeout', type=int, default=600, help='seconds per arm before it is stopped')
    p.add_argument('--mem-limit', type=float, default=16, help='GiB of address space per arm (CPU; 0: none)')
    p.add_argument('--worker', nargs=8, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        net_name, size, arm, tile, overlap, device, out_path, mem = args.worker
        worker(net_name, int(size), arm, int(tile), int(overlap), device, out_path, float(mem))
        return 0
    threads = os.environ.get('OMP_NUM_THREADS', 'default')
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for net_name in args.nets:
            for size in args.sizes:
                outs = {}
                for arm in args.arms:
                    out_path = osp.join(tmp, f'{net_name}_{size}_{arm}.pt')
                    load = os.getloadavg()[0]
                    row = dict(run_arm(args, net_name, size, arm, out_path), net=net_name, size=size, arm=arm,
                               load=load)
                    if row['status'] == 'ok':
                        outs[arm] = out_path
                    whole = outs.get('whole') or outs.get('whole-cl')
                    if row['status'] == 'ok' and whole and arm not in ('whole', 'whole-cl'):
                        row['diff'] = max_diff(out_path, whole)
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                for path in outs.values():
                    os.remove(path)
    print(f'\n{args.device}, OMP_NUM_THREADS={threads}, tile {args.tile} (blended: overlap {args.overlap}), '
          f'timeout {args.timeout} s, address-space limit {args.mem_limit:g} GiB')
    mem_col = 'peak CUDA memory (GiB)' if args.device.startswith('cuda') else 'peak RSS (GiB, whole process)'
    print(f'| network | image | arm | time (s) | user CPU (s) | {mem_col} | max abs diff from whole | load at start |')
    print('|---|---|---|---:|---:|---:|---:|---:|')
    for r in rows:
        if r['status'] != 'ok':
            print(f'| {r["net"]} | {r["size"]}^2 | {r["arm"]} | {r["status"]} | | | | {r["load"]:.1f} |')
            continue
        mem = r['cuda_peak_gib'] if r.get('cuda_peak_gib') is not None else r['peak_gib']
        diff = f'{r["diff"]:.1e}' if 'diff' in r else ''
        print(f'| {r["net"]} | {r["size"]}^2 | {r["arm"]} | {r["seconds"]:.1f} | {r["user_s"]:.1f} | {mem:.2f} | '
              f'{diff} | {r["load"]:.1f} |')
    return 0


if __name__ == '__main__':
    sys.exit(main())
