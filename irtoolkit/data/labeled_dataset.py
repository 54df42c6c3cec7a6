"""Clean images with a class label, optionally degraded on the fly: ConStyle v2's pre-training data (ImageNet).

Options (``datasets.<phase>``)::

    type: LabeledImageDataset
    dataroot_gt: datasets/ImageNet/train   # a folder or an LMDB
    io_backend: {type: disk}               # or lmdb
    labels: folders                        # folders | file
    label_file: ~                          # labels: file: "<key> <label>" lines; default <dataroot_gt>/labels.txt
    classes: ~                             # class names in label order (a list or a file, one per line)
    resize_short: 256                      # optional: the shorter side first resized to this (ImageNet's Resize)
    random_resized_crop: {scale: [0.08, 1.0], ratio: [0.75, 1.3333]}   # optional (training): torchvision's
    gt_size: 224                           # crop side (training: random or random-resized; validation: centre)
    use_hflip: true
    use_rot: false
    degradations: [{type: realesrgan}]     # optional: lq = the degraded crop (same pixels); without: no lq
    seed: 0                                # validation degradations are seeded by (seed, index)

Labels:
    * ``folders``: the class is the image's folder. On disk, ``dataroot_gt/<class>/<image>`` (ImageNet's layout;
      one level, the classes sorted by name unless ``classes`` orders them); in an LMDB, the part of the key before
      its first ``/`` (an LMDB written from such a tree with keys ``<class>/<stem>``).
    * ``file``: ``label_file`` (default ``labels.txt`` inside ``dataroot_gt``, so an LMDB carries its labels) lists
      ``<key> <label>`` per line, the label an integer or a class name (names are numbered in ``classes`` order,
      else sorted). Keys are image stems (flat folder) or LMDB keys; a key without a label is an error.

Items: ``gt`` (3, H, W) float RGB in [0, 1], ``label`` (int), ``gt_path``; with ``degradations`` also ``lq`` and
``lq_path`` (= ``gt_path``). ``self.classes`` holds the class names (``label`` indexes it).
"""
import math
import os
import os.path as osp

import cv2
import numpy as np
from torch.utils.data import Dataset

from irtoolkit.data.degradations import build_degradation
from irtoolkit.data.sources import IMG_EXTENSIONS, open_source, to_rgb_float
from irtoolkit.data.transforms import augment, random_crop, to_tensor
from irtoolkit.utils.registry import DATASET_REGISTRY

__all__ = ['LabeledImageDataset', 'ClassFolderSource', 'read_label_file']


class ClassFolderSource:
    """Images in class sub-folders of ``root`` (one level), keyed ``<class>/<stem>``."""

    def __init__(self, root, dataset='dataset'):
        if not osp.isdir(root):
            raise FileNotFoundError(f'{dataset}: folder not found: {root}')
        self.root, self.dataset, self.files = root, dataset, {}
        for cls in sorted(d for d in os.listdir(root) if osp.isdir(osp.join(root, d))):
            for name in sorted(os.listdir(osp.join(root, cls))):
                stem, ext = osp.splitext(name)
                if ext.lower() in IMG_EXTENSIONS:
                    self.files[f'{cls}/{stem}'] = osp.join(root, cls, name)
        if not self.files:
            raise ValueError(f'{dataset}: no images in class folders under {root} (expected <class>/<image>)')
        self.keys = sorted(self.files)

    def path_of(self, key):
        return self.files[key]

    def read(self, key):
        img = cv2.imread(self.files[key], cv2.IMREAD_UNCHANGED)
        if img is None:
            raise ValueError(f'{self.dataset}: cannot read image {self.files[key]}')
        return to_rgb_float(img, f'{self.dataset}: {self.files[key]}')

    def __len__(self):
        return len(self.keys)


def read_label_file(path, where='labels'):
    """``{key: label}`` from ``<key> <label>`` lines (blank lines and ``#`` comments skipped)."""
    labels = {}
    with open(path, encoding='utf-8') as f:
        for n, line in enumerate(f, 1):
            line = line.split('#', 1)[0].strip()
            if not line:
                continue
            parts = line.rsplit(None, 1)
            if len(parts) != 2:
                raise ValueError(f'{where}: {path}:{n}: expected "<key> <label>", got {line!r}')
            labels[parts[0]] = parts[1]
    return labels


def _class_names(opt):
    classes = opt.get('classes')
    if classes is None or isinstance(classes, (list, tuple)):
        return list(classes) if classes else None
    with open(classes, encoding='utf-8') as f:
        return [c.strip() for c in f if c.strip()]


@DATASET_REGISTRY.register()
class LabeledImageDataset(Dataset):
    """Clean images + class labels (+ optional on-the-fly degradation); see the module doc."""

    def __init__(self, opt):
        self.opt, self.name = opt, opt.get('name', 'LabeledImageDataset')
        if not opt.get('dataroot_gt'):
            raise ValueError(f'{self.name}: option dataroot_gt is missing')
        kind = (opt.get('io_backend') or {}).get('type', 'disk')
        mode = opt.get('labels', 'folders')
        if mode not in ('folders', 'file'):
            raise ValueError(f'{self.name}: labels must be folders or file, got {mode!r}')
        root = opt['dataroot_gt']
        self.src = ClassFolderSource(root, self.name) if mode == 'folders' and kind == 'disk' else \
            open_source(root, opt.get('io_backend'), self.name)
        names = _class_names(opt)
        if mode == 'folders':
            raw = {k: k.split('/', 1)[0] for k in self.src.keys}
            if kind != 'disk' and any('/' not in k for k in self.src.keys):
                bad = next(k for k in self.src.keys if '/' not in k)
                raise ValueError(f'{self.name}: labels: folders needs LMDB keys "<class>/<name>", got {bad!r} '
                                 '(or use labels: file)')
        else:
            path = opt.get('label_file') or osp.join(root, 'labels.txt')
            if not osp.isfile(path):
                raise FileNotFoundError(f'{self.name}: label file not found: {path} (option label_file)')
            raw = read_label_file(path, self.name)
            missing = [k for k in self.src.keys if k not in raw]
            if missing:
                raise ValueError(f'{self.name}: {len(missing)} images without a label in {path}, e.g. {missing[0]!r}')
        self.labels, self.classes = self._numbered([raw[k] for k in self.src.keys], names)
        self.degrade = build_degradation(opt['degradations'], f'{self.name}.degradations') \
            if opt.get('degradations') else None
        self.train = opt.get('phase', 'train') == 'train'
        self.seed = int(opt.get('seed', 0))

    def _numbered(self, raw, names):
        """Labels as ints: integer strings as they are, class names by their position in ``names`` (or sorted)."""
        if all(str(r).lstrip('-').isdigit() for r in raw) and names is None:
            labels = [int(r) for r in raw]
            return np.asarray(labels, np.int64), [str(i) for i in range(max(labels) + 1)]
        names = names or sorted(set(map(str, raw)))
        index = {c: i for i, c in enumerate(names)}
        unknown = sorted({str(r) for r in raw} - set(index))
        if unknown:
            raise ValueError(f'{self.name}: labels not among classes: {unknown[:10]}')
        return np.asarray([index[str(r)] for r in raw], np.int64), list(names)

    def __len__(self):
        return len(self.src)

    def _geometry(self, img):
        o = self.opt
        if o.get('resize_short'):
            h, w = img.shape[:2]
            s = o['resize_short'] / min(h, w)
            img = cv2.resize(img, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_LINEAR)
        size = o.get('gt_size')
        if not size:
            return img
        if self.train and o.get('random_resized_crop') is not None:
            return random_resized_crop(img, size, **(o['random_resized_crop'] or {}))
        if self.train:
            return random_crop(img, size, f'{self.name}')
        h, w = img.shape[:2]  # validation: the centre
        if h < size or w < size:
            raise ValueError(f'{self.name}: image is {h}x{w}, smaller than gt_size {size}')
        y, x = (h - size) // 2, (w - size) // 2
        return img[y:y + size, x:x + size]

    def __getitem__(self, index):
        key = self.src.keys[index]
        gt = self._geometry(self.src.read(key))
        if self.train:
            gt = augment([gt], self.opt.get('use_hflip', False), self.opt.get('use_rot', False))[0]
        gt = np.ascontiguousarray(gt, dtype=np.float32)
        path = self.src.path_of(key)
        item = {'gt': to_tensor(gt), 'label': int(self.labels[index]), 'gt_path': path}
        if self.degrade is not None:
            rng = np.random.default_rng(np.random.randint(0, 2 ** 63, dtype=np.int64)) if self.train else \
                np.random.default_rng([self.seed, index])
            item['lq'], item['lq_path'] = to_tensor(self.degrade(gt, rng)), path
        return item


def random_resized_crop(img, size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), tries=10):
    """torchvision's ``RandomResizedCrop``: a region of ``scale`` x the area and aspect ``ratio`` (log-uniform),
    resized to ``size`` x ``size``; after ``tries`` misses, the largest centred crop within the ratio range.
    Randomness from numpy's global generator (seeded per worker)."""
    h, w = img.shape[:2]
    area = h * w
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(tries):
        target = area * np.random.uniform(scale[0], scale[1])
        aspect = math.exp(np.random.uniform(*log_r))
        cw, ch = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            y, x = np.random.randint(0, h - ch + 1), np.random.randint(0, w - cw + 1)
            break
    else:
        r = w / h
        if r < ratio[0]:
            cw, ch = w, min(h, int(round(w / ratio[0])))
        elif r > ratio[1]:
            cw, ch = min(w, int(round(h * ratio[1]))), h
        else:
            cw, ch = w, h
        y, x = (h - ch) // 2, (w - cw) // 2
    return cv2.resize(img[y:y + ch, x:x + cw], (size, size), interpolation=cv2.INTER_LINEAR)
