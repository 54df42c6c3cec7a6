"""The set-up every issue-20 probe shares: threads and seeds fixed, the demo recipe with validation off and the
probe's ``key=value`` arguments applied to one of its sections, the model built from the written options, and a
seeded batch drawer over the recipe's training set (so two probe runs see the same batches)."""
import os
import random
import sys

import numpy as np
import torch
import yaml
from torch.utils.data import default_collate

from irtoolkit.config.options import parse_options
from irtoolkit.engine.data import build_dataset
from irtoolkit.utils.registry import build_model


def start(out):
    """Threads from OMP_NUM_THREADS (default 2), the dataset's crop seeds fixed, ``out`` created."""
    torch.set_num_threads(int(os.environ.get('OMP_NUM_THREADS', 2)))
    random.seed(0)
    np.random.seed(0)
    os.makedirs(out, exist_ok=True)


def overrides():
    """The probe's command-line ``key=value`` pairs (e.g. ``layer_head=shared``), values as strings."""
    return dict(a.split('=', 1) for a in sys.argv[1:])


def probe_model(opt, section, path, batch_size=None):
    """``opt`` with every val dataset dropped and :func:`overrides` set in ``opt[section]``, written to ``path``;
    returns (the model, built at torch seed 0; ``batch()``, drawing ``batch_size`` training samples, default the
    recipe's ``batch_size_per_gpu``, from a seed-0 generator)."""
    for k in [k for k in opt['datasets'] if k.startswith('val')]:
        del opt['datasets'][k]
    opt['val'] = {'val_freq': 10 ** 9}
    opt[section].update(overrides())
    with open(path, 'w') as f:
        yaml.safe_dump(opt, f, sort_keys=False)
    torch.manual_seed(0)
    model = build_model(parse_options(path, True))
    ds = build_dataset(parse_options(path, True)['datasets']['train'], 'datasets.train')
    gen = torch.Generator().manual_seed(0)
    size = batch_size or opt['datasets']['train']['batch_size_per_gpu']

    def batch():
        return default_collate([ds[int(i)] for i in torch.randint(len(ds), (size, ), generator=gen)])

    return model, batch
