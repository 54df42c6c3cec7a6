"""The built-in demo dataset: haze, rain, noise and blur sets cut from photos that ship with installed packages.

No download: scikit-image bundles its sample photos and matplotlib bundles ``grace_hopper.jpg``. Validation
photos are never used for training crops (split by source photo). Layout under ``root`` for each degradation
``<deg>`` (see ``datasets/README.md``)::

    <deg>/train_lq.lmdb, train_gt.lmdb      paired 128x128 crops, same keys
    <deg>/val_lq.lmdb, val_gt.lmdb          paired 256x256 crops of the validation photos
    <deg>/val/lq/*.png, val/gt/*.png        the same validation pairs as PNG (same names)
    <deg>/unpaired_lq.lmdb, unpaired_gt.lmdb  degraded and clean 128x128 crops from different source crops
    manifest.json                           what was built, from what, with which seed (written last)

This module builds the data only; its command is ``irtk-make-demo-data`` (:mod:`irtoolkit.cli.make_demo_data`). The
demo itself (training, inference, evaluation, report on this data) is the ``irtk-demo`` command,
:mod:`irtoolkit.cli.demo`.
"""
import json
import os
import os.path as osp
import shutil

import cv2
import numpy as np

from irtoolkit.data.degradations import add_haze, build_degradation, depth_proxy
from irtoolkit.data.lmdb_util import write_lmdb

__all__ = ['TRAIN_PHOTOS', 'VAL_PHOTOS', 'DEMO_DEGRADATIONS', 'load_photo', 'build_demo']

TRAIN_PHOTOS = ('astronaut', 'coffee', 'chelsea', 'motorcycle_left', 'motorcycle_right', 'immunohistochemistry',
                'retina', 'hubble_deep_field')
VAL_PHOTOS = ('rocket', 'grace_hopper')
MAX_SIDE = 640  # large photos (retina 1411 px) are downscaled so that a 128 px crop still holds structure

# Option-style specs (irtoolkit.data.degradations); haze uses a depth proxy of the whole photo (see _degrade).
DEMO_DEGRADATIONS = {
    'haze': [{'type': 'haze', 'beta': [0.5, 1.5], 'airlight': [0.7, 1.0]}],
    'rain': [{'type': 'rain', 'density': [0.002, 0.008], 'length': [10, 30], 'angle': [-25, 25], 'width': [0.4, 1.0],
              'intensity': [0.4, 0.8]}],
    'noise': [{'type': 'gaussian_noise', 'sigma': [15, 50]}],
    'blur': [{'type': 'one_of', 'weights': [0.7, 0.3],
              'choices': [{'type': 'motion_blur', 'length': [5, 15]}, {'type': 'defocus_blur', 'radius': [1.5, 3.5]}]}],
}
_VERSION = 2  # bump when the recipe changes, so an old build is not taken as up to date


def load_photo(name):
    """RGB float32 photo in [0, 1], longest side at most ``MAX_SIDE``."""
    if name == 'grace_hopper':
        import matplotlib
        path = osp.join(matplotlib.get_data_path(), 'sample_data', 'grace_hopper.jpg')
        img = cv2.cvtColor(cv2.imread(path, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    elif name.startswith('motorcycle_'):
        from skimage import data
        left, right, _ = data.stereo_motorcycle()
        img = left if name.endswith('left') else right
    else:
        from skimage import data
        img = getattr(data, name)()
    img = np.ascontiguousarray(img[..., :3]).astype(np.float32) / 255.0
    scale = MAX_SIDE / max(img.shape[:2])
    if scale < 1:
        img = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    return img


def _random_box(img, size, rng, tries=20):
    """A ``size`` crop position; flat crops (black retina corners, empty sky) are re-drawn a few times."""
    h, w = img.shape[:2]
    for _ in range(tries):
        y, x = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
        if img[y:y + size, x:x + size].std() > 0.06:
            break
    return y, x


def _grid_boxes(img, size, n):
    """``n`` crop positions spread over a grid (validation: fixed, covering the photo)."""
    h, w = img.shape[:2]
    rows = max(1, int(round(np.sqrt(n * h / w))))
    cols = int(np.ceil(n / rows))
    ys = np.linspace(0, h - size, rows).round().astype(int)
    xs = np.linspace(0, w - size, cols).round().astype(int)
    return [(int(y), int(x)) for y in ys for x in xs][:n]


class _Photos:
    """Photos loaded once, with haze depth proxies of the whole photo (depth must be scene-consistent)."""

    def __init__(self, names, seed, with_depth):
        self.names = names
        self.imgs = {n: load_photo(n) for n in names}
        self.depths = {n: [depth_proxy(self.imgs[n], np.random.default_rng([seed, i, v])) for v in range(3)]
                       for i, n in enumerate(names)} if with_depth else {}


def _degrade(deg, fn, photos, name, y, x, size, rng):
    crop = photos.imgs[name][y:y + size, x:x + size]
    if deg == 'haze':
        depth = photos.depths[name][int(rng.integers(3))][y:y + size, x:x + size]
        spec = DEMO_DEGRADATIONS['haze'][0]
        return crop, add_haze(crop, rng, beta=spec['beta'], airlight=spec['airlight'], depth=depth)
    return crop, fn(crop, rng)


def _u8_bgr(img):
    return cv2.cvtColor((np.clip(img, 0, 1) * 255).round().astype(np.uint8), cv2.COLOR_RGB2BGR)


def _build_one(root, deg, seed, n_train, n_unpaired, n_val, train_size, val_size, compress_level):
    out = osp.join(root, deg)
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(osp.join(out, 'val', 'lq'))
    os.makedirs(osp.join(out, 'val', 'gt'))
    k = list(DEMO_DEGRADATIONS).index(deg)
    fn = build_degradation(DEMO_DEGRADATIONS[deg], f'demo.{deg}')
    train, val = _Photos(TRAIN_PHOTOS, seed, deg == 'haze'), _Photos(VAL_PHOTOS, seed + 1, deg == 'haze')
    for side, items in zip(('gt', 'lq'), _paired(deg, fn, train, n_train, train_size, [seed, k, 0])):
        write_lmdb(osp.join(out, f'train_{side}.lmdb'), items, compress_level)
    for side, items in zip(('gt', 'lq'), _unpaired(deg, fn, train, n_unpaired, train_size, [seed, k, 1])):
        write_lmdb(osp.join(out, f'unpaired_{side}.lmdb'), items, compress_level)
    for sub, items in zip(('gt', 'lq'), _validation(deg, fn, val, n_val, val_size, [seed, k, 2])):
        for key, img in items:
            cv2.imwrite(osp.join(out, 'val', sub, key + '.png'), img, [cv2.IMWRITE_PNG_COMPRESSION, compress_level])
        write_lmdb(osp.join(out, f'val_{sub}.lmdb'), items, compress_level)
    return deg


def _paired(deg, fn, train, n, size, seed):
    """(gt, lq) records of ``n`` random training crops and their degraded versions."""
    rng = np.random.default_rng(seed)
    lq, gt = [], []
    for i in range(n):
        name = TRAIN_PHOTOS[i % len(TRAIN_PHOTOS)]
        y, x = _random_box(train.imgs[name], size, rng)
        clean, bad = _degrade(deg, fn, train, name, y, x, size, rng)
        key = f'{name}_{i:04d}'
        gt.append((key, _u8_bgr(clean)))
        lq.append((key, _u8_bgr(bad)))
    return gt, lq


def _unpaired(deg, fn, train, n, size, seed):
    """(gt, lq) records where the degraded and the clean side come from independent crops (other positions, other
    photos)."""
    rng = np.random.default_rng(seed)
    lq, gt = [], []
    for i in range(n):
        name = TRAIN_PHOTOS[i % len(TRAIN_PHOTOS)]
        y, x = _random_box(train.imgs[name], size, rng)
        lq.append((f'{name}_lq{i:04d}', _u8_bgr(_degrade(deg, fn, train, name, y, x, size, rng)[1])))
        name = TRAIN_PHOTOS[(i + len(TRAIN_PHOTOS) // 2) % len(TRAIN_PHOTOS)]
        y, x = _random_box(train.imgs[name], size, rng)
        gt.append((f'{name}_gt{i:04d}', _u8_bgr(train.imgs[name][y:y + size, x:x + size])))
    return gt, lq


def _validation(deg, fn, val, n, size, seed):
    """(gt, lq) records of ``n`` crops on a grid of the validation photos."""
    rng = np.random.default_rng(seed)
    lq, gt = [], []
    per_photo = int(np.ceil(n / len(VAL_PHOTOS)))
    for name in VAL_PHOTOS:
        for j, (y, x) in enumerate(_grid_boxes(val.imgs[name], size, per_photo)):
            if len(gt) == n:
                break
            clean, bad = _degrade(deg, fn, val, name, y, x, size, rng)
            key = f'{name}_{j:02d}'
            gt.append((key, _u8_bgr(clean)))
            lq.append((key, _u8_bgr(bad)))
    return gt, lq


def _folder_bytes(path):
    return sum(osp.getsize(osp.join(d, f)) for d, _, files in os.walk(path) for f in files)


def build_demo(root='datasets/demo', seed=0, n_train=128, n_unpaired=64, n_val=8, train_size=128, val_size=256,
               compress_level=3, degradations=None, workers=None, force=False, log=print):
    """Build the demo sets under ``root``; skip if ``manifest.json`` says the same recipe is already there.

    Returns the manifest dict (with per-degradation sizes in bytes). ``workers`` processes build degradations
    in parallel (default: one per CPU, at most one per degradation).
    """
    degs = list(degradations or DEMO_DEGRADATIONS)
    unknown = [d for d in degs if d not in DEMO_DEGRADATIONS]
    if unknown:
        raise ValueError(f'unknown demo degradation(s) {unknown}; known: {list(DEMO_DEGRADATIONS)}')
    recipe = dict(version=_VERSION, seed=seed, n_train=n_train, n_unpaired=n_unpaired, n_val=n_val,
                  train_size=train_size, val_size=val_size, train_photos=list(TRAIN_PHOTOS),
                  val_photos=list(VAL_PHOTOS), degradations={d: DEMO_DEGRADATIONS[d] for d in degs})
    manifest_path = osp.join(root, 'manifest.json')
    if not force and osp.isfile(manifest_path):
        with open(manifest_path) as f:
            old = json.load(f)
        if old.get('recipe') == recipe and all(osp.isdir(osp.join(root, d, 'train_lq.lmdb')) for d in degs):
            log(f'{root}: demo data already built with this recipe (use --force to rebuild)')
            return old
    os.makedirs(root, exist_ok=True)
    if osp.exists(manifest_path):
        os.remove(manifest_path)  # an interrupted rebuild must not look complete
    args = (seed, n_train, n_unpaired, n_val, train_size, val_size, compress_level)
    workers = min(len(degs), workers or os.cpu_count() or 1)
    if workers > 1:
        # spawned, not forked: a fork of a process whose OpenMP / OpenCV thread pools already ran can deadlock
        # (seen under pytest), and a process pool reports a dead worker (BrokenProcessPool) where Pool waits forever
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor
        with ProcessPoolExecutor(workers, mp_context=mp.get_context('spawn')) as pool:
            for job in [pool.submit(_build_one, root, d, *args) for d in degs]:
                log(f'  {job.result()}: done')
    else:
        for d in degs:
            log(f'  {_build_one(root, d, *args)}: done')
    sizes = {d: _folder_bytes(osp.join(root, d)) for d in degs}
    manifest = dict(recipe=recipe, sizes_bytes=sizes)
    with open(manifest_path + '.tmp', 'w') as f:
        json.dump(manifest, f, indent=1)
    os.replace(manifest_path + '.tmp', manifest_path)
    return manifest


def save_montage(root, path, keys=('rocket_01', 'grace_hopper_00'), tile=160):
    """PNG grid of the validation pairs: one row per key, columns clean | haze | rain | noise | blur.

    Tiles are centre crops at full resolution (downscaling would hide noise and blur).
    """
    degs = [d for d in DEMO_DEGRADATIONS if osp.isdir(osp.join(root, d, 'val'))]
    if not degs:
        raise FileNotFoundError(f'{root}: no demo data; run python tools/make_demo_data.py first')
    rows = []
    for key in keys:
        tiles = [cv2.imread(osp.join(root, degs[0], 'val', 'gt', key + '.png'))]
        tiles += [cv2.imread(osp.join(root, d, 'val', 'lq', key + '.png')) for d in degs]
        if any(t is None for t in tiles):
            raise FileNotFoundError(f'{root}: validation image {key}.png missing in one of {degs}')
        h, w = tiles[0].shape[:2]
        y, x = (h - tile) // 2, (w - tile) // 2
        rows.append(np.concatenate([t[y:y + tile, x:x + tile] for t in tiles], axis=1))
    grid = np.concatenate(rows, axis=0)
    for i, label in enumerate(['clean'] + degs):
        cv2.putText(grid, label, (i * tile + 5, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(grid, label, (i * tile + 5, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (255, 255, 255), 1, cv2.LINE_AA)
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    cv2.imwrite(path, grid, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    return path
