"""ConStyle under DistributedDataParallel (two CPU processes, gloo): training outputs through the wrapped
network, one queue on every rank, and ConStyleModel's freeze (re-wrapping DDP) through the runner."""
import os
import subprocess
import sys
import textwrap

import pytest
from irtk_testutils import REPO, free_port, shrink_recipe, write_options

pytestmark = pytest.mark.slow  # every test starts two processes through torchrun

NET = {'type': 'ConStyleNAFNet', 'dim': 8, 'left_blk_num': [1, 1, 1], 'bottom_blk_num': 1,
       'right_blk_num': [1, 1, 1], 'constyle_opt': {'K': 10}}

SCRIPT = textwrap.dedent('''
    import gc
    import torch, torch.distributed as dist
    import irtoolkit
    from torch.nn.parallel import DistributedDataParallel as DDP
    from irtoolkit.utils.registry import build_network, build_loss
    dist.init_process_group('gloo')
    rank = dist.get_rank()
    torch.manual_seed(rank)  # different initial weights and queues: DDP and the gather must reconcile them
    net = build_network(NET)
    ddp = DDP(net)
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-3)
    nce = build_loss({'type': 'QueueInfoNCELoss'})
    for step in range(3):
        g = torch.Generator().manual_seed(100 * rank + step)
        lq, gt = torch.rand(2, 3, 24, 24, generator=g), torch.rand(2, 3, 24, 24, generator=g)
        out = ddp(lq, gt)  # training outputs through DDP's forward
        loss = (out['output'] - gt).abs().mean() + nce(out['q'][1], out['k'], out['queue'], out['temperature'])
        opt.zero_grad()
        loss.backward()
        opt.step()
    state = net.state_dict()
    for key in ('ConStyle.queue', 'ConStyle.queue_ptr', 'ConStyle.encoder_k.stage4.1.0.weight',
                'ConStyle.encoder_q.mlp2.0.weight', 'local_fusion.weight'):
        parts = [torch.empty_like(state[key]) for _ in range(2)]
        dist.all_gather(parts, state[key])
        assert torch.equal(parts[0], parts[1]), key
    assert int(state['ConStyle.queue_ptr']) == (3 * 2 * 2) % 10
    open(f'queue_ok_{rank}', 'w').close()  # a file: the two ranks' stdout may interleave
    del ddp, net  # the DDP wrapper before the group: a live reducer at teardown can abort the process at exit
    gc.collect()
    dist.barrier()  # gloo aborts ('terminate called without an active exception') if a rank tears down early
    dist.destroy_process_group()
''')


def _torchrun(args, cwd, port):
    env = dict(os.environ, OMP_NUM_THREADS='1')
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2', f'--master_port={port}', *args]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    return out


def test_queue_identical_on_every_rank(in_tmp):
    script = in_tmp / 'ddp_queue.py'
    script.write_text(f'NET = {NET!r}\n' + SCRIPT)
    _torchrun([str(script)], in_tmp, free_port())
    assert (in_tmp / 'queue_ok_0').is_file() and (in_tmp / 'queue_ok_1').is_file()


def test_constyle_model_freezes_under_ddp(tiny_data, in_tmp):
    opt = shrink_recipe(tiny_data, 'cs_ddp', 5)
    opt.update(model_type='ConStyleModel', network_g=dict(NET))
    opt['datasets']['train']['batch_size_per_gpu'] = 2
    opt['constyle'] = {'iter': 2}
    opt['train'].update(infonce_opt={'type': 'QueueInfoNCELoss'}, content_opt={'type': 'ContentLoss'},
                        style_opt={'type': 'StyleLoss'})
    opt['logger'].update(print_freq=1, save_checkpoint_freq=5)
    opt['val']['val_freq'] = 5
    path = write_options(opt, in_tmp / 'cs_ddp.yml')
    out = _torchrun([os.path.join(REPO, 'irtoolkit/train.py'), '-opt', path, '--launcher', 'pytorch'], in_tmp,
                    free_port())
    assert 'ConStyle frozen at iter 3' in out
    assert 'l_infonce' in out and (in_tmp / 'experiments/cs_ddp/models/net_g_5.pth').is_file()
