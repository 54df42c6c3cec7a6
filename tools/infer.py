"""``python tools/infer.py ...``: the same command as the console script ``irtk-infer``.

The code is in :mod:`irtoolkit.cli.infer`; this file only runs it (the package is installed with
``pip install -e .``, so no path set-up is needed).
"""
import sys

from irtoolkit.cli.infer import main

if __name__ == '__main__':
    sys.exit(main())
