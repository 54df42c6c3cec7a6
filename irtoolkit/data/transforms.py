"""Crop, flip/rotate and tensor conversion shared by the datasets (numpy HWC in, torch CHW out).

Randomness comes from numpy's global generator, which the loader seeds per worker
(``irtoolkit.engine.data._worker_init``) and the runner seeds in the main process.
"""
import numpy as np
import torch

__all__ = ['random_crop', 'paired_random_crop', 'augment', 'reflect_pad_to_multiple', 'crop_to_multiple',
           'to_tensor']


def random_crop(img, size, where):
    """A random ``size`` x ``size`` crop of ``img`` (H, W, C)."""
    h, w = img.shape[:2]
    if h < size or w < size:
        raise ValueError(f'{where}: image is {h}x{w}, smaller than the crop size {size}')
    y, x = np.random.randint(0, h - size + 1), np.random.randint(0, w - size + 1)
    return img[y:y + size, x:x + size]


def paired_random_crop(gt, lq, gt_size, scale, where):
    """The same random region of GT (``gt_size``) and LQ (``gt_size // scale``); checks the pair's shapes."""
    hl, wl = lq.shape[:2]
    if gt.shape[0] != hl * scale or gt.shape[1] != wl * scale:
        raise ValueError(f'{where}: GT is {gt.shape[0]}x{gt.shape[1]} but LQ is {hl}x{wl} (scale {scale})')
    lq_size = gt_size // scale
    if gt_size % scale:
        raise ValueError(f'{where}: gt_size {gt_size} is not a multiple of scale {scale}')
    if hl < lq_size or wl < lq_size:
        raise ValueError(f'{where}: LQ is {hl}x{wl}, smaller than the crop {lq_size} (gt_size {gt_size} / scale '
                         f'{scale})')
    y, x = np.random.randint(0, hl - lq_size + 1), np.random.randint(0, wl - lq_size + 1)
    return (gt[y * scale:(y + lq_size) * scale, x * scale:(x + lq_size) * scale], lq[y:y + lq_size, x:x + lq_size])


def augment(imgs, hflip=True, rot=True):
    """The same random horizontal flip, vertical flip and 90-degree transpose for every image in ``imgs``."""
    do_h = hflip and np.random.rand() < 0.5
    do_v = rot and np.random.rand() < 0.5
    do_t = rot and np.random.rand() < 0.5
    out = []
    for img in imgs:
        if do_h:
            img = img[:, ::-1]
        if do_v:
            img = img[::-1]
        if do_t:
            img = img.transpose(1, 0, 2)
        out.append(img)
    return out


def reflect_pad_to_multiple(img, multiple):
    """``img`` (H, W, C) reflect-padded at the bottom and right so H and W are multiples of ``multiple`` (the edge row
    is not repeated, as ``torch.nn.functional.pad(mode='reflect')``; upstream IRConStyle's datasets pad so)."""
    h, w = img.shape[:2]
    ph, pw = (-h) % multiple, (-w) % multiple
    if not (ph or pw):
        return img
    return np.pad(img, ((0, ph), (0, pw), (0, 0)), mode='reflect')


def crop_to_multiple(img, multiple):
    """``img`` (H, W, C) cut at the bottom and right to the largest multiples of ``multiple`` (ConStyle v2's test
    datasets, ``mod``)."""
    h, w = img.shape[:2]
    return img[:h - h % multiple, :w - w % multiple]


def to_tensor(img):
    """(H, W, C) float32 numpy -> (C, H, W) float32 tensor (contiguous copy)."""
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1), dtype=np.float32))
