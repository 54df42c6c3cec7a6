"""Shared fixtures: a tiny paired set and a helper that writes an options file and runs the trainer."""
import os

import pytest

os.environ.setdefault('HF_HUB_OFFLINE', '1')
# one thread per pytest-xdist worker (`make test` runs two on the two cores), two for a serial run
os.environ.setdefault('OMP_NUM_THREADS', '1' if os.environ.get('PYTEST_XDIST_WORKER') else '2')
# Threads that wait for the other one sleep instead of spinning: with the 2 cores shared by other processes, spinning
# OpenMP barriers made the CPU tests several times slower.
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')

import irtoolkit  # noqa: E402,F401
from irtoolkit.data.tiny import make_tiny_pairs  # noqa: E402


@pytest.fixture(scope='session')
def tiny_data(tmp_path_factory):
    """``<tmp>/{train,val}/{gt,lq}/NNNN.png``: 8 train and 2 val 64x64 noisy/clean pairs."""
    return make_tiny_pairs(str(tmp_path_factory.mktemp('tiny')), n_train=8, n_val=2, size=64)


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run inside ``tmp_path`` (experiments/, results/ and tb_logger/ land there)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path
