"""Fault injection: what clusters and datasets throw at a training run, and what the user sees (one line) and keeps
(every checkpoint finite and loadable; exact resume). Tiny NAFNet, tiny data."""
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from irtk_testutils import REPO, free_port, shrink_recipe, write_options

from irtoolkit.engine.runner import WorkerDiedError
from irtoolkit.engine.runner import train as run_train
from irtoolkit.engine.sample_guard import BadSampleError
from irtoolkit.training.nonfinite import NonFiniteError
from irtoolkit.utils import checkpoint
from irtoolkit.utils.checkpoint import CheckpointError, CheckpointWriteError

KILLER = textwrap.dedent('''
    """A dataset whose loader worker kills itself (SIGKILL) the first time it reads sample 3."""
    import os
    import signal

    import torch
    from basicsr.data.paired_image_dataset import PairedImageDataset
    from basicsr.utils.registry import DATASET_REGISTRY


    @DATASET_REGISTRY.register()
    class KillerPairedDataset(PairedImageDataset):
        def __getitem__(self, index):
            marker = self.opt['kill_marker']
            if index == 3 and torch.utils.data.get_worker_info() is not None and not os.path.exists(marker):
                open(marker, 'w').close()
                os.kill(os.getpid(), signal.SIGKILL)
            return super().__getitem__(index)
''')


def _opt(data, name, total_iter=12, **train):
    opt = shrink_recipe(data, name, total_iter)
    del opt['datasets']['val'], opt['val']
    opt['logger'].update(print_freq=4, save_checkpoint_freq=4)
    opt['train'].update(train)
    return opt


def _weights(exp):
    return torch.load(f'{exp}/models/net_g_latest.pth', weights_only=True)


WEIGHTS = ('params', 'params_ema')  # a network file's weight entries (beside 'network', its options)


def _same(a, b):
    return all(torch.equal(a[k][n], b[k][n]) for k in WEIGHTS if k in a for n in a[k])


def _all_checkpoints_finite(exp):
    for path in list(exp.glob('models/*.pth')):
        state = torch.load(path, weights_only=True)
        for params in (state[k] for k in WEIGHTS if k in state):
            assert all(torch.isfinite(v).all() for v in params.values()), path


def test_kill_9_then_auto_resume_with_another_worker_count_is_exact(tiny_data, in_tmp):
    """kill -9 of a 2-worker run after its first checkpoints, resumed with 0 workers: the same weights as an
    uninterrupted 0-worker run (the data randomness belongs to the sample and epoch, not to the worker)."""
    run_train(['-opt', write_options(_opt(tiny_data, 'whole', 16), in_tmp / 'whole.yml')])
    opt = _opt(tiny_data, 'killed', 16)
    opt['datasets']['train']['num_worker_per_gpu'] = 2
    path = write_options(opt, in_tmp / 'killed.yml')
    proc = subprocess.Popen([sys.executable, f'{REPO}/irtoolkit/train.py', '-opt', path], cwd=in_tmp,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    states = in_tmp / 'experiments/killed/training_states'
    deadline = time.time() + 120
    while not (states / '8.state').exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the trainer and its loader workers, mid-run
    proc.wait()
    assert (states / '8.state').exists() and not (in_tmp / 'experiments/killed/models/net_g_latest.pth').exists()
    run_train(['-opt', path, '--auto_resume', '--force_yml', 'datasets.train.num_worker_per_gpu=0'])
    assert _same(_weights(in_tmp / 'experiments/whole'), _weights(in_tmp / 'experiments/killed'))


def test_truncated_newest_state_falls_back_and_stays_exact(tiny_data, in_tmp):
    run_train(['-opt', write_options(_opt(tiny_data, 'whole'), in_tmp / 'whole.yml')])
    path = write_options(_opt(tiny_data, 'cut'), in_tmp / 'cut.yml')
    run_train(['-opt', path, '--force_yml', 'train.total_iter=8'])
    newest = in_tmp / 'experiments/cut/training_states/8.state'
    newest.write_bytes(newest.read_bytes()[:200])  # a copy cut short
    run_train(['-opt', path, '--auto_resume'])
    log = sorted((in_tmp / 'experiments/cut').glob('train_*.log'))[-1].read_text()
    assert '8.state is not usable' in log and newest.exists()  # warned, left in place
    assert _same(_weights(in_tmp / 'experiments/whole'), _weights(in_tmp / 'experiments/cut'))
    cut = in_tmp / 'cut.state'  # (the resumed run wrote a good 8.state again)
    cut.write_bytes(newest.read_bytes()[:200])
    with pytest.raises(CheckpointError, match=r'cannot load checkpoint .*cut\.state') as err:  # explicit: an error
        run_train(['-opt', path, '--force_yml', f'path.resume_state={cut}'])
    assert '\n' not in str(err.value)


@pytest.mark.parametrize('workers', [0, 2])
def test_corrupt_image_is_named_or_skipped(tiny_data, in_tmp, workers):
    data = in_tmp / 'data'
    shutil.copytree(tiny_data, data)
    bad = data / 'train/gt/0003.png'
    bad.write_bytes(bad.read_bytes()[:60])  # a PNG cut short
    opt = _opt(str(data), 'corrupt', 8)
    opt['datasets']['train']['num_worker_per_gpu'] = workers
    with pytest.raises(BadSampleError) as err:
        run_train(['-opt', write_options(opt, in_tmp / 'c.yml')])
    line = str(err.value)
    assert '\n' not in line and line.startswith('datasets.train: sample ') and str(bad) in line, line
    opt['datasets']['train'].update(bad_samples='skip', bad_samples_max_fraction=0.5)
    run_train(['-opt', write_options(dict(opt, name='skipped'), in_tmp / 's.yml')])
    log = next((in_tmp / 'experiments/skipped').glob('train_*.log')).read_text()
    assert '0003.png' in log and 'skipped' in log and (in_tmp / 'experiments/skipped/models/net_g_latest.pth').exists()


def test_nonfinite_loss_stops_with_the_last_good_checkpoint(tiny_data, in_tmp):
    opt = _opt(tiny_data, 'nan', 12, optim_g={'type': 'Adam', 'lr': 1.0e+4})
    opt['logger']['save_checkpoint_freq'] = 1
    with pytest.raises(NonFiniteError) as err:
        run_train(['-opt', write_options(opt, in_tmp / 'nan.yml')])
    line = str(err.value)
    assert '\n' not in line and 'non-finite l_pixel' in line and 'last good checkpoint: ' in line, line
    last = line.split('last good checkpoint: ')[1]
    assert os.path.isfile(last) and torch.load(last, weights_only=True)['iter'] >= 1
    _all_checkpoints_finite(in_tmp / 'experiments/nan')


def test_skip_policy_leaves_weights_optimiser_and_ema_untouched(tiny_data, in_tmp):
    from irtoolkit.config.options import parse_options
    from irtoolkit.utils.registry import build_model
    opt = _opt(tiny_data, 'skip', 4, nonfinite={'policy': 'skip', 'max_skips': 2})
    opt = parse_options(write_options(opt, in_tmp / 'skip.yml'), True)
    model = build_model(opt)
    batch = {'lq': torch.rand(2, 3, 32, 32), 'gt': torch.rand(2, 3, 32, 32)}
    model.update_learning_rate(1)
    model.feed_data(batch)
    model.optimize_parameters(1)
    before = ({k: v.clone() for k, v in model.net_g.state_dict().items()},
              {k: v.clone() for k, v in model.ema_networks['net_g'].state_dict().items()},
              model.optimizers['g'].state_dict()['state'][0]['exp_avg'].clone())
    nan_batch = {'lq': batch['lq'], 'gt': torch.full_like(batch['gt'], float('nan'))}
    for it in (2, 3):
        model.update_learning_rate(it)
        model.feed_data(nan_batch)
        model.optimize_parameters(it)  # skipped
    after = (model.net_g.state_dict(), model.ema_networks['net_g'].state_dict(),
             model.optimizers['g'].state_dict()['state'][0]['exp_avg'])
    assert all(torch.equal(before[0][k], after[0][k]) for k in before[0])
    assert all(torch.equal(before[1][k], after[1][k]) for k in before[1])
    assert torch.equal(before[2], after[2])
    model.update_learning_rate(4)
    model.feed_data(nan_batch)
    with pytest.raises(NonFiniteError, match=r'iteration 4: .* 3 steps in a row skipped'):
        model.optimize_parameters(4)


def test_failed_checkpoint_write_keeps_the_previous_one(tiny_data, in_tmp, monkeypatch):
    real_save, calls = torch.save, []

    def full_disk(obj, f, *args, **kwargs):
        calls.append(f)
        if len(calls) > 2:  # net_g_4.pth and 4.state are written; then the disk is full
            raise OSError(28, 'No space left on device')
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(checkpoint.torch, 'save', full_disk)
    with pytest.raises(CheckpointWriteError) as err:
        run_train(['-opt', write_options(_opt(tiny_data, 'full'), in_tmp / 'full.yml')])
    line = str(err.value)
    assert '\n' not in line and 'net_g_8.pth: No space left on device' in line, line
    exp = in_tmp / 'experiments/full'
    assert torch.load(exp / 'training_states/4.state', weights_only=True)['iter'] == 4
    assert not list(exp.rglob('*.tmp.*'))


def test_killed_loader_worker_is_one_line_and_resume_works(tiny_data, in_tmp):
    (in_tmp / 'killer.py').write_text(KILLER)
    opt = _opt(tiny_data, 'worker', 12, ema_decay=0)
    opt['plugins'] = ['killer.py']
    opt['datasets']['train'].update(type='KillerPairedDataset', num_worker_per_gpu=2,
                                    kill_marker=str(in_tmp / 'killed_once'))
    path = write_options(opt, in_tmp / 'w.yml')
    with pytest.raises(WorkerDiedError) as err:
        run_train(['-opt', path])
    line = str(err.value)
    assert '\n' not in line and line.startswith('datasets.train: a data-loader worker died') and 'resume' in line
    _all_checkpoints_finite(in_tmp / 'experiments/worker')
    run_train(['-opt', path, '--auto_resume'])  # the marker exists: no more kills
    assert (in_tmp / 'experiments/worker/training_states/12.state').is_file()


def test_fp16_scaler_skips_are_not_errors(tiny_data, in_tmp):
    """fp16 AMP: the scaler's first steps overflow its initial scale and are skipped by the scaler itself."""
    opt = _opt(tiny_data, 'fp16', 6, amp={'enabled': True, 'dtype': 'fp16'})
    run_train(['-opt', write_options(opt, in_tmp / 'fp16.yml')])
    _all_checkpoints_finite(in_tmp / 'experiments/fp16')


RANKS = r'''
import gc
import sys
import torch
import torch.distributed as dist
from irtoolkit.training.nonfinite import NonFiniteError
from irtoolkit.config.options import parse_options
from irtoolkit.utils.registry import build_model

dist.init_process_group('gloo')
rank = dist.get_rank()
opt = parse_options(sys.argv[1], True)
model = build_model(opt)
gt = torch.rand(2, 3, 32, 32)
if rank == 1:
    gt[0, 0, 0, 0] = float('nan')  # only rank 1 sees a non-finite loss
model.update_learning_rate(1)
model.feed_data({'lq': torch.rand(2, 3, 32, 32), 'gt': gt})
try:
    model.optimize_parameters(1)
    print(f'rank {rank} stepped', flush=True)
except NonFiniteError as err:
    print(f'rank {rank} stopped: {err}', flush=True)
del model  # DDP wrappers before the group (see irtoolkit.engine.runner.train)
gc.collect()
dist.barrier()
dist.destroy_process_group()
'''


@pytest.mark.slow
def test_ranks_decide_together(tiny_data, in_tmp):
    """A NaN on one rank stops every rank at the same step: no hang, no rank stepping alone."""
    (in_tmp / 'ranks.py').write_text(RANKS)
    path = write_options(_opt(tiny_data, 'ranks', 4), in_tmp / 'ranks.yml')
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2', f'--master_port={free_port()}',
           str(in_tmp / 'ranks.py'), path]
    proc = subprocess.run(cmd, cwd=in_tmp, capture_output=True, text=True, timeout=240,
                          env=dict(os.environ, OMP_NUM_THREADS='1'))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert 'rank 0 stopped: iteration 1: non-finite gradient norm' in out  # DDP averaged rank 1's NaN in
    assert 'rank 1 stopped: iteration 1: non-finite l_pixel' in out and 'stepped' not in out
