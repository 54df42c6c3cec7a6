"""MAXIM-1S, KBNet, Uformer and their ConStyle versions against upstream IRConStyle (Dongqi-Fan/IRConStyle, archs/).

- Key lists: ``test_constyle_keys_<Arch>.txt`` (key<TAB>shape<TAB>dtype, in state_dict order) were dumped from
  upstream's own classes built with their defaults (ConStyle archs with ``Train=True``). Our default builds give the
  same names, shapes, dtypes and order, so upstream checkpoints load with ``strict=True``.
- Parameter counts of the default builds, measured on upstream's classes.
- Outputs: small configurations of upstream's classes were filled with the deterministic weights of
  :func:`fill_state`, run in eval mode on :func:`make_input`, and summarised with :func:`summarise` (64 sampled
  values and three means over the whole output); ``constyle_backbones_upstream.json`` holds those numbers. The
  tests fill our builds the same way and compare. Upstream's code is not needed to run them.
"""
import json
import math
import os.path as osp
import zlib

import pytest
import torch
from irtk_testutils import read_key_list

from irtoolkit.archs.arch_util import pad_to_multiple
from irtoolkit.utils.registry import build_network

HERE = osp.dirname(osp.abspath(__file__))
EXPECTED = osp.join(HERE, 'constyle_backbones_upstream.json')
ATOL = 2e-4  # float32 through ~100 layers; measured differences are ~1e-6 (see docs/constyle.md)

MAXIM_SMALL = dict(features=8, block_size_hr=(4, 4), grid_size_hr=(4, 4), block_size_lr=(2, 2), grid_size_lr=(4, 4))
UFORMER_SMALL = dict(img_size=32, embed_dim=8, depths=[1, 2, 1, 1, 1, 1, 1, 2, 1],
                     num_heads=[1, 2, 2, 2, 2, 2, 2, 2, 1], win_size=4)
# name: (registered arch, small configuration, input shape)
CONFIGS = {
    'Maxim': ('Maxim', MAXIM_SMALL, (1, 3, 32, 64)),
    'Maxim_nobias_1hr': ('Maxim', dict(MAXIM_SMALL, use_bias=False, high_res_stages=1, lrelu_slope=0.1,
                                       channels_reduction=2), (1, 3, 32, 32)),
    'ConStyleMaxim': ('ConStyleMaxim', dict(MAXIM_SMALL, bottom_blk_num=1, Train=False), (1, 3, 32, 64)),
    'KBNet': ('KBNet', dict(width=8, middle_blk_num=1, enc_blk_nums=[1, 1], dec_blk_nums=[1, 1]), (2, 3, 20, 27)),
    'KBNet_light': ('KBNet', dict(width=8, middle_blk_num=1, enc_blk_nums=[1, 2], dec_blk_nums=[2, 1],
                                  lightweight=True, ffn_scale=3), (1, 3, 16, 24)),
    'ConStyleKBNet': ('ConStyleKBNet', dict(dim=8, left_blk_num=[1, 1, 1], bottom_blk_num=1, right_blk_num=[1, 1, 1],
                                            Train=False), (2, 3, 24, 32)),
    'Uformer': ('Uformer', dict(UFORMER_SMALL, modulator=True, cross_modulator=True), (2, 3, 32, 32)),
    'Uformer_conv_ffn': ('Uformer', dict(UFORMER_SMALL, token_projection='conv', token_mlp='ffn'), (1, 3, 32, 32)),
    'ConStyleUformer': ('ConStyleUformer', dict(img_size=32, dim=8, depths=[1, 2, 1, 1, 1, 2, 1],
                                                num_heads=[1, 2, 2, 2, 2, 2, 1], win_size=4, Train=False),
                        (1, 3, 32, 32)),
}
# default builds: (state_dict entries, parameters) measured on upstream's classes
DEFAULTS = {
    'Maxim': (984, 8_175_683),
    'KBNet': (976, 130_249_283),
    'Uformer': (344, 20_628_317),
    'ConStyleMaxim': (721, 9_292_496),
    'ConStyleKBNet': (834, 8_284_960),
    'ConStyleUformer': (325, 5_333_725),
}
# the same with Train=False (inference builds of the ConStyle archs)
INFERENCE_PARAMS = {'ConStyleMaxim': 8_101_664, 'ConStyleKBNet': 7_094_128, 'ConStyleUformer': 4_142_893}


# ---------------------------------------------------------------------------------------------------- helpers
def _wave(key, n):
    """n values in [-1, 1] that depend only on the key's name (not on any RNG or the key's position)."""
    phase = (zlib.crc32(key.encode()) % 100003) / 100003 * 2 * math.pi
    t = torch.arange(n, dtype=torch.float64)
    return torch.sin(0.7548776662 * t + phase) * torch.cos(0.5698402910 * t + 2 * phase)


def fill_state(state):
    """Deterministic weights for every floating tensor of ``state`` (a state_dict): conv/linear-like tensors
    ~ 1/sqrt(fan_in), 1-d scales ~ 1, 1-d shifts ~ 0, BatchNorm statistics positive. Integer buffers (BatchNorm
    counters, Uformer's relative position index, the queue pointer) are kept."""
    out = {}
    for key, v in state.items():
        if not v.is_floating_point():
            out[key] = v.clone()
            continue
        w = _wave(key, v.numel()).reshape(v.shape)
        name = key.rsplit('.', 1)[-1]
        if name == 'running_var':
            w = 0.75 + 0.25 * w
        elif name == 'running_mean':
            w = 0.1 * w
        elif v.dim() == 1 and name in ('weight', 'gamma'):
            w = 1 + 0.2 * w
        elif v.dim() == 1:
            w = 0.1 * w
        else:
            fan_in = v.shape[-1] if v.shape[0] == 1 else v.numel() // v.shape[0]
            w = w * math.sqrt(2. / fan_in)
        out[key] = w.to(v.dtype)
    return out


def make_input(shape):
    """A deterministic image batch in [0, 1]."""
    return (0.5 + 0.45 * _wave('input', math.prod(shape))).reshape(shape).float()


def summarise(out):
    """64 sampled values and three means over a whole output tensor (float64 sums of the float32 values)."""
    flat = out.detach().double().flatten()
    n = flat.numel()
    idx = [(i * 7919 + 13) % n for i in range(64)]
    weights = _wave('summary', n)
    return {'shape': list(out.shape), 'index': idx, 'samples': flat[idx].tolist(), 'mean': flat.mean().item(),
            'mean_abs': flat.abs().mean().item(), 'weighted_mean': (flat * weights).mean().item()}


def build_small(name, **extra):
    arch, kwargs, _ = CONFIGS[name]
    return build_network({'type': arch, **kwargs, **extra})


def run_small(name):
    """Our build of configuration ``name``, filled by :func:`fill_state`, on :func:`make_input`, eval mode."""
    torch.manual_seed(0)
    net = build_small(name).eval()
    net.load_state_dict(fill_state(net.state_dict()), strict=True)
    with torch.no_grad():
        return net(make_input(CONFIGS[name][2]))


def upstream_keys(arch):
    return read_key_list(osp.join(HERE, f'test_constyle_keys_{arch}.txt'))


def meta_build(arch, **kwargs):
    """The default build without allocating weights (names, shapes, dtypes and parameter counts only)."""
    with torch.device('meta'):
        return build_network({'type': arch, **kwargs})


# ---------------------------------------------------------------------------------------------------- keys, counts
@pytest.mark.parametrize('arch', sorted(DEFAULTS))
def test_default_build_has_upstream_keys_and_parameter_count(arch):
    n_keys, n_params = DEFAULTS[arch]
    net = meta_build(arch)
    ours = [(k, tuple(v.shape), str(v.dtype)) for k, v in net.state_dict().items()]
    theirs = upstream_keys(arch)
    assert len(theirs) == n_keys
    assert ours == theirs  # same names, shapes, dtypes, same order: strict loading cannot fail
    assert sum(p.numel() for p in net.parameters()) == n_params
    if arch in INFERENCE_PARAMS:
        infer = meta_build(arch, Train=False)
        assert sum(p.numel() for p in infer.parameters()) == INFERENCE_PARAMS[arch]
        skipped = set(dict.fromkeys(k for k, _, _ in theirs)) - set(infer.state_dict())
        assert all(k.startswith('ConStyle.encoder_k.') or k in ('ConStyle.queue', 'ConStyle.queue_ptr')
                   for k in skipped)


def _state_from_key_list(arch, net):
    """An upstream-format checkpoint built from the key list (values from :func:`fill_state`)."""
    own = net.state_dict()
    shapes = {k: (shape, dtype) for k, shape, dtype in upstream_keys(arch)}
    state = {k: torch.zeros(shape, dtype=getattr(torch, dtype.split('.')[-1])) for k, (shape, dtype) in shapes.items()}
    for k, v in state.items():
        if not v.is_floating_point():  # counters and index buffers: upstream's values equal ours
            state[k] = own[k].clone()
    return fill_state(state)


@pytest.mark.parametrize('arch', ['Maxim', 'Uformer', 'ConStyleMaxim', 'ConStyleKBNet', 'ConStyleUformer',
                                  pytest.param('KBNet', marks=pytest.mark.slow)])
def test_upstream_format_checkpoint_loads_strictly(arch):
    net = build_network({'type': arch})
    state = _state_from_key_list(arch, net)
    loader = getattr(net, 'load_checkpoint_state', net.load_state_dict)
    result = loader(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    first = next(k for k, v in state.items() if v.is_floating_point())
    assert torch.equal(net.state_dict()[first], state[first])
    if arch.startswith('ConStyle'):  # an inference build takes the same file, skipping the key encoder and queue
        infer = build_network({'type': arch, 'Train': False})
        result = infer.load_checkpoint_state(state, strict=True)
        assert not result.missing_keys and not result.unexpected_keys


# ---------------------------------------------------------------------------------------------------- outputs
def _expected():
    with open(EXPECTED) as f:
        return json.load(f)


@pytest.mark.parametrize('name', sorted(CONFIGS))
def test_output_equals_upstream(name):
    expected = _expected()[name]
    out = run_small(name)
    assert torch.isfinite(out).all()
    got = summarise(out)
    assert got['shape'] == expected['shape'] and got['index'] == expected['index']
    diff = max(abs(a - b) for a, b in zip(got['samples'], expected['samples']))
    assert diff < ATOL, f'{name}: sampled outputs differ from upstream by {diff:.2e}'
    for key in ('mean', 'mean_abs', 'weighted_mean'):
        assert abs(got[key] - expected[key]) < ATOL, f'{name}: {key} {got[key]} vs upstream {expected[key]}'
    # not a degenerate configuration: the network moves its input by a clear margin
    if expected['residual_mean_abs'] is not None:
        assert expected['residual_mean_abs'] > 0.1
        residual = (out - make_input(CONFIGS[name][2])).abs().mean().item()
        assert abs(residual - expected['residual_mean_abs']) < ATOL


# ---------------------------------------------------------------------------------------------------- any size
def _reference_on_padded(net, x):
    """What the network computes on an input padded by hand to its multiple (the crop of it)."""
    h, w = x.shape[-2:]
    if hasattr(net, 'restore'):  # ConStyle networks: reflect padding, prior and backbone on the padded image
        xp, _ = pad_to_multiple(x, net.pad_multiple, mode='reflect')
        return net.restore(xp, *net.ConStyle.encode(xp))[..., :h, :w]
    if hasattr(net, 'padder_size'):  # KBNet: zero padding, as upstream
        xp, _ = pad_to_multiple(x, net.padder_size)
    else:
        xp, _ = pad_to_multiple(x, net.pad_multiple, mode='reflect')
    return net(xp)[..., :h, :w]


@pytest.mark.parametrize('name', ['Maxim', 'ConStyleMaxim', 'KBNet', 'ConStyleKBNet', 'Uformer', 'ConStyleUformer'])
def test_any_input_size_pads_inside_and_crops(name):
    torch.manual_seed(0)
    net = build_small(name).eval()
    net.load_state_dict(fill_state(net.state_dict()))
    x = make_input((1, 3, 21, 45))
    with torch.no_grad():
        y = net(x)
        ref = _reference_on_padded(net, x)
    assert y.shape == x.shape
    assert torch.allclose(y, ref, atol=1e-5)


def test_pad_multiples_follow_the_windows():
    assert build_network({'type': 'Maxim', **MAXIM_SMALL}).pad_multiple == (32, 32)
    with torch.device('meta'):
        assert build_network({'type': 'Maxim'}).pad_multiple == (64, 64)  # upstream's Dataset_Maxim* pad to 64
        assert build_network({'type': 'ConStyleMaxim', 'block_size_hr': (8, 4)}).pad_multiple == (64, 64)
        assert build_network({'type': 'Uformer'}).pad_multiple == 128
        assert build_network({'type': 'ConStyleUformer'}).pad_multiple == 64
        assert build_network({'type': 'ConStyleKBNet'}).pad_multiple == 8
    assert build_small('Uformer').pad_multiple == 32  # windows shrink to 4 and 2 at the two lowest levels


# ---------------------------------------------------------------------------------------------------- training
@pytest.mark.parametrize('name', ['ConStyleMaxim', 'ConStyleKBNet', 'ConStyleUformer'])
def test_constyle_training_forward(name):
    torch.manual_seed(0)
    net = build_small(name, Train=True, constyle_opt={'K': 16}).train()
    lq, gt = make_input((2, 3, 20, 30)), make_input((2, 3, 20, 30)).flip(-1)
    out = net(lq, gt)
    assert out['output'].shape == lq.shape
    assert out['k'].shape == (2, 128) and out['queue'].shape == (128, 16)
    assert int(net.ConStyle.queue_ptr) == 2
    (out['output'].abs().mean() + out['q'][1].pow(2).mean()).backward()
    assert net.mlp[0].weight.grad is not None and net.ConStyle.encoder_q.stage1[0][0].weight.grad is not None
    assert net.Finetune_Module[0].weight.grad.abs().sum() > 0 if name != 'ConStyleUformer' else \
        net.Finetune_Module.proj[0].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match='differ'):
        net(lq, gt[..., :16])


@pytest.mark.parametrize('name', ['Maxim', 'KBNet', 'Uformer'])
def test_baseline_trains(name):
    torch.manual_seed(0)
    net = build_small(name).train()
    x = make_input((2, 3, 20, 30))
    net(x).abs().mean().backward()
    unused = [n for n, p in net.named_parameters() if p.grad is None]  # not in the graph
    # upstream builds them but single-stage MAXIM never calls them; Uformer's norm_cross output is discarded
    allowed = ('.cross_gating_block.', 'UNetEncoderBlock_0.Conv_1.', '.norm_cross.')
    assert all(any(a in n for a in allowed) for n in unused), [n for n in unused if not any(a in n for a in allowed)]


def test_uformer_checkpointing_and_unsupported_options():
    torch.manual_seed(0)
    net = build_network({'type': 'Uformer', **UFORMER_SMALL, 'use_checkpoint': True}).train()
    net(make_input((1, 3, 32, 32))).mean().backward()
    assert net.input_proj.proj[0].weight.grad is not None
    with pytest.raises(ValueError, match='fastleff'):
        build_network({'type': 'Uformer', **UFORMER_SMALL, 'token_mlp': 'fastleff'})
    with pytest.raises(ValueError, match='depth and num_supervision_scales'):
        build_network({'type': 'Maxim', 'depth': 4})


# ---------------------------------------------------------------------------------------------------- runner
@pytest.mark.parametrize('name', ['Maxim', 'KBNet', 'Uformer', 'ConStyleMaxim', 'ConStyleKBNet', 'ConStyleUformer'])
def test_runner_trains_and_validates(name, tiny_data, in_tmp):
    """Six iterations through the runner (ConStyle losses for three, then the prior frozen), validation on the
    64 x 64 images, checkpoint; the checkpoint loads strictly into an inference build."""
    from irtk_testutils import shrink_recipe, write_options

    from irtoolkit.engine.runner import train
    arch, kwargs, _ = CONFIGS[name]
    opt = shrink_recipe(tiny_data, f'bb_{name}', 6)
    opt['network_g'] = {'type': arch, **kwargs}
    if arch.startswith('ConStyle'):
        opt['network_g'].update(Train=True, constyle_opt={'K': 16})
        opt['model_type'] = 'ConStyleModel'
        opt['constyle'] = {'iter': 3}
        opt['train'].update(infonce_opt={'type': 'QueueInfoNCELoss'}, content_opt={'type': 'ContentLoss'},
                            style_opt={'type': 'StyleLoss'})
    opt['logger'].update(print_freq=3, save_checkpoint_freq=6, use_tb_logger=False)
    opt['val'].update(val_freq=6, save_img=False)
    train(['-opt', write_options(opt, in_tmp / 'opt.yml')])
    log = open(next((in_tmp / f'experiments/bb_{name}').glob('train_*.log'))).read()
    assert '# psnr' in log
    assert ('ConStyle frozen at iter 4' in log) == arch.startswith('ConStyle')
    state = torch.load(in_tmp / f'experiments/bb_{name}/models/net_g_6.pth', weights_only=True)['params_ema']
    net = build_network({'type': arch, **kwargs})
    getattr(net, 'load_checkpoint_state', net.load_state_dict)(state, strict=True)
