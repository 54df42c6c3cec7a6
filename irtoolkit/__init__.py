"""irtoolkit: image restoration on BasicSR's registries.

Importing the package applies the basicsr compatibility patches (:mod:`irtoolkit.compat`) and then imports
every ``*_arch.py``, ``*_loss.py``, ``*_model.py``, ``*_dataset.py`` and ``*_metric.py`` module of the package
so that they register in basicsr's ``ARCH/LOSS/MODEL/DATASET/METRIC_REGISTRY``.
"""
import os

# the hub is never reachable here: fail at once, not after the hub's retries
os.environ.setdefault('HF_HUB_OFFLINE', '1')

from irtoolkit import compat  # noqa: E402

compat.apply()

from irtoolkit.utils.registry import import_package_modules  # noqa: E402

__version__ = '0.1.0'

import_package_modules()
