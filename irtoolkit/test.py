"""Test from an options file: ``python irtoolkit/test.py -opt options/test/x.yml`` (``--describe NAME`` prints
what a registered model or arch accepts)."""
import os.path as osp
import sys


def main(argv=None):
    import irtoolkit  # noqa: F401  (applies compat patches and registers everything)
    from irtoolkit.engine.runner import test, user_errors
    user_errors(test, argv)


if __name__ == '__main__':  # as a script: the folder above on the path, so `irtoolkit` is the package, not this folder
    sys.path[0] = osp.dirname(osp.dirname(osp.abspath(__file__)))
    main()
