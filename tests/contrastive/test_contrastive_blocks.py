"""Shared contrastive building blocks: samplers (incl. a brute-force check of the non-local search), gather,
FeatureTap on NAFNet / ConStyleUNet / a plugin arch, PatchGAN features, negative generator queue, encoders."""
import textwrap

import pytest
import torch

from irtoolkit.contrastive import (EmbeddingQueue, FeatureTap, GridPatchSampler, NonLocalPatchSampler,
                                   PatchProjectionHeads, RandomPatchSampler, build_encoder, gather)
from irtoolkit.utils.registry import ARCH_REGISTRY, build_network, load_plugins
from irtoolkit.utils.weights import MissingWeightsError


def brute_force_nonlocal(img, cy, cx, p, s, k):
    """Top-k (distance, y, x) of patch top-left corners in the s x s window, by explicit loops."""
    h, w = img.shape[-2:]
    wy = min(max(cy - s // 2, 0), h - p + 1 - s)
    wx = min(max(cx - s // 2, 0), w - p + 1 - s)
    centre = img[:, cy:cy + p, cx:cx + p]
    found = []
    for y in range(wy, wy + s):
        for x in range(wx, wx + s):
            found.append((float(((img[:, y:y + p, x:x + p] - centre) ** 2).sum()), y, x))
    found.sort()
    return found[:k]


@pytest.mark.parametrize('size', [(23, 31), (40, 40)])
def test_nonlocal_sampler_matches_brute_force(size):
    torch.manual_seed(0)
    h, w = size
    img = torch.rand(3, 3, h, w)
    p, s, k = 5, 9, 12
    sampler = NonLocalPatchSampler(k, patch_size=p, search_size=s)
    centres = torch.tensor([[0, 0], [h - p, w - p], [h // 2, w // 3]])
    coords = sampler(img, centres=centres)
    assert coords.shape == (3, k, 2) and coords.min() >= 0 and coords.max() < 1
    for b in range(3):
        ref = brute_force_nonlocal(img[b], int(centres[b, 0]), int(centres[b, 1]), p, s, k)
        got = {(int(cy * h) - p // 2, int(cx * w) - p // 2) for cy, cx in coords[b].tolist()}
        assert got == {(y, x) for _, y, x in ref}
        first = coords[b, 0]
        assert (int(first[0] * h) - p // 2, int(first[1] * w) - p // 2) == tuple(centres[b].tolist())


def test_nonlocal_sampler_finds_planted_copies():
    torch.manual_seed(1)
    img = torch.rand(1, 1, 32, 32)
    patch = img[:, :, 10:14, 10:14].clone()
    for y, x in ((3, 20), (22, 5)):  # two exact copies of the centre patch
        img[:, :, y:y + 4, x:x + 4] = patch
    coords = NonLocalPatchSampler(3, patch_size=4, search_size=29)(img, centres=torch.tensor([[10, 10]]))
    cells = {(int(y * 32) - 2, int(x * 32) - 2) for y, x in coords[0].tolist()}
    assert cells == {(10, 10), (3, 20), (22, 5)}


def test_random_and_grid_samplers_and_gather_across_strides():
    g = torch.zeros(2, 1, 16, 16)
    c = RandomPatchSampler(40)(g)
    assert c.shape == (2, 40, 2)
    for b in range(2):  # distinct cells
        assert len({tuple(v) for v in (c[b] * 16).long().tolist()}) == 40
    assert not torch.equal(c[0], c[1])  # independent per image
    shared = RandomPatchSampler(10, per_image=False)(g)
    assert torch.equal(shared[0], shared[1])
    assert GridPatchSampler(4)(g).shape == (2, 16, 2)
    # a value planted at full-resolution cell (9, 5) is found at the same normalised place on a /4 grid
    feat = torch.arange(16.).view(1, 1, 4, 4).repeat(2, 1, 1, 1)
    coords = torch.tensor([[[9.5 / 16, 5.5 / 16]], [[0.5 / 16, 15.5 / 16]]])
    assert gather(feat, coords).flatten().tolist() == [2 * 4 + 1, 0 * 4 + 3]


def test_feature_tap_nafnet_shapes_and_early_exit():
    net = build_network({'type': 'NAFNet', 'width': 8, 'enc_blk_nums': [1, 1], 'dec_blk_nums': [1, 1]})
    tap = FeatureTap(net, ['input', 'intro', 'encoders.1', 'middle_blks'])
    ran = []
    net.ending.register_forward_hook(lambda *a: ran.append('ending'))
    x = torch.rand(2, 3, 32, 32)
    feats = tap(x)
    assert [tuple(f.shape) for f in feats] == [(2, 3, 32, 32), (2, 8, 32, 32), (2, 16, 16, 16), (2, 32, 8, 8)]
    assert ran == []  # the decoder never ran
    full = FeatureTap(net, ['intro'], stop_after_last=False)
    full(x)
    assert ran == ['ending'] and full.output.shape == x.shape
    with pytest.raises(ValueError, match="'encoder.1' is not a module of NAFNet; closest: encoders.1"):
        FeatureTap(net, ['encoder.1'])


def test_feature_tap_constyle_unet():
    if 'ConStyleUNet' not in ARCH_REGISTRY:
        pytest.skip('ConStyleUNet has not landed in this tree')
    net = build_network({'type': 'ConStyleUNet', 'dim': 8, 'left_blk_num': [1, 1, 1], 'bottom_blk_num': 1,
                         'right_blk_num': [1, 1, 1], 'Train': False}).eval()
    ran = []
    net.Process_Module_r3.register_forward_hook(lambda *a: ran.append('r3'))
    layers = ['Process_Module_l1', 'Process_Module_l2', 'Process_Module_bottom']
    feats = FeatureTap(net, layers)(torch.rand(1, 3, 32, 32))
    assert [tuple(f.shape) for f in feats] == [(1, 8, 32, 32), (1, 16, 16, 16), (1, 32, 4, 4)]
    assert ran == []


def test_feature_tap_plugin_arch(tmp_path):
    plugin = tmp_path / 'contrastive_tap_plugin_arch.py'
    plugin.write_text(textwrap.dedent('''
        from torch import nn
        from irtoolkit.utils.registry import ARCH_REGISTRY

        @ARCH_REGISTRY.register()
        class ContrastiveTapPluginNet(nn.Module):
            def __init__(self):
                super().__init__()
                self.stem = nn.Conv2d(3, 4, 3, padding=1)
                self.blocks = nn.ModuleList([nn.Conv2d(4, 4, 3, stride=2, padding=1) for _ in range(2)])
                self.head = nn.Conv2d(4, 3, 1)

            def forward(self, x):
                x = self.stem(x)
                for b in self.blocks:
                    x = b(x)
                return (self.head(x), x)  # a tuple output, like some transformer archs
    '''))
    if 'ContrastiveTapPluginNet' not in ARCH_REGISTRY:
        load_plugins([str(plugin)])
    net = build_network({'type': 'ContrastiveTapPluginNet'})
    feats = FeatureTap(net, ['blocks.1', 'stem'])(torch.rand(2, 3, 16, 16))
    assert [tuple(f.shape) for f in feats] == [(2, 4, 4, 4), (2, 4, 16, 16)]  # order of the request
    enc = build_encoder({'type': 'self', 'layers': ['stem', 'blocks.0']}, generator=net)
    assert enc.channels() == [4, 4]


def test_patchgan_features_and_tap_agree():
    d = build_network({'type': 'PatchGANDiscriminator', 'num_feat': 8, 'num_layers': 3})
    x = torch.rand(2, 3, 64, 64)
    logits, feats = d(x, return_feats=True)
    assert logits.shape[:2] == (2, 1) and len(feats) == 4
    tapped = FeatureTap(d, ['body.0', 'body.2'])(x)
    assert torch.equal(tapped[0], feats[0]) and torch.equal(tapped[1], feats[2])
    plain = build_network({'type': 'PatchGANDiscriminator', 'num_feat': 8, 'num_layers': 3, 'antialias': False})
    assert plain(x).shape == (2, 1, 6, 6)


def test_negative_generator_and_queue():
    torch.manual_seed(0)
    gen = build_network({'type': 'NegativeGenerator', 'dims': [8, 4], 'num_negatives': 6, 'z_dim': 3,
                         'hidden_dim': 16, 'queue_size': 10})
    keys = [torch.randn(2, 5, 8), torch.randn(2, 5, 4)]
    negs = gen(keys)
    assert [tuple(n.shape) for n in negs] == [(2, 6, 8), (2, 6, 4)]
    assert torch.allclose(negs[0].norm(dim=-1), torch.ones(2, 6))
    gen.enqueue(negs)  # 12 vectors into a 10-slot queue: the oldest 2 are dropped
    assert len(gen.queues[0]) == 10 and not gen.queues[0].data.requires_grad
    assert torch.equal(gen.queues[0].get(), negs[0].reshape(-1, 8)[2:].detach())  # the newest 10, in order
    extended = gen.with_queue(negs)
    assert extended[0].shape == (2, 16, 8)
    q = EmbeddingQueue(4, 2)
    q.push(torch.arange(6.).view(3, 2))
    q.push(torch.tensor([[9., 9.], [8., 8.]]))
    assert q.get().tolist() == [[8., 8.], [2., 3.], [4., 5.], [9., 9.]]  # ring buffer, oldest overwritten
    assert len(q) == 4


def test_heads_sized_at_construction():
    heads = PatchProjectionHeads([3, 16], out_dim=8, hidden_dim=12)
    assert sum(p.numel() for p in heads.parameters()) == (3 * 12 + 12 + 12 * 8 + 8) + (16 * 12 + 12 + 12 * 8 + 8)
    out = heads([torch.rand(2, 5, 3), torch.rand(2, 5, 16)])
    assert [tuple(o.shape) for o in out] == [(2, 5, 8), (2, 5, 8)]
    with pytest.raises(ValueError, match='layer 1 has 4 channels, head expects 16'):
        heads([torch.rand(2, 5, 3), torch.rand(2, 5, 4)])


def test_external_encoders_offline(tmp_path, monkeypatch):
    monkeypatch.setenv('IRTOOLKIT_WEIGHTS', str(tmp_path))
    with pytest.raises(MissingWeightsError, match='vgg19-dcbb9e9d.pth'):
        build_encoder({'type': 'vgg', 'layers': ['relu1_1']})
    vgg = build_encoder({'type': 'vgg', 'arch': 'vgg16', 'layers': ['relu1_2', 'relu2_2'], 'pretrained': False})
    assert vgg.channels() == [64, 128] and not any(p.requires_grad for p in vgg.parameters())
    # a VGG state dict in the weights folder is loaded, never downloaded
    from torchvision.models.vgg import cfgs, make_layers
    trunk = make_layers(cfgs['A'])
    torch.nn.init.constant_(trunk[0].bias, 0.25)
    torch.save({f'features.{k}': v for k, v in trunk.state_dict().items()}, tmp_path / 'vgg11-8a719046.pth')
    loaded = build_encoder({'type': 'vgg', 'arch': 'vgg11', 'layers': ['relu1_1']})
    assert loaded.channels() == [64] and torch.all(loaded.external.net.features[0].bias == 0.25)
    res = build_encoder({'type': 'timm', 'model': 'resnet18', 'out_indices': [1, 2], 'pretrained': False})
    res.train()
    assert res.channels() == [64, 128] and not res.external.training
    with pytest.raises(ValueError, match='weight_file'):
        build_encoder({'type': 'timm', 'model': 'resnet18'})
