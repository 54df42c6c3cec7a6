"""``python tools/make_tiny_data.py ...``: the same command as the console script ``irtk-make-tiny-data``.

The code is in :mod:`irtoolkit.cli.make_tiny_data`; this file only runs it (the package is installed with
``pip install -e .``, so no path set-up is needed).
"""
import sys

from irtoolkit.cli.make_tiny_data import main

if __name__ == '__main__':
    sys.exit(main())
