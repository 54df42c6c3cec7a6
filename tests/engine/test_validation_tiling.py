"""``val.tile`` and ``irtk-test --tile``: validation and testing tile by tile give the whole-image metrics (exact tiles
for NAFNet and ConStyle networks, blended tiles for a purely local network); unset, validation is what it was; bad
values are one-line option errors naming the key, before anything runs."""
import json
import re

import pytest
import torch
from irtk_testutils import SMALL_NAFNET, shrink_recipe, write_options

from irtoolkit.config.run import RunContext
from irtoolkit.engine.runner import test as run_test
from irtoolkit.engine.runner import train as run_train
from irtoolkit.test import main as irtk_test
from irtoolkit.utils.errors import OptionError
from irtoolkit.utils.registry import build_model, build_network

METRICS = {'psnr': {'type': 'calculate_psnr', 'crop_border': 0}, 'ssim': {'type': 'calculate_ssim', 'crop_border': 0}}
SMALL_CONSTYLE = {'type': 'ConStyleNAFNet', 'img_channel': 3, 'dim': 8, 'left_blk_num': [1, 1, 1],
                  'bottom_blk_num': 1, 'right_blk_num': [1, 1, 1], 'Train': False, 'constyle_opt': {'K': 64}}
LOCAL_NET = {'type': 'ResConvBlock', 'c': 3, 'expand': 2}  # two 3x3 convs: reaches 2 px, no global operation


def _strong(net, seed=0, spread=0.2):
    """``net`` with its residual branches open (NAFNet's zero-initialised ``beta``/``gamma`` set to 1) and every weight
    moved by N(0, spread): a fresh NAFNet is close to the identity, where every tiling scores alike and a test of equal
    metrics could not fail; here per-tile channel attention changes the PSNR by ~0.04 dB."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith(('beta', 'gamma')):
                p.fill_(1.0)
            p.add_(torch.randn(p.shape, generator=g) * spread)
    return net


def _checkpoint(net_opt, path):
    torch.manual_seed(0)
    net = _strong(build_network(dict(net_opt)))
    torch.save({'params': net.state_dict()}, path)
    return str(path)


def _test_recipe(tiny_data, name, net_opt, ckpt, tile=None):
    val = {'save_img': False, 'metrics': METRICS}
    if tile is not None:
        val['tile'] = tile
    return {'name': name, 'model_type': 'RestorationModel', 'num_gpu': 0,
            'datasets': {'test_1': {'name': 'tiny_val', 'type': 'PairedImageDataset', 'io_backend': {'type': 'disk'},
                                    'dataroot_gt': f'{tiny_data}/val/gt', 'dataroot_lq': f'{tiny_data}/val/lq'}},
            'network_g': net_opt, 'path': {'pretrain_network_g': ckpt}, 'val': val}


def _model(net_opt, tile, seed=0, spread=0.02):
    opt = {'name': 'tiles', 'model_type': 'RestorationModel', 'num_gpu': 0, 'network_g': net_opt, 'path': {},
           'val': {} if tile is None else {'tile': tile}}
    torch.manual_seed(seed)
    model = build_model(opt, RunContext.create(opt, is_train=False))
    _strong(model.net_g, seed, spread)
    return model


def _output(model, lq):
    model.feed_data({'lq': lq})
    model.test()
    return model.output


def test_test_tool_tiles_give_the_whole_image_metrics(tiny_data, in_tmp):
    """irtk-test on 64x64 images: val.tile 32 (exact NAFNet) and --tile 24 score as whole images (PSNR within 1e-4
    dB); blended tiles (--tile-exact false) do not, so the comparison can fail; --tile 0 is the untiled run."""
    ckpt = _checkpoint(SMALL_NAFNET, in_tmp / 'nafnet.pth')
    whole = run_test(['-opt', write_options(_test_recipe(tiny_data, 'whole', SMALL_NAFNET, ckpt), in_tmp / 'w.yml')])
    tiled_yml = write_options(_test_recipe(tiny_data, 'tiled', SMALL_NAFNET, ckpt, tile=32), in_tmp / 't.yml')
    tiled = run_test(['-opt', tiled_yml])
    cli = run_test(['-opt', tiled_yml, '--tile', '24', '--force_yml', 'name=cli'])
    blended = run_test(['-opt', tiled_yml, '--tile-exact', 'false', '--tile-overlap', '16', '--force_yml',
                        'name=blended'])
    off = run_test(['-opt', tiled_yml, '--tile', '0', '--force_yml', 'name=untiled'])
    w = whole['tiny_val']
    assert json.loads((in_tmp / 'results/tiled/metrics.json').read_text()) == tiled
    for run in (tiled, cli):
        assert abs(run['tiny_val']['psnr'] - w['psnr']) < 1e-4 and abs(run['tiny_val']['ssim'] - w['ssim']) < 1e-5
    assert abs(blended['tiny_val']['psnr'] - w['psnr']) > 1e-3  # per-tile channel attention: other numbers
    assert off == whole
    log = next((in_tmp / 'results/tiled').glob('test_tiled_*.log')).read_text()
    assert 'val.tile: 32 px exact tiles (NAFNet' in log
    log = next((in_tmp / 'results/blended').glob('test_blended_*.log')).read_text()
    assert 'val.tile: 32 px blended tiles, overlap 16, align 4 (NAFNet)' in log


def test_training_validation_with_tiles_scores_as_whole_images(tiny_data, in_tmp):
    """A tiny NAFNet recipe trained twice from one checkpoint, validated whole and with val.tile 32: the same
    weights, the same validation metrics."""
    ckpt = _checkpoint(SMALL_NAFNET, in_tmp / 'start.pth')
    results = {}
    for name, tile in (('whole', None), ('tiled', {'size': 32, 'exact': True})):
        opt = shrink_recipe(tiny_data, name, 2, networks={'network_g': SMALL_NAFNET}, val_freq=2, checkpoint_freq=2)
        opt['val']['metrics'] = METRICS
        opt['path']['pretrain_network_g'] = ckpt
        if tile:
            opt['val']['tile'] = tile
        run_train(['-opt', write_options(opt, in_tmp / f'{name}.yml')])
        log = next((in_tmp / f'experiments/{name}').glob('train_*.log')).read_text()
        results[name] = [float(line.split('psnr:')[1].split()[0]) for line in log.splitlines() if '# psnr:' in line]
    assert results['whole'] and len(results['whole']) == len(results['tiled'])
    assert all(abs(a - b) <= 1.0001e-4 for a, b in zip(results["whole"], results["tiled"]))  # logged to 4 decimals
    assert 'val.tile: 32 px exact tiles' in log


def test_unset_tile_runs_the_network_on_the_whole_batch():
    """No val.tile: test() is net(lq) on the whole batch, bit for bit (and the images' order is kept)."""
    model = _model(SMALL_NAFNET, None)
    lq = torch.rand(2, 3, 40, 24)
    assert model.val_tile is None
    with torch.no_grad():
        expected = model.net_g.eval()(lq)
    assert torch.equal(_output(model, lq), expected)


def test_constyle_exact_tiles_use_the_whole_image_latent():
    """ConStyleNAFNet: the tiled path calls the network the test runs on lq, so exact tiles see the latent of the
    whole image (equal outputs, batch of two odd-sized images); blended tiles compute a latent per tile."""
    lq = torch.rand(2, 3, 72, 56, generator=torch.Generator().manual_seed(1))
    whole = _output(_model(SMALL_CONSTYLE, None), lq)
    exact = _output(_model(SMALL_CONSTYLE, {'size': 32}), lq)
    blended = _output(_model(SMALL_CONSTYLE, {'size': 32, 'overlap': 16, 'exact': False}), lq)
    assert exact.shape == whole.shape == lq.shape
    assert (exact - whole).abs().max().item() < 1e-4
    assert (blended - whole).abs().max().item() > 1e-3


def test_local_network_blended_tiles_equal_whole_images():
    """A purely local network (ResConvBlock: two 3x3 convolutions) has no exact schedule: exact auto falls back to
    blended tiles, whose zero-weight margin (overlap // 4 = 4 px) covers its 2 px reach, so they equal the whole
    image; exact: true is an option error naming the key."""
    lq = torch.rand(2, 3, 70, 50)
    whole = _output(_model(LOCAL_NET, None), lq)
    tiled = _output(_model(LOCAL_NET, {'size': 24, 'overlap': 16}), lq)
    assert (tiled - whole).abs().max().item() < 1e-5
    with pytest.raises(OptionError, match=r'val\.tile\.exact: true, but ResConvBlock has no exact tiling schedule'):
        _model(LOCAL_NET, {'size': 24, 'exact': True})


@pytest.mark.parametrize('tile, problem', [
    (8, r'val\.tile: expected 0 \(off\) or an int >= 16 or a mapping, got int 8'),
    ('big', r"val\.tile: expected .* got str 'big'"),
    ({'size': 64, 'exact': 'maybe'}, r"val\.tile\.exact: expected true, false or auto, got str 'maybe'"),
    ({'sise': 64}, r'val\.tile\.sise: unknown option; did you mean size\?'),
    ({'size': 64, 'overlap': -1}, r'val\.tile\.overlap: expected an int >= 0, got int -1'),
    ({'overlap': 16}, r'val\.tile\.size: missing'),
    ({'size': 32, 'overlap': 32, 'exact': False}, r'val\.tile\.overlap: 32 must be smaller than the tile'),
])
def test_bad_tile_values_are_one_line_errors_before_testing(tiny_data, in_tmp, capsys, tile, problem):
    path = write_options(_test_recipe(tiny_data, 'bad', SMALL_NAFNET, None, tile=tile), in_tmp / 'bad.yml')
    with pytest.raises(SystemExit) as exit_info:
        irtk_test(['-opt', path])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1, err
    assert 'bad.yml' in err
    assert re.search(problem, err), err
    assert not (in_tmp / 'results/bad/metrics.json').exists()


@pytest.mark.parametrize('argv', [['--tile', '8'], ['--tile', 'x'], ['--tile-overlap', '-3'], ['--tile-exact', 'yes']])
def test_bad_tile_flags_exit_2(tiny_data, in_tmp, capsys, argv):
    path = write_options(_test_recipe(tiny_data, 'flags', SMALL_NAFNET, None), in_tmp / 'f.yml')
    with pytest.raises(SystemExit) as exit_info:
        irtk_test(['-opt', path, *argv])
    assert exit_info.value.code == 2 and argv[0] in capsys.readouterr().err


def test_tile_flags_without_a_size_are_an_error(tiny_data, in_tmp, capsys):
    path = write_options(_test_recipe(tiny_data, 'nosize', SMALL_NAFNET, None), in_tmp / 'n.yml')
    with pytest.raises(SystemExit) as exit_info:
        irtk_test(['-opt', path, '--tile-exact', 'true'])
    assert exit_info.value.code == 2 and 'no tile size' in capsys.readouterr().err


def test_basicsr_interface_models_refuse_val_tile():
    """basicsr's SRModel validates with its own code: val.tile would be ignored, so it is an option error."""
    from irtoolkit.engine.runner import build_run_model
    opt = {'name': 'sr', 'model_type': 'SRModel', 'num_gpu': 0, 'network_g': SMALL_NAFNET, 'path': {},
           'train': {}, 'logger': {}, 'val': {'tile': 64}}
    with pytest.raises(OptionError, match=r'val\.tile: SRModel validates with its own code, which does not tile'):
        build_run_model(opt, RunContext.create(opt, is_train=False))
