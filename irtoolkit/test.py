"""Test from an options file: ``python irtoolkit/test.py -opt options/test/x.yml``."""
import os.path as osp
import sys

if __package__ in (None, ''):  # run as a script: import the package, not the files beside this one
    sys.path[0] = osp.dirname(osp.dirname(osp.abspath(__file__)))

import irtoolkit  # noqa: E402,F401  (applies compat patches and registers everything)
from irtoolkit.engine.runner import test, user_errors  # noqa: E402


def main(argv=None):
    user_errors(test, argv)


if __name__ == '__main__':
    main()
