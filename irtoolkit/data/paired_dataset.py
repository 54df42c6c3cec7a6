"""Paired LQ/GT dataset for supervised restoration, from image folders or LMDBs.

Options (``datasets.<phase>``): ``dataroot_lq``, ``dataroot_gt``, ``io_backend: {type: disk | lmdb}``,
``filename_tmpl`` (LQ name from GT name, default ``'{}'``), ``gt_size`` (train crop), ``use_hflip``,
``use_rot``, ``scale`` (GT / LQ size ratio, default 1), ``gt_name_sub: [pattern, replacement]`` (many LQ per
GT: GT name = ``re.sub(pattern, replacement, lq_name)``, e.g. ``['_.*$', '']`` for RESIDE), ``pairing``,
``pad_multiple``, ``crop_multiple``.

``pairing: name`` (the default) matches pairs by name: a name on one side only is an error that lists every
unmatched name. ``pairing: sorted`` pairs the i-th file of the sorted LQ folder with the i-th of the sorted GT
folder, names not compared, as upstream IRConStyle's ``Dataset_Derain`` / ``Dataset_Dehaze`` read folders (e.g.
hazy ``0001_0.8_0.2.png`` with clear ``0001.png`` when each clear image is stored once per hazy one, or two folders
of identical names); folders of different lengths are an error. Training crops the same region of both images and
flips/rotates them together; validation returns whole images. ``pad_multiple: N`` then reflect-pads LQ and GT at the
bottom and right to multiples of N (GT: N × scale), as upstream IRConStyle's datasets do for its networks (8, MAXIM
64); metrics are then measured on the padded images, as upstream's are. irtoolkit's networks pad their input inside
and crop the output back, so without it the metrics are those of the image itself. ``crop_multiple: N`` instead cuts
LQ and GT at the bottom and right to multiples of N (outside training), as ConStyle v2's test datasets do (``mod``).
Items: ``lq`` (3, h, w) and ``gt`` (3, H, W) float RGB in [0, 1], ``lq_path``, ``gt_path`` (file paths, or LMDB
keys).
"""
from torch.utils.data import Dataset

from irtoolkit.data.sources import multiple_option, open_source, pair_keys, pair_sorted, require_options, sorted_names
from irtoolkit.data.transforms import augment, crop_to_multiple, paired_random_crop, reflect_pad_to_multiple, to_tensor
from irtoolkit.utils.errors import OptionError
from irtoolkit.utils.registry import DATASET_REGISTRY

PAIRINGS = ('name', 'sorted')


class PairedSets:
    """LQ and GT sources with their name pairs; shared by the paired and multi-degradation datasets."""

    def __init__(self, dataroot_lq, dataroot_gt, io_backend=None, filename_tmpl='{}', name='dataset', gt_name_sub=None,
                 pairing='name'):
        self.name = name
        if pairing not in PAIRINGS:
            raise OptionError(f'{name}: pairing must be one of {", ".join(PAIRINGS)}, got {pairing!r}')
        if pairing == 'sorted' and gt_name_sub is not None:
            raise OptionError(f'{name}: gt_name_sub matches names; it cannot be used with pairing: sorted')
        self.gt = open_source(dataroot_gt, io_backend, f'{name} (GT)')
        self.lq = open_source(dataroot_lq, io_backend, f'{name} (LQ)')
        if pairing == 'sorted':
            self.pairs = pair_sorted(sorted_names(self.gt), sorted_names(self.lq), name, dataroot_gt, dataroot_lq)
        else:
            self.pairs = pair_keys(self.gt.keys, self.lq.keys, filename_tmpl or '{}', name, gt_name_sub)

    def __len__(self):
        return len(self.pairs)

    def load(self, index, train, gt_size=None, scale=1, hflip=False, rot=False, pad_multiple=None,
             crop_multiple=None):
        gt_key, lq_key = self.pairs[index]
        gt, lq = self.gt.read(gt_key), self.lq.read(lq_key)
        where = f'{self.name}: pair {gt_key!r} / {lq_key!r}'
        if train:
            if not gt_size:
                raise ValueError(f'{self.name}: training needs gt_size (the crop size)')
            gt, lq = paired_random_crop(gt, lq, gt_size, scale, where)
            gt, lq = augment([gt, lq], hflip, rot)
        elif gt.shape[0] != lq.shape[0] * scale or gt.shape[1] != lq.shape[1] * scale:
            raise ValueError(f'{where}: GT is {gt.shape[:2]} but LQ is {lq.shape[:2]} (scale {scale})')
        if crop_multiple and not train:
            gt, lq = crop_to_multiple(gt, crop_multiple * scale), crop_to_multiple(lq, crop_multiple)
        if pad_multiple:
            gt, lq = reflect_pad_to_multiple(gt, pad_multiple * scale), reflect_pad_to_multiple(lq, pad_multiple)
        return {'lq': to_tensor(lq), 'gt': to_tensor(gt), 'lq_path': self.lq.path_of(lq_key),
                'gt_path': self.gt.path_of(gt_key)}


@DATASET_REGISTRY.register()
class PairedRestorationDataset(Dataset):
    """Paired restoration data (denoise, derain, dehaze, deblur, SR with ``scale``); see the module doc."""

    def __init__(self, opt):
        self.opt, self.name = opt, opt.get('name', 'PairedRestorationDataset')
        require_options(opt, ('dataroot_lq', 'dataroot_gt'), self.name)
        self.sets = PairedSets(opt['dataroot_lq'], opt['dataroot_gt'], opt.get('io_backend'),
                               opt.get('filename_tmpl', '{}'), self.name, opt.get('gt_name_sub'),
                               opt.get('pairing', 'name'))
        self.pad_multiple = multiple_option(opt, 'pad_multiple', self.name)
        self.crop_multiple = multiple_option(opt, 'crop_multiple', self.name)
        self.train = opt.get('phase', 'train') == 'train'

    def __len__(self):
        return len(self.sets)

    def __getitem__(self, index):
        o = self.opt
        return self.sets.load(index, self.train, o.get('gt_size'), int(o.get('scale') or 1), o.get('use_hflip', False),
                              o.get('use_rot', False), self.pad_multiple, self.crop_multiple)
