"""A tiny paired denoising set cut from scikit-image's bundled photos: for tests and the tiny recipe.

No download: the photos ship inside scikit-image. Train and validation crops come from different photos.
"""
import os
import os.path as osp

import cv2
import numpy as np

TRAIN_PHOTOS = ('astronaut', 'coffee', 'chelsea')
VAL_PHOTOS = ('rocket',)


def _photo(name):
    from skimage import data
    img = getattr(data, name)()
    if img.ndim == 2:
        img = np.stack([img] * 3, -1)
    return np.ascontiguousarray(img[..., :3])


def make_tiny_pairs(root, n_train=8, n_val=2, size=64, sigma=25, seed=0, scale=1):
    """Write ``root/{train,val}/{gt,lq}/NNNN.png``; returns ``root``. LQ: Gaussian noise of ``sigma`` on 0..255, or
    with ``scale`` > 1 the bicubic down-sampling of GT by ``scale`` (a super-resolution pair)."""
    rng = np.random.default_rng(seed)
    for split, photos, n in (('train', TRAIN_PHOTOS, n_train), ('val', VAL_PHOTOS, n_val)):
        for sub in ('gt', 'lq'):
            os.makedirs(osp.join(root, split, sub), exist_ok=True)
        for i in range(n):
            img = _photo(photos[i % len(photos)])
            y = int(rng.integers(0, img.shape[0] - size + 1))
            x = int(rng.integers(0, img.shape[1] - size + 1))
            gt = img[y:y + size, x:x + size].astype(np.float32)
            lq = np.clip(gt + rng.normal(0, sigma, gt.shape), 0, 255)
            if scale > 1:
                lq = cv2.resize(gt, (size // scale, size // scale), interpolation=cv2.INTER_CUBIC).clip(0, 255)
            for sub, arr in (('gt', gt), ('lq', lq)):
                bgr = cv2.cvtColor(arr.round().astype(np.uint8), cv2.COLOR_RGB2BGR)
                cv2.imwrite(osp.join(root, split, sub, f'{i:04d}.png'), bgr)
    return root
