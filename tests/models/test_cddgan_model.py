"""CDDGANModel: phase isolation (N step changes only the negative generators, G step leaves them unchanged),
detached keys, NEGCUT's objective (identity pairs averaged with the main pair and seen by N, lambda_div not scaled by
lambda_NCE, diversity over fresh negatives only, N conditioned on the whole momentum-projected map), CUT's ResNet
generator in the full recipe, the plain-CycleGAN ablation, and 20 runner iterations with finite, logged losses."""
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

SMALL_G = {'type': 'ResnetGenerator', 'ngf': 4, 'num_blocks': 2}
SMALL_D = {'type': 'PatchGANDiscriminator', 'num_feat': 8, 'num_layers': 2}


def small_recipe(data_root, name='cdd', iters=20):
    """The demo recipe on the tiny pairs (used as unpaired sets), with small networks and 32 px crops."""
    contrastive = dict(encoder={'type': 'self', 'layers': ['model.0', 'model.4', 'model.8', 'model.12']},
                       num_patches=16, head={'out_dim': 16, 'hidden_dim': 16}, clear_exemplar=['identity', 'positive'])
    return shrink_recipe(data_root, name, iters, recipe='train/CDDGAN/demo_CDDGAN_haze.yml', crop=32, batch=2,
                         networks={'network_g': SMALL_G, 'network_d': SMALL_D,
                                   'network_n': {'num_negatives': 8, 'hidden_dim': 16, 'queue_size': 16}},
                         print_freq=1, update={'cddgan': contrastive,
                                               'train': {'identity_opt': {'type': 'L1Loss', 'loss_weight': 0.5}}})


def snapshot(model):
    return {name: {k: v.detach().clone() for k, v in net.state_dict().items()}
            for name, net in model.networks.items()}


def changed(before, model):
    after = snapshot(model)
    return {name for name in before if any(not torch.equal(before[name][k], after[name][k]) for k in before[name])}


@pytest.fixture
def model(tiny_data, in_tmp):
    torch.manual_seed(0)
    opt = parse_options(write_options(small_recipe(tiny_data), in_tmp / 'cdd.yml'), True)
    return build_model(opt)


def forward(model):
    """The iteration's images and pairs, as ``train_iteration`` builds them."""
    return model.forward_generators(torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32))


def test_phases_touch_only_their_networks(model):
    fwd = forward(model)
    before = snapshot(model)
    model.optimize('d', model.d_losses, fwd)
    assert changed(before, model) == {'net_d', 'net_d_b'}
    before = snapshot(model)
    terms = model.optimize('n', model.n_losses, fwd)
    assert changed(before, model) == {'net_n', 'net_n_b'}  # ascent step: only the negative generators
    assert terms['n'] < 0  # it minimises -NCE - div
    before = snapshot(model)
    model.optimize(('g', 'f'), model.g_losses, fwd)
    assert changed(before, model) == {'net_g', 'net_g_b', 'net_f', 'net_f_b'}  # N unchanged by the G step
    before = snapshot(model)
    model.step_momentum(fwd)
    # momentum heads move towards the heads; the queue (a buffer of N) receives the fresh negatives of both pairs
    assert changed(before, model) == {'net_fm', 'net_fm_b', 'net_n', 'net_n_b'}
    assert len(model.neg_gens['a'].queues[0]) == 16  # 2 pairs x 2 images x 8 pushed, the queue holds 16
    assert all(math.isfinite(v) for v in model._iteration['log'].values())


def test_keys_and_conditions_fixed_queries_carry_gradient(model):
    for pairs in forward(model).pairs.values():
        for p in pairs:
            assert all(not t.requires_grad for t in p.k + p.cond) and all(t.requires_grad for t in p.q)


def test_identity_pairs_halved_and_seen_by_n(model):
    """NEGCUT: NCE = 1/2 (NCE(G(x), x) + NCE(G(y), y)) for each generator, and N ascends both pairs."""
    fwd = forward(model)
    assert [[p.weight for p in fwd.pairs[d]] for d in 'ab'] == [[0.5, 0.5], [0.5, 0.5]]
    roles = []
    nce = model.losses['nce']
    orig = nce.forward
    nce.forward = lambda *a, **k: roles.append(k.get('role', 'generator')) or orig(*a, **k)
    model.n_losses(fwd)
    model.g_losses(fwd)
    assert roles == ['negative'] * 4 + ['generator'] * 4  # 2 directions x (X pair, Y pair)


def test_condition_is_the_whole_map_mean(model):
    """N is conditioned on the momentum head over every location of the source map (NEGCUT), not on the patches."""
    fwd = forward(model)
    p = fwd.pairs['a'][0]
    with torch.no_grad():
        feats = model.encoders['a'](fwd.x)
        dense = model.heads_m['a']([f.flatten(2).transpose(1, 2) for f in feats])
    assert all(torch.allclose(c, e.mean(1, keepdim=True), atol=1e-6) for c, e in zip(p.cond, dense))


def test_negative_objective_lambda_div_and_fresh_only():
    """lambda_div is not scaled by loss_weight, and the diversity ignores queued negatives."""
    from irtoolkit.losses.adversarial_contrastive_loss import AdversarialContrastiveLoss
    torch.manual_seed(0)
    q, k = [torch.nn.functional.normalize(torch.randn(2, 6, 4), dim=-1) for _ in range(2)]
    fresh = torch.nn.functional.normalize(torch.randn(2, 8, 4), dim=-1)
    queued = torch.cat((fresh, torch.zeros(2, 8, 4)), 1)  # a queue of constants would halve the diversity
    loss = AdversarialContrastiveLoss(loss_weight=3.0, lambda_div=0.5)
    value = loss([q], [k], [queued], role='negative', fresh=[fresh])
    expected = -3.0 * loss.nce([q], [k], [queued]) - 0.5 * loss.diversity([fresh])
    assert torch.allclose(value, expected)
    assert not torch.allclose(loss.diversity([fresh]), loss.diversity([queued]))


def test_full_recipe_is_negcut_on_cut_resnet():
    opt = load_recipe(osp.join(REPO, 'options/train/CDDGAN/train_CDDGAN_RESIDE.yml'))
    assert opt['network_g']['type'] == 'ResnetGenerator' and opt['network_g']['num_blocks'] == 9
    demo = load_recipe(osp.join(REPO, 'options/train/CDDGAN/demo_CDDGAN_haze.yml'))
    assert demo['network_g']['type'] == 'ResnetGenerator'  # the demo is the full recipe, smaller
    assert opt['cddgan']['encoder']['layers'] == ['model.0', 'model.4', 'model.8', 'model.12', 'model.16']
    sched, total = opt['train']['scheduler'], opt['train']['total_iter']
    assert sched['type'] == 'HoldLinearDecayLR' and sched['hold_iters'] == sched['decay_iters'] == total // 2
    nce = opt['train']['nce_opt']
    assert (nce['loss_weight'], nce['lambda_div'], nce['temperature']) == (1.0, 1.0, 0.07)


def test_recipes_train_every_network_at_one_rate():
    """NEGCUT trains G, D, F and N at one learning rate; so do both recipes (the demo once ran N 10x faster to hide
    the collapse that torch's default N init caused; tests/models/test_cddgan_terms.py measures it)."""
    for name in ('demo_CDDGAN_haze.yml', 'train_CDDGAN_RESIDE.yml'):
        train = load_recipe(osp.join(REPO, 'options/train/CDDGAN', name))['train']
        rates = {train[o]['lr'] for o in ('optim_g', 'optim_d', 'optim_f', 'optim_n')}
        assert len(rates) == 1, (name, rates)


def test_adversarial_nce_starts_informative_with_resnet_not_with_nafnet(tiny_data, in_tmp):
    """The finding behind the ResNet generator: an identity-like start (NAFNet) puts the adversarial NCE at ~0,
    CUT's ResNet from scratch puts it within reach of its chance level ln(1 + K)."""
    values = {}
    for name, net, layers in (('resnet', SMALL_G, ['model.0', 'model.4', 'model.8', 'model.12']),
                              ('nafnet', {'type': 'NAFNet', 'width': 8, 'middle_blk_num': 1, 'enc_blk_nums': [1, 1],
                                          'dec_blk_nums': [1, 1]}, ['intro', 'encoders.0', 'encoders.1'])):
        opt = small_recipe(tiny_data, name)
        opt['network_g'] = net
        opt['cddgan']['encoder']['layers'] = layers
        torch.manual_seed(0)
        opt = parse_options(write_options(opt, in_tmp / f'{name}.yml'), True)
        m = build_model(opt)
        pair = forward(m).pairs['a'][0]
        with torch.no_grad():
            values[name] = float(m.losses['nce'].nce(pair.q, pair.k, m.neg_gens['a'](pair.cond)))
    chance = math.log(1 + 8)
    assert values['nafnet'] < 0.05 * chance < 0.2 * chance < values['resnet'], values  # measured: 2 % / 38 %


def test_without_nce_is_plain_cyclegan(tiny_data, in_tmp):
    opt = small_recipe(tiny_data)
    del opt['train']['nce_opt'], opt['train']['optim_f'], opt['train']['optim_n']
    opt['cddgan']['clear_exemplar'] = ['identity']
    opt = parse_options(write_options(opt, in_tmp / 'plain.yml'), True)
    m = build_model(opt)
    assert set(m.networks) == {'net_g', 'net_g_b', 'net_d', 'net_d_b'} and set(m.optimizers) == {'g', 'd'}
    m.feed_data({'lq': torch.rand(2, 3, 32, 32), 'gt': torch.rand(2, 3, 32, 32)})
    m.optimize_parameters(1)
    assert set(m.get_current_log()) == {'l_d', 'l_g_gan', 'l_cycle', 'l_identity'}


@pytest.mark.slow
def test_trains_20_iters_with_finite_logged_losses(tiny_data, in_tmp):
    run_train(['-opt', write_options(small_recipe(tiny_data, 'cdd20'), in_tmp / 'cdd20.yml')])
    exp = in_tmp / 'experiments' / 'cdd20'
    curves = parse_log(str(next(exp.glob('train_cdd20_*.log'))))
    for name in ('l_d', 'l_n', 'l_n_nce', 'l_n_div', 'l_g_gan', 'l_cycle', 'l_identity', 'l_nce', 'l_nce_x',
                 'l_nce_y', 'l_exemplar_pos'):
        iters, values = curves[name]
        assert iters == list(range(1, 21)) and all(math.isfinite(v) for v in values), name
    for net in ('g', 'g_b', 'd', 'd_b', 'f', 'f_b', 'fm', 'fm_b', 'n', 'n_b'):
        assert (exp / 'models' / f'net_{net}_latest.pth').is_file()
    state = torch.load(exp / 'training_states' / '20.state', weights_only=True)
    assert set(state['optimizers']) == {'g', 'd', 'f', 'n'}
