"""``python tools/snapshot_recipes.py ...``: the same command as the console script ``irtk-snapshot-recipes``.

The code is in :mod:`irtoolkit.cli.snapshot_recipes`; this file only runs it (the package is installed with
``pip install -e .``, so no path set-up is needed).
"""
import sys

from irtoolkit.cli.snapshot_recipes import main

if __name__ == '__main__':
    sys.exit(main())
