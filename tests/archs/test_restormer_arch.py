"""Restormer baseline: official parameter count and key names, the block against the paper's einops formulation,
any input size."""
import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

from irtoolkit.archs.restormer_arch import Restormer, RestormerBlock
from irtoolkit.utils.registry import build_network

OFFICIAL_KEYS = [  # a sample of the official Restormer state_dict names and shapes (defaults)
    ('patch_embed.proj.weight', (48, 3, 3, 3)),
    ('encoder_level1.0.norm1.body.weight', (48,)),
    ('encoder_level1.0.attn.temperature', (1, 1, 1)),
    ('encoder_level1.0.attn.qkv.weight', (144, 48, 1, 1)),
    ('encoder_level1.0.attn.qkv_dwconv.weight', (144, 1, 3, 3)),
    ('encoder_level1.0.ffn.project_in.weight', (254, 48, 1, 1)),
    ('down1_2.body.0.weight', (24, 48, 3, 3)),
    ('encoder_level3.5.attn.temperature', (4, 1, 1)),
    ('latent.7.ffn.project_out.weight', (384, 1021, 1, 1)),
    ('up4_3.body.0.weight', (768, 384, 3, 3)),
    ('reduce_chan_level3.weight', (192, 384, 1, 1)),
    ('decoder_level1.3.attn.temperature', (1, 1, 1)),
    ('refinement.3.ffn.dwconv.weight', (510, 1, 3, 3)),
    ('output.weight', (3, 96, 3, 3)),
]


def test_official_defaults_keys_and_count():
    net = Restormer()
    sd = net.state_dict()
    assert sum(p.numel() for p in net.parameters()) == 26_126_644
    for key, shape in OFFICIAL_KEYS:
        assert tuple(sd[key].shape) == shape, key
    assert not any('bias' in k for k in sd if 'norm' not in k)  # bias=False everywhere but LayerNorm
    n_blocks = 4 + 6 + 6 + 8 + 6 + 6 + 4 + 4  # encoders, latent, decoders, refinement
    assert sum(1 for k in sd if k.endswith('attn.temperature')) == n_blocks
    # 11 tensors per block; patch_embed, 3 downs, 3 ups, 2 channel reductions, output
    assert len(sd) == 11 * n_blocks + 1 + 3 + 3 + 2 + 1


def _reference_block(block, x):
    """The block written as in the paper/official code: to_3d LayerNorm, einops heads, softmax over channels."""
    def ln(norm, t):
        h, w = t.shape[-2:]
        t3 = rearrange(t, 'b c h w -> b (h w) c')
        body = norm.body
        mu = t3.mean(-1, keepdim=True)
        var = t3.var(-1, keepdim=True, unbiased=False)
        y = (t3 - mu) / torch.sqrt(var + 1e-5) * body.weight + body.bias
        return rearrange(y, 'b (h w) c -> b c h w', h=h, w=w)

    a = block.attn
    qkv = a.qkv_dwconv(a.qkv(ln(block.norm1, x)))
    q, k, v = qkv.chunk(3, dim=1)
    q, k, v = (rearrange(t, 'b (head c) h w -> b head c (h w)', head=a.num_heads) for t in (q, k, v))
    attn = (F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)) * a.temperature
    out = rearrange(attn.softmax(-1) @ v, 'b head c (h w) -> b (head c) h w', head=a.num_heads, h=x.shape[2])
    x = x + a.project_out(out)
    f = block.ffn
    x1, x2 = f.dwconv(f.project_in(ln(block.norm2, x))).chunk(2, dim=1)
    return x + f.project_out(F.gelu(x1) * x2)


def test_block_matches_reference_formulation():
    torch.manual_seed(0)
    block = RestormerBlock(16, num_heads=4, bias=True)
    with torch.no_grad():
        block.attn.temperature.uniform_(0.5, 2.0)
        block.norm1.body.bias.normal_()
        x = torch.randn(2, 16, 9, 7)
        assert torch.allclose(block(x), _reference_block(block, x), atol=1e-5)


@pytest.mark.parametrize('size', [(24, 32), (19, 30)])
def test_any_size_and_residual(size):
    torch.manual_seed(0)
    net = build_network({'type': 'Restormer', 'dim': 8, 'num_blocks': [1, 1, 1, 1], 'num_refinement_blocks': 1,
                         'heads': [1, 2, 2, 4]}).eval()
    x = torch.rand(1, 3, *size)
    with torch.no_grad():
        torch.nn.init.zeros_(net.output.weight)
        assert torch.equal(net(x), x)  # global residual
        torch.nn.init.normal_(net.output.weight, std=0.1)
        y = net(x)
    assert y.shape == x.shape and not torch.equal(y, x)


def test_dual_pixel_and_bad_args():
    net = Restormer(inp_channels=6, dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, heads=[1, 1, 2, 2],
                    dual_pixel_task=True)
    assert 'skip_conv.weight' in net.state_dict()
    assert net(torch.rand(1, 6, 16, 16)).shape == (1, 3, 16, 16)
    with pytest.raises(ValueError, match='4 entries'):
        Restormer(num_blocks=[1, 1, 1])
    with pytest.raises(ValueError, match='divisible'):
        RestormerBlock(10, num_heads=4)
