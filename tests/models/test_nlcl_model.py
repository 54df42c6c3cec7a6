"""NLCLModel: the official release's bugs are absent (every head trains, through one optimiser; batch > 1 and
non-256 crops work), D is frozen in the G step, the release's layers / loss balance / init / schedule (N1-N3), the
ablation without contrastive terms, and 20 runner iterations give finite, logged losses."""
import math
import os.path as osp

import pytest
import torch
from irtk_testutils import REPO, shrink_recipe, write_options

from irtoolkit.engine.run_log import parse_log
from irtoolkit.utils.registry import build_model
from irtoolkit.engine.runner import train as run_train
from irtoolkit.config.options import parse_options
from irtoolkit.config.recipe import load_recipe


def small_recipe(data_root, name='nlcl', iters=20, **nlcl):
    """The rain demo recipe on the tiny pairs, with small networks and 40 px crops; ``nlcl`` updates its section."""
    nlcl = dict(dict(d_warmup_iter=0,  # the demo's warm-up is longer than these runs; tests opt in
                     location_encoder={'type': 'self', 'layers': ['intro', 'encoders.0', 'encoders.1']},
                     layer_encoder={'type': 'disc', 'layers': ['input', 'body.0.0', 'body.1.0']},
                     num_patches=16, num_rain=12, head={'out_dim': 16, 'hidden_dim': 16}), **nlcl)
    return shrink_recipe(data_root, name, iters, recipe='train/NLCL/demo_NLCL_rain.yml', crop=40, batch=2,
                         networks={'network_g': {'width': 8, 'enc_blk_nums': [1, 1], 'dec_blk_nums': [1, 1]},
                                   'network_r': {'nf': 8, 'num_blocks': 2},
                                   'network_d': {'num_feat': 8, 'num_layers': 2}},
                         print_freq=1, update={'nlcl': nlcl})


def build(data_root, tmp, **nlcl):
    torch.manual_seed(0)
    opt = parse_options(write_options(small_recipe(data_root, **nlcl), tmp / 'nlcl.yml'), True)
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
def test_trains_20_iters_with_finite_logged_losses(tiny_data, in_tmp):
    run_train(['-opt', write_options(small_recipe(tiny_data, 'nlcl20', d_warmup_iter=5), in_tmp / 'nlcl20.yml')])
    exp = in_tmp / 'experiments' / 'nlcl20'
    curves = parse_log(str(next(exp.glob('train_nlcl20_*.log'))))
    assert curves['l_d'][0] == list(range(1, 21)) and all(math.isfinite(v) for v in curves['l_d'][1])
    for name in ('l_g_gan', 'l_location', 'l_layer', 'l_recon', 'l_fidelity'):  # G from iter 6 on
        iters, values = curves[name]
        assert iters == list(range(6, 21)) and all(math.isfinite(v) for v in values), name
    for net in ('g', 'r', 'd', 'h_loc', 'h_bg', 'h_rain'):
        assert (exp / 'models' / f'net_{net}_latest.pth').is_file()
    assert set(torch.load(exp / 'training_states' / '20.state', weights_only=True)['optimizers']) == {'g', 'd', 'heads'}


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
    from irtoolkit.utils.errors import OptionError
    with pytest.raises(OptionError, match='nlcl.' + next(iter(bad))):
        build(tiny_data, in_tmp, **bad)


def test_layer_contrast_taps_nlcl_conv_outputs():
    """N1: NLCL's adv_nce_layers 0, 3, 7 (after the prepended input) are D's first three convolutions, 255 / 127 / 63
    px on a 256 crop — not the blur-pooled stage outputs (128 / 64 / 32 px). As in the release, the in-place
    LeakyReLU after the first convolution overwrites its tapped output (an activation: LeakyReLU(conv0)); the second
    and third are followed by the instance norm (a new tensor), so their taps stay the convolutions' outputs."""
    from irtoolkit.contrastive.encoders import build_encoder
    from irtoolkit.utils.registry import build_network
    opt = load_recipe(osp.join(REPO, 'options/train/NLCL/train_NLCL_SPAData.yml'))
    net_d = build_network(opt['network_d'])
    enc = build_encoder(opt['nlcl']['layer_encoder'], None, net_d)
    with torch.no_grad():
        feats = enc(torch.rand(1, 3, 256, 256))
    assert [tuple(f.shape[1:]) for f in feats] == [(3, 256, 256), (64, 255, 255), (128, 127, 127), (256, 63, 63)]
    modules = dict(net_d.named_modules())
    assert all(type(modules[n]).__name__ == 'Conv2d' for n in opt['nlcl']['layer_encoder']['layers'][1:])
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        feats = enc(x)
        conv0 = net_d.body[0][0](x)
        conv1 = net_d.body[1][0](net_d.body[0](x))
    assert torch.allclose(feats[1], torch.nn.functional.leaky_relu(conv0, 0.2)) and (conv0 < 0).any()
    assert torch.allclose(feats[2], conv1) and (feats[2] < 0).any()


def test_loss_weights_equal_the_official_on_minus_one_one():
    """N2: on [0, 1] images the recipe's recon / fidelity weights give exactly NLCL's terms on [-1, 1] images
    (lambda_MSE 1, lambda_L1 0.1), so their balance against the GAN and NCE terms is the official one."""
    from irtoolkit.utils.registry import build_loss
    train = load_recipe(osp.join(REPO, 'options/train/NLCL/train_NLCL_SPAData.yml'))['train']
    recon, fidelity = build_loss(train['recon_opt']), build_loss(train['fidelity_opt'])
    torch.manual_seed(0)
    o, b = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    r = torch.rand(2, 3, 16, 16) * 0.2
    o_, b_, r_ = 2 * o - 1, 2 * b - 1, 2 * r  # NLCL's range: X' = 2X - 1, so R' = O' - B' = 2R
    official = torch.nn.functional.mse_loss(b_ + r_, o_) + 0.1 * torch.nn.functional.l1_loss(o_, b_)
    assert torch.allclose(recon(b + r, o) + fidelity(b, o), official, rtol=1e-5)


def test_discriminator_init_and_schedule_are_nlcls():
    """N3: D initialised xavier with gain 0.02; the lr held for 200 of 210 epochs, then decayed linearly to 0."""
    from irtoolkit.utils.registry import build_network
    opt = load_recipe(osp.join(REPO, 'options/train/NLCL/train_NLCL_SPAData.yml'))
    torch.manual_seed(0)
    conv = build_network(opt['network_d']).body[1][0]  # 64 -> 128, 4x4
    xavier_std = 0.02 * (2 / (64 * 16 + 128 * 16)) ** 0.5
    assert abs(conv.weight.std().item() / xavier_std - 1) < 0.05 and not conv.bias.any()
    sched, total = opt['train']['scheduler'], opt['train']['total_iter']
    assert sched['type'] == 'HoldLinearDecayLR' and sched['hold_iters'] * 210 == total * 200
    assert sched['hold_iters'] + sched['decay_iters'] == total


def test_without_contrastive_terms(tiny_data, in_tmp):
    """The ablation: no nlcl_opt, no heads, no contrastive terms; everything else trains as before."""
    opt = small_recipe(tiny_data)
    del opt['train']['nlcl_opt'], opt['train']['optim_heads']
    torch.manual_seed(0)
    opt = parse_options(write_options(opt, in_tmp / 'plain.yml'), True)
    m = build_model(opt)
    assert set(m.networks) == {'net_g', 'net_r', 'net_d'} and set(m.optimizers) == {'g', 'd'}
    m.feed_data({'lq': torch.rand(2, 3, 40, 40), 'gt': torch.rand(2, 3, 40, 40)})
    m.optimize_parameters(1)
    assert set(m.get_current_log()) == {'l_d', 'l_g_gan', 'l_recon', 'l_fidelity'}
