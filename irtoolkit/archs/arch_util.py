"""Small pieces shared by archs: padding to a multiple and back."""
import torch.nn.functional as F


def pad_to_multiple(x, multiple, mode='constant'):
    """Pad (B, C, H, W) on the bottom/right so H and W are multiples of ``multiple`` (an int, or (mh, mw) for the
    two axes); returns (x, (H, W))."""
    mh, mw = (multiple, multiple) if isinstance(multiple, int) else multiple
    h, w = x.shape[-2:]
    ph, pw = (-h) % mh, (-w) % mw
    if ph or pw:
        if mode == 'reflect' and (ph >= h or pw >= w):
            mode = 'replicate'  # reflect needs pad < size
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    return x, (h, w)


def crop_to(x, size):
    h, w = size
    return x[..., :h, :w]
