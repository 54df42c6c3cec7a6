"""Reading and writing images as float RGB tensors in [0, 1] (C, H, W); folders matched by file stem."""
import os
import os.path as osp

import cv2
import numpy as np
import torch

IMG_EXTS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp', '.ppm', '.pgm')


def list_images(folder):
    """Sorted image paths directly inside ``folder``; a missing or empty folder is an error naming it."""
    if not osp.isdir(folder):
        raise FileNotFoundError(f'image folder not found: {folder}')
    paths = sorted(osp.join(folder, f) for f in os.listdir(folder) if f.lower().endswith(IMG_EXTS))
    if not paths:
        raise FileNotFoundError(f'no images ({", ".join(IMG_EXTS)}) in {folder}')
    return paths


def images_by_stem(folder):
    """``{stem: path}`` for a folder; two files with the same stem (a.png, a.jpg) are an error."""
    out = {}
    for p in list_images(folder):
        stem = osp.splitext(osp.basename(p))[0]
        if stem in out:
            raise ValueError(f'{folder}: two images named {stem!r} ({osp.basename(out[stem])}, {osp.basename(p)})')
        out[stem] = p
    return out


def read_image(path):
    """Float32 RGB (or 1-channel grey) tensor (C, H, W) in [0, 1]; 8- and 16-bit files; alpha dropped."""
    img = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ValueError(f'cannot read image {path}')
    scale = 65535.0 if img.dtype == np.uint16 else 255.0
    if img.ndim == 2:
        img = img[..., None]
    elif img.shape[2] == 4:
        img = img[..., :3]
    if img.shape[2] == 3:
        img = img[..., ::-1]  # BGR -> RGB
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float().div_(scale)


def image_size(path):
    """(H, W) read from the file header only."""
    from PIL import Image
    with Image.open(path) as im:
        return im.size[1], im.size[0]


def to_uint8(img):
    """(C, H, W) float in [0, 1] -> (H, W, C) uint8 BGR for cv2 (rounded like BasicSR's tensor2img)."""
    arr = (img.detach().float().clamp(0, 1) * 255.0).round().byte().cpu().numpy().transpose(1, 2, 0)
    return arr[..., ::-1] if arr.shape[2] == 3 else arr


def write_image(path, img):
    """Write (C, H, W) float in [0, 1] as an 8-bit image; the folder is created."""
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    if not cv2.imwrite(path, np.ascontiguousarray(to_uint8(img))):
        raise OSError(f'cannot write image {path}')
