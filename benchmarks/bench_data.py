"""Loader throughput of PairedRestorationDataset: PNG folders vs LMDB, 0/1/2 DataLoader workers, 128x128 crops.

    python benchmarks/bench_data.py [--n 128] [--size 384] [--batches 24] [--batch-size 16] [--workers 0 1 2]

Builds a paired set in a temporary folder (``--size`` px noisy/clean crops of the bundled photos, as PNG folders
and as LMDBs written by tools/create_lmdb.py's code at PNG level 1 and level 0), then times ``--batches``
batches per configuration after one warm-up batch (worker start-up excluded), best of ``--repeats`` rounds.
The files sit in the page cache, so this measures decode + crop + collate cost, not disk latency: on a cold
disk or a network filesystem, where a PNG folder pays one open/seek per image, LMDB gains more. Prints a table
of images per second.
"""
import argparse
import os
import os.path as osp
import tempfile
import time

import cv2
import numpy as np
import torch

import irtoolkit  # noqa: F401
from irtoolkit.data.degradations import add_gaussian_noise
from irtoolkit.data.demo import TRAIN_PHOTOS, load_photo
from irtoolkit.data.lmdb_util import files_to_lmdb
from irtoolkit.data.sources import scan_images
from irtoolkit.utils.registry import DATASET_REGISTRY


def make_set(root, n, size, seed=0, lmdb_levels=(1, 0)):
    rng = np.random.default_rng(seed)
    photos = [p for p in (load_photo(name) for name in TRAIN_PHOTOS) if min(p.shape[:2]) >= size]
    for sub in ('lq', 'gt'):
        os.makedirs(osp.join(root, sub))
    for i in range(n):
        img = photos[i % len(photos)]
        y, x = rng.integers(0, img.shape[0] - size + 1), rng.integers(0, img.shape[1] - size + 1)
        gt = np.ascontiguousarray(img[y:y + size, x:x + size])
        for sub, arr in (('gt', gt), ('lq', add_gaussian_noise(gt, rng, sigma=25))):
            cv2.imwrite(osp.join(root, sub, f'{i:05d}.png'),
                        cv2.cvtColor((arr * 255).round().astype(np.uint8), cv2.COLOR_RGB2BGR))
    for level in lmdb_levels:
        for sub in ('lq', 'gt'):
            files_to_lmdb(sorted(scan_images(osp.join(root, sub)).items()), osp.join(root, f'{sub}_c{level}.lmdb'),
                          compress_level=level, workers=2, progress=False)


def images_per_second(opt, workers, batches, batch_size):
    ds = DATASET_REGISTRY.get('PairedRestorationDataset')(opt)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=workers,
                                         drop_last=True, persistent_workers=workers > 0,
                                         generator=torch.Generator().manual_seed(0))
    it, seen = iter(loader), 0

    def next_batch():
        nonlocal it
        try:
            return next(it)
        except StopIteration:
            it = iter(loader)
            return next(it)

    next_batch()  # warm-up: worker start-up and first page-in are not throughput
    t0 = time.perf_counter()
    for _ in range(batches):
        seen += next_batch()['gt'].shape[0]
    return seen / (time.perf_counter() - t0)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--n', type=int, default=128, help='image pairs in the generated set')
    p.add_argument('--size', type=int, default=384, help='side of the stored images')
    p.add_argument('--crop', type=int, default=128)
    p.add_argument('--batches', type=int, default=24)
    p.add_argument('--batch-size', type=int, default=16)
    p.add_argument('--workers', type=int, nargs='+', default=[0, 1, 2])
    p.add_argument('--repeats', type=int, default=2, help='interleaved rounds; the best round is reported')
    args = p.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)  # parallelism comes from the DataLoader workers, as in training
    with tempfile.TemporaryDirectory(prefix='irtk_bench_data_') as root:
        t0 = time.time()
        make_set(root, args.n, args.size)

        def mib(*names):
            return sum(osp.getsize(osp.join(d, f)) for k in names for d, _, fs in os.walk(osp.join(root, k))
                       for f in fs) / 2 ** 20

        print(f'set: {args.n} noisy/clean pairs of {args.size}x{args.size}; PNG folders {mib("lq", "gt"):.1f} MiB, '
              f'LMDB level 1 {mib("lq_c1.lmdb", "gt_c1.lmdb"):.1f} MiB, LMDB level 0 '
              f'{mib("lq_c0.lmdb", "gt_c0.lmdb"):.1f} MiB; built in {time.time() - t0:.1f} s')
        print(f'crop {args.crop}, batch {args.batch_size}, {args.batches} timed batches after 1 warm-up, best of '
              f'{args.repeats} interleaved rounds, 1 torch/OpenCV thread per process, {os.cpu_count()} CPUs')
        base = dict(name='bench', phase='train', gt_size=args.crop, use_hflip=True, use_rot=True)
        configs = {'PNG folders': dict(dataroot_lq=osp.join(root, 'lq'), dataroot_gt=osp.join(root, 'gt'),
                                       io_backend={'type': 'disk'})}
        for level in (1, 0):
            configs[f'LMDB level {level}'] = dict(dataroot_lq=osp.join(root, f'lq_c{level}.lmdb'),
                                                  dataroot_gt=osp.join(root, f'gt_c{level}.lmdb'),
                                                  io_backend={'type': 'lmdb'})
        best = {(c, w): 0.0 for c in configs for w in args.workers}
        for _ in range(args.repeats):
            for w in args.workers:
                for c, opt in configs.items():
                    best[c, w] = max(best[c, w], images_per_second({**base, **opt}, w, args.batches, args.batch_size))
        heads = [f'{w} workers' for w in args.workers]
        print('\n| images/s     | ' + ' | '.join(heads) + ' |')
        print('|--------------|' + '|'.join('-' * (len(h) + 2) for h in heads) + '|')
        for c in configs:
            cells = [f'{best[c, w]:>{len(h)}.0f}' for w, h in zip(args.workers, heads)]
            print(f'| {c:<12} | ' + ' | '.join(cells) + ' |')


if __name__ == '__main__':
    main()
