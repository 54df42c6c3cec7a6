"""Build the built-in demo dataset (haze, rain, noise, blur) from photos bundled with installed packages.

    irtk-make-demo-data [--root datasets/demo] [--seed 0] [--force] [--montage PNG]
    python tools/make_demo_data.py [...]    # the same

Offline (build times: docs/data.md). The builder, its layout and recipe: :mod:`irtoolkit.data.demo` (this is
only its command line) and datasets/README.md.
An existing build with the same recipe is kept (``--force`` rebuilds).
"""
import argparse
import sys
import time

from irtoolkit.data.demo import DEMO_DEGRADATIONS, build_demo, save_montage


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--root', default='datasets/demo', help='output folder (default: datasets/demo)')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--n-train', type=int, default=128, help='paired training crops per degradation')
    p.add_argument('--n-unpaired', type=int, default=64, help='unpaired crops per side per degradation')
    p.add_argument('--n-val', type=int, default=8, help='validation images per degradation')
    p.add_argument('--degradations', nargs='+', choices=list(DEMO_DEGRADATIONS), default=list(DEMO_DEGRADATIONS))
    p.add_argument('--compress-level', type=int, default=3, choices=range(10), metavar='0-9')
    p.add_argument('--workers', type=int, default=None, help='parallel processes (default: one per CPU)')
    p.add_argument('--montage', metavar='PNG', help='also save a montage of the validation pairs (clean | degs)')
    p.add_argument('--force', action='store_true', help='rebuild even if the same recipe is already built')
    args = p.parse_args(argv)
    t0 = time.time()
    manifest = build_demo(args.root, args.seed, args.n_train, args.n_unpaired, args.n_val,
                          compress_level=args.compress_level, degradations=args.degradations, workers=args.workers,
                          force=args.force)
    sizes = manifest['sizes_bytes']
    for deg, n in sizes.items():
        print(f'{args.root}/{deg}: {n / 2 ** 20:.1f} MiB')
    if args.montage:
        print(f'montage: {save_montage(args.root, args.montage)}')
    print(f'demo data in {args.root}: {sum(sizes.values()) / 2 ** 20:.1f} MiB, {time.time() - t0:.1f} s')


if __name__ == '__main__':
    sys.exit(main())
