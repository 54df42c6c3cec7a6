"""Small pieces shared by archs: padding to a multiple and back, pix2pix-style weight initialisation."""
import torch.nn.functional as F
from torch import nn


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


def init_weights(net, init_type='default', gain=0.02):
    """pix2pix / CUT's weight initialisation of every Conv / Linear layer (biases zeroed): ``normal`` N(0, gain),
    ``xavier`` (xavier_normal, gain), ``kaiming`` (fan_in), ``orthogonal`` (gain); ``default`` keeps PyTorch's.
    CUT's generator and discriminator, NLCL's discriminator and heads: ``xavier``, gain 0.02."""
    if init_type == 'default':
        return net
    inits = {'normal': lambda w: nn.init.normal_(w, 0.0, gain), 'xavier': lambda w: nn.init.xavier_normal_(w, gain),
             'kaiming': lambda w: nn.init.kaiming_normal_(w, a=0, mode='fan_in'),
             'orthogonal': lambda w: nn.init.orthogonal_(w, gain)}
    if init_type not in inits:
        raise ValueError(f'init_type must be default, {", ".join(inits)}; got {init_type!r}')
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            inits[init_type](m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return net
