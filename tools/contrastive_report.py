"""``python tools/contrastive_report.py ...``: the same command as the console script ``irtk-contrastive-report``.

The code is in :mod:`irtoolkit.cli.contrastive_report`; this file only runs it (the package is installed with
``pip install -e .``, so no path set-up is needed).
"""
import sys

from irtoolkit.cli.contrastive_report import main

if __name__ == '__main__':
    sys.exit(main())
