"""Upstream checkpoint compatibility: an upstream-format state dict (built from upstream's key list, random values)
loads strictly into ConStyleNAFNet / ConStyleRestormer; Train=False builds skip exactly the key encoder and queue.

The key lists (``test_constyle_keys_*.txt``, key<TAB>shape<TAB>dtype) were dumped from upstream's own architecture
definitions with Train=True (see shared/notes/constyle.md §11).
"""
import os.path as osp

import pytest
import torch
from irtk_testutils import read_key_list

from irtoolkit.config.run import RunContext
from irtoolkit.models.base_model import BaseModel
from irtoolkit.utils.checkpoint import atomic_save
from irtoolkit.utils.registry import build_network

HERE = osp.dirname(osp.abspath(__file__))
KEY_ENCODER = ('ConStyle.encoder_k.', 'ConStyle.queue')


def upstream_keys(arch):
    return read_key_list(osp.join(HERE, f'test_constyle_keys_{arch}.txt'))


def upstream_state(arch, seed=0):
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape, dtype in upstream_keys(arch):
        if dtype == 'torch.int64':
            state[key] = torch.randint(0, 100, shape, generator=g)
        elif key.endswith('running_var'):
            state[key] = torch.rand(shape, generator=g) + 0.5
        else:
            state[key] = torch.randn(shape, generator=g) * 0.05
    state = {k: v.abs() + 0.5 if k.endswith('running_var') else v for k, v in state.items()}
    if 'ConStyle.queue_ptr' in state:
        state['ConStyle.queue_ptr'] = torch.tensor([8])
    return state


@pytest.mark.parametrize('arch,n_keys,n_params', [('ConStyleNAFNet', 1091, 12_739_872),
                                                  ('ConStyleRestormer', 552, 15_574_960)])
def test_upstream_state_dict_loads_strictly(arch, n_keys, n_params):
    state = upstream_state(arch)
    assert len(state) == n_keys
    full = build_network({'type': arch})  # upstream default Train=True
    full.load_state_dict(state, strict=True)
    assert list(full.state_dict()) == [k for k, _, _ in upstream_keys(arch)]  # same names, same order
    for k, v in full.state_dict().items():
        assert torch.equal(v, state[k]), k

    infer = build_network({'type': arch, 'Train': False})
    assert sum(p.numel() for p in infer.parameters()) == n_params
    result = infer.load_checkpoint_state(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    skipped = [k for k in state if k.startswith(KEY_ENCODER)]
    assert set(state) - set(infer.state_dict()) == set(skipped)
    assert len(skipped) == len([k for k in state if k.startswith('ConStyle.encoder_q.')]) + 2

    # both builds give the same restoration from the same weights, at an odd size
    x = torch.rand(1, 3, 21, 26, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(full.eval()(x), infer.eval()(x), atol=1e-5)


def test_checkpoint_through_model_loader(tmp_path):
    """The option lines of docs/constyle.md: params_ema of an upstream file into a Train=False network."""
    state = upstream_state('ConStyleNAFNet')
    path = str(tmp_path / 'upstream.pth')
    atomic_save({'params': upstream_state('ConStyleNAFNet', seed=1), 'params_ema': state}, path)
    opt = {'num_gpu': 0, 'network_g': {'type': 'ConStyleNAFNet', 'Train': False},
           'path': {'pretrain_network_g': path, 'param_key_g': 'params_ema', 'strict_load_g': True}}
    model = BaseModel(opt, RunContext.create(opt, is_train=False))
    net = model.build_net('network_g')
    assert torch.equal(net.state_dict()['Process_Module_r1.6.conv5.weight'], state['Process_Module_r1.6.conv5.weight'])
    assert torch.equal(net.state_dict()['ConStyle.encoder_q.mlp2.1.running_var'],
                       state['ConStyle.encoder_q.mlp2.1.running_var'])


def test_wrong_queue_length_and_missing_keys_fail_clearly():
    state = upstream_state('ConStyleRestormer')
    small = build_network({'type': 'ConStyleRestormer', 'constyle_opt': {'K': 64}})
    with pytest.raises(ValueError, match='constyle_opt.K'):
        small.load_checkpoint_state(state)
    infer_state = {k: v for k, v in state.items() if not k.startswith(KEY_ENCODER)}
    full = build_network({'type': 'ConStyleRestormer'})
    with pytest.raises(RuntimeError, match='encoder_k'):
        full.load_checkpoint_state(infer_state, strict=True)
