"""Checkpoints recognised by their contents (irtoolkit.inference.recognise): irtoolkit's own network files carry the
options that built the network; other projects' state dicts are recognised by their key layout (Restormer by
irtoolkit, the rest through spandrel). The recognised network's output equals that of the network built from the
options that made the checkpoint; what nothing recognises is one line and exit status 2 in every command."""
import os
import os.path as osp

import cv2
import numpy as np
import pytest
import torch
from irtk_testutils import SMALL_NAFNET, write_options
from torch import nn

from irtoolkit.cli import infer as infer_cli
from irtoolkit.cli import weights as weights_cli
from irtoolkit.data.tiny import make_tiny_pairs
from irtoolkit.engine.runner import test as run_test
from irtoolkit.inference.recognise import SpandrelNetwork, UnrecognisedCheckpointError, recognise_file, recognise_state
from irtoolkit.models.restoration_model import RestorationModel
from irtoolkit.utils.checkpoint import atomic_save, find_network_file, plain_options, safe_load, state_dict_entry
from irtoolkit.utils.errors import OptionError
from irtoolkit.utils.registry import build_network

SMALL_CONSTYLE = {'type': 'ConStyleNAFNet', 'img_channel': 3, 'dim': 8, 'left_blk_num': [1, 1, 1],
                  'bottom_blk_num': 1, 'right_blk_num': [1, 1, 1], 'Train': True, 'constyle_opt': {'K': 64}}
SMALL_RESTORMER = {'type': 'Restormer', 'inp_channels': 3, 'out_channels': 3, 'dim': 8, 'num_blocks': [1, 1, 1, 2],
                   'num_refinement_blocks': 1, 'heads': [1, 1, 2, 2], 'ffn_expansion_factor': 2.66, 'bias': False,
                   'LayerNorm_type': 'WithBias', 'dual_pixel_task': False}


def _model(net_opt, fmt='pth', name='own'):
    """A RestorationModel (EMA on) built in code around ``net_opt``, its weights and EMA moved off their init."""
    torch.manual_seed(0)
    opt = {'name': name, 'model_type': 'RestorationModel', 'num_gpu': 0, 'network_g': net_opt,
           # NCHW as the rebuilt network, so outputs compare bit for bit (layouts: test_model_features.py)
           'train': {'optim_g': {'type': 'Adam', 'lr': 1e-3}, 'pixel_opt': {'type': 'L1Loss'}, 'ema_decay': 0.5,
                     'channels_last': False},
           'logger': {'checkpoint_format': fmt}}
    model = RestorationModel(opt)
    with torch.no_grad():
        for p in model.net_g.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        for p in model.ema_networks['net_g'].parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def _same_output(a, b, size=(36, 44), tol=0.0):
    """max |a(x) - b(x)| on one random image, checked against ``tol`` (0: bit-identical)."""
    x = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        diff = (a.eval()(x) - b.eval()(x)).abs().max().item()
    assert diff <= tol, diff
    return diff


def _one_error_line(capsys):
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1, err
    return err[0]


# ------------------------------------------------------------------------------------ irtoolkit's own checkpoints
OWN_LINES = {
    'NAFNet': "detected NAFNet (irtoolkit's network options in the file): width=8, middle_blk_num=1, "
              'enc_blk_nums=[1, 1], dec_blk_nums=[1, 1]',
    'ConStyleNAFNet': "detected ConStyleNAFNet (irtoolkit's network options in the file): img_channel=3, dim=8, "
                      'left_blk_num=[1, 1, 1], bottom_blk_num=1, right_blk_num=[1, 1, 1], Train=True, '
                      'constyle_opt={K: 64}'}


@pytest.mark.parametrize('fmt', ['pth', 'safetensors'])
@pytest.mark.parametrize('net_opt', [SMALL_NAFNET, SMALL_CONSTYLE], ids=['NAFNet', 'ConStyleNAFNet'])
def test_own_checkpoint_carries_its_options_and_rebuilds_the_network(in_tmp, fmt, net_opt):
    model = _model(net_opt, fmt)
    model.save('latest')
    path = find_network_file(str(in_tmp / 'experiments/own/models'), 'net_g_latest')
    assert path.endswith(fmt) and safe_load(path)['network'] == net_opt  # plain types: weights_only / JSON
    found = recognise_file(path)
    assert (found.arch, found.net_opt, found.used) == (net_opt['type'], net_opt, 'params_ema')
    assert found.line() == OWN_LINES[net_opt['type']]
    _same_output(found.network, model.inference_net('net_g'))  # the EMA copy, bit for bit
    raw = recognise_file(path, 'params')
    _same_output(raw.network, model.net_g)
    assert any(not torch.equal(a, b) for a, b in zip(found.network.state_dict().values(),
                                                     raw.network.state_dict().values()))  # two different entries


def test_the_options_survive_convert_both_ways(in_tmp):
    _model(SMALL_NAFNET).save('latest')
    src = str(in_tmp / 'experiments/own/models/net_g_latest.pth')
    assert weights_cli.main(['convert', src, str(in_tmp / 'a.safetensors')]) == 0
    assert weights_cli.main(['convert', str(in_tmp / 'a.safetensors'), str(in_tmp / 'b.pth')]) == 0
    for path in (in_tmp / 'a.safetensors', in_tmp / 'b.pth'):
        assert safe_load(str(path))['network'] == SMALL_NAFNET
        _same_output(recognise_file(str(path)).network, recognise_file(src).network)


def test_only_plain_options_are_stored_and_networks_built_in_code_have_none(in_tmp):
    plain = {'type': 'X', 'sizes': [1, 2], 'sub': {'a': None}}
    assert plain_options({'type': 'X', 'sizes': (1, 2), 'sub': {'a': None}}) == plain
    assert plain_options({'type': 'X', 'norm_layer': nn.LayerNorm}) is None
    assert plain_options({'type': 'X', 'w': [torch.zeros(1)]}) is None
    model = _model(SMALL_NAFNET)
    model.add_net('net_extra', nn.Conv2d(3, 3, 1))
    model.save('latest')
    assert 'network' not in safe_load(str(in_tmp / 'experiments/own/models/net_extra_latest.pth'))
    with pytest.raises(UnrecognisedCheckpointError, match='carries no irtoolkit network options'):
        recognise_file(str(in_tmp / 'experiments/own/models/net_extra_latest.pth'))


# ------------------------------------------------------------------------------- other projects' state dicts
def _nafnet_megvii():
    """NAFNet as megvii's release saves it ({'params': ...}; irtoolkit's NAFNet has the official key names)."""
    torch.manual_seed(2)
    return {'params': build_network(SMALL_NAFNET).state_dict()}, SMALL_NAFNET


def _restormer(**changes):
    torch.manual_seed(3)
    opt = {**SMALL_RESTORMER, **changes}
    return {'params': build_network(opt).state_dict()}, opt


def test_nafnet_release_is_built_as_irtoolkits_nafnet_through_spandrel():
    from spandrel import ModelLoader
    ckpt, opt = _nafnet_megvii()
    found = recognise_state(ckpt['params'])
    assert found.how == "spandrel -> irtoolkit's NAFNet" and found.net_opt == {**opt, 'img_channel': 3}
    assert found.line() == ("detected NAFNet (spandrel -> irtoolkit's NAFNet): img_channel=3, width=8, "
                            'middle_blk_num=1, enc_blk_nums=[1, 1], dec_blk_nums=[1, 1]')
    options_built = build_network(opt)
    options_built.load_state_dict(ckpt['params'])
    _same_output(found.network, options_built)
    _same_output(found.network, ModelLoader().load_from_state_dict(ckpt['params']).model, tol=1e-6)


@pytest.mark.parametrize('changes', [{}, {'dim': 12, 'heads': [1, 2, 2, 4], 'ffn_expansion_factor': 1.5,
                                          'bias': True, 'LayerNorm_type': 'BiasFree'},
                                     {'inp_channels': 6, 'dual_pixel_task': True}],
                         ids=['official', 'variant', 'dual_pixel'])
def test_restormer_is_read_off_its_keys(changes):
    ckpt, opt = _restormer(**changes)
    found = recognise_state(ckpt['params'])
    assert found.how == "key layout -> irtoolkit's Restormer" and found.net_opt == opt  # every argument read back
    options_built = build_network(opt)
    options_built.load_state_dict(ckpt['params'])
    x = torch.rand(1, opt['inp_channels'], 24, 40)
    with torch.inference_mode():
        assert torch.equal(found.network.eval()(x), options_built.eval()(x))


def test_kbnet_and_uformer_releases_are_built_as_irtoolkits_archs():
    """Official keys, written from spandrel's copies of the official classes; Uformer's training script wraps the
    weights in {'epoch', 'state_dict', 'optimizer'}."""
    from spandrel.architectures.KBNet import KBNet_s
    from spandrel.architectures.Uformer import Uformer
    torch.manual_seed(4)
    kb = KBNet_s(width=16, middle_blk_num=1, enc_blk_nums=[1, 1], dec_blk_nums=[1, 1]).eval()
    found = recognise_state(kb.state_dict())
    assert found.net_opt == {'type': 'KBNet', 'img_channel': 3, 'width': 16, 'middle_blk_num': 1,
                             'enc_blk_nums': [1, 1], 'dec_blk_nums': [1, 1], 'lightweight': False, 'ffn_scale': 2.0}
    _same_output(found.network, kb, tol=1e-6)
    options_built = build_network(found.net_opt)
    options_built.load_state_dict(kb.state_dict())
    _same_output(found.network, options_built)
    uf = Uformer(embed_dim=8, depths=[1] * 9, num_heads=[1, 1, 2, 2, 4, 4, 2, 2, 1], win_size=4).eval()
    torch.manual_seed(5)
    with torch.no_grad():
        for p in uf.parameters():  # off the init, so that every part of the network shows in the output
            p.add_(torch.randn_like(p) * 0.02)
    wrapped = {'epoch': 3, 'state_dict': uf.state_dict(), 'optimizer': {'state': {}, 'param_groups': []}}
    state, used = state_dict_entry(wrapped, 'uformer.pth')
    assert used == 'state_dict'
    found = recognise_state(state, used=used)
    assert found.how == "spandrel -> irtoolkit's Uformer" and found.net_opt['win_size'] == 4
    assert found.net_opt['depths'] == [1] * 9 and 'norm_layer' not in found.net_opt  # classes: irtoolkit's defaults
    _same_output(found.network, uf, size=(64, 64), tol=1e-6)
    options_built = build_network(found.net_opt)
    options_built.load_state_dict(uf.state_dict())
    _same_output(found.network, options_built, size=(64, 64))


def test_spandrel_models_run_as_themselves():
    """SwinIR (spandrel's class) and Real-ESRGAN's RRDBNet x4 / SRVGGNetCompact x2 (basicsr's, Real-ESRGAN's key
    layout): irtoolkit registers no such arch, so spandrel's model runs, padded to its size requirements."""
    from basicsr.archs.rrdbnet_arch import RRDBNet
    from basicsr.archs.srvgg_arch import SRVGGNetCompact
    from spandrel.architectures.SwinIR import SwinIR
    torch.manual_seed(6)
    swinir_opt = dict(img_size=16, embed_dim=12, depths=[1, 1], num_heads=[2, 2], window_size=4, upscale=2,
                      upsampler='pixelshuffledirect')
    swinir = SwinIR(**swinir_opt)
    found = recognise_state(swinir.state_dict())
    assert isinstance(found.network, SpandrelNetwork) and found.how == 'spandrel model, x2'
    assert found.line().startswith('detected SwinIR (spandrel model, x2): img_size=64, ')  # not in the keys: default
    assert all(found.arguments[k] == v for k, v in swinir_opt.items() if k != 'img_size')
    options_built = SwinIR(**{**swinir_opt, 'img_size': 64})
    options_built.load_state_dict(swinir.state_dict())
    # 30 x 42 is not a multiple of the window: the descriptor pads and crops, as SwinIR's own forward does
    _same_output(found.network, nn.Sequential(options_built, nn.Hardtanh(0, 1)), size=(30, 42))
    for net_opt, how in (({'type': 'RRDBNet', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 8, 'num_block': 1,
                           'scale': 4}, 'spandrel model RRDBNet, x4'),
                         ({'type': 'SRVGGNetCompact_basicsr', 'num_feat': 8, 'num_conv': 2, 'upscale': 2},
                          'spandrel model SRVGGNetCompact, x2')):
        options_built = build_network(net_opt).eval()
        found = recognise_state(options_built.state_dict())
        assert found.how == how
        _same_output(found.network, nn.Sequential(options_built, nn.Hardtanh(0, 1)), tol=1e-6)
    assert build_network({'type': 'RRDBNet', 'num_in_ch': 3, 'num_out_ch': 3}).__class__ is RRDBNet
    assert build_network({'type': 'SRVGGNetCompact_basicsr'}).__class__ is SRVGGNetCompact


def test_what_nothing_recognises_is_one_line_saying_what_to_pass(tmp_path):
    torch.manual_seed(7)
    critic = build_network({'type': 'PatchGANDiscriminator', 'num_feat': 8, 'num_layers': 2})
    atomic_save({'params': critic.state_dict()}, str(tmp_path / 'critic.pth'))
    with pytest.raises(UnrecognisedCheckpointError) as err:
        recognise_file(str(tmp_path / 'critic.pth'))
    msg = str(err.value)
    assert '\n' not in msg and 'spandrel knows no architecture with these keys' in msg
    assert msg.endswith("pass -opt recipe.yml (its network_g) or --net '{type: ..., ...}'")
    # ConStyleNAFNet's weights without its options (as upstream IRConStyle saves them): no layout knows them
    with pytest.raises(UnrecognisedCheckpointError, match='spandrel knows no architecture with these keys'):
        recognise_state(build_network(SMALL_CONSTYLE).state_dict())
    # NAFNet's keys with one more layer: spandrel detects NAFNet, and its strict load names the stray key
    state = {**_nafnet_megvii()[0]['params'], 'head.weight': torch.zeros(3, 3, 1, 1)}
    with pytest.raises(UnrecognisedCheckpointError, match=r'spandrel detects an architecture but cannot load it: '
                                                          r'Error\(s\) in loading state_dict for NAFNet: '
                                                          'Unexpected key'):
        recognise_state(state)
    # a Restormer whose keys fit the layout but not a network: the load error names the key
    state = _restormer()[0]['params']
    state['encoder_level2.0.ffn.project_out.weight'] = state['encoder_level2.0.ffn.project_out.weight'][:, :-1]
    with pytest.raises(UnrecognisedCheckpointError, match="Restormer's but the arguments read from them do not fit"):
        recognise_state(state)


# --------------------------------------------------------------------------------------------- the commands
@pytest.fixture
def images(tmp_path):
    """Two small noisy photos (lq) and their clean versions (gt)."""
    return make_tiny_pairs(str(tmp_path / 'tiny'), n_train=0, n_val=2, size=40)


def _infer(args, out):
    assert infer_cli.main(args + ['--output', str(out), '--tile', '0', '--no-progress']) in (None, 0)
    return {p: cv2.imread(osp.join(out, p), cv2.IMREAD_UNCHANGED) for p in sorted(os.listdir(out))}


def test_infer_with_weights_alone_equals_infer_with_options(in_tmp, images, capsys):
    lq = osp.join(images, 'val/lq')
    _model(SMALL_CONSTYLE).save('latest')
    own = str(in_tmp / 'experiments/own/models/net_g_latest.pth')
    ckpt, restormer_opt = _restormer()
    atomic_save(ckpt, str(in_tmp / 'restormer.pth'))
    for weights, net_opt, arch in ((own, SMALL_CONSTYLE, 'ConStyleNAFNet'),
                                   (str(in_tmp / 'restormer.pth'), restormer_opt, 'Restormer')):
        got = _infer(['--weights', weights, '--input', lq], in_tmp / f'{arch}_weights')
        out = capsys.readouterr().out
        assert f'detected {arch} (' in out and f'{arch} on cpu' in out
        want = _infer(['--net', str(net_opt), '--weights', weights, '--input', lq], in_tmp / f'{arch}_net')
        assert len(got) == 2 and all(np.array_equal(got[k], want[k]) for k in want)


def test_infer_and_inspect_refuse_what_they_cannot_recognise(tmp_path, images, capsys):
    atomic_save({'conv.weight': torch.zeros(3, 3, 1, 1)}, str(tmp_path / 'mystery.pth'))
    lq = osp.join(images, 'val/lq')
    assert infer_cli.main(['--weights', str(tmp_path / 'mystery.pth'), '--input', lq, '--output',
                           str(tmp_path / 'o')]) == 2
    line = _one_error_line(capsys)
    assert line.startswith(f'error: {tmp_path / "mystery.pth"}: cannot tell the network') and '-opt recipe.yml' in line
    assert infer_cli.main(['--input', lq, '--output', str(tmp_path / 'o')]) == 2
    assert 'pass --weights' in _one_error_line(capsys)
    assert weights_cli.main(['inspect', str(tmp_path / 'mystery.pth')]) == 2
    captured = capsys.readouterr()
    assert captured.out == f'{tmp_path / "mystery.pth"}: torch file; a bare state dict; state dict: 1 tensors, 9 ' \
                           'values (float32)\n'
    assert len(captured.err.splitlines()) == 1 and "irtk-infer needs -opt recipe.yml or --net" in captured.err
    assert weights_cli.main(['inspect', str(tmp_path / 'missing.pth')]) == 2
    assert 'checkpoint not found' in _one_error_line(capsys)


def test_inspect_prints_entries_and_the_recognised_network(in_tmp, capsys):
    _model(SMALL_NAFNET, 'safetensors').save('latest')
    path = str(in_tmp / 'experiments/own/models/net_g_latest.safetensors')
    capsys.readouterr()  # the model's own log lines (its layout), not the command's output
    assert weights_cli.main(['inspect', path]) == 0
    first, second = capsys.readouterr().out.splitlines()
    n_tensors = len(build_network(SMALL_NAFNET).state_dict())
    assert first.startswith(f'{path}: safetensors; entries params, params_ema, network; params_ema: {n_tensors} '
                            'tensors, ') and first.endswith('values (float32)')
    assert second == ("detected NAFNet (irtoolkit's network options in the file): width=8, middle_blk_num=1, "
                      'enc_blk_nums=[1, 1], dec_blk_nums=[1, 1]')


def test_test_runner_takes_the_network_from_the_checkpoint(in_tmp, images):
    _model(SMALL_NAFNET).save('latest')
    weights = str(in_tmp / 'experiments/own/models/net_g_latest.pth')
    recipe = {'name': 'recognised', 'model_type': 'RestorationModel', 'num_gpu': 0,
              'datasets': {'test_1': {'name': 'tiny_val', 'type': 'PairedImageDataset', 'io_backend': {'type': 'disk'},
                                      'dataroot_gt': osp.join(images, 'val/gt'),
                                      'dataroot_lq': osp.join(images, 'val/lq'), 'filename_tmpl': '{}'}},
              'path': {'pretrain_network_g': weights, 'param_key_g': 'params_ema'},
              'val': {'save_img': False, 'metrics': {'psnr': {'type': 'calculate_psnr', 'crop_border': 0}}}}
    recognised = run_test(['-opt', write_options(recipe, in_tmp / 'recognised.yml')])
    log = next(in_tmp.rglob('test_recognised_*.log')).read_text()
    assert f"network_g from {weights}: detected NAFNet (irtoolkit's network options in the file)" in log
    named = run_test(['-opt', write_options({**recipe, 'name': 'named', 'network_g': SMALL_NAFNET},
                                            in_tmp / 'named.yml')])
    assert recognised == named and recognised['tiny_val']['psnr'] > 0
    # a network only spandrel builds: the test runner says so in one line
    from spandrel.architectures.SwinIR import SwinIR
    atomic_save({'params': SwinIR(embed_dim=12, depths=[1], num_heads=[2], window_size=4).state_dict()},
                str(in_tmp / 'swinir.pth'))
    recipe['path'] = {'pretrain_network_g': str(in_tmp / 'swinir.pth')}
    with pytest.raises(OptionError, match=r'network_g: missing, and .*swinir.pth holds SwinIR \(spandrel model\), '
                                          'which no registered arch builds; irtk-infer --weights runs it'):
        run_test(['-opt', write_options(recipe, in_tmp / 'swinir.yml')])
    atomic_save({'params': {'conv.weight': torch.zeros(3, 3, 1, 1)}}, str(in_tmp / 'mystery.pth'))
    recipe['path'] = {'pretrain_network_g': str(in_tmp / 'mystery.pth')}
    with pytest.raises(UnrecognisedCheckpointError, match=r"add network_g \(\{type: ..., ...\}\) to .*mystery.yml$"):
        run_test(['-opt', write_options(recipe, in_tmp / 'mystery.yml')])
