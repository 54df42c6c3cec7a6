"""Tiled inference of every registered arch against its whole-image output (issue 23).

Networks with a schedule in :mod:`irtoolkit.inference.exact_tiling` must match within 1e-4 at two image sizes (odd
sides, not multiples of the tile) and two tile grids; every other image-to-image arch goes through the blended tiles
of :mod:`irtoolkit.inference.tiling`, and its measured deviation must stay below the bound docs/evaluation.md
states (``BLENDED_BOUND``). Archs that are not image-to-image networks are skipped with the reason.

The networks are small (widths 8, one block per level) with every parameter drawn anew: weights ~ N(0, 1/fan-in),
vectors (biases, norm scales, NAFNet's beta/gamma) ~ N(0, 0.5), so that every block and every global statistic
acts (at their initial values NAFNet's blocks are the identity and would hide a broken schedule).

    python tests/inference/test_exact_tiling.py      # prints the per-arch table of docs/evaluation.md
"""
import pytest
import torch

from irtoolkit.inference import exact_tiling
from irtoolkit.inference.exact_tiling import exact_tiled_forward, supports_exact_tiling
from irtoolkit.inference.export import size_multiple
from irtoolkit.inference.tiling import _as_output, tiled_forward
from irtoolkit.utils.registry import ARCH_REGISTRY, build_network, import_package_modules

EXACT_TOL = 1e-4
SIZES = ((67, 101), (96, 80))  # odd sides; neither a multiple of any tile below
# basicsr's SwinIR does not pad: its sides must be multiples of its window (4 here). MAXIM and Uformer pad to 32:
# the second image is larger, so that both grids (64 and 96 px tiles) split it
_PAD32 = ((67, 101), (130, 111))
SIZES_OF = {'SwinIR': ((68, 100), (96, 80)), 'Maxim': _PAD32, 'ConStyleMaxim': _PAD32, 'Uformer': _PAD32,
            'ConStyleUformer': _PAD32}
EXACT_TILES = (32, 48)  # core tile sides at full resolution (>= 2 tiles per axis at full resolution)
BLENDED_OVERLAP = 32  # margin overlap // 4 = 8 px, as irtk-infer's default

_MAXIM = dict(features=8, block_size_hr=(4, 4), grid_size_hr=(4, 4), block_size_lr=(2, 2), grid_size_lr=(4, 4))
_UFORMER = dict(img_size=32, embed_dim=8, depths=[1, 2, 1, 1, 1, 1, 1, 2, 1], num_heads=[1, 2, 2, 2, 2, 2, 2, 2, 1],
                win_size=4)
_CS = dict(dim=8, left_blk_num=[1, 1, 1], bottom_blk_num=1, right_blk_num=[1, 1, 1], Train=False)

# arch: small configuration (an exact schedule is expected for the names in EXACT)
CONFIGS = {
    'NAFNet': dict(width=8, middle_blk_num=1, enc_blk_nums=[1, 1], dec_blk_nums=[1, 1]),
    'KBNet': dict(width=8, middle_blk_num=1, enc_blk_nums=[1, 1], dec_blk_nums=[1, 1]),
    'Restormer': dict(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, heads=[1, 2, 2, 4]),
    'ConStyleNAFNet': dict(_CS),
    'ConStyleRestormer': dict(_CS, num_refinement_blocks=1, heads=[1, 2, 2, 4]),
    'ConStyleKBNet': dict(_CS),
    'ConStyleUNet': dict(_CS, block='ResConvBlock', num_refinement_blocks=1),
    'Maxim': dict(_MAXIM),
    'ConStyleMaxim': dict(_MAXIM, bottom_blk_num=1, Train=False),
    'Uformer': dict(_UFORMER),
    'ConStyleUformer': dict(img_size=32, dim=8, depths=[1, 2, 1, 1, 1, 2, 1], num_heads=[1, 2, 2, 2, 2, 2, 1],
                            win_size=4, Train=False),
    'SwinIR': dict(img_size=16, embed_dim=12, depths=[1, 1], num_heads=[2, 2], window_size=4, mlp_ratio=2,
                   upscale=1, upsampler='', resi_connection='1conv'),
    'EDSR': dict(num_in_ch=3, num_out_ch=3, num_feat=8, num_block=2, upscale=2),
    'RCAN': dict(num_in_ch=3, num_out_ch=3, num_feat=8, num_group=1, num_block=2, squeeze_factor=4, upscale=2),
    'RIDNet': dict(in_channels=3, mid_channels=16, out_channels=3, num_block=1),
    'RRDBNet': dict(num_in_ch=3, num_out_ch=3, scale=4, num_feat=8, num_block=1, num_grow_ch=4),
    'MSRResNet': dict(num_feat=8, num_block=2, upscale=2),
    'SRVGGNetCompact_basicsr': dict(num_feat=8, num_conv=4, upscale=2),
    'ECBSR': dict(num_in_ch=3, num_out_ch=3, num_block=2, num_channel=8, with_idt=False, act_type='prelu', scale=2),
    'ResnetGenerator': dict(ngf=8, num_blocks=2),
    'NLCLResGenerator': dict(nf=8, num_blocks=2, global_residual=True),
}
EXACT = {'NAFNet', 'KBNet', 'Restormer', 'ConStyleNAFNet', 'ConStyleRestormer', 'ConStyleKBNet', 'ConStyleUNet',
         'NLCLResGenerator'}

# blended tiles: the bound on max |tiled - whole| that docs/evaluation.md states (about 2x the measured maximum
# over the two sizes and grids; the measured values are in the docs' table)
BLENDED_BOUND = {
    # local networks (receptive field within the 8 px margin here): float rounding only
    'EDSR': 1e-4, 'MSRResNet': 1e-4, 'RRDBNet': 1e-4, 'SRVGGNetCompact_basicsr': 1e-4, 'ECBSR': 1e-4,
    'SwinIR': 2e-4,  # shifted 4 px windows, two layers: nearly local
    'RCAN': 4e-3, 'RIDNet': 5e-3,  # channel attention (global average pooling)
    'ResnetGenerator': 1.6,  # instance normalisation (per-image statistics), reflection padding
    'Uformer': 1.8, 'ConStyleUformer': 2.8,  # windows on a grid of the whole image, modulators, global latent
    'Maxim': 50, 'ConStyleMaxim': 70,  # global MLPs over grids of the whole image (random weights: outputs ~30-70)
}

_VIDEO = 'a video network: a clip (B, T, C, H, W) in; tiling of clips is not implemented'
_CRITIC = 'a discriminator: scores images, never restores one (nothing to tile at inference)'
_BLOCK = 'a block, not a network: tiled inside the networks that use it'
SKIPS = {
    'BasicVSR': _VIDEO, 'BasicVSRPlusPlus': _VIDEO, 'IconVSR': _VIDEO, 'EDVR': _VIDEO, 'DUF': _VIDEO,
    'TOFlow': _VIDEO,
    'SpyNet': 'optical flow between two frames, not an image-to-image network',
    'PatchGANDiscriminator': _CRITIC, 'HiFaceGANDiscriminator': _CRITIC, 'StyleGAN2Discriminator': _CRITIC,
    'UNetDiscriminatorSN_basicsr': _CRITIC, 'VGGStyleDiscriminator': _CRITIC,
    'VGGFeatureExtractor': 'returns a dict of VGG features, not an image',
    'StyleGAN2Generator': 'generates faces from style latents; no input image',
    'HiFaceGAN': 'a face generator at a fixed crop size (512) built around SPADE on the whole face; no tiled use',
    'DFDNet': "needs DFDNet's face-component dictionary file (dict_path), not available offline; whole faces only",
    'ConStyle': 'the prior encoder: returns latents (its tiling is exact inside the ConStyle networks)',
    'NegativeGenerator': 'makes negative latents for contrastive losses; no image in or out',
    'NAFBlock': _BLOCK, 'RestormerBlock': _BLOCK, 'KBBlock_s': _BLOCK, 'ResConvBlock': _BLOCK,
}


def registered():
    import_package_modules()
    # the package's and basicsr's archs; other tests register plugin archs into the same process
    return sorted(name for name, cls in ARCH_REGISTRY
                  if cls.__module__.split('.')[0] in ('irtoolkit', 'basicsr'))


def small(name, seed=0):
    """The small ``name`` network in eval mode with every parameter drawn anew (see the module docstring)."""
    torch.manual_seed(seed)
    net = build_network({'type': name, **CONFIGS[name]}).eval()
    with torch.no_grad():
        for p in net.parameters():
            if p.numel():
                p.normal_(0, p[0].numel() ** -0.5 if p.dim() > 1 else 0.5)
    return net


def image(size, channels=3, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(1, channels, *size, generator=gen)


def blended_align(net):
    """The tile grid multiple: what the network pads to (``padder_size`` / ``pad_multiple``), else SwinIR's window,
    else 1. (An align the network does not pad to itself adds zero rows the network then processes: the last
    pixels before the bottom/right border change.)"""
    if any(hasattr(m, name) for m in net.modules() for name in ('pad_multiple', 'padder_size')):
        return size_multiple(net)
    return max([getattr(m, 'window_size', 1) for m in net.modules() if isinstance(getattr(m, 'window_size', 1), int)])


def blended_grids(net):
    """Two (tile, overlap) grids for the blended tiles, on the network's grid multiple."""
    align = blended_align(net)
    first = max(64, 2 * align)
    return align, ((first, BLENDED_OVERLAP), (first + align, BLENDED_OVERLAP))


@torch.inference_mode()
def deviations(name):
    """{(size, tile): max |tiled - whole|} for arch ``name``: exact tiles for the EXACT archs, else blended."""
    net = small(name)
    out = {}
    for size in SIZES_OF.get(name, SIZES):
        x = image(size)
        whole = _as_output(net(x))
        if name in EXACT:
            for tile in EXACT_TILES:
                out[size, tile] = (exact_tiled_forward(net, x, tile) - whole).abs().max().item()
        else:
            align, grids = blended_grids(net)
            for tile, overlap in grids:
                tiled = tiled_forward(net, x, tile, overlap, align=align)
                out[size, tile] = (tiled - whole).abs().max().item()
    return out


def test_every_registered_arch_is_checked_or_skipped_with_a_reason():
    names = registered()
    unknown = [n for n in names if n not in CONFIGS and n not in SKIPS]
    assert not unknown, f'add a small configuration (CONFIGS) or a reason (SKIPS) for {unknown}'
    assert not set(CONFIGS) & set(SKIPS)
    assert EXACT <= set(CONFIGS) and set(BLENDED_BOUND) == set(CONFIGS) - EXACT


@pytest.mark.parametrize('name', sorted(CONFIGS))
def test_tiled_equals_whole_image(name):
    if name not in registered():
        pytest.skip(f'{name} is not registered here')
    net = small(name)
    assert supports_exact_tiling(net) == (name in EXACT)
    measured = deviations(name)
    worst = max(measured.values())
    assert worst == worst, f'{name}: NaN output'  # a NaN would pass the comparison below
    bound = EXACT_TOL if name in EXACT else BLENDED_BOUND[name]
    assert worst <= bound, (name, measured)


@pytest.mark.parametrize('name', sorted(SKIPS))
def test_not_an_image_to_image_network(name):
    pytest.skip(SKIPS[name])


# ------------------------------------------------------------------------------------------------- sensitivity
@pytest.mark.parametrize('name', ['NAFNet', 'Restormer', 'ConStyleNAFNet', 'NLCLResGenerator'])
def test_statistics_over_the_halos_are_caught(name, monkeypatch):
    """The check above can fail on a slightly wrong schedule: global statistics summed over each tile's whole
    region (its 1-4 px halo counted twice, where tiles meet) instead of its core. Statistics of each tile alone
    (naive tiles) are caught by test_tiled_forward_exact_option_dispatches."""
    net, x = small(name), image(SIZES[0])
    with torch.inference_mode():
        whole = net(x)
    monkeypatch.setattr(exact_tiling, 'core_pixel_sum', lambda fn, t, core: fn(exact_tiling.pixel_rows(t)))
    with torch.inference_mode():
        broken = exact_tiled_forward(net, x, EXACT_TILES[0])
    assert (broken - whole).abs().max().item() > 10 * EXACT_TOL


def test_the_grid_really_splits_every_level():
    """Each sweep of the test's smaller image and tile runs several tiles at full resolution, and the schedule as a
    whole runs many more tiles than sweeps (a grid of one tile per sweep would make the exactness check vacuous)."""
    net, x = small('NAFNet'), image(SIZES[0])
    calls = []
    real = exact_tiling.Schedule.sweep

    def counting(self, fn, src, *args, **kwargs):
        def counted(*tiles, core):
            calls[-1][1] += 1
            return fn(*tiles, core=core)
        calls.append([src.shape[-1], 0])
        return real(self, counted, src, *args, **kwargs)

    exact_tiling.Schedule.sweep = counting
    try:
        exact_tiled_forward(net, x, EXACT_TILES[0])
    finally:
        exact_tiling.Schedule.sweep = real
    full_res = [n for width, n in calls if width >= x.shape[-1]]
    assert full_res and min(full_res) >= 4, calls
    assert sum(n for _, n in calls) >= 3 * len(calls), calls


# ------------------------------------------------------------------------------------------------- the entry
def test_tiled_forward_exact_option_dispatches():
    net, x = small('NAFNet'), image(SIZES[1])
    with torch.inference_mode():
        whole = net(x)
        for exact in (True, 'auto'):
            assert (tiled_forward(net, x, 32, exact=exact) - whole).abs().max().item() <= EXACT_TOL
        blended = tiled_forward(net, x, 32, 16, align=4, exact=False)
    assert (blended - whole).abs().max().item() > 100 * EXACT_TOL  # the global statistics differ per tile
    local = small('EDSR')
    with torch.inference_mode():
        auto = tiled_forward(local, x, 32, 16, exact='auto')  # no schedule: blended tiles
    assert auto.shape == (1, 3, 2 * x.shape[2], 2 * x.shape[3])
    with pytest.raises(ValueError, match='no schedule for EDSR'):
        tiled_forward(local, x, 32, 16, exact=True)
    with pytest.raises(ValueError, match='exact must be'):
        tiled_forward(net, x, 32, exact='yes')


def test_an_image_within_one_tile_runs_whole_bit_for_bit():
    net, x = small('Restormer'), image(SIZES[0])
    with torch.inference_mode():
        assert torch.equal(exact_tiled_forward(net, x, 128), net(x))


@pytest.mark.parametrize('name', ['NAFNet', 'ConStyleRestormer'])
def test_thin_images_and_strips_exact(name):
    """Images thinner than the padding multiple (NAFNet pads 3 rows to 4, ConStyle reflects 9 columns to 16), a
    tile smaller than the deepest level's map, and a tile large enough for full-width strips (100x200, 128)."""
    net = small(name)
    for size, tile in (((3, 200), 32), ((200, 9), 16), ((130, 66), 16), ((100, 200), 128)):
        x = image(size)
        with torch.inference_mode():
            assert (exact_tiled_forward(net, x, tile) - net(x)).abs().max().item() <= EXACT_TOL, size


def test_wrapped_network_and_output_device():
    net, x = small('ConStyleRestormer'), image(SIZES[1])
    wrapped = torch.nn.DataParallel(net)  # looked through; runs on the CPU here
    assert supports_exact_tiling(wrapped)
    with torch.inference_mode():
        got = exact_tiled_forward(wrapped, x, 32, out_device='cpu')
        assert (got - net(x)).abs().max().item() <= EXACT_TOL


if __name__ == '__main__':  # the table of docs/evaluation.md
    import time
    print('| arch | tiling | max abs diff (4 runs) | bound asserted | max abs output | seconds |')
    print('|---|---|---:|---:|---:|---:|')
    for arch in sorted(CONFIGS):
        start = time.perf_counter()
        worst = max(deviations(arch).values())
        with torch.inference_mode():
            scale = max(_as_output(small(arch)(image(size))).abs().max().item() for size in SIZES_OF.get(arch, SIZES))
        kind = 'exact' if arch in EXACT else 'blended'
        print(f'| {arch} | {kind} | {worst:.1e} | {EXACT_TOL if arch in EXACT else BLENDED_BOUND[arch]:g} | '
              f'{scale:.2g} | {time.perf_counter() - start:.1f} |', flush=True)
