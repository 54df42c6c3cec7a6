"""Two CPU processes through torchrun (gloo) train, checkpoint and validate on rank 0."""
import os
import subprocess
import sys

from irtk_testutils import REPO, tiny_options, write_options


def test_torchrun_two_process_gloo(tiny_data, in_tmp):
    opt = tiny_options(tiny_data, 'ddp2', 10)
    opt['datasets']['train']['batch_size_per_gpu'] = 2
    opt_path = write_options(opt, in_tmp / 'ddp.yml')
    env = dict(os.environ, OMP_NUM_THREADS='1')
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2', '--master_port=29623',
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
    opt = tiny_options(tiny_data, 'slurm2', 4)
    opt['datasets']['train']['batch_size_per_gpu'] = 2
    opt['dist_params'] = {'port': 29641}
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
