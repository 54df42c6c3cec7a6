"""Uni-Removal's loss terms measured on the networks as training leaves them (issue 20): a few real iterations
through ``optimize_parameters``, then, outside any ``learning_only``, every term of the step alone through
``torch.autograd.grad`` on each parameter group, as gradient norms; and behaviour over iterations (the feature
grain leaves chance; the stage-2 keys follow the encoder). Magnitudes are compared with generous ratios, never exact
trajectories. Failure messages print the norm table."""
import logging
import math
import random

import numpy as np
import pytest
import torch
from irtk_testutils import (REPO, UNIREMOVAL_DEMO_STAGE1, UNIREMOVAL_DEMO_STAGE2, grad_norms, shrink_recipe,
                            train_iterations, uniremoval_teachers, write_options)
from torch.utils.data import default_collate

from irtoolkit.config.options import parse_options
from irtoolkit.config.recipe import load_recipe
from irtoolkit.contrastive.samplers import RandomPatchSampler, gather
from irtoolkit.engine.data import build_dataset
from irtoolkit.models.uniremoval_stage2_model import embed
from irtoolkit.utils.registry import build_model

LABELS = ['haze', 'rain', 'blur']


# ---------------------------------------------------------------------------------------------------- helpers
def seed(value):
    random.seed(value)  # the datasets' crops
    np.random.seed(value)
    torch.manual_seed(value)  # initialisations, patch samplers


def build(opt, tmp):
    seed(0)
    opt = parse_options(write_options(opt, tmp / 'opt.yml'), True)
    return build_model(opt), build_dataset(opt['datasets']['train'], 'datasets.train')


def batches(dataset, size, labels=None, seed=0):
    """Endless batches of ``size`` training samples (deg_type replaced by ``labels`` when given)."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        batch = default_collate([dataset[int(i)] for i in torch.randint(len(dataset), (size, ), generator=gen)])
        if labels is not None:
            batch['deg_type'] = list(labels)
        yield batch


def show(table):
    groups = list(next(iter(table.values())))
    lines = ['term          ' + ' '.join(f'{g:>12}' for g in groups)]
    lines += [f'{t:13} ' + ' '.join(f'{v[g]:12.3e}' for g in groups) for t, v in table.items()]
    return '\n'.join(lines)


# ---------------------------------------------------------------------------------------------------- stage 1
def stage1(tiny_data, tmp, teachers, iters=20, **uni):
    opt = shrink_recipe(tiny_data, 'uni1_terms', iters, **UNIREMOVAL_DEMO_STAGE1)
    opt['uniremoval'].update(teachers=uniremoval_teachers(teachers), **uni)
    return build(opt, tmp)


def stage1_groups(model):
    proj = model.proj
    return {'student': list(model.net_g.parameters()),
            's_proj': list(proj['student'].parameters()),
            **{f't_proj_{lab}': list(proj['teachers'][t].parameters()) for t, lab in enumerate(model.labels)},
            **{f'inv_{lab}': list(proj['inverse'][t].parameters()) for t, lab in enumerate(model.labels)}}


def stage1_terms(model, batch):
    fwd = model.forward(batch['lq'], model.batch_labels(batch))
    return model.g_losses(fwd, batch['gt'])


def test_stage1_term_gradients_after_training(tiny_data, in_tmp, teachers):
    """After 3 iterations: the feature grain reaches the student, its projectors and the projector of the batch's
    teacher (the shared space's pull), with a norm on the student of the order of the distillation's; never the
    projectors of teachers absent from the batch (their projections are negatives: constants) and never the
    inverse projectors; the image grain reaches the student only among trained parameters. Made to require grad
    here, the teachers would be reached by the image grain alone (the student's output is encoded by its teacher);
    every other term takes their features as constants."""
    model, data = stage1(tiny_data, in_tmp, teachers)
    train_iterations(model, batches(data, 3, LABELS), 3)
    batch = next(batches(data, 3, ['rain'] * 3, seed=1))  # one label: haze and blur teachers only give negatives
    teacher_params = [p for t in model.teachers for p in t.parameters()]
    for p in teacher_params:  # let autograd see them: any graph through a teacher would give them a gradient
        p.requires_grad_(True)
    try:
        terms = stage1_terms(model, batch)
        table = grad_norms(terms, {**stage1_groups(model), 'teachers': teacher_params})
    finally:
        for p in teacher_params:
            p.requires_grad_(False)
    msg = '\n' + show(table)
    feat, img, dist = table['mgcl_feature'], table['mgcl_image'], table['distill']
    assert feat['student'] > 0.01 * dist['student'], msg
    assert feat['s_proj'] > 0 and feat['t_proj_rain'] > 0.05 * feat['s_proj'], msg  # positives carry gradient
    assert feat['t_proj_haze'] == 0 and feat['t_proj_blur'] == 0, msg  # negatives are constants
    assert all(feat[f'inv_{lab}'] == 0 for lab in LABELS), msg
    assert img['student'] > 0 and all(v == 0 for g, v in img.items() if g not in ('student', 'teachers')), msg
    assert all(row['teachers'] == 0 for t, row in table.items() if t != 'mgcl_image'), msg
    assert not any(p.requires_grad for p in teacher_params) and model.learning_networks('g') == ('net_g', 'net_proj')
    # the inverse projectors' reconstruction trains the teacher projectors and the inverses, not the student
    rec = table['proj_recon']
    assert rec['student'] == 0 and rec['s_proj'] == 0 and all(rec[f'inv_{lab}'] > 0 for lab in LABELS), msg


def test_feature_grain_negatives_are_constants():
    """U1 at the loss: with q = anchors, k = positives (with gradient) and external negatives, the gradient on each
    positive k_i comes from its own row only — -(1 - softmax_i(positive)) q_i / tau, parallel to -q_i — since the
    other patches (internal negatives) and the external negatives are constants; none reaches the negatives."""
    from irtoolkit.losses.multi_grained_contrastive_loss import MultiGrainedContrastiveLoss
    torch.manual_seed(0)
    loss = MultiGrainedContrastiveLoss(image_mode='none')
    q = torch.nn.functional.normalize(torch.randn(2, 8, 16), dim=-1)
    k = torch.nn.functional.normalize(torch.randn(2, 8, 16), dim=-1).requires_grad_(True)
    n = torch.nn.functional.normalize(torch.randn(2, 12, 16), dim=-1).requires_grad_(True)
    total, _ = loss({'feat': [q]}, {'feat': [k]}, {'feat': [n]})
    g_k, g_n = torch.autograd.grad(total, (k, n), allow_unused=True)
    assert g_n is None or not g_n.any()
    cos = torch.nn.functional.cosine_similarity(g_k, -q, dim=-1)
    assert (cos > 1 - 1e-5).all(), cos


def patch_cosine(projector, feat, num=16):
    """Mean cosine between the projections of different patches (1: every patch maps to one direction)."""
    with torch.no_grad():
        z = torch.nn.functional.normalize(gather(projector(feat), RandomPatchSampler(num)(feat)), dim=-1)
        sim = z @ z.transpose(1, 2)
        return float(sim[:, ~torch.eye(num, dtype=torch.bool)].mean())


def test_stage1_projectors_keep_patches_apart(tiny_data, in_tmp, teachers):
    """TKL&MR's projector (3x3, bias-free, kaiming): at initialisation different patches keep different
    projections; the earlier 1x1 projector with bias and default init mapped them to almost one vector."""
    model, data = stage1(tiny_data, in_tmp, teachers)
    for net in model.proj.modules():
        if isinstance(net, torch.nn.Conv2d):
            assert net.kernel_size == (3, 3) and net.bias is None
    first = model.proj['student'][0][0]
    fan_in = first.in_channels * 9
    assert abs(first.weight.std().item() / math.sqrt(2 / fan_in) - 1) < 0.25  # kaiming-normal, ReLU gain
    batch = next(batches(data, 3, LABELS))
    with torch.no_grad():
        feats = model.s_tap(batch['lq'])
    torch.manual_seed(0)
    cos = [patch_cosine(model.proj['student'][i], f) for i, f in enumerate(feats)]
    assert max(cos) < 0.95, cos


def feature_infonce(model, batch):
    """The feature grain's raw InfoNCE on ``batch`` and its chance level ln(1 + (P - 1) + (T - 1) P)."""
    with torch.no_grad():
        fwd = model.forward(batch['lq'], model.batch_labels(batch))
        s_proj, t_proj, _ = model.proj([f.float() for f in fwd['s_feats']], fwd['t_feats'])
        anchors, positives, negatives = model._feature_grain(fwd['lq'], fwd['idx'], s_proj, t_proj)
        value = model.losses['mgcl'].feature_grain(anchors, positives, negatives)
    p, t = anchors[0].shape[1], len(model.teachers)
    return float(value), math.log(1 + (p - 1) + (t - 1) * p)


@pytest.mark.parametrize('projector', ['tklmr', 'pointwise'])
def test_stage1_feature_grain_leaves_chance(tiny_data, in_tmp, teachers, projector):
    """Within 40 iterations (the demo's 32 projection channels) the feature-grain InfoNCE falls below its chance
    level ln(1 + 15 + 2 * 16) = 3.87: the student's patch is told from the other patches and from the other teachers'
    (measured 3.37); with the 1x1 projector it stays at chance (3.87), which ``pointwise`` asserts, so that the test
    tells the two apart."""
    model, data = stage1(tiny_data, in_tmp, teachers, iters=40, projector=projector, proj_channels=32)
    probe = next(batches(data, 3, LABELS, seed=7))
    before, chance = feature_infonce(model, probe)
    seed(0)
    train_iterations(model, batches(data, 3, LABELS), 40)
    after, _ = feature_infonce(model, probe)
    msg = f'{projector}: InfoNCE {before:.3f} -> {after:.3f}, chance {chance:.3f}'
    if projector == 'tklmr':
        assert after < chance - 0.25, msg
    else:
        assert after > chance - 0.2, msg


# ---------------------------------------------------------------------------------------------------- stage 2
def stage2(tiny_data, tmp, iters=20, **uni):
    opt = shrink_recipe(tiny_data, 'uni2_terms', iters, **UNIREMOVAL_DEMO_STAGE2)
    opt['path']['pretrain_network_g'] = None
    opt['uniremoval'].update(uni)
    return build(opt, tmp)


def test_stage2_term_gradients_after_training(tiny_data, in_tmp):
    """After 3 iterations: the cluster term reaches the student and the cluster head (and, through the live
    encoder, D — which the G step does not step); on the student it is weak next to the GAN term (measured ~1 %: the
    tiny set's degraded and clean images are alike), asserted > 0.1 %; the GAN term reaches the student and D; no
    G-step term reaches the momentum copies (keys are computed without a graph); the D step reaches D only."""
    model, data = stage2(tiny_data, in_tmp)
    train_iterations(model, batches(data, 2), 3)
    batch = next(batches(data, 2, seed=1))
    x, clean = batch['lq'], batch['gt']
    momentum = [p for n in ('net_d_m', 'net_cluster_m') for p in model.networks[n].parameters()]
    for p in momentum:
        p.requires_grad_(True)
    try:
        out = model.net_g(x)
        keys = model.keys(clean, x)
        terms = {**model.g_losses(x, out, keys), **model.d_losses(clean, out)}
        groups = {'student': list(model.net_g.parameters()), 'head': list(model.bank.parameters()),
                  'net_d': list(model.net_d.parameters()), 'momentum': momentum}
        table = grad_norms(terms, groups)
    finally:
        for p in momentum:
            p.requires_grad_(False)
    msg = '\n' + show(table)
    assert table['cluster']['student'] > 1e-3 * table['g_gan']['student'] and table['cluster']['head'] > 0, msg
    assert table['g_gan']['student'] > 0 and table['g_gan']['head'] == 0, msg
    assert all(row['momentum'] == 0 for row in table.values()), msg
    assert table['d']['net_d'] > 0 and table['d']['student'] == 0 and table['d']['head'] == 0, msg
    assert model.learning_networks('g') == ('net_g', 'net_cluster'), msg  # the G step leaves D alone


def key_agreement(model, images):
    """Mean cosine between the keys of the momentum encoder + head and of the live ones, on ``images``."""
    with torch.no_grad():
        momentum = embed(model.key_head, model.key_encoder(images))
        live = embed(model.bank.head, model.cluster_encoder(images))
    return float((momentum * live).sum(-1).mean())


def init_left(model, initial):
    """|theta_m - theta_live| / |theta_0 - theta_live| over the momentum copy of D: how much of its start it keeps."""
    live = dict(model.net_d.named_parameters())
    num = sum(float(((p - live[k]) ** 2).sum()) for k, p in model.networks['net_d_m'].named_parameters())
    den = sum(float(((initial[k] - live[k]) ** 2).sum()) for k in initial)
    return math.sqrt(num / den)


def test_stage2_keys_follow_the_encoder(tiny_data, in_tmp):
    """With the demo's key momentum (0.98) the key encoder tracks the live D: after 60 iterations its distance to
    the live D has fallen to about half the live D's distance to the initial copy (measured 0.55; a static target
    would give 0.98^60 = 0.30, the rest is the lag behind a moving D) and its keys agree more with the live
    encoder's; with MoCo's 0.999 it has hardly moved (0.97). The demo recipe's momentum leaves under 10 % of the
    initialisation after the demo's length."""
    demo = load_recipe(f'{REPO}/options/train/UniRemoval/demo_UniRemoval_stage2.yml')
    m, n = demo['uniremoval']['key_momentum'], demo['train']['total_iter']
    assert m ** n < 0.1, f'demo: key_momentum {m} keeps {m ** n:.0%} of the init after {n} iterations'
    iters = 60
    left = {}
    for momentum in (m, 0.999):
        model, data = stage2(tiny_data, in_tmp, iters=iters, key_momentum=momentum)
        initial = {k: p.detach().clone() for k, p in model.networks['net_d_m'].named_parameters()}
        train_iterations(model, batches(data, 2), iters)
        left[momentum] = (init_left(model, initial), key_agreement(model, next(batches(data, 4, seed=3))['gt']))
    msg = f'(fraction of the init left, key cosine momentum vs live) after {iters} iterations: {left}'
    assert left[m][0] < 0.75 and left[0.999][0] > 0.9, msg
    assert left[m][1] > left[0.999][1], msg


def test_stage2_warns_when_keys_cannot_follow(tiny_data, in_tmp):
    """MoCo's 0.999 over a 200-iteration run: a warning says the key encoder keeps 82 % of its initialisation;
    the demo's 0.98 gives none."""
    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logger = logging.getLogger('irtoolkit')
    logger.addHandler(handler)
    try:
        stage2(tiny_data, in_tmp, iters=200, key_momentum=0.999)
        assert any('still holds 82% of its initialisation' in r.getMessage() for r in records), records
        records.clear()
        stage2(tiny_data, in_tmp, iters=200, key_momentum=0.98)
        assert not any('key_momentum' in r.getMessage() for r in records), records
    finally:
        logger.removeHandler(handler)
