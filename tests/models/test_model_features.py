"""EMA (parameters averaged, buffers copied), AMP and gradient clipping from options."""
import torch
from irtk_testutils import shrink_recipe, write_options
from torch import nn

from irtoolkit.engine.runner import train as run_train
from irtoolkit.models.base_model import BaseModel
from irtoolkit.utils.registry import ARCH_REGISTRY


@ARCH_REGISTRY.register()
class _TestBNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x):
        return x + self.bn(self.conv(x))


def _model(decay=0.5, **train):
    opt = {'name': 'm', 'model_type': 'RestorationModel', 'num_gpu': 0,
           'network_g': {'type': '_TestBNNet'}, 'train': {'ema_decay': decay, **train}}
    m = BaseModel(opt)
    m.build_net('network_g')
    m.setup_ema('net_g')
    return m


def test_ema_averages_params_and_copies_buffers():
    m = _model(0.5)
    net, ema = m.networks['net_g'], m.ema_networks['net_g']
    p0 = ema.conv.weight.clone()
    with torch.no_grad():
        net.conv.weight.add_(1.0)
    net.train()
    net(torch.rand(4, 3, 8, 8) * 5)  # updates BatchNorm running statistics
    m._update_ema(['net_g'])
    assert torch.allclose(ema.conv.weight, p0 + 0.5)  # 0.5 * old + 0.5 * (old + 1)
    assert torch.equal(ema.bn.running_mean, net.bn.running_mean)
    assert torch.equal(ema.bn.running_var, net.bn.running_var)
    assert ema.bn.num_batches_tracked.item() == 1


def test_bf16_amp_and_grad_clip_train_on_cpu(tiny_data, in_tmp):
    opt = shrink_recipe(tiny_data, 'amp', 10)
    opt['train']['amp'] = {'enabled': True, 'dtype': 'bf16'}
    opt['train']['grad_clip'] = 0.1
    run_train(['-opt', write_options(opt, in_tmp / 'amp.yml')])
    state = torch.load(in_tmp / 'experiments/amp/models/net_g_latest.pth', weights_only=True)
    assert all(torch.isfinite(v).all() for v in state['params'].values())


def test_optimize_clips_gradients():
    m = _model(0, grad_clip={'max_norm': 1e-3}, optim_g={'type': 'SGD', 'lr': 1.0})
    net = m.networks['net_g']
    m.add_optimizer('g', 'optim_g', ('net_g', ))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    m.optimize('g', lambda x: {'big': (net(x) * 100).pow(2).mean()}, torch.rand(2, 3, 8, 8))
    change = torch.sqrt(sum(((net.state_dict()[k] - before[k]).float() ** 2).sum()
                            for k in before if 'num_batches' not in k and 'running' not in k))
    assert change <= 1e-3 + 1e-6  # lr 1 * clipped gradient norm
