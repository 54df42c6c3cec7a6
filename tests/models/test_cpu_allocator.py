"""``train.keep_freed_memory`` (default on): a CPU training model stops glibc from unmapping every freed activation.

glibc's setting is process-wide and cannot be undone, so each case runs in its own interpreter and reads glibc's
own count of memory-mapped chunks (``mallinfo2().hblkhd``) around a 64 MiB tensor: mapped before the model exists,
taken from the heap after it, unless the recipe turned the setting off.
"""
import json
import subprocess
import sys

import pytest
from irtk_testutils import REPO, SMALL_NAFNET

pytestmark = pytest.mark.skipif(not sys.platform.startswith('linux'), reason='glibc allocator setting')

PROBE = r'''
import ctypes, json, sys
import torch
import irtoolkit  # noqa: F401
from irtoolkit.utils.registry import build_model


class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ('arena', 'ordblks', 'smblks', 'hblks', 'hblkhd', 'usmblks',
                                               'fsmblks', 'uordblks', 'fordblks', 'keepcost')]


libc = ctypes.CDLL('libc.so.6')
libc.mallinfo2.restype = MallInfo2


def mapped_while_allocated():
    t = torch.empty(16 * 2 ** 20)  # 64 MiB: above glibc's mmap threshold
    return libc.mallinfo2().hblkhd >= t.numel() * 4


before = mapped_while_allocated()
train = {'optim_g': {'type': 'Adam', 'lr': 1e-3}, 'pixel_opt': {'type': 'L1Loss'}}
train.update(json.loads(sys.argv[1]))
build_model({'name': 'probe', 'model_type': 'RestorationModel', 'num_gpu': 0, 'device': 'cpu',
             'network_g': json.loads(sys.argv[2]), 'train': train, 'path': {}})
print(json.dumps({'before': before, 'after': mapped_while_allocated()}))
'''


def _probe(train):
    """Start one interpreter on ``train``'s options; its result is read by :func:`_result`."""
    return subprocess.Popen([sys.executable, '-c', PROBE, json.dumps(train), json.dumps(SMALL_NAFNET)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _result(proc):
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    return json.loads(out.strip().splitlines()[-1])


def test_cpu_training_model_keeps_freed_memory_unless_turned_off():
    # the option's default comes from the schema when options are resolved; the model acts on the resolved value
    from irtoolkit.models.base_model import BaseModel
    assert BaseModel.OPTION_SCHEMA['train']['keep_freed_memory'].default is True
    kept, default = _probe({'keep_freed_memory': True}), _probe({'keep_freed_memory': False})  # side by side
    assert _result(kept) == {'before': True, 'after': False}
    assert _result(default) == {'before': True, 'after': True}
