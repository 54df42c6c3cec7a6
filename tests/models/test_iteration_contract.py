"""The iteration contract: a model writes ``train_iteration`` (its networks, its losses, its optimiser steps through
``optimize``) and nothing else; the base does the bookkeeping of every iteration — EMA of what stepped, the log
(averaged over micro-batches), the non-finite policy — so a model cannot forget any of it. The README's "add a
model" example is that model, and it trains in the runner as written."""
import math
from pathlib import Path

import pytest
import torch
from irtk_testutils import REPO, shrink_recipe, write_options

from irtoolkit.engine.run_log import parse_log
from irtoolkit.engine.runner import train as run_train
from irtoolkit.models.base_model import BaseModel
from irtoolkit.training.nonfinite import NonFiniteError
from irtoolkit.utils.registry import MODEL_REGISTRY

NET = {'type': 'NAFNet', 'width': 8, 'middle_blk_num': 1, 'enc_blk_nums': [1], 'dec_blk_nums': [1]}


class _TwoStepModel(BaseModel):
    """A critic step and a generator step, written the one way: nothing about EMA, logs or the guard."""

    def setup_networks(self):
        self.net_g = self.build_net('network_g')

    def setup_training_networks(self):
        self.net_d = self.add_net('net_d', torch.nn.Conv2d(3, 1, 3, padding=1))

    def setup_optimizers(self):
        self.add_optimizer('g', 'optim_g', ('net_g', ))
        self.add_optimizer('d', 'optim_d', ('net_d', ))

    def train_iteration(self, batch, current_iter):
        fake = self.net_g(batch['lq'])
        self.optimize('d', lambda: {'d': (self.net_d(fake.detach()) - self.net_d(batch['gt'])).mean()})
        self.optimize('g', lambda: {'pixel': (fake - batch['gt']).abs().mean(), 'adv': -self.net_d(fake).mean()})


def _model(**train):
    opt = {'name': 'contract', 'model_type': 'x', 'num_gpu': 0, 'network_g': NET,
           'train': {'optim_g': {'type': 'Adam', 'lr': 1e-2}, 'optim_d': {'type': 'Adam', 'lr': 1e-2},
                     'ema_decay': 0.5, **train}}
    torch.manual_seed(0)
    return _TwoStepModel(opt)


def _batch(seed=0, nan=False):
    g = torch.Generator().manual_seed(seed)
    gt = torch.rand(2, 3, 16, 16, generator=g)
    return {'lq': gt + 0.1 * torch.rand(2, 3, 16, 16, generator=g), 'gt': gt * float('nan') if nan else gt}


def _params(net):
    return [p.detach().clone() for p in net.parameters()]


def test_ema_and_log_come_from_the_base():
    m = _model()
    ema_before, g_before = _params(m.ema_networks['net_g']), _params(m.net_g)
    m.update_learning_rate(1)
    m.feed_data(_batch())
    m.optimize_parameters(1)
    # EMA 0.5: the average of the weights before and after the step, without the model asking for it
    for e, b, a in zip(_params(m.ema_networks['net_g']), g_before, _params(m.net_g)):
        assert torch.allclose(e, 0.5 * b + 0.5 * a, atol=1e-7)
    assert not all(torch.equal(b, a) for b, a in zip(ema_before, _params(m.ema_networks['net_g'])))
    log = m.get_current_log()
    assert list(log) == ['l_d', 'l_pixel', 'l_adv']
    assert all(isinstance(v, float) and math.isfinite(v) for v in log.values())


def test_log_is_the_mean_over_micro_batches_and_ema_moves_once():
    m = _model(ema_decay=0.5)
    m.update_learning_rate(1)
    batches = [_batch(1), _batch(2)]
    with torch.no_grad():  # the pixel term of each micro-batch, before any step (G steps only at the last one)
        expected = sum(float((m.net_g(b['lq']) - b['gt']).abs().mean()) for b in batches) / 2
    g_before = _params(m.net_g)
    for k, b in enumerate(batches):
        with m.micro_batch(k, 2):
            m.feed_data(b)
            m.optimize_parameters(1)
        if k == 0:  # accumulating: nothing stepped, the EMA has not moved
            assert all(torch.equal(x, y) for x, y in zip(g_before, _params(m.net_g)))
            assert all(torch.equal(x, y) for x, y in zip(g_before, _params(m.ema_networks['net_g'])))
    assert m.get_current_log()['l_pixel'] == pytest.approx(expected, rel=1e-5)
    for e, b, a in zip(_params(m.ema_networks['net_g']), g_before, _params(m.net_g)):
        assert torch.allclose(e, 0.5 * b + 0.5 * a, atol=1e-7)  # one EMA update for the whole iteration


def test_nonfinite_step_is_guarded_without_the_model_knowing():
    m = _model()
    m.update_learning_rate(1)
    m.feed_data(_batch(nan=True))
    with pytest.raises(NonFiniteError, match=r'iteration 1: non-finite l_d.* before the d step; stopped'):
        m.optimize_parameters(1)
    m = _model(nonfinite={'policy': 'skip', 'max_skips': 3})
    m.update_learning_rate(1)
    m.feed_data(_batch())
    m.optimize_parameters(1)  # a good step first: the EMA copy now differs from the network
    before = {n: _params(net) for n, net in [('g', m.net_g), ('ema', m.ema_networks['net_g']), ('d', m.net_d)]}
    assert not all(torch.equal(x, y) for x, y in zip(before['g'], before['ema']))
    m.update_learning_rate(2)
    m.feed_data(_batch(nan=True))
    m.optimize_parameters(2)  # both steps skipped: no weight, no EMA moves
    after = {n: _params(net) for n, net in [('g', m.net_g), ('ema', m.ema_networks['net_g']), ('d', m.net_d)]}
    assert all(torch.equal(x, y) for n in before for x, y in zip(before[n], after[n]))


def test_a_model_cannot_take_over_the_bookkeeping():
    with pytest.raises(TypeError, match='defines optimize_parameters: write train_iteration'):
        type('ForgetfulModel', (BaseModel, ), {'optimize_parameters': lambda self, it: None})


def test_readme_add_a_model_example_trains(tiny_data, in_tmp):
    readme = (Path(REPO) / 'README.md').read_text()
    section = readme[readme.index('### Add your own model'):]
    code = section[section.index('```python') + 9:section.index('```', section.index('```python') + 9)]
    assert 'optimize_parameters' not in code and 'update_ema' not in code and 'reduce' not in code
    (in_tmp / 'my_model.py').write_text(code)
    opt = shrink_recipe(tiny_data, 'readme_model', 6, plugins=['my_model.py'], model_type='EdgeAwareModel',
                        network_g=NET, print_freq=1)
    opt['train']['edge_opt'] = {'type': 'MSELoss', 'loss_weight': 1.0}
    opt['edge_aware'] = {'edge_weight': 0.5}
    try:
        run_train(['-opt', write_options(opt, in_tmp / 'readme.yml')])
    finally:
        MODEL_REGISTRY._obj_map.pop('EdgeAwareModel', None)  # the next test registers it again
    curves = parse_log([str(p) for p in (in_tmp / 'experiments/readme_model').glob('train_*.log')])
    assert curves['l_pixel'][0] == list(range(1, 7)) and curves['l_edge'][0] == list(range(1, 7))
    state = torch.load(in_tmp / 'experiments/readme_model/models/net_g_latest.pth', weights_only=True)
    assert set(state) == {'params', 'params_ema', 'network'}  # the EMA the example never mentions
    assert any(not torch.equal(state['params'][k], state['params_ema'][k]) for k in state['params'])
