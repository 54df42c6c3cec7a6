"""Network files as .pth and .safetensors: every reader takes both, writes are atomic and leave one format per tag,
``irtk-weights convert`` round-trips bit for bit, and auto-resume / pruning see both suffixes."""
import os

import pytest
import torch
from safetensors.torch import save_file

from irtoolkit.cli import weights as weights_cli
from irtoolkit.utils.checkpoint import (CheckpointError, CheckpointWriteError, MissingCheckpointError,
                                        convert_network_file, find_network_file, latest_usable_state, load_checkpoint,
                                        prune_checkpoints, read_state_dict, safe_load, write_network_file)
from irtoolkit.utils.safetensors_file import ENTRIES_KEY, is_safetensors


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Conv2d(4, 3, 1))


def _checkpoint():
    """{'params', 'params_ema'} with distinct values, an int buffer and a bf16 tensor among them."""
    raw, ema = _net().state_dict(), _net().state_dict()
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in ema.items()}
    raw['extra.bf16'] = torch.randn(5).bfloat16()
    ema['extra.bf16'] = raw['extra.bf16'] * 2
    return {'params': raw, 'params_ema': ema}


def _assert_same(a, b):
    """Same entries (in order), same keys (safetensors stores them sorted), same dtypes and values."""
    assert list(a) == list(b)
    for entry in a:
        assert sorted(a[entry]) == sorted(b[entry])
        for k in a[entry]:
            assert a[entry][k].dtype == b[entry][k].dtype and torch.equal(a[entry][k], b[entry][k]), (entry, k)


@pytest.mark.parametrize('fmt', ['pth', 'safetensors'])
def test_both_formats_read_back_the_same_entries(tmp_path, fmt):
    ckpt = _checkpoint()
    path = write_network_file(ckpt, str(tmp_path), 'net_g_10', fmt)
    assert path.endswith(f'net_g_10.{fmt}') and is_safetensors(path) == (fmt == 'safetensors')
    _assert_same(safe_load(path), ckpt)
    for key, expect in (('params', 'params'), ('params_ema', 'params_ema'), ('auto', 'params_ema')):
        state, used = read_state_dict(path, key)
        assert used == expect and all(torch.equal(state[k], ckpt[expect][k]) for k in ckpt[expect])
    net = _net()
    del ckpt['params']['extra.bf16'], ckpt['params_ema']['extra.bf16']
    write_network_file(ckpt, str(tmp_path), 'net_g_20', fmt)
    assert load_checkpoint(net, str(tmp_path / f'net_g_20.{fmt}'), 'params_ema') == 'params_ema'
    assert torch.equal(net[0].weight, ckpt['params_ema']['0.weight'])
    assert not [p for p in os.listdir(tmp_path) if '.tmp.' in p]


def test_a_plain_safetensors_state_dict_is_used_whole(tmp_path):
    """A Hugging Face-style model.safetensors (flat keys, no irtoolkit metadata) is a bare state dict; entries
    written by hand as key prefixes without the metadata are still entries."""
    net = _net()
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp_path / 'model.safetensors'),
              metadata={'format': 'pt'})
    state, used = read_state_dict(str(tmp_path / 'model.safetensors'), 'params_ema')
    assert used is None and set(state) == set(net.state_dict())
    fresh = _net().apply(lambda m: torch.nn.init.zeros_(m.weight) if hasattr(m, 'weight') else None)
    load_checkpoint(fresh, str(tmp_path / 'model.safetensors'))
    assert torch.equal(fresh[0].weight, net[0].weight)
    save_file({f'params.{k}': v.contiguous() for k, v in net.state_dict().items()}, str(tmp_path / 'hand.st'))
    assert is_safetensors(str(tmp_path / 'hand.st'))  # recognised by its header, whatever the name
    state, used = read_state_dict(str(tmp_path / 'hand.st'), 'auto')
    assert used == 'params' and set(state) == set(net.state_dict())


def test_safetensors_metadata_names_the_entries(tmp_path):
    from safetensors import safe_open
    path = write_network_file({'params': {}, 'params_ema': _net().state_dict()}, str(tmp_path), 'n_1', 'safetensors')
    with safe_open(path, 'pt') as f:
        assert f.metadata() == {'format': 'pt', ENTRIES_KEY: 'params,params_ema'}
        assert all(k.startswith('params_ema.') for k in f.keys())
    assert safe_load(path)['params'] == {}  # an empty entry survives


def test_writing_one_format_removes_the_other_of_that_tag(tmp_path):
    ckpt = _checkpoint()
    write_network_file(ckpt, str(tmp_path), 'net_g_latest', 'pth')
    write_network_file(ckpt, str(tmp_path), 'net_g_5', 'pth')
    write_network_file(ckpt, str(tmp_path), 'net_g_latest', 'safetensors')
    assert sorted(os.listdir(tmp_path)) == ['net_g_5.pth', 'net_g_latest.safetensors']
    assert find_network_file(str(tmp_path), 'net_g_latest').endswith('.safetensors')
    with pytest.raises(MissingCheckpointError, match=r'net_g_7\.pth \(or \.safetensors\)'):
        find_network_file(str(tmp_path), 'net_g_7')


def test_non_tensor_entries_cannot_be_safetensors(tmp_path):
    with pytest.raises(CheckpointWriteError, match='iter'):
        write_network_file({'params': _net().state_dict(), 'iter': 3}, str(tmp_path), 'x', 'safetensors')
    assert os.listdir(tmp_path) == []


def test_convert_round_trip_is_exact(tmp_path, capsys):
    ckpt = _checkpoint()
    torch.save(ckpt, tmp_path / 'a.pth')
    assert weights_cli.main(['convert', str(tmp_path / 'a.pth'), str(tmp_path / 'b.safetensors')]) == 0
    assert 'params, params_ema' in capsys.readouterr().out
    assert weights_cli.main(['convert', str(tmp_path / 'b.safetensors'), str(tmp_path / 'c.pth')]) == 0
    _assert_same(safe_load(str(tmp_path / 'b.safetensors')), ckpt)
    _assert_same(torch.load(tmp_path / 'c.pth', weights_only=True), ckpt)
    # a bare state dict stays one
    torch.save(ckpt['params'], tmp_path / 'bare.pth')
    assert convert_network_file(str(tmp_path / 'bare.pth'), str(tmp_path / 'bare.safetensors')) == []
    assert read_state_dict(str(tmp_path / 'bare.safetensors'))[1] is None
    # an existing OUT is kept without --force; a missing IN is one line
    assert weights_cli.main(['convert', str(tmp_path / 'a.pth'), str(tmp_path / 'c.pth')]) == 2
    assert 'exists (--force' in capsys.readouterr().err
    assert weights_cli.main(['convert', str(tmp_path / 'nope.pth'), str(tmp_path / 'd.pth')]) == 2
    err = capsys.readouterr().err
    assert 'checkpoint not found' in err and len(err.strip().splitlines()) == 1
    assert weights_cli.main(['convert', '--force', str(tmp_path / 'b.safetensors'), str(tmp_path / 'c.pth')]) == 0


def test_auto_resume_takes_states_with_either_format_and_skips_a_cut_file(tmp_path):
    models, states = tmp_path / 'models', tmp_path / 'training_states'
    states.mkdir()
    for it, fmt in ((4, 'pth'), (8, 'safetensors'), (12, 'safetensors')):
        write_network_file(_checkpoint(), str(models), f'net_g_{it}', fmt)
        torch.save({'iter': it}, states / f'{it}.state')
    data = (models / 'net_g_12.safetensors').read_bytes()
    (models / 'net_g_12.safetensors').write_bytes(data[:len(data) // 2])  # a copy cut short
    warnings = []
    path, state = latest_usable_state(str(states), str(models), warnings.append)
    assert state['iter'] == 8 and path.endswith('8.state')
    assert len(warnings) == 1 and 'net_g_12.safetensors' in warnings[0]
    with pytest.raises(CheckpointError):
        safe_load(str(models / 'net_g_12.safetensors'))
    (models / 'net_g_8.safetensors').unlink()
    assert latest_usable_state(str(states), str(models), warnings.append)[1]['iter'] == 4
    assert 'no network files *_8.pth or .safetensors' in warnings[-1]


def test_pruning_removes_both_formats(tmp_path):
    models, states = tmp_path / 'models', tmp_path / 'training_states'
    states.mkdir()
    for it, fmt in ((4, 'pth'), (8, 'safetensors'), (12, 'pth')):
        write_network_file({'params': {}}, str(models), f'net_g_{it}', fmt)
        torch.save({'iter': it}, states / f'{it}.state')
    write_network_file({'params': {}}, str(models), 'net_g_latest', 'safetensors')
    prune_checkpoints(str(models), str(states), 1)
    assert sorted(os.listdir(models)) == ['net_g_12.pth', 'net_g_latest.safetensors']
    assert os.listdir(states) == ['12.state']


def test_checkpoint_format_option():
    from irtoolkit.config.options import BASE_SCHEMA
    from irtoolkit.config.run import RunContext
    from irtoolkit.config.schema import option_problems
    from irtoolkit.engine.runner import build_run_model
    from irtoolkit.utils.errors import OptionError
    assert option_problems({'logger': {'checkpoint_format': 'safetensors'}}, BASE_SCHEMA) == []
    assert option_problems({'logger': {'checkpoint_format': 'onnx'}}, BASE_SCHEMA) == [
        "logger.checkpoint_format: expected one of pth, safetensors, got str 'onnx'"]
    # basicsr's models write their own .pth files: refused, not silently ignored
    with pytest.raises(OptionError, match='logger.checkpoint_format: SRModel saves its own .pth'):
        build_run_model({'model_type': 'SRModel', 'logger': {'checkpoint_format': 'safetensors'}, 'val': {}},
                        RunContext())


@pytest.mark.parametrize('fmt', ['pth', 'safetensors'])
def test_pretrain_network_loads_either_format_with_its_ema(in_tmp, fmt):
    """``path.pretrain_network_g``: net_g from ``params``, its EMA copy from ``params_ema`` (BaseModel.setup_ema)."""
    from irtk_testutils import SMALL_NAFNET

    from irtoolkit.models.restoration_model import RestorationModel
    from irtoolkit.utils.registry import build_network
    torch.manual_seed(1)
    raw, ema = build_network(SMALL_NAFNET).state_dict(), build_network(SMALL_NAFNET).state_dict()
    path = write_network_file({'params': raw, 'params_ema': ema}, str(in_tmp), 'pre', fmt)
    model = RestorationModel({'name': 'pre', 'model_type': 'RestorationModel', 'num_gpu': 0, 'network_g': SMALL_NAFNET,
                              'path': {'pretrain_network_g': path},
                              'train': {'optim_g': {'type': 'Adam', 'lr': 1e-3}, 'pixel_opt': {'type': 'L1Loss'},
                                        'ema_decay': 0.9}})
    assert all(torch.equal(v, raw[k]) for k, v in model.net_g.state_dict().items())
    assert all(torch.equal(v, ema[k]) for k, v in model.ema_networks['net_g'].state_dict().items())
