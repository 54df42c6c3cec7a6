"""ConStyle prior encoder and the ConStyle U-Nets: shapes, queue pointer, momentum, any batch/input size."""
import pytest
import torch

from irtoolkit.archs.constyle_arch import ConStyle
from irtoolkit.utils.registry import build_network

SMALL = dict(dim=8, left_blk_num=[1, 1, 1], bottom_blk_num=1, right_blk_num=[1, 1, 1])


def test_encoder_shapes():
    cs = ConStyle(Train=False).eval()
    latent, feas = cs.encode(torch.rand(2, 3, 32, 48))
    assert latent.shape == (2, 128)
    assert [tuple(f.shape) for f in feas] == [(2, 32, 16, 24), (2, 64, 8, 12), (2, 128, 4, 6)]
    assert not hasattr(cs, 'encoder_k') and 'queue' not in cs.state_dict()
    with pytest.raises(RuntimeError, match='Train=False'):
        cs.train_forward(torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16))


def test_queue_pointer_wraps_and_stores_latents():
    torch.manual_seed(0)
    cs = ConStyle(Train=True, K=10)  # 10 is not a multiple of the batch size 4: wraps around
    before = cs.queue.clone()
    out = cs.train_forward(torch.rand(4, 3, 16, 16), torch.rand(4, 3, 16, 16))
    assert int(cs.queue_ptr) == 4
    assert torch.equal(out['queue'], before)  # the snapshot the loss sees is the pre-step queue
    assert torch.equal(out['neg'][1], before[:, 0:4].t()) and torch.equal(out['neg'][0], before[:, 4:8].t())
    assert torch.allclose(cs.queue[:, :4].t(), out['q'][1].detach())  # enqueue: query (upstream)
    assert torch.equal(cs.queue[:, 4:], before[:, 4:])
    for _ in range(2):
        out = cs.train_forward(torch.rand(4, 3, 16, 16), torch.rand(4, 3, 16, 16))
    assert int(cs.queue_ptr) == 2  # 12 % 10
    latents = out['q'][1].detach()
    assert torch.allclose(cs.queue[:, [8, 9, 0, 1]].t(), latents)
    assert out['logits_q'] is None and out['temperature'] == 0.07


def test_enqueue_key_and_batch_size_one():
    torch.manual_seed(0)
    cs = ConStyle(Train=True, K=8, enqueue='key').train()
    out = cs.train_forward(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16))  # BN1d would fail upstream
    assert torch.allclose(cs.queue[:, 0], out['k'][0])
    assert int(cs.queue_ptr) == 1
    out['q'][1].sum().backward()  # gradients reach the query encoder
    assert cs.encoder_q.stage1[0][0].weight.grad is not None
    assert all(p.grad is None for p in cs.encoder_k.parameters())


def test_momentum_update_and_bad_arguments():
    cs = ConStyle(Train=True, K=4, m=0.5)
    with torch.no_grad():
        for p in cs.encoder_q.parameters():
            p.add_(1.0)
    k_before = [p.clone() for p in cs.encoder_k.parameters()]
    cs.train_forward(torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16))
    for pk, pk0, pq in zip(cs.encoder_k.parameters(), k_before, cs.encoder_q.parameters()):
        assert torch.allclose(pk, 0.5 * pk0 + 0.5 * pq)
    assert not any(p.requires_grad for p in cs.encoder_k.parameters())
    with pytest.raises(ValueError, match='dim must be 128'):
        ConStyle(dim=64)
    with pytest.raises(ValueError, match='enqueue'):
        ConStyle(enqueue='both')


def test_freeze_keeps_eval_mode():
    cs = ConStyle(Train=True, K=4).freeze()
    cs.train()
    assert not cs.training and not cs.encoder_q.mlp1[1].training
    assert not any(p.requires_grad for p in cs.parameters())


@pytest.mark.parametrize('block,extra', [
    ('NAFBlock', {}),
    ('RestormerBlock', {'block_level_opt': {'num_heads': [1, 2, 2, 4, 2, 2, 1]}, 'num_refinement_blocks': 1}),
    ('ResConvBlock', {'affine_act': 'prelu'}),
])
def test_constyle_unet_blocks_and_odd_sizes(block, extra):
    torch.manual_seed(0)
    net = build_network({'type': 'ConStyleUNet', **SMALL, 'block': block, 'constyle_opt': {'K': 16}, **extra}).eval()
    x = torch.rand(1, 3, 37, 53)
    with torch.no_grad():
        y = net(x)
        # the crop of the result on the explicitly reflect-padded image: padding is internal and exact
        xp = torch.nn.functional.pad(x, (0, 3, 0, 3), mode='reflect')
        ref = net.restore(xp, *net.ConStyle.encode(xp))[..., :37, :53]
    assert y.shape == x.shape
    assert torch.allclose(y, ref, atol=1e-6)


def test_forward_with_gt_returns_training_outputs():
    net = build_network({'type': 'ConStyleNAFNet', **SMALL, 'constyle_opt': {'K': 16}}).train()
    lq, gt = torch.rand(3, 3, 30, 34), torch.rand(3, 3, 30, 34)
    out = net(lq, gt)
    assert out['output'].shape == lq.shape
    assert out['k'].shape == (3, 128) and out['queue'].shape == (128, 16)
    assert [tuple(n.shape) for n in out['neg']] == [(3, 128), (3, 128)]
    assert int(net.ConStyle.queue_ptr) == 3
    with pytest.raises(ValueError, match='differ'):
        net(lq, gt[..., :32])


def test_plugin_block(tmp_path):
    from irtoolkit.utils.registry import load_plugins
    plugin = tmp_path / 'my_constyle_block.py'
    plugin.write_text(
        'from torch import nn\n'
        'from irtoolkit.utils.registry import ARCH_REGISTRY\n\n\n'
        '@ARCH_REGISTRY.register()\n'
        'class TestConStyleGatedBlock(nn.Module):\n'
        '    def __init__(self, channels, scale=1.0):\n'
        '        super().__init__()\n'
        '        self.conv = nn.Conv2d(channels, channels, 3, padding=1)\n'
        '        self.scale = scale\n\n'
        '    def forward(self, x):\n'
        '        return x + self.scale * self.conv(x)\n')
    load_plugins([str(plugin)])
    net = build_network({'type': 'ConStyleUNet', **SMALL, 'block': 'TestConStyleGatedBlock',
                         'block_opt': {'scale': 0.5}, 'Train': False})
    assert net.Process_Module_l2[0].conv.in_channels == 16 and net.Process_Module_bottom[0].scale == 0.5
    assert net(torch.rand(1, 3, 24, 24)).shape == (1, 3, 24, 24)
    from irtoolkit.utils.errors import OptionError
    with pytest.raises(OptionError, match='block_opt.scal'):
        build_network({'type': 'ConStyleUNet', **SMALL, 'block': 'TestConStyleGatedBlock', 'block_opt': {'scal': 1}})


def test_kaiming_init_keeps_features_alive():
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    stds = {}
    for init in ('torch', 'kaiming'):
        torch.manual_seed(0)
        enc = ConStyle(Train=False, init=init).encoder_q
        stds[init] = float(enc.pool(enc.stage4(enc.stage3(enc.stage2(enc.stage1(x))))).std())
    assert stds['torch'] < 1e-3 < 1e-2 < stds['kaiming']
    with pytest.raises(ValueError, match='init'):
        ConStyle(init='xavier')
