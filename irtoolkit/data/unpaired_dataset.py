"""Unpaired degraded / clean images (CycleGAN-style "unaligned" data for CDD-GAN and NLCL training).

Options: ``dataroot_lq`` (degraded), ``dataroot_gt`` (clean) — each a folder/LMDB or a list of them (e.g. haze,
rain and blur sets together for domain adaptation) — ``io_backend``, ``gt_size`` (crop of each side),
``use_hflip``, ``use_rot``. The two sets are independent: their sizes and names may differ. In training the
``i``-th item takes LQ ``i mod N_lq`` and a uniformly random GT, each with its own crop and flip (as the
unaligned datasets of CUT/NLCL do); in validation GT ``i mod N_gt`` is used so that runs are reproducible.
Length: ``max(N_lq, N_gt)``. Items: ``lq``, ``gt`` (3, S, S) float RGB in [0, 1], ``lq_path``, ``gt_path``.
"""
import numpy as np
from torch.utils.data import Dataset

from irtoolkit.data.sources import open_source, require_options
from irtoolkit.data.transforms import augment, random_crop, to_tensor
from irtoolkit.utils.registry import DATASET_REGISTRY


@DATASET_REGISTRY.register()
class UnpairedImageDataset(Dataset):
    """Independent degraded and clean image sets; see the module doc."""

    def __init__(self, opt):
        self.opt, self.name = opt, opt.get('name', 'UnpairedImageDataset')
        require_options(opt, ('dataroot_lq', 'dataroot_gt'), self.name)
        self.lq = _open(opt['dataroot_lq'], opt.get('io_backend'), f'{self.name} (LQ)')
        self.gt = _open(opt['dataroot_gt'], opt.get('io_backend'), f'{self.name} (GT)')
        self.train = opt.get('phase', 'train') == 'train'
        if self.train and not opt.get('gt_size'):
            raise ValueError(f'{self.name}: training needs gt_size (the crop size)')

    def __len__(self):
        return max(len(self.lq), len(self.gt))

    def _one(self, src, key):
        img = src.read(key)
        if self.train:
            img = random_crop(img, self.opt['gt_size'], f'{src.dataset}: {key!r}')
            img = augment([img], self.opt.get('use_hflip', False), self.opt.get('use_rot', False))[0]
        return to_tensor(img), src.path_of(key)

    def __getitem__(self, index):
        lq_key = self.lq.keys[index % len(self.lq)]
        gt_idx = np.random.randint(len(self.gt)) if self.train else index % len(self.gt)
        lq, lq_path = self._one(self.lq, lq_key)
        gt, gt_path = self._one(self.gt, self.gt.keys[gt_idx])
        return {'lq': lq, 'gt': gt, 'lq_path': lq_path, 'gt_path': gt_path}


class _ConcatSource:
    """Several sources read as one: keys are ``(source index, key)``; ``read``/``path_of`` dispatch."""

    def __init__(self, sources):
        self.sources = sources
        self.keys = [(i, k) for i, src in enumerate(sources) for k in src.keys]
        self.dataset = sources[0].dataset
        self.root = [src.root for src in sources]

    def __len__(self):
        return len(self.keys)

    def read(self, key):
        return self.sources[key[0]].read(key[1])

    def path_of(self, key):
        return self.sources[key[0]].path_of(key[1])


def _open(roots, io_backend, name):
    roots = roots if isinstance(roots, (list, tuple)) else [roots]
    sources = [open_source(r, io_backend, name if len(roots) == 1 else f'{name}[{i}]') for i, r in enumerate(roots)]
    for src in sources:
        if not len(src):
            raise ValueError(f'{src.dataset}: no images in {src.root}')
    return sources[0] if len(sources) == 1 else _ConcatSource(sources)
