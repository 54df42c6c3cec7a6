"""``python tools/evaluate.py ...``: the same command as the console script ``irtk-evaluate``.

The code is in :mod:`irtoolkit.cli.evaluate`; this file only runs it (the package is installed with
``pip install -e .``, so no path set-up is needed).
"""
import sys

from irtoolkit.cli.evaluate import main

if __name__ == '__main__':
    sys.exit(main())
