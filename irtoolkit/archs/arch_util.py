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


def unet_forward(net, inp):
    """The plain U-Net pass NAFNet and KBNet share: pad to ``net.padder_size``, ``intro``, encoder stages with
    ``downs`` (skips kept), ``middle_blks``, ``ups`` + skip + decoder stages, ``ending`` + the input, crop back."""
    inp_p, size = pad_to_multiple(inp, net.padder_size)
    x = net.intro(inp_p)
    skips = []
    for encoder, down in zip(net.encoders, net.downs):
        x = encoder(x)
        skips.append(x)
        x = down(x)
    x = net.middle_blks(x)
    for decoder, up, skip in zip(net.decoders, net.ups, reversed(skips)):
        x = decoder(up(x) + skip)
    return crop_to(net.ending(x) + inp_p, size)
