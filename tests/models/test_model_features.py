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


def test_channels_last_by_default_for_cpu_training_and_files_stay_nchw(tmp_path):
    """``train.channels_last: auto`` (default): a CPU training model's networks, EMA and batches are channels-last,
    an inference model's are not; its network files hold NCHW tensors that load strictly into an NCHW network, and
    an NCHW file loads into the channels-last model."""
    from irtoolkit.config.run import RunContext
    from irtoolkit.models.base_model import channels_last_on
    from irtoolkit.utils.registry import build_model, build_network
    assert channels_last_on('auto', 'cpu') and channels_last_on(None, 'cpu') and not channels_last_on(False, 'cpu')
    assert not channels_last_on('auto', 'cuda') and channels_last_on(True, 'cuda')
    assert BaseModel.OPTION_SCHEMA['train']['channels_last'].default == 'auto'
    net_opt = {'type': 'NAFNet', 'width': 8, 'middle_blk_num': 1, 'enc_blk_nums': [1], 'dec_blk_nums': [1]}
    train = {'ema_decay': 0.9, 'optim_g': {'type': 'AdamW'}, 'pixel_opt': {'type': 'L1Loss'}}
    opt = {'name': 'cl', 'model_type': 'RestorationModel', 'num_gpu': 0, 'network_g': net_opt, 'path': {},
           'train': train}
    model = build_model(opt, RunContext.create(opt, root_path=str(tmp_path)))
    cl = torch.channels_last
    assert model.net_g.intro.weight.is_contiguous(memory_format=cl)
    assert model.ema_networks['net_g'].intro.weight.is_contiguous(memory_format=cl)
    model.feed_data({'lq': torch.rand(2, 3, 16, 16), 'gt': torch.rand(2, 3, 16, 16)})
    assert model.batch['lq'].is_contiguous(memory_format=cl) and not model.batch['lq'].is_contiguous()
    model.optimize_parameters(1)
    model.test()
    assert all(v.is_contiguous() for v in model.get_current_visuals().values())
    model.save_network_file('net_g', 1)
    state = torch.load(f"{model.run.paths['models']}/net_g_1.pth", weights_only=True)
    assert all(v.is_contiguous() for entry in ('params', 'params_ema') for v in state[entry].values())
    nchw = build_network(dict(net_opt))
    nchw.load_state_dict(state['params'], strict=True)
    with torch.no_grad():
        x = torch.rand(1, 3, 16, 16)
        assert torch.allclose(nchw(x), model.net_g.eval()(x.to(memory_format=cl)), atol=1e-5)
    torch.save({'params': nchw.state_dict()}, tmp_path / 'nchw.pth')
    model.load_network(model.net_g, str(tmp_path / 'nchw.pth'))
    assert model.net_g.intro.weight.is_contiguous(memory_format=cl)  # copied into the channels-last parameters
    inference = build_model(dict(opt, train=None), RunContext.create(opt, is_train=False, root_path=str(tmp_path)))
    assert inference.net_g.intro.weight.is_contiguous() and not inference.speed['channels_last']
    off = build_model(dict(opt, train=dict(opt['train'], channels_last=False)),
                      RunContext.create(opt, root_path=str(tmp_path)))
    assert off.net_g.intro.weight.is_contiguous()
