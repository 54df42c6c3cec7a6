"""Two CPU processes through torchrun (gloo) train, checkpoint and validate on rank 0."""
import os
import signal
import subprocess
import sys

import pytest
from irtk_testutils import REPO, free_port, shrink_recipe, write_options

pytestmark = pytest.mark.slow  # every test starts training processes


def test_torchrun_two_process_gloo(tiny_data, in_tmp):
    opt = shrink_recipe(tiny_data, 'ddp2', 10)
    opt['datasets']['train']['batch_size_per_gpu'] = 2
    opt_path = write_options(opt, in_tmp / 'ddp.yml')
    env = dict(os.environ, OMP_NUM_THREADS='1')
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2', f'--master_port={free_port()}',
           os.path.join(REPO, 'irtoolkit/train.py'), '-opt', opt_path, '--launcher', 'pytorch']
    proc = subprocess.run(cmd, cwd=in_tmp, env=env, capture_output=True, text=True, timeout=240)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert 'world size 2, launcher pytorch' in out
    assert 'batch 2 x 2 rank(s)' in out
    assert out.count('iter:      10') == 1  # only rank 0 logs
    assert (in_tmp / 'experiments/ddp2/models/net_g_latest.pth').is_file()
    assert '# psnr:' in out


def test_slurm_launcher_reads_slurm_environment(tiny_data, in_tmp):
    """Two tasks as srun would start them: rank/world/master from SLURM_* variables (gloo on CPU)."""
    opt = shrink_recipe(tiny_data, 'slurm2', 4)
    opt['datasets']['train']['batch_size_per_gpu'] = 2
    opt['dist_params'] = {'port': free_port()}
    opt_path = write_options(opt, in_tmp / 'slurm.yml')
    procs = []
    for rank in range(2):
        env = {k: v for k, v in os.environ.items() if k not in ('MASTER_ADDR', 'MASTER_PORT', 'RANK', 'WORLD_SIZE')}
        env.update(OMP_NUM_THREADS='1', SLURM_PROCID=str(rank), SLURM_NTASKS='2', SLURM_LOCALID=str(rank),
                   SLURM_NODELIST='localhost')
        procs.append(subprocess.Popen([sys.executable, os.path.join(REPO, 'irtoolkit/train.py'), '-opt', opt_path,
                                       '--launcher', 'slurm'], cwd=in_tmp, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    outs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][-2000:] + outs[1][-2000:]
    assert 'world size 2, launcher slurm' in outs[0]
    assert (in_tmp / 'experiments/slurm2/models/net_g_latest.pth').is_file()


def test_sigterm_writes_a_checkpoint_then_resume_continues(tiny_data, in_tmp):
    opt = shrink_recipe(tiny_data, 'term', 100000)
    opt['logger'].update(print_freq=1, save_checkpoint_freq=100000)
    opt_path = write_options(opt, in_tmp / 'term.yml')
    cmd = [sys.executable, os.path.join(REPO, 'irtoolkit/train.py'), '-opt', opt_path]
    env = dict(os.environ, OMP_NUM_THREADS='1')
    proc = subprocess.Popen(cmd, cwd=in_tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:  # wait until training is under way
        if 'iter:       3,' in line:
            break
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 143, out[-2000:]
    states = list((in_tmp / 'experiments/term/training_states').glob('*.state'))
    assert len(states) == 1 and int(states[0].stem) >= 3
    stopped_at = int(states[0].stem)
    opt['train']['total_iter'] = stopped_at + 2
    write_options(opt, in_tmp / 'term.yml')
    done = subprocess.run(cmd + ['--auto_resume'], cwd=in_tmp, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert 'Resuming training from' in done.stdout and f'iter:{stopped_at + 2:8,d}' in done.stdout


CRASH_PLUGIN = '''
import torch.distributed as dist
from torch import nn
from basicsr.utils.registry import ARCH_REGISTRY


@ARCH_REGISTRY.register()
class CrashOnRankOne(nn.Module):
    """A residual conv whose third training call raises on rank 1 only: a bug that one rank meets alone."""

    def __init__(self):
        super().__init__()
        self.conv, self.calls = nn.Conv2d(3, 3, 3, padding=1), 0

    def forward(self, x):
        self.calls += self.training
        if self.calls == 3 and dist.is_initialized() and dist.get_rank() == 1:
            raise RuntimeError('a bug on rank 1 only')
        return x + self.conv(x)
'''


def test_a_rank_failing_alone_ends_the_run_at_once(tiny_data, in_tmp):
    """An error on one rank only (the other is inside DDP's all-reduce) ends the run with the error, without the
    teardown barrier of a finished run: that barrier would wait for a rank that never comes (gloo's 30 min)."""
    (in_tmp / 'crash_plugin.py').write_text(CRASH_PLUGIN)
    opt = shrink_recipe(tiny_data, 'crash', 10)
    opt['plugins'] = ['crash_plugin.py']
    opt['network_g'] = {'type': 'CrashOnRankOne'}
    opt_path = write_options(opt, in_tmp / 'crash.yml')
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2', f'--master_port={free_port()}',
           os.path.join(REPO, 'irtoolkit/train.py'), '-opt', opt_path, '--launcher', 'pytorch']
    proc = subprocess.run(cmd, cwd=in_tmp, env=dict(os.environ, OMP_NUM_THREADS='1'), capture_output=True,
                          text=True, timeout=150)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and 'a bug on rank 1 only' in out, out[-3000:]
