"""``python tools/convert_options.py ...``: the same command as the console script ``irtk-convert-options``.

The code is in :mod:`irtoolkit.cli.convert_options`; this file only runs it (the package is installed with
``pip install -e .``, so no path set-up is needed).
"""
import sys

from irtoolkit.cli.convert_options import main

if __name__ == '__main__':
    sys.exit(main())
