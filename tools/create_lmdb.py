"""``python tools/create_lmdb.py ...``: the same command as the console script ``irtk-create-lmdb``.

The code is in :mod:`irtoolkit.cli.create_lmdb`; this file only runs it (the package is installed with
``pip install -e .``, so no path set-up is needed).
"""
import sys

from irtoolkit.cli.create_lmdb import main

if __name__ == '__main__':
    sys.exit(main())
