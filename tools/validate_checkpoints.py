"""``python tools/validate_checkpoints.py ...``: the same command as the console script ``irtk-validate-checkpoints``.

The code is in :mod:`irtoolkit.cli.validate_checkpoints`; this file only runs it (the package is installed with
``pip install -e .``, so no path set-up is needed).
"""
import sys

from irtoolkit.cli.validate_checkpoints import main

if __name__ == '__main__':
    sys.exit(main())
