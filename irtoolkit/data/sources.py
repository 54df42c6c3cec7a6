"""Image sources for the datasets: a folder of images or an LMDB, addressed by key (the file stem).

Both give ``keys`` (sorted) and ``read(key)`` -> RGB float32 ``(H, W, 3)`` in [0, 1]. Pairing is by key:
:func:`pair_keys` matches GT and LQ names (through an optional ``filename_tmpl``) and lists every unmatched name
when the sets differ. :func:`pair_sorted` pairs by sorted position instead, only when a recipe asks for it
(``pairing: sorted``, the way upstream IRConStyle's derain and dehaze datasets read two folders).
"""
import os
import os.path as osp
import re

import cv2
import numpy as np

from irtoolkit.data.lmdb_util import LmdbImageReader
from irtoolkit.utils.errors import OptionError, UserError

__all__ = ['IMG_EXTENSIONS', 'PairingError', 'FolderSource', 'LmdbSource', 'open_source', 'multiple_option',
           'pair_keys', 'pair_sorted', 'sorted_names', 'to_rgb_float', 'scan_images']

IMG_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp', '.ppm')


class PairingError(UserError, ValueError):
    """LQ and GT names do not match; the message lists the unmatched names on both sides."""


def to_rgb_float(img, where):
    """OpenCV array (BGR/BGRA/gray, uint8/uint16/float) -> RGB float32 ``(H, W, 3)`` in [0, 1]."""
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3 or img.shape[2] not in (1, 3, 4):
        raise ValueError(f'{where}: unsupported image shape {img.shape}')
    if img.dtype == np.uint8:
        img = img.astype(np.float32) / 255.0
    elif img.dtype == np.uint16:
        img = img.astype(np.float32) / 65535.0
    else:
        img = img.astype(np.float32)
    if img.shape[2] == 1:
        return np.repeat(img, 3, axis=2)
    return np.ascontiguousarray(img[..., 2::-1])  # BGR(A) -> RGB, alpha dropped


def scan_images(folder, where='folder'):
    """``{stem: path}`` of the images directly in ``folder``; two files with one stem is an error."""
    if not osp.isdir(folder):
        raise FileNotFoundError(f'{where}: folder not found: {folder}')
    if osp.isfile(osp.join(folder, 'data.mdb')):
        raise ValueError(f'{where}: {folder} is an LMDB; set io_backend: {{type: lmdb}}')
    found = {}
    for name in sorted(os.listdir(folder)):
        stem, ext = osp.splitext(name)
        if ext.lower() not in IMG_EXTENSIONS:
            continue
        if stem in found:
            raise ValueError(f'{where}: two images named {stem!r} in {folder} ({osp.basename(found[stem])}, {name})')
        found[stem] = osp.join(folder, name)
    return found


class FolderSource:
    """Images in one folder, keyed by file stem."""

    def __init__(self, folder, dataset='dataset'):
        self.root, self.dataset = folder, dataset
        self.files = scan_images(folder, dataset)
        self.keys = sorted(self.files)

    def path_of(self, key):
        return self.files[key]

    def read(self, key):
        path = self.files.get(key)
        if path is None:
            raise KeyError(f'{self.dataset}: no image named {key!r} in {self.root}')
        img = cv2.imread(path, cv2.IMREAD_UNCHANGED)
        if img is None:
            raise ValueError(f'{self.dataset}: cannot read image {path}')
        return to_rgb_float(img, f'{self.dataset}: {path}')

    def __len__(self):
        return len(self.keys)


class LmdbSource:
    """Images in an LMDB (BasicSR layout), keyed as in ``meta_info.txt``; ``path_of`` returns the key."""

    def __init__(self, path, dataset='dataset'):
        self.root, self.dataset = path, dataset
        self.reader = LmdbImageReader(path, dataset)
        self.keys = sorted(self.reader.keys)

    def path_of(self, key):
        return key

    def read(self, key):
        return to_rgb_float(self.reader.read_raw(key), f'{self.dataset}: {self.reader.path} key {key!r}')

    def __len__(self):
        return len(self.keys)


def require_options(opt, keys, dataset):
    """Fail at construction when a dataset option is missing (``name: option key is missing``)."""
    for k in keys:
        if not opt.get(k):
            raise ValueError(f'{dataset}: option {k} is missing')


def multiple_option(opt, key, name):
    """``opt[key]`` (``pad_multiple``, ``crop_multiple``): None (unset or 1) or an int > 1; anything else is an error
    naming the dataset and the key."""
    value = opt.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise OptionError(f'{name}: {key} must be a positive integer, got {value!r}')
    return value if value > 1 else None


def open_source(root, io_backend=None, dataset='dataset'):
    """:class:`FolderSource` or :class:`LmdbSource` from a dataroot and an ``io_backend`` option."""
    kind = (io_backend or {}).get('type', 'disk')
    if not isinstance(root, (str, os.PathLike)):
        raise ValueError(f'{dataset}: dataroot must be a path, got {root!r}')
    if kind == 'lmdb':
        return LmdbSource(root, dataset)
    if kind == 'disk':
        return FolderSource(root, dataset)
    raise ValueError(f'{dataset}: io_backend.type must be disk or lmdb, got {kind!r}')


def _name_list(names, limit=30):
    names = sorted(names)
    return ', '.join(names[:limit]) + (f', ... ({len(names) - limit} more)' if len(names) > limit else '')


def pair_keys(gt_keys, lq_keys, filename_tmpl='{}', where='dataset', gt_name_sub=None):
    """``[(gt_key, lq_key), ...]`` matched by name, sorted; raises :class:`PairingError` listing every unmatched name.

    One-to-one (default): LQ name = ``filename_tmpl.format(gt_name)``; a GT without LQ and an LQ without GT are
    both errors. Many-to-one (``gt_name_sub = [pattern, replacement]``): GT name = ``re.sub(pattern,
    replacement, lq_name)``, e.g. ``['_.*$', '']`` pairs RESIDE's hazy ``0001_0.8_0.2`` with clear ``0001``;
    every LQ needs its GT, a GT may serve several LQs (GT images without any LQ are left out).
    """
    if gt_name_sub is not None:
        if not isinstance(gt_name_sub, (list, tuple)) or len(gt_name_sub) != 2:
            raise ValueError(f'{where}: gt_name_sub must be [pattern, replacement], got {gt_name_sub!r}')
        try:
            rx = re.compile(gt_name_sub[0])
        except re.error as e:
            raise ValueError(f'{where}: gt_name_sub pattern {gt_name_sub[0]!r} is not a regular expression: {e}')
        gt_set = set(gt_keys)
        pairs = [(rx.sub(gt_name_sub[1], lq), lq) for lq in sorted(lq_keys)]
        no_gt = [f'{lq} (-> {g})' for g, lq in pairs if g not in gt_set]
        if no_gt:
            raise PairingError(f'{where}: LQ and GT names do not match (gt_name_sub {list(gt_name_sub)!r}); '
                               f'{len(no_gt)} LQ without GT: {_name_list(no_gt)}')
        return sorted(pairs)
    lq_set = set(lq_keys)
    pairs = [(g, filename_tmpl.format(g)) for g in sorted(gt_keys)]
    no_lq = [g for g, lq in pairs if lq not in lq_set]
    no_gt = lq_set - {lq for _, lq in pairs}
    if no_lq or no_gt:
        msg = [f'{where}: LQ and GT names do not match (filename_tmpl {filename_tmpl!r})']
        if no_lq:
            msg.append(f'{len(no_lq)} GT without LQ: {_name_list(no_lq)}')
        if no_gt:
            msg.append(f'{len(no_gt)} LQ without GT: {_name_list(no_gt)}')
        raise PairingError('; '.join(msg))
    return pairs


def sorted_names(source):
    """``source``'s keys in the order of their file names (a folder) or keys (an LMDB), as Python sorts strings:
    the order upstream's ``sorted(scandir(folder))`` gives (``a-1.png`` before ``a.png``, unlike their stems)."""
    return sorted(source.keys, key=lambda k: osp.basename(source.path_of(k)))


def pair_sorted(gt_keys, lq_keys, where='dataset', gt_root='GT', lq_root='LQ'):
    """``[(gt_key, lq_key), ...]``: the i-th GT with the i-th LQ of two lists already in sorted order, names not
    compared (upstream IRConStyle's ``paired_paths_from_folder_dehaze``). Two lists of different lengths are a
    :class:`PairingError` (one line: both counts and folders)."""
    if len(gt_keys) != len(lq_keys):
        raise PairingError(f'{where}: pairing: sorted needs as many LQ as GT images; {len(lq_keys)} LQ in {lq_root}, '
                           f'{len(gt_keys)} GT in {gt_root}')
    return list(zip(gt_keys, lq_keys))
