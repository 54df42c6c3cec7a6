"""Write the tiny paired denoising set used by the tests and options/train/NAFNet/train_NAFNet_tiny.yml.

    irtk-make-tiny-data [--root datasets/tiny]
    python tools/make_tiny_data.py [--root datasets/tiny]    # the same

The set itself: :mod:`irtoolkit.data.tiny`.
"""
import argparse
import sys

from irtoolkit.data.tiny import make_tiny_pairs


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--root', default='datasets/tiny')
    p.add_argument('--n_train', type=int, default=8)
    p.add_argument('--n_val', type=int, default=2)
    p.add_argument('--size', type=int, default=64)
    args = p.parse_args(argv)
    print(make_tiny_pairs(args.root, args.n_train, args.n_val, args.size))


if __name__ == '__main__':
    sys.exit(main())
