"""Tiled inference equals untiled inference (exactly in one tile, within 1e-3 across tiles); irtk-infer."""
import cv2
import numpy as np
import pytest
import torch
from torch import nn

from irtoolkit.archs.nafnet_arch import NAFNet
from irtoolkit.cli import infer as infer_tool
from irtoolkit.utils.checkpoint import atomic_save
from irtoolkit.utils.image_io import read_image
from irtoolkit.inference.tiling import axis_weights, tile_starts, tiled_forward, tiled_forward_whole_image_pooling

NAF_OPT = {'type': 'NAFNet', 'width': 8, 'middle_blk_num': 1, 'enc_blk_nums': [1, 1], 'dec_blk_nums': [1, 1]}


def _nafnet(seed=0):
    """A small NAFNet with non-zero block scales, so every block (and its global channel attention) is active."""
    torch.manual_seed(seed)
    net = NAFNet(**{k: v for k, v in NAF_OPT.items() if k != 'type'})
    with torch.no_grad():
        for m in net.modules():
            if hasattr(m, 'beta'):
                m.beta.normal_(0, 0.3)
                m.gamma.normal_(0, 0.3)
    return net.eval()


class LocalUNet(nn.Module):
    """Down/up-sampling conv net with a receptive field of a few pixels (radius 5 at full resolution)."""

    def __init__(self):
        super().__init__()
        self.a, self.down = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 16, 2, 2)
        self.b, self.up = nn.Conv2d(16, 16, 3, padding=1), nn.ConvTranspose2d(16, 8, 2, 2)
        self.c = nn.Conv2d(8, 3, 3, padding=1)

    def forward(self, x):
        y = torch.relu(self.a(x))
        z = torch.relu(self.b(torch.relu(self.down(y))))
        return self.c(torch.relu(self.up(z) + y)) + x


def _photo(h, w):
    import skimage.data
    img = skimage.data.astronaut()[:h, :w]
    return torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255


def test_blend_weights_sum_to_one_and_cover_everything():
    for length, tile, overlap in [(300, 64, 16), (1000, 256, 32), (257, 128, 24)]:
        starts = tile_starts(length, tile, overlap, align=8)
        assert starts[0] == 0 and starts[-1] + tile == length and all(s % 8 == 0 for s in starts[:-1])
        w = axis_weights(length, tile, starts, overlap // 4)
        total = torch.zeros(length)
        for k, s in enumerate(starts):
            total[s:s + tile] += w[k]
        assert torch.allclose(total, torch.ones(length), atol=1e-6)


def test_image_in_one_tile_is_exactly_untiled():
    net, x = _nafnet(), _photo(100, 130)
    with torch.inference_mode():
        assert torch.equal(tiled_forward(net, x, tile=256, overlap=32, align=4), net(x))


def test_local_network_tiled_is_untiled():
    torch.manual_seed(1)
    net, x = LocalUNet().eval(), _photo(200, 264)
    with torch.inference_mode():
        full = net(x)
        tiled = tiled_forward(net, x, tile=64, overlap=32, margin=8, align=2, batch_size=3)
    assert (tiled - full).abs().max().item() < 1e-5


def test_nafnet_tiled_within_1e3_any_size():
    """NAFNet's channel attention pools the whole input, so tiles see other statistics than the whole image (a
    property of the network, documented in docs/evaluation.md). With those pooled statistics taken from the whole
    image, what is left is the tiling itself: alignment, padding to the grid, blending."""
    net, x = _nafnet(), _photo(203, 317)  # not a multiple of the padder size
    pools = [m.sca[0] for m in net.modules() if hasattr(m, 'sca')]
    full, tiled = tiled_forward_whole_image_pooling(net, x, pools, tile=96, overlap=32, align=net.padder_size,
                                                    batch_size=4)
    assert tiled.shape == full.shape
    assert (tiled - full).abs().max().item() < 1e-3


def test_scale_two_network():
    torch.manual_seed(2)
    net = nn.Sequential(nn.Conv2d(3, 12, 3, padding=1), nn.PixelShuffle(2)).eval()
    x = _photo(90, 150)
    with torch.inference_mode():
        full, tiled = net(x), tiled_forward(net, x, tile=48, overlap=16, margin=2)
    assert tiled.shape == (1, 3, 180, 300) and (tiled - full).abs().max().item() < 1e-5


def test_bad_tiling_arguments():
    with pytest.raises(ValueError, match='2 \\* margin < overlap < tile'):
        tiled_forward(nn.Identity(), torch.rand(1, 3, 100, 100), tile=32, overlap=32)
    with pytest.raises(ValueError, match='one image'):
        tiled_forward(nn.Identity(), torch.rand(2, 3, 10, 10))


@pytest.fixture
def image_folder(tmp_path):
    import skimage.data
    lq, gt = tmp_path / 'lq', tmp_path / 'gt'
    lq.mkdir()
    gt.mkdir()
    for i, (y, x) in enumerate([(0, 0), (200, 150)]):
        clean = skimage.data.coffee()[y:y + 120, x:x + 170]
        noisy = np.clip(clean + np.random.default_rng(i).normal(0, 10, clean.shape), 0, 255).astype(np.uint8)
        cv2.imwrite(str(lq / f'c{i}.png'), noisy[..., ::-1])
        cv2.imwrite(str(gt / f'c{i}.png'), clean[..., ::-1])
    return tmp_path


def test_infer_tool_with_checkpoint_tiles_and_compare(image_folder, tmp_path, capsys):
    net = _nafnet(3)
    ema = _nafnet(4)
    ckpt = tmp_path / 'net_g_latest.pth'
    atomic_save({'params': net.state_dict(), 'params_ema': ema.state_dict()}, str(ckpt))
    out = tmp_path / 'out'
    infer_tool.main(['--net', str(NAF_OPT), '--ckpt', str(ckpt), '--input', str(image_folder / 'lq'),
                     '--output', str(out), '--tile', '64', '--tile-overlap', '24', '--tile-batch', '2', '--compare',
                     '--gt', str(image_folder / 'gt'), '--no-progress'])
    assert 'params_ema' in capsys.readouterr().out
    for i in range(2):
        x = read_image(str(image_folder / 'lq' / f'c{i}.png'))[None]
        with torch.inference_mode():
            expected = ema(x)[0].clamp(0, 1)
        got = read_image(str(out / f'c{i}.png'))
        assert (got - expected).abs().max().item() <= 1 / 255 + 1e-3  # 8-bit rounding + tiling
        strip = cv2.imread(str(out / 'compare' / f'c{i}.png'))
        assert strip.shape == (120, 3 * 170 + 2 * 4, 3)


def test_infer_tool_param_key_and_errors(image_folder, tmp_path):
    net = _nafnet(5)
    bare = tmp_path / 'bare.pth'
    atomic_save(net.state_dict(), str(bare))
    one = str(image_folder / 'lq' / 'c0.png')
    infer_tool.main(['--net', str(NAF_OPT), '--ckpt', str(bare), '--input', one, '--output', str(tmp_path / 'o'),
                     '--tile', '0', '--no-progress'])
    with torch.inference_mode():
        expected = net(read_image(one)[None])[0].clamp(0, 1)
    assert (read_image(str(tmp_path / 'o' / 'c0.png')) - expected).abs().max().item() <= 1 / 255 + 1e-6
    with pytest.raises(SystemExit, match="no 'params_ema' entry"):
        atomic_save({'params': net.state_dict()}, str(tmp_path / 'p.pth'))
        infer_tool.main(['--net', str(NAF_OPT), '--ckpt', str(tmp_path / 'p.pth'), '--param-key', 'params_ema',
                         '--input', one, '--output', str(tmp_path / 'o2')])
    wrong = dict(NAF_OPT, width=16)
    with pytest.raises(SystemExit, match='does not fit NAFNet'):
        infer_tool.main(['--net', str(wrong), '--ckpt', str(bare), '--input', one, '--output', str(tmp_path / 'o3')])


def test_infer_tool_with_constyle_checkpoint(image_folder, tmp_path):
    """ConStyle archs go through the same path: options -> network, params_ema -> load_checkpoint_state."""
    from irtoolkit.utils.registry import ARCH_REGISTRY, build_network
    if 'ConStyleNAFNet' not in ARCH_REGISTRY._obj_map:
        pytest.skip('ConStyleNAFNet not registered in this tree')
    opt = {'type': 'ConStyleNAFNet', 'img_channel': 3, 'dim': 8, 'left_blk_num': [1, 1, 1], 'bottom_blk_num': 1,
           'right_blk_num': [1, 1, 1], 'Train': True, 'constyle_opt': {'K': 64}}
    torch.manual_seed(6)
    net = build_network(opt).eval()
    ckpt = tmp_path / 'constyle.pth'
    atomic_save({'params': net.state_dict(), 'params_ema': net.state_dict()}, str(ckpt))
    one = str(image_folder / 'lq' / 'c1.png')
    infer_tool.main(['--net', str(opt), '--ckpt', str(ckpt), '--input', one, '--output', str(tmp_path / 'o'),
                     '--no-progress'])
    with torch.inference_mode():
        expected = net(read_image(one)[None])[0].clamp(0, 1)
    assert (read_image(str(tmp_path / 'o' / 'c1.png')) - expected).abs().max().item() <= 1 / 255 + 1e-6


def test_out_of_memory_halves_the_tile_and_runs_again():
    """A network that runs out of memory above 64 px tiles: whole image (160) -> 80 -> 64 px tiles, then the same
    output as 64 px tiles."""
    from irtoolkit.inference.tiling import tiled_forward, tiled_forward_fit
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 3, 3, padding=1)
    tried = []

    def small_memory(x):
        tried.append(x.shape[-1])
        if x.shape[-1] > 64:
            raise RuntimeError('CUDA out of memory. Tried to allocate 2.00 GiB')
        return conv(x)

    img = torch.rand(1, 3, 160, 160)
    out = tiled_forward_fit(small_memory, img, 256, overlap=16, device='cpu')
    assert tried[:2] == [160, 80] and set(tried[2:]) == {64}
    assert torch.equal(out, tiled_forward(conv, img, 64, overlap=16))
    with pytest.raises(RuntimeError, match='shape mismatch'):  # other errors are not retried
        tiled_forward_fit(lambda x: (_ for _ in ()).throw(RuntimeError('shape mismatch')), img, 128, overlap=16,
                          device='cpu')


def test_infer_tool_tiles_exactly_by_default(image_folder, tmp_path, capsys):
    """``--tile-exact auto`` (the default) runs NAFNet's exact schedule: 8-bit rounding is the only difference to the
    whole image; ``true`` on a network without a schedule is one line and exit status 2."""
    net = _nafnet(7)
    ckpt = tmp_path / 'n.pth'
    atomic_save({'params': net.state_dict()}, str(ckpt))
    one = str(image_folder / 'lq' / 'c0.png')
    infer_tool.main(['--net', str(NAF_OPT), '--ckpt', str(ckpt), '--input', one, '--output', str(tmp_path / 'o'),
                     '--tile', '32', '--no-progress'])
    assert 'exact auto' in capsys.readouterr().out
    with torch.inference_mode():
        expected = net(read_image(one)[None])[0].clamp(0, 1)
    assert (read_image(str(tmp_path / 'o' / 'c0.png')) - expected).abs().max().item() <= 1 / 255 + 1e-5
    blended_only = {'type': 'ResnetGenerator', 'ngf': 8, 'num_blocks': 1}  # instance norm, no schedule
    code = infer_tool.main(['--net', str(blended_only), '--input', one, '--output', str(tmp_path / 'o2'),
                            '--tile', '32', '--tile-exact', 'true', '--no-progress'])
    assert code == 2 and 'no exact tile schedule' in capsys.readouterr().err
