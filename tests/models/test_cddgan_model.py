"""CDDGANModel: phase isolation (N step changes only the negative generators, G step leaves them unchanged),
detached keys, and 10 training iterations through the runner (checkpoint and validation at 5 and 10) with finite,
logged losses."""
import math
from collections import OrderedDict

import pytest
import torch
from irtk_testutils import CDDGAN_DEMO, shrink_recipe, write_options

from irtoolkit.engine.logging import parse_log
from irtoolkit.engine.runner import build_model
from irtoolkit.engine.runner import train as run_train
from irtoolkit.utils.options import parse_options


def snapshot(model):
    return {name: {k: v.detach().clone() for k, v in net.state_dict().items()}
            for name, net in model.networks.items()}


def changed(before, model):
    after = snapshot(model)
    return {name for name in before if any(not torch.equal(before[name][k], after[name][k]) for k in before[name])}


@pytest.fixture
def model(tiny_data, in_tmp):
    torch.manual_seed(0)
    opt = parse_options(write_options(shrink_recipe(tiny_data, 'cdd', **CDDGAN_DEMO), in_tmp / 'cdd.yml'), True)
    opt.update(rank=0, world_size=1, dist=False)
    m = build_model(opt)
    m.feed_data({'lq': torch.rand(2, 3, 32, 32), 'gt': torch.rand(2, 3, 32, 32)})
    return m


def test_phases_touch_only_their_networks(model):
    log = OrderedDict()
    model.forward_generators()
    before = snapshot(model)
    model.step_d(log)
    assert changed(before, model) == {'net_d', 'net_d_b'}
    before = snapshot(model)
    model.step_n(log)
    assert changed(before, model) == {'net_n', 'net_n_b'}  # ascent step: only the negative generators
    assert log['l_n'] < 0  # it minimises -NCE - div
    before = snapshot(model)
    fresh = model.step_g(log)
    assert changed(before, model) == {'net_g', 'net_g_b', 'net_f', 'net_f_b'}  # N unchanged by the G step
    before = snapshot(model)
    model.step_momentum(fresh)
    # momentum heads move towards the heads; the queue (a buffer of N) receives the fresh negatives
    assert changed(before, model) == {'net_fm', 'net_fm_b', 'net_n', 'net_n_b'}
    assert len(model.neg_gens['a'].queues[0]) == 2 * 8
    assert all(math.isfinite(v) for v in map(float, log.values()))


def test_keys_detached_and_queries_carry_gradient(model):
    model.forward_generators()
    for k, k_m in model.keys.values():
        assert all(not t.requires_grad for t in k + k_m)
    q = model._queries('a', model.fake_c, model.coords['a'], with_grad=True)
    assert all(t.requires_grad for t in q)


@pytest.mark.slow
def test_trains_10_iters_with_finite_logged_losses(tiny_data, in_tmp):
    opt = shrink_recipe(tiny_data, 'cdd10', 10, checkpoint_freq=5, val_freq=5, **CDDGAN_DEMO)
    run_train(['-opt', write_options(opt, in_tmp / 'cdd10.yml')])
    exp = in_tmp / 'experiments' / 'cdd10'
    curves = parse_log(str(next(exp.glob('train_cdd10_*.log'))))
    for name in ('l_d', 'l_n', 'l_n_nce', 'l_n_div', 'l_g_gan', 'l_cycle', 'l_identity', 'l_nce', 'l_exemplar_idt',
                 'l_exemplar_pos', 'l_g_total'):
        iters, values = curves[name]
        assert iters == list(range(1, 11)) and all(math.isfinite(v) for v in values), name
    for net in ('g', 'g_b', 'd', 'd_b', 'f', 'f_b', 'fm', 'fm_b', 'n', 'n_b'):
        assert (exp / 'models' / f'net_{net}_latest.pth').is_file()
    state = torch.load(exp / 'training_states' / '10.state', weights_only=True)
    assert set(state['optimizers']) == {'g', 'd', 'f', 'n'}
