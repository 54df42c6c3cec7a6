"""NLCLModel: the official release's bugs are absent (every head trains, through one optimiser; batch > 1 and
non-256 crops work), D is frozen in the G step, and 10 runner iterations give finite, logged losses."""
import math

import pytest
import torch
from irtk_testutils import NLCL_DEMO, shrink_recipe, write_options

from irtoolkit.engine.logging import parse_log
from irtoolkit.engine.runner import build_model
from irtoolkit.engine.runner import train as run_train
from irtoolkit.utils.options import parse_options


def build(data_root, tmp, **nlcl):
    torch.manual_seed(0)
    recipe = shrink_recipe(data_root, 'nlcl', **NLCL_DEMO)
    recipe['nlcl'].update(nlcl)
    opt = parse_options(write_options(recipe, tmp / 'nlcl.yml'), True)
    opt.update(rank=0, world_size=1, dist=False)
    return build_model(opt)


@pytest.mark.parametrize('rain_mode', ['network', 'residual'])
def test_every_head_trains_and_d_is_fixed_in_g_step(tiny_data, in_tmp, rain_mode):
    # residual mode with the demo's identity init would start at R = O - B = 0 (constant rain patches)
    m = build(tiny_data, in_tmp, rain_mode=rain_mode, **({'identity_init': []} if rain_mode == 'residual' else {}))
    names = ('net_h_loc', 'net_h_bg', 'net_h_rain')
    heads = {n: [p.detach().clone() for p in m.networks[n].parameters()] for n in names}
    opt_params = {id(p) for g in m.optimizers['heads'].param_groups for p in g['params']}
    assert opt_params == {id(p) for n in heads for p in m.networks[n].parameters()}  # one optimiser, right params
    d_grads = []
    m.net_d.body[0][0].weight.register_hook(lambda g: d_grads.append(g))
    m.feed_data({'lq': torch.rand(2, 3, 40, 40), 'gt': torch.rand(2, 3, 40, 40)})  # batch 2, 40 px crops
    m.optimize_parameters(1)
    for name, before in heads.items():  # the release never stepped the location head nor the background head
        after = list(m.networks[name].parameters())
        assert all(not torch.equal(a, b) for a, b in zip(after, before)), name
    assert len(d_grads) == 1  # D received gradients in its own step only; frozen while it encodes for G
    assert (m.net_r is None) == (rain_mode == 'residual')
    assert all(math.isfinite(v) for v in m.get_current_log().values())


@pytest.mark.slow
def test_trains_10_iters_with_finite_logged_losses(tiny_data, in_tmp):
    recipe = shrink_recipe(tiny_data, 'nlcl10', 10, checkpoint_freq=5, val_freq=5, **NLCL_DEMO)
    recipe['nlcl']['d_warmup_iter'] = 5
    run_train(['-opt', write_options(recipe, in_tmp / 'nlcl10.yml')])
    exp = in_tmp / 'experiments' / 'nlcl10'
    curves = parse_log(str(next(exp.glob('train_nlcl10_*.log'))))
    assert curves['l_d'][0] == list(range(1, 11)) and all(math.isfinite(v) for v in curves['l_d'][1])
    for name in ('l_g_gan', 'l_location', 'l_layer', 'l_recon', 'l_fidelity', 'l_g_total'):  # G from iter 6 on
        iters, values = curves[name]
        assert iters == list(range(6, 11)) and all(math.isfinite(v) for v in values), name
    for net in ('g', 'r', 'd', 'h_loc', 'h_bg', 'h_rain'):
        assert (exp / 'models' / f'net_{net}_latest.pth').is_file()
    assert set(torch.load(exp / 'training_states' / '10.state', weights_only=True)['optimizers']) == {'g', 'd', 'heads'}


def test_identity_init_warmup_and_nonnegative_rain(tiny_data, in_tmp):
    """``identity_init`` makes B = G_B(O) = O at step 0 (EMA too); during ``d_warmup_iter`` only D changes;
    ``rain_activation: relu`` keeps the rain layer R >= 0 (rain only adds light)."""
    m = build(tiny_data, in_tmp, identity_init=['ending'], d_warmup_iter=1, rain_activation='relu')
    x = torch.rand(2, 3, 40, 40)
    with torch.no_grad():
        assert torch.allclose(m.net_g(x), x) and torch.allclose(m.ema_networks['net_g'](x), x)
        assert (m._rain(x, x) >= 0).all() and (m._rain(x, x) > 0).any()
    g0 = [p.detach().clone() for p in m.net_g.parameters()]
    d0 = [p.detach().clone() for p in m.net_d.parameters()]
    m.feed_data({'lq': x, 'gt': torch.rand(2, 3, 40, 40)})
    m.optimize_parameters(1)  # warm-up: D step only
    assert all(torch.equal(a, b) for a, b in zip(m.net_g.parameters(), g0))
    assert any(not torch.equal(a, b) for a, b in zip(m.net_d.parameters(), d0))
    assert set(m.get_current_log()) == {'l_d'}
    m.optimize_parameters(2)  # after it: G trains
    assert any(not torch.equal(a, b) for a, b in zip(m.net_g.parameters(), g0))


@pytest.mark.parametrize('bad', [{'identity_init': ['no_such_module']}, {'rain_activation': 'abs'}])
def test_bad_options_fail_early(tiny_data, in_tmp, bad):
    from irtoolkit.utils.registry import OptionError
    with pytest.raises(OptionError, match='nlcl.' + next(iter(bad))):
        build(tiny_data, in_tmp, **bad)
