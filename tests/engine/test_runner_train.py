"""The runner end to end on CPU: training with validation and checkpoints, the test runner, resume exactness."""
import json
import os.path as osp

import pytest
import torch
from irtk_testutils import shrink_recipe, write_options

from irtoolkit.engine.runner import test as run_test
from irtoolkit.engine.runner import train as run_train


def test_train_20_iters_with_val_and_checkpoints(tiny_data, in_tmp):
    opt_path = write_options(shrink_recipe(tiny_data, 'train20', 20), in_tmp / 'train.yml')
    run_train(['-opt', opt_path])
    exp = in_tmp / 'experiments' / 'train20'
    for f in ('models/net_g_10.pth', 'models/net_g_20.pth', 'models/net_g_latest.pth', 'training_states/10.state',
              'training_states/20.state'):
        assert (exp / f).is_file(), f
    assert sorted(p.name for p in (exp / 'visualization' / 'tiny_val').iterdir())[0] == '0000_10.png'
    log = next(exp.glob('train_train20_*.log')).read_text()
    assert 'iter:      20' in log and '# psnr:' in log
    ckpt = torch.load(exp / 'models/net_g_latest.pth', weights_only=True)
    assert set(ckpt) == {'params', 'params_ema', 'network'}
    assert not list(exp.rglob('*.tmp.*'))  # atomic writes leave no temporaries


def test_test_runner_writes_results(tiny_data, in_tmp):
    run_train(['-opt', write_options(shrink_recipe(tiny_data, 'tt', 10), in_tmp / 'train.yml')])
    test_opt = {
        'name': 'tt_test', 'model_type': 'RestorationModel', 'num_gpu': 0,
        'datasets': {'test_1': {'name': 'tiny_val', 'type': 'PairedImageDataset', 'io_backend': {'type': 'disk'},
                                'dataroot_gt': osp.join(tiny_data, 'val/gt'),
                                'dataroot_lq': osp.join(tiny_data, 'val/lq'),
                                'filename_tmpl': '{}'}},
        'network_g': shrink_recipe(tiny_data)['network_g'],
        'path': {'pretrain_network_g': str(in_tmp / 'experiments/tt/models/net_g_latest.pth'),
                 'param_key_g': 'params_ema'},
        'val': {'save_img': True, 'metrics': {'psnr': {'type': 'calculate_psnr', 'crop_border': 0}}},
    }
    results = run_test(['-opt', write_options(test_opt, in_tmp / 'test.yml')])
    assert results['tiny_val']['psnr'] > 10
    res = in_tmp / 'results' / 'tt_test'
    assert json.loads((res / 'metrics.json').read_text())['tiny_val']['psnr'] == results['tiny_val']['psnr']
    assert len(list((res / 'visualization' / 'tiny_val').glob('*.png'))) == 2


@pytest.mark.slow
def test_resume_is_exact(tiny_data, in_tmp):
    """Stop at iteration 10 (mid-epoch: 20 iters/epoch), resume to 30: same weights as 30 uninterrupted."""
    full = shrink_recipe(tiny_data, 'full', 30)
    run_train(['-opt', write_options(full, in_tmp / 'full.yml')])
    part = shrink_recipe(tiny_data, 'part', 30)
    part_path = write_options(part, in_tmp / 'part.yml')
    run_train(['-opt', part_path, '--force_yml', 'train.total_iter=10'])
    run_train(['-opt', part_path, '--auto_resume'])
    a = torch.load(in_tmp / 'experiments/full/models/net_g_latest.pth', weights_only=True)
    b = torch.load(in_tmp / 'experiments/part/models/net_g_latest.pth', weights_only=True)
    for key in ('params', 'params_ema'):
        diff = max((a[key][k].float() - b[key][k].float()).abs().max().item() for k in a[key])
        assert diff == 0.0, f'{key}: max weight difference {diff}'


def test_sigterm_handler_is_given_back_after_training(tiny_data, in_tmp, monkeypatch):
    """Training in-process (a notebook, a test session) takes SIGTERM for its checkpoint-then-stop; once the run
    has ended the process's own handler is back, so a later SIGTERM kills it as before (also after a failed run)."""
    import signal

    def mine(*_):
        pass

    previous = signal.signal(signal.SIGTERM, mine)
    try:
        run_train(['-opt', write_options(shrink_recipe(tiny_data, 'sig', 2), in_tmp / 'train.yml')])
        assert signal.getsignal(signal.SIGTERM) is mine
        from irtoolkit.engine.runner import Trainer

        def fails(self):
            assert signal.getsignal(signal.SIGTERM) is not mine  # the run's own handler is in place meanwhile
            raise KeyError('a bug in the middle of an epoch')

        monkeypatch.setattr(Trainer, 'train_epoch', fails)
        with pytest.raises(KeyError, match='a bug'):
            run_train(['-opt', write_options(shrink_recipe(tiny_data, 'sigbad', 2), in_tmp / 'bad.yml')])
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, previous)
