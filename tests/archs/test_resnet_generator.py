"""ResnetGenerator (CUT's resnet_9blocks): CUT's layer indices and parameter count, the [0, 1] <-> [-1, 1] mapping,
any input size, the CUT nce_layers as feature taps; HoldLinearDecayLR (CUT's linear policy); init_weights."""
import pytest
import torch

from irtoolkit.archs.arch_util import init_weights
from irtoolkit.archs.resnet_generator_arch import BlurUpsample
from irtoolkit.contrastive.feature_tap import FeatureTap
from irtoolkit.utils.optim import build_scheduler
from irtoolkit.utils.registry import build_network

CUT_LAYOUT = (['ReflectionPad2d', 'Conv2d', 'InstanceNorm2d', 'ReLU']
              + ['Conv2d', 'InstanceNorm2d', 'ReLU', 'BlurPool'] * 2 + ['ResnetBlock'] * 9
              + ['BlurUpsample', 'Conv2d', 'InstanceNorm2d', 'ReLU'] * 2
              + ['ReflectionPad2d', 'Conv2d', 'Tanh'])


def test_cut_layout_and_parameter_count():
    net = build_network({'type': 'ResnetGenerator'})
    assert [type(m).__name__ for m in net.model] == CUT_LAYOUT
    assert sum(p.numel() for p in net.parameters()) == 11378179  # CUT's resnet_9blocks, ngf 64


def test_cut_nce_layers_are_taps_with_cut_shapes():
    torch.manual_seed(0)
    net = build_network({'type': 'ResnetGenerator', 'ngf': 8, 'num_blocks': 6})
    tap = FeatureTap(net, ['model.0', 'model.4', 'model.8', 'model.12', 'model.16'])
    feats = tap(torch.rand(2, 3, 32, 32))
    assert [tuple(f.shape[1:]) for f in feats] == [(3, 38, 38), (16, 32, 32), (32, 16, 16), (32, 8, 8), (32, 8, 8)]
    assert tap.calls == 5  # the decoder never ran
    # model.0 is the padded input in CUT's [-1, 1]
    assert feats[0].min() >= -1 and feats[0].max() <= 1 and feats[0].min() < -0.5


def test_unit_range_is_cut_in_minus_one_one():
    torch.manual_seed(0)
    net = build_network({'type': 'ResnetGenerator', 'ngf': 8, 'num_blocks': 2, 'init_type': 'normal',
                         'init_gain': 0.5})
    raw = build_network({'type': 'ResnetGenerator', 'ngf': 8, 'num_blocks': 2, 'unit_range': False})
    raw.load_state_dict(net.state_dict())
    x = torch.rand(1, 3, 30, 34)  # not multiples of 4: padded inside, cropped back
    with torch.no_grad():
        y, y_raw = net(x), raw(2 * x - 1)
    assert y.shape == x.shape and 0 <= y.min() and y.max() <= 1 and y.max() - y.min() > 0.1
    assert torch.allclose(2 * y - 1, y_raw, atol=1e-5)


def test_blur_upsample_keeps_constants_and_doubles_size():
    up = BlurUpsample(2)
    y = up(torch.full((1, 2, 5, 7), 0.3))
    assert y.shape == (1, 2, 10, 14) and torch.allclose(y, torch.full_like(y, 0.3))


def test_init_weights_xavier_gain():
    torch.manual_seed(0)
    net = init_weights(torch.nn.Conv2d(64, 64, 3), 'xavier', 0.02)
    assert abs(net.weight.std().item() - 0.02 * (2 / (2 * 64 * 9)) ** 0.5) < 2e-4 and not net.bias.any()
    with pytest.raises(ValueError, match='init_type'):
        init_weights(net, 'uniformish')


def test_hold_linear_decay_lr():
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=2e-4)
    sched = build_scheduler(opt, {'type': 'HoldLinearDecayLR', 'hold_iters': 4, 'decay_iters': 4})
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]['lr'])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([2e-4] * 5 + [1.5e-4, 1e-4, 0.5e-4, 0, 0])
