"""Distributed setup for torchrun (``--launcher pytorch``) and SLURM (``--launcher slurm``).

nccl on GPUs, gloo on CPUs. Unlike basicsr's ``init_dist`` this never divides by the GPU count, so it also
runs on CPU-only machines (e.g. a 2-process gloo test).
"""
import functools
import os
import re
import subprocess

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


def init_dist(launcher, backend=None, port=None):
    """Initialise the default process group; returns (rank, world_size, local_rank)."""
    if launcher == 'pytorch':
        rank, world_size = int(os.environ['RANK']), int(os.environ['WORLD_SIZE'])
        local_rank = int(os.environ.get('LOCAL_RANK', 0))
    elif launcher == 'slurm':
        rank, world_size = int(os.environ['SLURM_PROCID']), int(os.environ['SLURM_NTASKS'])
        local_rank = int(os.environ.get('SLURM_LOCALID', 0))
        os.environ.setdefault('MASTER_ADDR', first_slurm_host(os.environ.get('SLURM_NODELIST', '127.0.0.1')))
        os.environ.setdefault('MASTER_PORT', str(port or 29500))
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(local_rank))
    else:
        raise ValueError(f'--launcher {launcher!r}: expected none, pytorch or slurm')
    use_cuda = torch.cuda.is_available()
    backend = backend or ('nccl' if use_cuda else 'gloo')
    if use_cuda:
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
    dist.init_process_group(backend=backend, init_method='env://', rank=rank, world_size=world_size)
    return rank, world_size, local_rank


def first_slurm_host(node_list):
    """First host of a SLURM node list (``node[01-04,07],gpu5`` -> ``node01``); scontrol when available."""
    try:
        out = subprocess.run(['scontrol', 'show', 'hostnames', node_list], capture_output=True, text=True, timeout=20)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.split()[0]
    except (OSError, subprocess.SubprocessError):
        pass
    m = re.match(r'([^,\[]+)(?:\[([^\]]+)\])?', node_list)
    if not m:
        return node_list
    prefix, ranges = m.group(1), m.group(2)
    return prefix + ranges.split(',')[0].split('-')[0] if ranges else prefix


def get_dist_info():
    """(rank, world_size); (0, 1) when not distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process():
    return get_dist_info()[0] == 0


def master_only(func):
    """Run ``func`` on rank 0 only (returns None elsewhere)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        if is_main_process():
            return func(*args, **kwargs)
        return None

    return wrapper


def barrier():
    if get_dist_info()[1] > 1:
        dist.barrier()


def all_gather_cat(tensor):
    """Gather ``tensor`` (same shape on every rank) along dim 0; a no-op when not distributed.

    The result carries no gradient: it is meant for queues and statistics (e.g. MoCo keys).
    """
    rank, world = get_dist_info()
    if world == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


def any_rank(flag):
    """True when ``flag`` is true on any rank (one all-reduce when distributed): ranks decide together."""
    _, world = get_dist_info()
    if world == 1:
        return bool(flag)
    t = torch.tensor([int(bool(flag))], device='cuda' if dist.get_backend() == 'nccl' else 'cpu')
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def reduce_mean(value):
    """Average a float or tensor over ranks (for logging)."""
    _, world = get_dist_info()
    if world == 1:
        return value
    t = value.detach().clone() if torch.is_tensor(value) else torch.tensor(float(value))
    backend = dist.get_backend()
    if backend == 'nccl':
        t = t.cuda()
    dist.all_reduce(t)
    return t / world


def cleanup():
    """Tear the process group down once every rank got here: gloo aborts the process ('terminate called without
    an active exception') when one rank destroys the group while another is still using it."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def pick_device(name='auto'):
    """``auto``: the current CUDA device when there is one, else the CPU; ``cpu`` / ``cuda`` / ``cuda:1`` as given."""
    if name == 'auto':
        name = 'cuda' if torch.cuda.is_available() else 'cpu'
    return torch.device(name)


def run_device(opt):
    """The device of a run: the current CUDA device when the resolved options ask for GPUs and one is there, else
    the CPU. Models, the runner and the tools all ask here."""
    if opt.get('num_gpu', 0) and torch.cuda.is_available() and opt.get('device', 'auto') != 'cpu':
        return torch.device('cuda', torch.cuda.current_device())
    return torch.device('cpu')


def bare(net):
    """The module inside ``torch.compile`` and DDP / DataParallel wrappers (checkpoints, EMA and non-forward
    methods use it)."""
    net = getattr(net, '_orig_mod', net)  # torch.compile's OptimizedModule
    return net.module if isinstance(net, (DistributedDataParallel, nn.DataParallel)) else net


def wrap_ddp(net, device, opt):
    """``net`` in DistributedDataParallel when it has trainable parameters, else ``net`` itself.

    One rule for every network: DDP's default buffer handling, i.e. rank 0's buffers are broadcast at wrapping and
    before every forward through the wrapper, so all ranks compute with the same BatchNorm statistics and queues,
    and a resumed run (which loads rank 0's files) continues as the uninterrupted one. Buffers that a model changes
    outside a forward (embedding queues) are filled with the same gathered values on every rank
    (:func:`all_gather_cat`). Call the wrapper for every forward whose output receives gradients, and ``bare(net)``
    for other methods and for frozen uses (DDP would wait for gradients that never come).
    """
    if not any(p.requires_grad for p in net.parameters()):
        return net
    ids = [device.index] if device.type == 'cuda' else None
    return DistributedDataParallel(net, device_ids=ids, find_unused_parameters=opt.get('find_unused_parameters', False))
