"""Benchmark: tools/evaluate.py against a plain per-image pyiqa loop; tiled NAFNet inference time and peak memory.

    OMP_NUM_THREADS=1 python benchmarks/bench_eval_infer.py            # both parts
    python benchmarks/bench_eval_infer.py --part eval --metrics psnr ssim niqe
    python benchmarks/bench_eval_infer.py --part infer --sizes 1024 2048 --tiles 256 512
    python benchmarks/bench_eval_infer.py --tiling-check OPTIONS.yml CKPT.pth IMAGE_FOLDER --tiles 128

Evaluation: the same pyiqa metrics, the same image pairs (the demo validation sets if ``datasets/demo`` exists,
else crops of scikit-image photos), scored twice in one process:

* baseline — what pyiqa's README suggests: each metric created once, then for every image and metric
  ``metric(restored_path, gt_path)`` (pyiqa reads the files itself);
* irtoolkit — :func:`irtoolkit.metrics.evaluation.evaluate_folders` (what tools/evaluate.py runs): images read
  once in DataLoader workers, batches of equal-size images, each metric called once per batch.

Both must give the same values (the largest per-image difference is printed). Target: >= 3x images per second.

Inference: NAFNet (width 32, the SIDD configuration: enc [2, 2, 4, 8], middle 12, dec [2, 2, 2, 2]) on 1024^2 and
2048^2 images, each configuration in a fresh process so that its peak resident memory (``ru_maxrss``, whole
process including torch) is its own. Target: 2048^2 tiled under 4 GB on the CPU. Weights are random: speed and
memory do not depend on their values.
"""
import argparse
import json
import os
import os.path as osp
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))

NAFNET_W32 = {'type': 'NAFNet', 'img_channel': 3, 'width': 32, 'middle_blk_num': 12, 'enc_blk_nums': [2, 2, 4, 8],
              'dec_blk_nums': [2, 2, 2, 2]}


# ------------------------------------------------------------------------------------------------ evaluation
def make_pairs(root, n_synthetic=32):
    """Copy the demo validation pairs (all degradations) into root/{lq,gt}; else make noisy photo crops."""
    import cv2
    import numpy as np
    lq_dir, gt_dir = osp.join(root, 'lq'), osp.join(root, 'gt')
    os.makedirs(lq_dir)
    os.makedirs(gt_dir)
    demo = osp.join(ROOT, 'datasets', 'demo')
    count = 0
    if osp.isdir(demo):
        for deg in sorted(os.listdir(demo)):
            val = osp.join(demo, deg, 'val')
            if not osp.isdir(osp.join(val, 'gt')):
                continue
            for name in sorted(os.listdir(osp.join(val, 'gt'))):
                if osp.isfile(osp.join(val, 'lq', name)):
                    shutil.copy(osp.join(val, 'lq', name), osp.join(lq_dir, f'{deg}_{name}'))
                    shutil.copy(osp.join(val, 'gt', name), osp.join(gt_dir, f'{deg}_{name}'))
                    count += 1
    if count:
        return lq_dir, gt_dir, f'datasets/demo/*/val ({count} pairs)'
    import skimage.data
    rng = np.random.default_rng(0)
    photos = [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea(), skimage.data.rocket()]
    for i in range(n_synthetic):
        p = photos[i % len(photos)]
        y, x = rng.integers(0, p.shape[0] - 256), rng.integers(0, p.shape[1] - 256)
        gt = p[y:y + 256, x:x + 256]
        lq = np.clip(gt + rng.normal(0, 15, gt.shape), 0, 255).astype(np.uint8)
        cv2.imwrite(osp.join(gt_dir, f'{i:04d}.png'), gt[..., ::-1])
        cv2.imwrite(osp.join(lq_dir, f'{i:04d}.png'), lq[..., ::-1])
    return lq_dir, gt_dir, f'{n_synthetic} noisy 256x256 crops of scikit-image photos'


def bench_eval(metrics, batch_size, workers, repeats):
    import torch
    import irtoolkit  # noqa: F401
    from irtoolkit.utils.image_io import images_by_stem
    from irtoolkit.metrics.evaluation import evaluate_folders
    from irtoolkit.metrics.pyiqa_metric import create_pyiqa_metric
    tmp = tempfile.mkdtemp(prefix='irtk_bench_eval_')
    try:
        lq_dir, gt_dir, source = make_pairs(tmp)
        lq, gt = images_by_stem(lq_dir), images_by_stem(gt_dir)
        names = sorted(gt)
        print(f'data: {source}; metrics: {", ".join(metrics)}; torch threads {torch.get_num_threads()}')
        objs = {m: create_pyiqa_metric(m, 'cpu') for m in metrics}
        for m, obj in objs.items():  # warm-up (first-call allocations, lazy imports)
            obj(lq[names[0]], gt[names[0]]) if obj.metric_mode == 'FR' else obj(lq[names[0]])
        evaluate_folders({'input': lq_dir}, gt_dir, {m: None for m in metrics}, batch_size=batch_size,
                         num_workers=0, progress=False)
        base_t, ours_t = [], []
        for _ in range(repeats):  # interleaved, so background load hits both alike
            t0 = time.perf_counter()
            base = {}
            with torch.no_grad():
                for n in names:
                    base[n] = {m: float(o(lq[n], gt[n]) if o.metric_mode == 'FR' else o(lq[n]))
                               for m, o in objs.items()}
            base_t.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            res = evaluate_folders({'input': lq_dir}, gt_dir, {m: None for m in metrics}, batch_size=batch_size,
                                   num_workers=workers, progress=False)
            ours_t.append(time.perf_counter() - t0)
        per_image = res['methods']['input']['per_image']
        diff = {m: max(abs(per_image[n][m] - base[n][m]) for n in names) for m in metrics}
        b, o = min(base_t), min(ours_t)
        n = len(names)
        print('\n| method | images | time (s, best of %d) | images/s |' % repeats)
        print('|---|---:|---:|---:|')
        print(f'| per-image pyiqa loop | {n} | {b:.2f} | {n / b:.2f} |')
        print(f'| tools/evaluate.py (batch {batch_size}, {workers} workers) | {n} | {o:.2f} | {n / o:.2f} |')
        print(f'\nspeed-up: {b / o:.2f}x (target >= 3x); all runs base {[round(t, 2) for t in base_t]}, '
              f'ours {[round(t, 2) for t in ours_t]}')
        print('largest per-image difference between the two: ' + ', '.join(f'{m} {d:.2e}' for m, d in diff.items()))
        return {'images': n, 'baseline_s': b, 'ours_s': o, 'speedup': b / o, 'max_diff': diff}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ inference
def infer_worker(size, tile, overlap, tile_batch, glibc_default=0):
    """Run in a fresh process: one NAFNet-w32 forward of a size x size image; prints a JSON line.

    ``glibc_default``: leave glibc's allocator as it is (``keep_freed_memory`` skipped), the "before" arm."""
    import resource
    import torch
    import irtoolkit  # noqa: F401
    from irtoolkit.utils import memory
    from irtoolkit.inference.tiling import tiled_forward
    from irtoolkit.utils.registry import build_network
    if glibc_default:
        memory._MALLOC_TUNED = True  # as if already tuned: keep_freed_memory() does nothing
    torch.manual_seed(0)
    net = build_network(NAFNET_W32).eval()
    img = torch.rand(1, 3, size, size)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    rss_before = usage.ru_maxrss / 2 ** 20  # KiB on Linux -> GiB
    t0 = time.perf_counter()
    out = tiled_forward(net, img, tile=tile, overlap=overlap, align=net.padder_size, batch_size=tile_batch)
    elapsed = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_SELF)
    peak = after.ru_maxrss / 2 ** 20  # KiB on Linux -> GiB
    assert out.shape == img.shape
    print(json.dumps({'size': size, 'tile': tile, 'seconds': elapsed, 'user_s': after.ru_utime - usage.ru_utime,
                      'sys_s': after.ru_stime - usage.ru_stime, 'peak_gib': peak, 'before_gib': rss_before,
                      'allocator': 'glibc default' if glibc_default else 'keep_freed_memory'}))


def bench_infer(sizes, tiles, overlap, tile_batch, untiled_max, allocators=('kept', )):
    """One process per (size, tiling, allocator); ``allocators``: 'kept' (irtoolkit's setting) and/or 'default'
    (glibc untouched), alternating within each configuration."""
    rows = []
    configs = [(s, t) for s in sizes for t in tiles] + [(s, 0) for s in sizes if s <= untiled_max]
    for size, tile in configs:
        for alloc in allocators:
            cmd = [sys.executable, osp.abspath(__file__), '--worker', str(size), str(tile), str(overlap),
                   str(tile_batch), str(int(alloc == 'default'))]
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith('{')]
            if proc.returncode != 0 or not lines:
                print(f'size {size} tile {tile}: failed ({proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}')
                continue
            rows.append(json.loads(lines[-1]))
    print(f'\nNAFNet width 32 (SIDD config, one image per run), CPU, {os.environ.get("OMP_NUM_THREADS", "default")} '
          f'OMP threads; overlap {overlap}, {tile_batch} tile(s)/pass; load average {os.getloadavg()[0]:.2f} at end')
    print('| image | tiling | allocator | time (s) | user CPU (s) | system CPU (s) | peak RSS (GiB, whole process) | '
          'RSS before the forward (GiB) |')
    print('|---|---|---|---:|---:|---:|---:|---:|')
    for r in rows:
        tiling = f'{r["tile"]}^2 tiles' if r['tile'] else 'none (whole image)'
        print(f'| {r["size"]}^2 | {tiling} | {r["allocator"]} | {r["seconds"]:.1f} | {r["user_s"]:.1f} | '
              f'{r["sys_s"]:.1f} | {r["peak_gib"]:.2f} | {r["before_gib"]:.2f} |')
    big = [r for r in rows if r['size'] >= 2048 and r['tile']]
    if big:
        print(f'2048^2 tiled peak: {min(r["peak_gib"] for r in big):.2f} GiB (target < 4 GB)')
    return rows


def tiling_check(opt_path, ckpt, folder, tile, overlap, limit=4):
    """Tiled vs whole-image output of a trained network, plain and with NAFNet's channel-attention pooling fixed
    to the whole-image statistics (which separates the network's global operation from the tiling itself)."""
    import glob
    import torch
    import irtoolkit  # noqa: F401
    from irtoolkit.utils.image_io import read_image
    from irtoolkit.inference.loader import load_network, network_options
    from irtoolkit.inference.tiling import tiled_forward, tiled_forward_whole_image_pooling
    net, _ = load_network(network_options(opt_path), ckpt)
    align = getattr(net, 'padder_size', 1)
    pools = [m.sca[0] for m in net.modules() if hasattr(m, 'sca')]
    print(f'\n{ckpt}: tile {tile}, overlap {overlap}, align {align}')
    print('| image | mean abs diff | max abs diff | max diff, SCA pooling from the whole image |')
    print('|---|---:|---:|---:|')
    for path in sorted(glob.glob(osp.join(folder, '*.png')))[:limit]:
        x = read_image(path)[None]
        full, fixed = tiled_forward_whole_image_pooling(net, x, pools, tile=tile, overlap=overlap, align=align)
        with torch.inference_mode():
            plain = tiled_forward(net, x, tile, overlap, align=align)
        d = (plain - full).abs()
        fixed_max = (fixed - full).abs().max().item() if pools else float('nan')
        print(f'| {osp.basename(path)} | {d.mean().item():.2e} | {d.max().item():.2e} | {fixed_max:.2e} |')


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--part', choices=['eval', 'infer', 'all'], default='all')
    p.add_argument('--metrics', nargs='+', default=['psnr', 'ssim', 'niqe'])
    p.add_argument('--batch-size', type=int, default=8)
    p.add_argument('--workers', type=int, default=2)
    p.add_argument('--repeats', type=int, default=2)
    p.add_argument('--sizes', nargs='+', type=int, default=[1024, 2048])
    p.add_argument('--tiles', nargs='+', type=int, default=[256, 512])
    p.add_argument('--overlap', type=int, default=32)
    p.add_argument('--tile-batch', type=int, default=1)
    p.add_argument('--untiled-max', type=int, default=1024, help='largest size also run without tiling')
    p.add_argument('--tiling-check', nargs=3, metavar=('OPTIONS', 'CKPT', 'FOLDER'),
                   help='also compare tiled and whole-image outputs of a trained network on FOLDER (--tiles[0])')
    p.add_argument('--allocator', nargs='+', choices=['kept', 'default'], default=['kept'],
                   help="CPU inference: irtoolkit's allocator setting (kept) and/or glibc's default, one process each")
    p.add_argument('--worker', nargs=5, type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return infer_worker(*args.worker)
    if args.tiling_check:
        return tiling_check(*args.tiling_check, tile=args.tiles[0], overlap=args.overlap)
    if args.part in ('eval', 'all'):
        bench_eval(args.metrics, args.batch_size, args.workers, args.repeats)
    if args.part in ('infer', 'all'):
        bench_infer(args.sizes, args.tiles, args.overlap, args.tile_batch, args.untiled_max, args.allocator)


if __name__ == '__main__':
    main()
