"""Optimisers by name from torch.optim, schedulefree, prodigyopt and pytorch_optimizer (irtoolkit.utils.optimizers),
and schedule-free training (irtoolkit.utils.schedule_free): validated and saved weights are the averaged x, training
continues from the exact train weights y, and a stop + resume gives the weights of an uninterrupted run."""
import logging
import os
from types import SimpleNamespace

import pytest
import torch
from irtk_testutils import SMALL_NAFNET, shrink_recipe, write_options

from irtoolkit.engine.runner import train as run_train
from irtoolkit.engine.runner import validate
from irtoolkit.utils import optim
from irtoolkit.utils.errors import OptionError
from irtoolkit.utils.optimizers import build_optimizer, find_optimizer
from irtoolkit.utils.registry import build_model
from irtoolkit.utils.schedule_free import evaluation_weights


def _model(optim_g, ema_decay=0):
    torch.manual_seed(0)
    return build_model({'name': 'optim', 'model_type': 'RestorationModel', 'num_gpu': 0, 'network_g': SMALL_NAFNET,
                        'train': {'optim_g': optim_g, 'pixel_opt': {'type': 'L1Loss'}, 'ema_decay': ema_decay}})


def _batch():
    """Smooth 20x20 images and their noisy copies: a fixed batch the tiny NAFNet can fit in a few steps."""
    g = torch.Generator().manual_seed(0)
    gt = torch.nn.functional.avg_pool2d(torch.rand(2, 3, 24, 24, generator=g), 5, 1)
    return {'lq': gt + 0.1 * torch.randn(gt.shape, generator=g), 'gt': gt}


def _step(model, batch, it):
    model.update_learning_rate(it)
    model.feed_data(batch)
    model.optimize_parameters(it)


def _weights(net):
    return [p.detach().clone() for p in net.parameters()]


@pytest.mark.parametrize('name, source, cls_module', [
    ('Adam', 'torch.optim', 'torch.optim'),
    ('radam', 'torch.optim', 'torch.optim'),  # case-insensitive; torch.optim wins over pytorch_optimizer's RAdam
    ('pytorch_optimizer.RAdam', 'pytorch_optimizer', 'pytorch_optimizer'),
    ('AdamWScheduleFree', 'schedulefree', 'schedulefree'),
    ('Prodigy', 'prodigyopt', 'prodigyopt'),  # the authors' code wins over pytorch_optimizer's Prodigy
    ('pytorch_optimizer.Prodigy', 'pytorch_optimizer', 'pytorch_optimizer'),
    ('ADOPT', 'pytorch_optimizer', 'pytorch_optimizer'),
])
def test_names_resolve_in_source_order(name, source, cls_module):
    cls, src = find_optimizer(name)
    assert src == source and cls.__module__.startswith(cls_module), (cls, src)


def test_unknown_name_is_one_line_with_the_closest_names_across_sources():
    with pytest.raises(OptionError) as err:
        build_optimizer([torch.nn.Parameter(torch.zeros(2))], {'type': 'AdamWSchedulFree', 'lr': 1}, 'train.optim_d')
    msg = str(err.value)
    assert '\n' not in msg and msg.startswith("train.optim_d.type: unknown optimizer 'AdamWSchedulFree'"), msg
    assert 'AdamWScheduleFree (schedulefree)' in msg, msg
    with pytest.raises(OptionError, match=r"closest: Adan \(pytorch_optimizer\)"):
        find_optimizer('Adann')
    with pytest.raises(OptionError, match="unknown source 'keras'"):
        find_optimizer('keras.Adam')


@pytest.mark.parametrize('opt, message', [
    ({'type': 'Adan', 'weight_decy': 0.1}, r'train.optim_g.weight_decy: unknown argument for Adan; did you mean '
                                           r'weight_decay'),  # Adan takes **kwargs: the typo is not swallowed
    ({'type': 'AdamW', 'lr': 1e-3, 'momentum': 0.9}, r'train.optim_g.momentum: unknown argument for AdamW'),
    ({'type': 'LBFGS'}, r'LBFGS needs a closure in step\(\)'),
    ({'type': 'AdamWScheduleFreeClosure'}, r'needs a closure in step\(\).*; use AdamWScheduleFree$'),
])
def test_arguments_and_unsupported_optimisers_are_refused(opt, message):
    with pytest.raises(OptionError, match=message):
        build_optimizer([torch.nn.Parameter(torch.zeros(2))], opt)
    # arguments a **kwargs constructor does read are accepted
    build_optimizer([torch.nn.Parameter(torch.zeros(2))], {'type': 'ScheduleFreeRAdam', 'use_palm': True})


@pytest.mark.parametrize('optim_g', [
    {'type': 'AdamWScheduleFree', 'lr': 2e-3},
    {'type': 'SGDScheduleFree', 'lr': 0.5},
    {'type': 'RAdamScheduleFree', 'lr': 2e-3},
    {'type': 'ScheduleFreeAdamW', 'lr': 2e-3},  # pytorch_optimizer's: starts in train mode
    {'type': 'Prodigy', 'lr': 1.0},
    {'type': 'Adan', 'lr': 2e-3},
    {'type': 'ADOPT', 'lr': 1e-3},
    {'type': 'SOAP', 'lr': 3e-3},
    {'type': 'Lion', 'lr': 2e-4},
], ids=lambda o: o['type'])
def test_each_optimiser_trains_a_small_nafnet(optim_g):
    """10 steps on one batch: the evaluated loss (schedule-free: at the averaged weights) goes down, the weights
    move and stay finite."""
    model, batch = _model(optim_g), _batch()

    def evaluated_loss():
        with torch.no_grad(), evaluation_weights(model.optimizers):
            return float((model.net_g(batch['lq']) - batch['gt']).abs().mean())

    before, start = evaluated_loss(), _weights(model.net_g)
    for it in range(1, 11):
        _step(model, batch, it)
    after = evaluated_loss()
    assert after < before, f'{optim_g["type"]}: L1 {before:.4f} -> {after:.4f}'
    now = _weights(model.net_g)
    assert all(torch.isfinite(p).all() for p in now)
    assert sum(float((a - b).abs().sum()) for a, b in zip(now, start)) > 0


def test_schedule_free_validation_and_checkpoints_hold_the_eval_weights(in_tmp):
    """Inside validation (the runner's validate, a best checkpoint saved there included) and in the saved files the
    network holds x = (y - (1 - beta1) z) / beta1 (the README's y = (1 - beta1) z + beta1 x); afterwards the train
    weights y are back bit for bit, in train mode; the training state holds y; the EMA averages y."""
    model, batch = _model({'type': 'AdamWScheduleFree', 'lr': 5e-3, 'betas': [0.9, 0.999]}, ema_decay=0.5), _batch()
    os.makedirs(model.run.paths['models'])
    os.makedirs(model.run.paths['training_states'])
    opt = model.optimizers['g']
    ema = _weights(model.net_g)
    for it in range(1, 4):
        _step(model, batch, it)
        ema = [0.5 * e + 0.5 * y for e, y in zip(ema, _weights(model.net_g))]  # the EMA of the train weights
    y = _weights(model.net_g)
    x = [(p.detach().double() - 0.1 * opt.state[p]['z'].double()) / 0.9 for p in model.net_g.parameters()]
    assert max(float((a - b).abs().max()) for a, b in zip(x, y)) > 1e-4  # x and y differ: the test can tell them apart
    for e, p in zip(ema, model.ema_networks['net_g'].parameters()):
        assert torch.allclose(e, p, atol=1e-6)

    seen = {}

    def validation(loader, current_iter, tb_logger=None, save_img=False, logger=None):
        seen['weights'], seen['train_mode'] = _weights(model.net_g), opt.param_groups[0]['train_mode']
        model.save('best')  # what val.save_best does inside validation: nested, still x
        return {}

    model.validation = validation
    validate(model, [SimpleNamespace(dataset=SimpleNamespace(opt={'name': 'v'}))], 3, None, {'val': {}},
             logging.getLogger('test'))
    assert seen['train_mode'] is False
    for a, b in zip(seen['weights'], x):
        assert torch.allclose(a.double(), b, atol=1e-6)
    assert all(torch.equal(a, b) for a, b in zip(_weights(model.net_g), y))  # y restored exactly
    assert opt.param_groups[0]['train_mode'] is True

    model.save(3)
    assert all(torch.equal(a, b) for a, b in zip(_weights(model.net_g), y)) and opt.param_groups[0]['train_mode']
    names = [k for k, _ in model.net_g.named_parameters()]
    for tag in ('3', 'best'):
        saved = torch.load(os.path.join(model.run.paths['models'], f'net_g_{tag}.pth'), weights_only=True)
        for k, xk, ek in zip(names, x, ema):
            assert torch.allclose(saved['params'][k].double(), xk, atol=1e-6), (tag, k)
            assert torch.allclose(saved['params_ema'][k], ek, atol=1e-6), (tag, k)
    state = torch.load(os.path.join(model.run.paths['training_states'], '3.state'), weights_only=True)
    assert all(torch.equal(a, b) for a, b in zip(state['train_weights']['g'], y))
    assert state['optimizers']['g']['param_groups'][0]['train_mode'] is True


def test_a_scheduler_with_a_schedule_free_optimiser_warns(monkeypatch):
    warned = []
    monkeypatch.setattr(optim.logger, 'warning', warned.append)
    params = [torch.nn.Parameter(torch.zeros(2))]
    optim.build_scheduler(build_optimizer(params, {'type': 'Adam'}), {'type': 'MultiStepLR', 'milestones': [2]})
    assert warned == []
    optim.build_scheduler(build_optimizer(params, {'type': 'SGDScheduleFree', 'lr': 1.0}),
                          {'type': 'MultiStepLR', 'milestones': [2]})
    assert len(warned) == 1 and 'SGDScheduleFree is schedule-free' in warned[0] and '\n' not in warned[0]


def test_schedule_free_resume_is_exact(tiny_data, in_tmp):
    """Stop at iteration 3 (checkpoint and validation there), resume to 6: the same weights (x, and the EMA of y) as
    6 uninterrupted iterations, which validated and saved at 3 without stopping."""
    def recipe(name):
        return shrink_recipe(tiny_data, name, 6, networks={'network_g': SMALL_NAFNET}, crop=32, batch=2,
                             checkpoint_freq=3, val_freq=3,
                             update={'train': {'optim_g': {'type': 'AdamWScheduleFree', 'lr': 2e-3, 'warmup_steps': 2},
                                               'scheduler': None, 'ema_decay': 0.5}})

    run_train(['-opt', write_options(recipe('full'), in_tmp / 'full.yml')])
    part = write_options(recipe('part'), in_tmp / 'part.yml')
    run_train(['-opt', part, '--force_yml', 'train.total_iter=3'])
    run_train(['-opt', part, '--auto_resume'])
    a = torch.load(in_tmp / 'experiments/full/models/net_g_latest.pth', weights_only=True)
    b = torch.load(in_tmp / 'experiments/part/models/net_g_latest.pth', weights_only=True)
    for key in ('params', 'params_ema'):
        diff = max((a[key][k].float() - b[key][k].float()).abs().max().item() for k in a[key])
        assert diff == 0.0, f'{key}: max weight difference {diff}'
