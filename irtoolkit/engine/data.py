"""Datasets and loaders from options: registry lookup, a resumable sampler, guarded samples, seeded workers."""
import math
import random
from functools import partial

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from irtoolkit.engine.sample_guard import EpochTagged, SampleGuard
from irtoolkit.utils.registry import DATASET_REGISTRY, get_from_registry


def build_dataset(dataset_opt, key):
    """Build ``DATASET_REGISTRY[dataset_opt['type']](dataset_opt)`` (basicsr datasets take the option dict)."""
    cls = get_from_registry(DATASET_REGISTRY, dataset_opt.get('type'), key)
    dataset = cls(dataset_opt)
    if len(dataset) == 0:
        raise ValueError(f'{key}: dataset {dataset_opt.get("name", "")} ({cls.__name__}) is empty')
    return dataset


class ResumableSampler(Sampler):
    """Shuffled, rank-sharded, optionally enlarged index stream that can start mid-epoch, laid out by global batch.

    The permutation depends only on (seed, epoch). Iteration ``t`` of an epoch takes the global batch
    ``perm[t * G:(t + 1) * G]`` (``G = batch_size * accumulate * world_size``, the partial last one dropped), cut
    into ``accumulate * world_size`` micro-batch slots of ``batch_size``; rank ``r`` reads, in order, the slots
    ``k * world_size + r`` for ``k < accumulate``. So the same global batch size gives every iteration the same
    samples in the same micro-batches whatever the world size: 2 ranks x batch 2 and 1 rank x batch 2 x 2
    accumulation steps read identical micro-batches (rank r's = micro-batch r), which is what lets a run stop on one
    world size and resume on another. A run resumed at iteration ``k`` of epoch ``e`` sees exactly the indices the
    uninterrupted run saw.
    """

    def __init__(self, dataset, world_size=1, rank=0, ratio=1, shuffle=True, seed=0, batch_size=1, accumulate=1):
        self.n = len(dataset)
        self.world_size, self.rank, self.shuffle, self.seed = world_size, rank, shuffle, seed
        self.batch_size, self.accumulate = batch_size, accumulate
        self.length = math.ceil(self.n * ratio)  # the epoch's stream over all ranks, before cutting into batches
        self.iterations = self.length // (batch_size * accumulate * world_size)
        self.num_samples = self.iterations * accumulate * batch_size  # this rank's share
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch, start=0):
        """Use ``epoch``'s permutation and skip the first ``start`` indices of this rank's share (mid-epoch
        resume)."""
        self.epoch, self.start = epoch, start

    def __iter__(self):
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            indices = torch.randperm(self.length, generator=g) % self.n
        else:
            indices = torch.arange(self.length) % self.n
        b, world = self.batch_size, self.world_size
        per_iteration = indices[:self.iterations * b * self.accumulate * world].view(self.iterations, -1, b)
        mine = per_iteration[:, self.rank::world]  # slots k * world + rank, k = 0 .. accumulate - 1
        return iter(mine.reshape(-1)[self.start:].tolist())

    def __len__(self):
        return self.num_samples - self.start


def _worker_init(worker_id, num_workers, rank, seed):
    worker_seed = num_workers * rank + worker_id + seed
    np.random.seed(worker_seed % 2 ** 32)
    random.seed(worker_seed)
    torch.manual_seed(worker_seed)


def build_dataloader(dataset, dataset_opt, phase, world_size=1, rank=0, seed=0, use_cuda=False, key=None,
                     accumulate=1):
    """Train loaders shuffle through :class:`ResumableSampler` (laid out by global batch: ``accumulate``
    micro-batches per iteration on each of ``world_size`` ranks) and drop the last partial batch; val/test
    loaders take one image at a time in order. Every sample is read through a
    :class:`~irtoolkit.engine.sample_guard.SampleGuard` (bad samples named; training randomness per sample and
    epoch). ``persistent_workers`` defaults to on when workers are used (re-spawning workers every epoch costs
    time every epoch on CPU)."""
    key = key or f'datasets.{phase}'
    dataset = SampleGuard(dataset, key, dataset_opt.get('bad_samples') or 'error',
                          float(dataset_opt.get('bad_samples_max_fraction') or 0.01), seed)
    workers = int(dataset_opt.get('num_worker_per_gpu', 0) or 0)
    common = dict(num_workers=workers, pin_memory=dataset_opt.get('pin_memory', use_cuda),
                  # our own generator: creating an iterator must not consume the global torch RNG (exact resume)
                  generator=torch.Generator().manual_seed(seed))
    if workers > 0:
        common['persistent_workers'] = dataset_opt.get('persistent_workers', True)
        common['worker_init_fn'] = partial(_worker_init, num_workers=workers, rank=rank, seed=seed)
        if dataset_opt.get('prefetch_factor'):
            common['prefetch_factor'] = dataset_opt['prefetch_factor']
    if phase == 'train':
        batch = dataset_opt.get('batch_size_per_gpu')
        if not isinstance(batch, int) or batch < 1:
            raise ValueError(f'datasets.{dataset_opt.get("name", "train")}.batch_size_per_gpu: expected an int >= 1')
        ratio = dataset_opt.get('dataset_enlarge_ratio', 1)
        if hasattr(dataset, 'make_batch_sampler'):
            # datasets that compose their own batches (e.g. every degradation in each batch); the sampler has the
            # same surface as ResumableSampler: set_epoch(epoch, start_in_samples), len() in batches
            batch_sampler = EpochTagged(dataset.make_batch_sampler(batch, world_size, rank, ratio, seed))
            return DataLoader(dataset, batch_sampler=batch_sampler, **common), batch_sampler
        sampler = ResumableSampler(dataset, world_size, rank, ratio, dataset_opt.get('use_shuffle', True), seed, batch,
                                   accumulate)
        if sampler.iterations < 1:
            raise ValueError(f'datasets.train: {sampler.length} samples per epoch < one global batch of {batch} x '
                             f'{accumulate} accumulation step(s) x {world_size} rank(s); raise dataset_enlarge_ratio '
                             'or lower the batch size')
        sampler = EpochTagged(sampler)
        loader = DataLoader(dataset, batch_size=batch, sampler=sampler, drop_last=True, **common)
        return loader, sampler
    # validation / test: in order; distributed, rank r takes images r, r + world, ... (its shard)
    shard = list(range(rank, len(dataset), world_size)) if world_size > 1 else None
    loader = DataLoader(dataset, batch_size=dataset_opt.get('batch_size_per_gpu', 1) or 1, shuffle=False,
                        sampler=shard, **common)
    return loader, None
