"""``python tools/export.py ...``: the same command as the console script ``irtk-export``.

The code is in :mod:`irtoolkit.cli.export`; this file only runs it (the package is installed with
``pip install -e .``, so no path set-up is needed).
"""
import sys

from irtoolkit.cli.export import main

if __name__ == '__main__':
    sys.exit(main())
