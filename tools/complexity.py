"""``python tools/complexity.py ...``: the same command as the console script ``irtk-complexity``.

The code is in :mod:`irtoolkit.cli.complexity`; this file only runs it (the package is installed with
``pip install -e .``, so no path set-up is needed).
"""
import sys

from irtoolkit.cli.complexity import main

if __name__ == '__main__':
    sys.exit(main())
