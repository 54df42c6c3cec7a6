"""NAFNet: official constructor arguments and key names, any input size."""
import torch

from irtoolkit.archs.nafnet_arch import NAFNet


def test_parameter_count_matches_upstream_configuration():
    # the NAFNet baseline of IRConStyle (width 64, enc [5,6,7,7], middle 7, dec [5,6,7,7]); count from its notes
    net = NAFNet(img_channel=3, width=64, middle_blk_num=7, enc_blk_nums=[5, 6, 7, 7], dec_blk_nums=[5, 6, 7, 7])
    assert sum(p.numel() for p in net.parameters()) == 87_404_483


def test_official_key_names():
    keys = set(NAFNet(width=8, middle_blk_num=1, enc_blk_nums=[1, 2], dec_blk_nums=[1, 1]).state_dict())
    for k in ('intro.weight', 'ending.bias', 'encoders.1.1.conv1.weight', 'encoders.0.0.sca.1.weight',
              'encoders.0.0.norm1.weight', 'encoders.0.0.beta', 'encoders.0.0.gamma', 'downs.1.weight',
              'middle_blks.0.conv5.bias', 'ups.0.0.weight', 'decoders.1.0.norm2.bias'):
        assert k in keys, k
    assert not any(k.startswith('ups.') and k.endswith('bias') for k in keys)  # the up 1x1 conv has no bias


def test_any_input_size():
    net = NAFNet(width=8, middle_blk_num=1, enc_blk_nums=[1, 1, 1], dec_blk_nums=[1, 1, 1]).eval()
    for h, w in ((17, 31), (8, 8), (65, 40)):
        x = torch.rand(2, 3, h, w)
        with torch.no_grad():
            y = net(x)
        assert y.shape == x.shape
    # an input that is already a multiple of 8 is not padded: the same as calling the layers by hand
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.1) if p.dim() > 1 else None
    x = torch.rand(1, 3, 16, 24)
    with torch.no_grad():
        y = net.intro(x)
        skips = []
        for enc, down in zip(net.encoders, net.downs):
            y = enc(y)
            skips.append(y)
            y = down(y)
        y = net.middle_blks(y)
        for dec, up, skip in zip(net.decoders, net.ups, reversed(skips)):
            y = dec(up(y) + skip)
        assert torch.allclose(net(x), net.ending(y) + x, atol=1e-6)
