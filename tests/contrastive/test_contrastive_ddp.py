"""Contrastive models under DDP: two CPU processes (gloo, torch.distributed.run) train NLCL, CDD-GAN and Uni-Removal
stage 1 on *different* data per rank for a few steps; every trainable module (heads, projectors, negative
generators included) must be DDP-wrapped and stay identical across ranks, and checkpoints keep bare key names."""
import json
import os
import subprocess
import sys

import pytest
import torch
from irtk_testutils import SMALL_NAFNET, TESTS, UNIREMOVAL_LABELS, free_port

WORKER = r'''
import gc, json, sys
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from irtk_testutils import (CDDGAN_DEMO, NLCL_DEMO, UNIREMOVAL_DEMO_STAGE1, shrink_recipe, uniremoval_teachers,
                            write_options)
from irtoolkit.utils.registry import build_model
from irtoolkit.models.base_model import bare
from irtoolkit.config.options import parse_options

data, tmp, teachers = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
dist.init_process_group('gloo')
rank = dist.get_rank()
nlcl = shrink_recipe(data, 'nlcl', **NLCL_DEMO)
nlcl['nlcl']['d_warmup_iter'] = 1
uni1 = shrink_recipe(data, 'uni1', **UNIREMOVAL_DEMO_STAGE1)
uni1['uniremoval']['teachers'] = uniremoval_teachers(teachers)
recipes = {'nlcl': (nlcl, 40, {}),
           'cddgan': (shrink_recipe(data, 'cdd', **CDDGAN_DEMO), 32, {}),
           'uni1': (uni1, 32, {'deg_type': ['rain', 'haze', 'blur']})}
for name, (recipe, size, extra) in recipes.items():
    opt = parse_options(write_options(recipe, f'{tmp}/{name}_{rank}.yml'), True)
    torch.manual_seed(rank)  # different initial weights per rank: DDP must broadcast rank 0's
    m = build_model(opt)
    for it in range(1, 4):
        torch.manual_seed(100 * it + rank)  # different data per rank: only synchronised gradients agree
        n = 3 if extra else 2
        m.feed_data(dict(lq=torch.rand(n, 3, size, size), gt=torch.rand(n, 3, size, size), **extra))
        m.optimize_parameters(it)
    stepped = {id(p) for o in m.optimizers.values() for g in o.param_groups for p in g['params']}
    for key, net in m.networks.items():
        trainable = any(id(p) in stepped for p in net.parameters())
        assert isinstance(net, DistributedDataParallel) == trainable, (name, key)
        flat = torch.cat([p.detach().flatten() for p in bare(net).parameters()])
        other = [torch.zeros_like(flat) for _ in range(2)]
        dist.all_gather(other, flat)
        assert torch.equal(other[0], other[1]), (name, key, (other[0] - other[1]).abs().max().item())
        assert not any(k.startswith('module.') for k in bare(net).state_dict()), (name, key)
    print(f'rank {rank} {name}: {len(m.networks)} networks in sync', flush=True)
del m, net  # DDP wrappers before the group: a live reducer at teardown can abort the process at exit
gc.collect()
dist.barrier()  # gloo aborts if a rank tears down while the other is still in a collective
dist.destroy_process_group()
'''


@pytest.mark.slow
def test_contrastive_models_synchronise_every_trainable_module(tiny_data, in_tmp):
    from irtoolkit.utils.registry import build_network
    teachers = {}
    for i, lab in enumerate(UNIREMOVAL_LABELS):  # random stand-in teachers, as in test_uniremoval_model
        torch.manual_seed(100 + i)
        net = build_network(SMALL_NAFNET)
        teachers[lab] = str(in_tmp / f'teacher_{lab}.pth')
        torch.save({'params': net.state_dict()}, teachers[lab])
    (in_tmp / 'worker.py').write_text(WORKER)
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=TESTS)  # irtk_testutils; irtoolkit is installed
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2', f'--master_port={free_port()}',
           str(in_tmp / 'worker.py'), str(tiny_data), str(in_tmp), json.dumps(teachers)]
    proc = subprocess.run(cmd, cwd=in_tmp, env=env, capture_output=True, text=True, timeout=240)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    for name in ('nlcl', 'cddgan', 'uni1'):
        assert out.count(f'{name}: ') == 2, out[-2000:]
