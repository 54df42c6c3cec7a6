"""Clean images degraded on the fly: denoising-style training without a stored LQ set.

Options: ``dataroot_gt`` (clean images, folder or LMDB), ``io_backend``, ``gt_size`` (train crop), ``use_hflip``,
``use_rot``, ``degradations`` (a list for :func:`irtoolkit.data.degradations.build_degradation`, e.g.
``[{type: gaussian_noise, sigma: [0, 50]}]``), ``seed`` (validation) and ``pad_multiple`` (reflect-pad LQ and GT
at the bottom and right to multiples of N after the degradation, as upstream IRConStyle's denoising datasets do;
see :mod:`irtoolkit.data.paired_dataset`) or ``crop_multiple`` (outside training, cut both at the bottom and right
to multiples of N after the degradation, as ConStyle v2's test datasets do).

Training draws a fresh degradation for every crop from numpy's global generator (seeded per DataLoader worker),
so each epoch sees new noise. Validation degrades the whole image with a generator seeded by ``(seed, index)``:
the validation set is identical on every run and in every worker. Items: ``lq``, ``gt`` (3, H, W) float RGB in
[0, 1], ``lq_path`` = ``gt_path`` (the clean image).
"""
import numpy as np
from torch.utils.data import Dataset

from irtoolkit.data.degradations import build_degradation
from irtoolkit.data.sources import multiple_option, open_source
from irtoolkit.data.transforms import augment, crop_to_multiple, random_crop, reflect_pad_to_multiple, to_tensor
from irtoolkit.utils.registry import DATASET_REGISTRY


@DATASET_REGISTRY.register()
class SyntheticDegradationDataset(Dataset):
    """Clean images + seeded synthetic degradations; see the module doc."""

    def __init__(self, opt):
        self.opt = opt
        self.name = opt.get('name', 'SyntheticDegradationDataset')
        if not opt.get('dataroot_gt'):
            raise ValueError(f'{self.name}: option dataroot_gt is missing')
        self.gt = open_source(opt['dataroot_gt'], opt.get('io_backend'), f'{self.name} (GT)')
        self.degrade = build_degradation(opt.get('degradations'), f'{self.name}.degradations')
        self.train = opt.get('phase', 'train') == 'train'
        if self.train and not opt.get('gt_size'):
            raise ValueError(f'{self.name}: training needs gt_size (the crop size)')
        self.seed = int(opt.get('seed', 0))
        self.pad_multiple = multiple_option(opt, 'pad_multiple', self.name)
        self.crop_multiple = multiple_option(opt, 'crop_multiple', self.name)

    def __len__(self):
        return len(self.gt)

    def __getitem__(self, index):
        key = self.gt.keys[index]
        gt = self.gt.read(key)
        if self.train:
            gt = random_crop(gt, self.opt['gt_size'], f'{self.gt.dataset}: {key!r}')
            gt = augment([gt], self.opt.get('use_hflip', False), self.opt.get('use_rot', False))[0]
            rng = np.random.default_rng(np.random.randint(0, 2 ** 63, dtype=np.int64))
        else:
            rng = np.random.default_rng([self.seed, index])
        gt = np.ascontiguousarray(gt)
        lq = self.degrade(gt, rng)
        if self.crop_multiple and not self.train:
            gt, lq = crop_to_multiple(gt, self.crop_multiple), crop_to_multiple(lq, self.crop_multiple)
        if self.pad_multiple:
            gt, lq = reflect_pad_to_multiple(gt, self.pad_multiple), reflect_pad_to_multiple(lq, self.pad_multiple)
        path = self.gt.path_of(key)
        return {'lq': to_tensor(lq), 'gt': to_tensor(gt), 'lq_path': path, 'gt_path': path}
