"""``python tools/weights.py ...``: the same command as the console script ``irtk-weights``.

The code is in :mod:`irtoolkit.cli.weights`; this file only runs it (the package is installed with
``pip install -e .``, so no path set-up is needed).
"""
import sys

from irtoolkit.cli.weights import main

if __name__ == '__main__':
    sys.exit(main())
