"""One recipe from one CPU to many processes: a global batch from per-GPU batch x ranks x accumulation reaches the
same weights however it is split; validation sharded over ranks gives one process's numbers; channels-last and
torch.compile train the same network and save the same key names."""
import json
import os
import subprocess
import sys

import pytest
import torch
from irtk_testutils import REPO, free_port, shrink_recipe, write_options

from irtoolkit.engine.runner import test as run_test
from irtoolkit.engine.runner import train as run_train

STEPS = 6


def _recipe(data, name, **train_ds):
    """Tiny NAFNet (LayerNorm, no BatchNorm), L1, SGD at a constant rate, no EMA: updates linear in the batch mean."""
    opt = shrink_recipe(data, name, STEPS)
    del opt['datasets']['val'], opt['val']
    opt['datasets']['train'].update(global_batch_size=4, **train_ds)
    opt['train'].update(ema_decay=0, pixel_opt={'type': 'L1Loss'}, optim_g={'type': 'SGD', 'lr': 0.5, 'momentum': 0.9},
                        scheduler={'type': 'MultiStepLR', 'milestones': [1000], 'gamma': 0.5})
    opt['logger'].update(save_checkpoint_freq=STEPS, print_freq=1)
    return opt


def _torchrun(script_args, cwd, port):
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2', f'--master_port={port}', *script_args]
    proc = subprocess.run(cmd, cwd=cwd, env=dict(os.environ, OMP_NUM_THREADS='1'), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    return proc.stdout + proc.stderr


def _params(exp):
    return torch.load(f'{exp}/models/net_g_latest.pth', weights_only=True)['params']


@pytest.mark.slow
def test_global_batch_split_three_ways_reaches_the_same_weights(tiny_data, in_tmp):
    """1 process x batch 4, 1 process x batch 2 x accumulate 2, 2 processes x batch 2: one recipe, same weights."""
    run_train(['-opt', write_options(_recipe(tiny_data, 'one', batch_size_per_gpu=4), in_tmp / 'one.yml')])
    acc = write_options(_recipe(tiny_data, 'acc', batch_size_per_gpu=2), in_tmp / 'acc.yml')
    run_train(['-opt', acc])
    log = next((in_tmp / 'experiments/acc').glob('train_*.log')).read_text()
    assert 'batch 2 x 1 rank(s) x 2 accumulation step(s) = 4 per iteration' in log
    ddp = write_options(_recipe(tiny_data, 'ddp', batch_size_per_gpu=4), in_tmp / 'ddp.yml')
    out = _torchrun([f'{REPO}/irtoolkit/train.py', '-opt', ddp, '--launcher', 'pytorch'], in_tmp, free_port())
    assert 'batch 2 x 2 rank(s) x 1 accumulation step(s) = 4 per iteration' in out
    one = _params(in_tmp / 'experiments/one')
    for other in ('acc', 'ddp'):
        weights = _params(in_tmp / f'experiments/{other}')
        diff = max((one[k] - weights[k]).abs().max().item() for k in one)
        moved = max((one[k] - torch.zeros_like(one[k])).abs().max().item() for k in one)
        # summation order differs between the three splits: 1.6e-5 measured on an AMD EPYC (2026-12-04), so 1e-5
        # was one processor's margin; a wrong split (a micro-batch lost or counted twice) moves weights by ~lr
        assert diff < 5e-5 * max(moved, 1), (other, diff)


def test_global_batch_that_does_not_divide_is_one_line(tiny_data, in_tmp):
    from irtoolkit.utils.errors import OptionError
    opt = _recipe(tiny_data, 'odd', batch_size_per_gpu=3)
    with pytest.raises(OptionError, match=r'global_batch_size: 4 is not a multiple of 1 rank\(s\) x batch 3'):
        run_train(['-opt', write_options(opt, in_tmp / 'odd.yml')])


@pytest.mark.slow
def test_validation_sharded_over_ranks_matches_one_process(tiny_data, in_tmp):
    run_train(['-opt', write_options(shrink_recipe(tiny_data, 'w', 4), in_tmp / 'w.yml')])
    test_opt = {'name': 'shard', 'model_type': 'RestorationModel', 'num_gpu': 0,
                'datasets': {'test_1': {'name': 'tiny_val', 'type': 'PairedImageDataset',
                                        'io_backend': {'type': 'disk'}, 'dataroot_gt': f'{tiny_data}/val/gt',
                                        'dataroot_lq': f'{tiny_data}/val/lq'}},
                'network_g': shrink_recipe(tiny_data)['network_g'],
                'path': {'pretrain_network_g': str(in_tmp / 'experiments/w/models/net_g_latest.pth')},
                'val': {'save_img': False, 'metrics': {'psnr': {'type': 'calculate_psnr', 'crop_border': 0},
                                                       'ssim': {'type': 'calculate_ssim', 'crop_border': 0}}}}
    path = write_options(test_opt, in_tmp / 'test.yml')
    one = run_test(['-opt', path])
    _torchrun([f'{REPO}/irtoolkit/test.py', '-opt', path, '--launcher', 'pytorch',
               '--force_yml', 'name=shard2'], in_tmp, free_port())
    two = json.loads((in_tmp / 'results/shard2/metrics.json').read_text())
    assert two == one and one['tiny_val']['psnr'] > 10


def test_channels_last_trains_the_same_network(tiny_data, in_tmp):
    """The CPU default (``train.channels_last: auto``, channels-last) and NCHW reach the same weights; the files
    hold NCHW tensors either way."""
    opt = _recipe(tiny_data, 'plain', batch_size_per_gpu=4)
    opt['train']['channels_last'] = False
    run_train(['-opt', write_options(opt, in_tmp / 'plain.yml')])
    opt = _recipe(tiny_data, 'cl', batch_size_per_gpu=4)
    assert 'channels_last' not in opt['train']  # the default
    run_train(['-opt', write_options(opt, in_tmp / 'cl.yml')])
    assert 'train.channels_last: auto: networks and batches channels-last on cpu' in \
        next((in_tmp / 'experiments/cl').glob('train_*.log')).read_text()
    a, b = _params(in_tmp / 'experiments/plain'), _params(in_tmp / 'experiments/cl')
    assert all(v.is_contiguous() for v in b.values())
    moved = max(b[k].abs().max().item() for k in b)
    assert set(a) == set(b) and max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4 * max(moved, 1)


@pytest.mark.slow
def test_compile_trains_the_same_network_and_checkpoints_interchange(tiny_data, in_tmp):
    from irtoolkit.inference.loader import load_network
    opt = _recipe(tiny_data, 'compiled', batch_size_per_gpu=4)
    opt['train']['compile'] = {'backend': 'aot_eager'}  # the wrapping under test; inductor's code is torch's
    run_train(['-opt', write_options(opt, in_tmp / 'compiled.yml')])
    run_train(['-opt', write_options(_recipe(tiny_data, 'eager', batch_size_per_gpu=4), in_tmp / 'eager.yml')])
    a, b = _params(in_tmp / 'experiments/eager'), _params(in_tmp / 'experiments/compiled')
    assert not any('_orig_mod' in k or k.startswith('module.') for k in b)
    assert set(a) == set(b) and max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4
    load_network(opt['network_g'], str(in_tmp / 'experiments/compiled/models/net_g_latest.pth'), strict=True)
    resumed = write_options(dict(opt, name='compiled'), in_tmp / 'compiled.yml')
    run_train(['-opt', resumed, '--auto_resume', '--force_yml', f'train.total_iter={STEPS + 2}',
               'train.compile=false'])  # a compiled run's state resumes eagerly


def _two_nodes(opt_path, cwd, port, *extra):
    """tools/dist_train.sh as two nodes of one process each, both on 127.0.0.1."""
    procs = [subprocess.Popen(['bash', f'{REPO}/tools/dist_train.sh', '1', opt_path, *extra], cwd=cwd,
                              env=dict(os.environ, NNODES='2', NODE_RANK=str(rank), MASTER_ADDR='127.0.0.1',
                                       PORT=str(port), PYTHON=sys.executable, OMP_NUM_THREADS='1'),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for rank in (0, 1)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][-2000:] + outs[1][-2000:]
    return outs


@pytest.mark.slow
def test_two_nodes_train_and_resume_exactly(tiny_data, in_tmp):
    """Two torchrun 'nodes' (NNODES=2, NODE_RANK, MASTER_ADDR) train; stopped and resumed, the same weights."""
    whole = write_options(_recipe(tiny_data, 'nodes', batch_size_per_gpu=4), in_tmp / 'nodes.yml')
    outs = _two_nodes(whole, in_tmp, free_port())
    assert 'world size 2, launcher pytorch' in outs[0]
    part = write_options(_recipe(tiny_data, 'nodes_part', batch_size_per_gpu=4), in_tmp / 'part.yml')
    _two_nodes(part, in_tmp, free_port(), '--force_yml', 'train.total_iter=3')
    _two_nodes(part, in_tmp, free_port(), '--auto_resume')
    a, b = _params(in_tmp / 'experiments/nodes'), _params(in_tmp / 'experiments/nodes_part')
    assert all(torch.equal(a[k], b[k]) for k in a)


def _one_process(opt_path, cwd, *extra):
    """irtk-train in a subprocess with one thread, as each torchrun rank runs: the same kernels on both sides."""
    proc = subprocess.run([sys.executable, f'{REPO}/irtoolkit/train.py', '-opt', opt_path, *extra], cwd=cwd,
                          env=dict(os.environ, OMP_NUM_THREADS='1'), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    return proc.stdout + proc.stderr


@pytest.mark.slow
def test_resume_on_another_world_size_is_exact(tiny_data, in_tmp):
    """datasets.train.global_batch_size 4 with batch_size_per_gpu 2: 2 gloo ranks x batch 2, or 1 process x batch 2 x
    2 accumulation steps, read the same micro-batches (ResumableSampler's global-batch layout) and average the same
    gradients (g0 / 2 + g1 / 2 either way). Stopped mid-epoch (iteration 3 of 2-iteration epochs) on one world size
    and resumed on the other, in both directions, the weights equal the uninterrupted run's to the bit."""
    whole = write_options(_recipe(tiny_data, 'ws_whole', batch_size_per_gpu=2), in_tmp / 'ws_whole.yml')
    out = _one_process(whole, in_tmp)
    assert 'batch 2 x 1 rank(s) x 2 accumulation step(s) = 4 per iteration' in out
    ddp = write_options(_recipe(tiny_data, 'ws_ddp', batch_size_per_gpu=2), in_tmp / 'ws_ddp.yml')
    _torchrun([f'{REPO}/irtoolkit/train.py', '-opt', ddp, '--launcher', 'pytorch'], in_tmp, free_port())
    two_to_one = write_options(_recipe(tiny_data, 'ws_2to1', batch_size_per_gpu=2), in_tmp / 'ws_2to1.yml')
    _torchrun([f'{REPO}/irtoolkit/train.py', '-opt', two_to_one, '--launcher', 'pytorch', '--force_yml',
               'train.total_iter=3'], in_tmp, free_port())
    out = _one_process(two_to_one, in_tmp, '--auto_resume')
    assert 'iter 3 (saved by 2 rank(s), resumed on 1)' in out
    one_to_two = write_options(_recipe(tiny_data, 'ws_1to2', batch_size_per_gpu=2), in_tmp / 'ws_1to2.yml')
    _one_process(one_to_two, in_tmp, '--force_yml', 'train.total_iter=3')
    out = _torchrun([f'{REPO}/irtoolkit/train.py', '-opt', one_to_two, '--launcher', 'pytorch', '--auto_resume'],
                    in_tmp, free_port())
    assert 'iter 3 (saved by 1 rank(s), resumed on 2)' in out
    ref = _params(in_tmp / 'experiments/ws_whole')
    moved = torch.load(in_tmp / 'experiments/ws_2to1/models/net_g_3.pth', weights_only=True)['params']
    assert any(not torch.equal(ref[k], moved[k]) for k in ref)  # iterations 4-6 changed the weights
    for name in ('ws_ddp', 'ws_2to1', 'ws_1to2'):
        other = _params(in_tmp / f'experiments/{name}')
        diff = max((ref[k] - other[k]).abs().max().item() for k in ref)
        assert diff == 0, (name, diff)
