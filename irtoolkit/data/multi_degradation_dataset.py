"""Several paired degradation sets in one dataset, each sample labelled with its degradation.

For all-in-one restoration and multi-teacher distillation (Uni-Removal needs every degradation type in each
batch; :class:`DegradationBalancedBatchSampler` guarantees it). Options::

    type: MultiDegradationDataset
    sets:                       # label = position in this list; deg_type = name
      - {name: haze, dataroot_lq: .../train_lq.lmdb, dataroot_gt: .../train_gt.lmdb}
      - {name: rain, dataroot_lq: ..., dataroot_gt: ..., filename_tmpl: '{}'}   # io_backend per set optional
    io_backend: {type: lmdb}
    gt_size: 128
    use_hflip: true
    use_rot: true

Items: the paired items (``lq``, ``gt``, ``lq_path``, ``gt_path``) plus ``label`` (int) and ``deg_type`` (str).
"""
import math

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from irtoolkit.data.paired_dataset import PairedSets
from irtoolkit.utils.registry import DATASET_REGISTRY

__all__ = ['MultiDegradationDataset', 'DegradationBalancedBatchSampler']


@DATASET_REGISTRY.register()
class MultiDegradationDataset(Dataset):
    """Concatenation of paired sets with a degradation label per sample; see the module doc."""

    def __init__(self, opt):
        self.opt = opt
        self.name = opt.get('name', 'MultiDegradationDataset')
        sets = opt.get('sets')
        if not isinstance(sets, (list, tuple)) or not sets:
            raise ValueError(f'{self.name}: option sets must be a non-empty list of '
                             '{name, dataroot_lq, dataroot_gt} mappings')
        self.label_names, self.sets = [], []
        for i, s in enumerate(sets):
            if not isinstance(s, dict) or not s.get('name') or not s.get('dataroot_lq') or not s.get('dataroot_gt'):
                raise ValueError(f'{self.name}: sets[{i}] needs name, dataroot_lq and dataroot_gt, got {s!r}')
            if s['name'] in self.label_names:
                raise ValueError(f'{self.name}: sets[{i}]: duplicate name {s["name"]!r}')
            self.label_names.append(s['name'])
            self.sets.append(PairedSets(s['dataroot_lq'], s['dataroot_gt'], s.get('io_backend', opt.get('io_backend')),
                                        s.get('filename_tmpl', opt.get('filename_tmpl', '{}')),
                                        f'{self.name}/{s["name"]}', s.get('gt_name_sub')))
        self.offsets = np.cumsum([0] + [len(s) for s in self.sets])
        self.labels = np.repeat(np.arange(len(self.sets)), [len(s) for s in self.sets])
        self.train = opt.get('phase', 'train') == 'train'

    def __len__(self):
        return int(self.offsets[-1])

    def __getitem__(self, index):
        if not 0 <= index < len(self):
            raise IndexError(f'{self.name}: index {index} out of range ({len(self)} samples)')
        label = int(self.labels[index])
        o = self.opt
        item = self.sets[label].load(index - int(self.offsets[label]), self.train, o.get('gt_size'),
                                     int(o.get('scale') or 1), o.get('use_hflip', False), o.get('use_rot', False))
        item['label'] = label
        item['deg_type'] = self.label_names[label]
        return item

    def make_batch_sampler(self, batch_size, world_size=1, rank=0, ratio=1, seed=0):
        """A :class:`DegradationBalancedBatchSampler` over this dataset (pass as ``DataLoader(batch_sampler=)``)."""
        return DegradationBalancedBatchSampler(self.labels, batch_size, world_size, rank, ratio, seed)


class DegradationBalancedBatchSampler(Sampler):
    """Batches that contain every label: ``batch_size // K`` samples of each of the K labels, the remainder
    spread over randomly chosen labels. Within a label, samples are drawn without replacement from a per-epoch
    permutation (cycled when a small set runs out).

    Same surface as the runner's ``ResumableSampler``: ``set_epoch(epoch, start)`` with ``start`` counted in
    samples, deterministic in (seed, epoch), rank-sharded (each rank draws different batches). ``len`` is the
    number of batches per epoch: ``ceil(N * ratio / (batch_size * world_size))``.
    """

    def __init__(self, labels, batch_size, world_size=1, rank=0, ratio=1, seed=0):
        self.labels = np.asarray(labels)
        self.k = int(self.labels.max()) + 1 if len(self.labels) else 0
        if self.k == 0 or batch_size < self.k:
            raise ValueError(f'balanced batches need batch_size >= number of degradations ({self.k}), '
                             f'got {batch_size}')
        missing = [i for i in range(self.k) if not (self.labels == i).any()]
        if missing:
            raise ValueError(f'labels {missing} have no samples')
        self.batch_size, self.world_size, self.rank, self.seed = batch_size, world_size, rank, seed
        self.num_batches = math.ceil(len(self.labels) * ratio / (batch_size * world_size))
        self.num_samples = self.num_batches * batch_size
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch, start=0):
        self.epoch, self.start = epoch, start // self.batch_size

    def _batches(self):
        g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        pools = [np.flatnonzero(self.labels == i) for i in range(self.k)]
        perms = [p[torch.randperm(len(p), generator=g).numpy()] for p in pools]
        ptr = [0] * self.k
        base, extra = divmod(self.batch_size, self.k)
        for _ in range(self.num_batches * self.world_size):
            counts = [base] * self.k
            for i in torch.randperm(self.k, generator=g)[:extra].tolist():
                counts[i] += 1
            batch = []
            for i, c in enumerate(counts):
                for _ in range(c):
                    if ptr[i] == len(perms[i]):  # a small set cycles through a fresh permutation
                        perms[i] = pools[i][torch.randperm(len(pools[i]), generator=g).numpy()]
                        ptr[i] = 0
                    batch.append(int(perms[i][ptr[i]]))
                    ptr[i] += 1
            order = torch.randperm(len(batch), generator=g).tolist()  # labels not in blocks inside a batch
            yield [batch[j] for j in order]

    def __iter__(self):
        for n, batch in enumerate(self._batches()):
            if n % self.world_size == self.rank and n // self.world_size >= self.start:
                yield batch

    def __len__(self):
        return self.num_batches - self.start
