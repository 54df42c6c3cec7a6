"""NLCL's loss terms measured on the networks as training leaves them (issue 20): a few real iterations through
``optimize_parameters``, then, outside any ``learning_only``, every term of the G step alone through
``torch.autograd.grad`` on each parameter group, as gradient norms; behaviour of the layer contrast when only its
heads learn (separately trained heads solve it alone, a shared head keeps it informative); the release-compatible
head training. Magnitudes are compared with generous ratios, never exact trajectories. Failure messages print the
norm table."""
import math
import random

import numpy as np
import pytest
import torch
from irtk_testutils import NLCL_DEMO, free_port, grad_norms, shrink_recipe, train_iterations, write_options
from torch.utils.data import default_collate

from irtoolkit.config.options import parse_options
from irtoolkit.engine.data import build_dataset
from irtoolkit.utils.registry import build_model

# the recipe's taps: the RGB input and D's first two convolutions (NLCL's layers 0 and 3), 16 bg / 12 rain patches
NLCL = {'layer_encoder': {'type': 'disc', 'layers': ['input', 'body.0.0', 'body.1.0']}}


def seed(value):
    random.seed(value)  # the datasets' crops
    np.random.seed(value)
    torch.manual_seed(value)  # initialisations, patch samplers


def build(tmp, data_root, iters=20, **nlcl):
    opt = shrink_recipe(data_root, 'nlcl_terms', iters, **NLCL_DEMO)
    opt['nlcl'].update(NLCL, **nlcl)
    seed(0)
    opt = parse_options(write_options(opt, tmp / 'nlcl.yml'), True)
    return build_model(opt), build_dataset(opt['datasets']['train'], 'datasets.train')


def batches(dataset, size=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    while True:
        yield default_collate([dataset[int(i)] for i in torch.randint(len(dataset), (size, ), generator=gen)])


def show(table):
    groups = list(next(iter(table.values())))
    lines = ['term       ' + ' '.join(f'{g:>11}' for g in groups)]
    lines += [f'{t:10} ' + ' '.join(f'{v[g]:11.3e}' for g in groups) for t, v in table.items()]
    return '\n'.join(lines)


def groups_of(model):
    return {n[4:]: [p for p in model.networks[n].parameters() if p.requires_grad]
            for n in model.networks if n.startswith('net_')}


@pytest.mark.parametrize('layer_head', ['separate', 'shared'])
def test_g_step_term_gradients_after_training(tiny_data, in_tmp, layer_head):
    """After 3 iterations: the location term reaches G_B and the location head only (G_R takes no part in it); the
    layer term reaches G_B, G_R and the layer head(s) — with the shared head, with a norm on G_B that is not
    negligible next to the location term's (separate heads have already solved it: ~0.3 % of it, not asserted);
    reconstruction reaches both generators, fidelity G_B only; no G-step term reaches a head it does not use. D is
    in the graph of the GAN and layer terms but is not an optimiser of the G step."""
    model, data = build(in_tmp, tiny_data, layer_head=layer_head)
    train_iterations(model, batches(data), 3)
    batch = next(batches(data, seed=1))
    o, clean = batch['lq'], batch['gt']
    b = model.net_g(o)
    table = grad_norms(model.g_losses(o, clean, b), groups_of(model))
    msg = '\n' + show(table)
    layer_heads = ['h_layer'] if layer_head == 'shared' else ['h_bg', 'h_rain']
    loc, layer = table['location'], table['layer']
    assert loc['g'] > 0 and loc['h_loc'] > 0 and loc['r'] == 0, msg
    assert all(loc[h] == 0 for h in layer_heads), msg
    assert layer['g'] > 0 and layer['r'] > 0 and layer['h_loc'] == 0, msg
    if layer_head == 'shared':
        assert layer['g'] > 0.01 * loc['g'], msg
    assert all(layer[h] > 0 for h in layer_heads), msg
    assert table['recon']['g'] > 0 and table['recon']['r'] > 0, msg
    assert table['fidelity']['g'] > 0 and table['fidelity']['r'] == 0, msg
    assert table['g_gan']['d'] > 0 and table['g_gan']['r'] == 0, msg
    assert 'net_d' not in model.learning_networks('g', 'heads'), msg


def layer_grad_when_only_heads_learn(model, o, steps, lr):
    """G, D and the images frozen: the layer heads alone minimise the layer term (Adam, ``lr``). Returns the term
    and the norm of its gradient on G_B + G_R before and after ``steps`` head steps, at fixed patch locations."""
    nopt = model.opt['nlcl']
    g_params = list(model.net_g.parameters()) + list(model.net_r.parameters())
    heads = list({id(p): p for h in (model.h_bg, model.h_rain) for p in h.parameters()}.values())
    with torch.no_grad():
        b = model.net_g(o)
        c_bg = model.layer_sampler(b, nopt['num_bg'])
        c_rain = model.layer_sampler(model._rain(o, b), nopt['num_rain'])

    def term():
        from irtoolkit.contrastive.training import embed_patches
        b = model.net_g(o)
        r = model._rain(o, b)
        return model.losses['nlcl'].supcon(embed_patches(model.layer_encoder(b), c_bg, model.h_bg),
                                           embed_patches(model.layer_encoder(r), c_rain, model.h_rain))

    def measure():
        value = term()
        grads = torch.autograd.grad(value, g_params, allow_unused=True)
        return float(value), math.sqrt(sum(float((g ** 2).sum()) for g in grads if g is not None))

    opt = torch.optim.Adam(heads, lr=lr, betas=(0.5, 0.999))
    start = measure()
    for _ in range(steps):
        opt.zero_grad()
        for p in g_params:
            p.requires_grad_(False)
        term().backward()
        for p in g_params:
            p.requires_grad_(True)
        opt.step()
    return start, measure()


@pytest.mark.parametrize('layer_head', ['separate', 'shared'])
def test_layer_term_solved_by_separate_heads_not_by_a_shared_one(tiny_data, in_tmp, layer_head):
    """The finding of issue 20 and its fix: the bg and rain patches are each self-similar, so two heads trained
    apart separate them by themselves — after 20 head-only steps at the recipe's lr the layer term's gradient on G
    has fallen more than 20x (over seeds 0-7: 0.001-0.005 of its start; the heads had solved it within the 3
    training iterations already); one shared head must separate them by their features and keeps it (0.6-34x its
    start). Both directions are asserted, so the test tells the two apart."""
    model, data = build(in_tmp, tiny_data, layer_head=layer_head)
    seed(0)
    train_iterations(model, batches(data), 3)
    o = next(batches(data, seed=100))['lq']
    (v0, g0), (v1, g1) = layer_grad_when_only_heads_learn(model, o, 20, model.opt['train']['optim_heads']['lr'])
    msg = f'{layer_head}: layer term {v0:.3f} -> {v1:.3f}, |grad on G| {g0:.3e} -> {g1:.3e} ({g1 / g0:.3f})'
    if layer_head == 'shared':
        assert model.h_bg is model.h_rain and 'net_h_layer' in model.learning_networks('heads'), msg
        assert g1 > 0.2 * g0, msg
    else:
        assert model.h_bg is not model.h_rain
        assert g1 < 0.05 * g0, msg


@pytest.mark.parametrize('layer_head', ['separate', 'shared'])
def test_layer_term_keeps_reaching_g_over_training(tiny_data, in_tmp, layer_head):
    """After 20 real iterations the layer term's gradient on G_B, relative to the location term's: with the shared
    head of the order of it (measured 1.3), with separate heads nil (measured ~1e-4: the heads solved it). Both
    asserted, so that the test tells the two apart."""
    model, data = build(in_tmp, tiny_data, layer_head=layer_head)
    train_iterations(model, batches(data), 20)
    batch = next(batches(data, seed=1))
    table = grad_norms(model.g_losses(batch['lq'], batch['gt'], model.net_g(batch['lq'])), groups_of(model))
    ratio = table['layer']['g'] / table['location']['g']
    msg = f'{layer_head}: layer / location on G_B {ratio:.2e}\n' + show(table)
    if layer_head == 'shared':
        assert ratio > 0.05, msg
    else:
        assert ratio < 0.01, msg


def test_release_head_training(tiny_data, in_tmp):
    """``head_training: release``: the location and background heads keep their initialisation (the release never
    steps them), the rain head learns at twice optim_heads' lr (two optimisers stepping it on the same gradients);
    a shared layer head is refused (the release has two)."""
    from irtoolkit.utils.errors import OptionError
    model, data = build(in_tmp, tiny_data, head_training='release')
    init = {n: [p.detach().clone() for p in model.networks[n].parameters()]
            for n in ('net_h_loc', 'net_h_bg', 'net_h_rain')}
    lr = model.opt['train']['optim_heads']['lr']
    assert model.learning_networks('heads') == ('net_h_rain', )
    assert all(g['lr'] == pytest.approx(2 * lr) for g in model.optimizers['heads'].param_groups)
    train_iterations(model, batches(data), 2)
    for name, before in init.items():
        same = all(torch.equal(a, b) for a, b in zip(model.networks[name].parameters(), before))
        assert same == (name != 'net_h_rain'), name
    with pytest.raises(OptionError, match='nlcl.layer_head'):
        build(in_tmp, tiny_data, head_training='release', layer_head='shared')


DDP_WORKER = r'''
import gc
import sys
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from irtk_testutils import NLCL_DEMO, shrink_recipe, write_options
from irtoolkit.config.options import parse_options
from irtoolkit.models.base_model import bare
from irtoolkit.utils.registry import build_model

data, tmp = sys.argv[1], sys.argv[2]
dist.init_process_group('gloo')
rank = dist.get_rank()
for name, nlcl in (('shared', {'layer_head': 'shared'}), ('release', {'head_training': 'release'})):
    opt = shrink_recipe(data, name, **NLCL_DEMO)
    opt['nlcl'].update(nlcl)
    torch.manual_seed(rank)  # different initial weights per rank: the model must make them rank 0's
    m = build_model(parse_options(write_options(opt, f'{tmp}/{name}_{rank}.yml'), True))
    for it in range(1, 3):
        torch.manual_seed(100 * it + rank)  # different data per rank: only synchronised gradients agree
        m.feed_data(dict(lq=torch.rand(2, 3, 40, 40), gt=torch.rand(2, 3, 40, 40)))
        m.optimize_parameters(it)
    for key, net in m.networks.items():
        flat = torch.cat([p.detach().flatten() for p in bare(net).parameters()])
        other = [torch.zeros_like(flat) for _ in range(2)]
        dist.all_gather(other, flat)
        assert torch.equal(other[0], other[1]), (name, key)
    print(f'rank {rank} {name}: {len(m.networks)} networks in sync', flush=True)
del m, net  # DDP wrappers before the group: a live reducer at teardown can abort the process at exit
gc.collect()
dist.barrier()
dist.destroy_process_group()
'''


@pytest.mark.slow
def test_shared_and_release_heads_under_ddp(tiny_data, in_tmp):
    """Two CPU processes: the shared layer head (one DDP module used for both sets) and the release's frozen heads
    (not DDP-wrapped: the model broadcasts rank 0's initialisation) stay identical on both ranks."""
    import os
    import subprocess
    import sys

    from irtk_testutils import TESTS
    (in_tmp / 'worker.py').write_text(DDP_WORKER)
    port = free_port()
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=TESTS)
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2', f'--master_port={port}',
           str(in_tmp / 'worker.py'), str(tiny_data), str(in_tmp)]
    proc = subprocess.run(cmd, cwd=in_tmp, env=env, capture_output=True, text=True, timeout=240)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert out.count('shared: ') == 2 and out.count('release: ') == 2, out[-2000:]
