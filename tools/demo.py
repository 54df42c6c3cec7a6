"""``python tools/demo.py ...``: the same command as the console script ``irtk-demo``.

The code is in :mod:`irtoolkit.cli.demo`; this file only runs it (the package is installed with
``pip install -e .``, so no path set-up is needed).
"""
import sys

from irtoolkit.cli.demo import main

if __name__ == '__main__':
    sys.exit(main())
