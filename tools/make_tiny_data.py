"""Write the tiny paired denoising set used by the tests and options/train/NAFNet/train_NAFNet_tiny.yml.

    python tools/make_tiny_data.py [--root datasets/tiny]
"""
import argparse
import os.path as osp
import sys

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
if ROOT not in sys.path:  # run as a script from anywhere, or imported by a test: this checkout's package
    sys.path.insert(0, ROOT)
from irtoolkit.data.tiny import make_tiny_pairs  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--root', default='datasets/tiny')
    p.add_argument('--n_train', type=int, default=8)
    p.add_argument('--n_val', type=int, default=2)
    p.add_argument('--size', type=int, default=64)
    args = p.parse_args()
    print(make_tiny_pairs(args.root, args.n_train, args.n_val, args.size))


if __name__ == '__main__':
    main()
