"""Restoration losses: FFTLoss, FocalFrequencyLoss, MSSSIMLoss, MSSSIML1Loss, IQALoss (and basicsr's
CharbonnierLoss in the runner): closed-form values, independent re-computations, gradients, MS-SSIM against pyiqa,
offline weights, and a short training run of each through the runner."""
import math
import re

import numpy as np
import pytest
import skimage.data
import torch
from irtk_testutils import shrink_recipe, write_options

from irtoolkit.engine.runner import train as run_train
from irtoolkit.losses.fft_loss import FFTLoss
from irtoolkit.losses.focal_frequency_loss import FocalFrequencyLoss
from irtoolkit.losses.iqa_loss import IQALoss
from irtoolkit.losses.ms_ssim_l1_loss import MSSSIML1Loss, gaussian_weighted_l1
from irtoolkit.losses.ms_ssim_loss import MSSSIMLoss, gaussian_window, min_size
from irtoolkit.utils.errors import OptionError
from irtoolkit.utils.registry import build_loss
from irtoolkit.utils.weights import MissingWeightsError


def _rand(*shape, seed=0, dtype=torch.float64):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _photo_pair(photo, seed, size, sigma, offset):
    """A clean 8-bit crop of a scikit-image photo and a noisy copy, (1, 3, H, W) float32 in [0, 1]."""
    img = getattr(skimage.data, photo)()
    gt = img[offset[0]:offset[0] + size[0], offset[1]:offset[1] + size[1]]
    noisy = np.clip(gt + np.random.default_rng(seed).normal(0, sigma, gt.shape), 0, 255).round().astype(np.uint8)
    return tuple(torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None].float() / 255 for a in (noisy, gt))


# --------------------------------------------------------------------------------------------------------------
# closed forms


@pytest.mark.parametrize('loss', [FFTLoss(), FFTLoss(norm='ortho'), FocalFrequencyLoss(),
                                  FocalFrequencyLoss(alpha=2, patch_factor=2, log_matrix=True, batch_matrix=True),
                                  MSSSIMLoss(scales=2), MSSSIML1Loss(scales=2)], ids=lambda m: type(m).__name__)
def test_identical_images_give_zero(loss):
    x = _rand(2, 3, 32, 34, dtype=torch.float32)
    assert loss(x, x).item() == pytest.approx(0, abs=1e-6)
    assert loss(x, 1 - x).item() > 0.01


def test_fft_loss_of_a_delta():
    """A unit impulse has the flat spectrum 1 (backward) or 1/sqrt(HW) (ortho), all real: 2x2 -> 4 real parts of 1
    and 4 imaginary parts of 0."""
    pred, target = torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2)
    pred[0, 0, 0, 0] = 1
    assert FFTLoss()(pred, target).item() == pytest.approx(0.5)
    assert FFTLoss(norm='ortho')(pred, target).item() == pytest.approx(0.25)
    assert FFTLoss(loss_weight=0.1, reduction='sum')(pred, target).item() == pytest.approx(0.4)


@pytest.mark.parametrize('norm, scale', [('backward', 1.0), ('ortho', None)])
def test_fft_loss_equals_the_dft_sum(norm, scale):
    """The one-sided DFT written out as its sum, real and imaginary parts, mean absolute difference."""
    b, c, h, w = 2, 2, 3, 5
    pred, target = _rand(b, c, h, w, seed=1).numpy(), _rand(b, c, h, w, seed=2).numpy()
    scale = 1 / math.sqrt(h * w) if scale is None else scale
    diffs = []
    for img in range(b):
        for ch in range(c):
            for k in range(h):
                for m in range(w // 2 + 1):
                    phase = np.exp(-2j * np.pi * (k * np.arange(h)[:, None] / h + m * np.arange(w)[None] / w))
                    d = scale * ((pred[img, ch] - target[img, ch]) * phase).sum()
                    diffs += [abs(d.real), abs(d.imag)]
    got = FFTLoss(norm=norm)(torch.from_numpy(pred), torch.from_numpy(target)).item()
    assert got == pytest.approx(np.mean(diffs), rel=1e-12)


@pytest.mark.parametrize('kwargs, expected', [
    ({}, (1 + 2 * 0.5 ** 1.5) / 4),  # w = |dF| / max = [1, .707, 0, .707], d = |dF|^2 = [1, .5, 0, .5]
    ({'alpha': 2.0}, (1 + 2 * 0.25) / 4),  # w = d
    ({'alpha': 0.0}, (1 + 0.5 + 0 + 0.5) / 4),  # w = 1 everywhere (0^0 = 1): the plain squared distance
    ({'log_matrix': True}, (1 + 2 * 0.5 * math.log1p(0.5 ** 0.5) / math.log(2)) / 4),
])
def test_focal_frequency_loss_closed_form(kwargs, expected):
    """pred = [1, 1, 0, 0] against 0: orthonormal DFT [1, (1-i)/2, 0, (1+i)/2], |dF| = [1, 1/sqrt2, 0, 1/sqrt2]."""
    pred = torch.tensor([[[[1., 1., 0., 0.]]]], dtype=torch.float64)
    assert FocalFrequencyLoss(**kwargs)(pred, torch.zeros_like(pred)).item() == pytest.approx(expected, rel=1e-12)


def _ffl_numpy(pred, target, alpha=1.0, patch_factor=1, ave_spectrum=False, log_matrix=False, batch_matrix=False):
    """The paper's loss with numpy, patch by patch."""
    b, c, h, w = pred.shape
    p = patch_factor
    ph, pw = h // p, w // p

    def spectra(x):
        patches = [x[:, :, i * ph:(i + 1) * ph, j * pw:(j + 1) * pw] for i in range(p) for j in range(p)]
        return np.fft.fft2(np.stack(patches, 1), norm='ortho')  # (B, P, C, ph, pw)

    fp, ft = spectra(pred), spectra(target)
    if ave_spectrum:
        fp, ft = fp.mean(0, keepdims=True), ft.mean(0, keepdims=True)
    dist = np.abs(fp - ft) ** 2
    wm = np.abs(fp - ft) ** alpha
    if log_matrix:
        wm = np.log(wm + 1)
    wm = wm / (wm.max() if batch_matrix else wm.max(axis=(-2, -1), keepdims=True))
    return float(np.mean(np.clip(wm, 0, 1) * dist))


@pytest.mark.parametrize('kwargs', [{}, {'alpha': 0.5}, {'patch_factor': 2}, {'ave_spectrum': True},
                                    {'log_matrix': True}, {'batch_matrix': True},
                                    {'alpha': 2.0, 'patch_factor': 2, 'log_matrix': True, 'batch_matrix': True}])
def test_focal_frequency_loss_equals_numpy(kwargs):
    pred, target = _rand(3, 2, 8, 6, seed=3), _rand(3, 2, 8, 6, seed=4)
    got = FocalFrequencyLoss(loss_weight=2.0, **kwargs)(pred, target).item()
    assert got == pytest.approx(2.0 * _ffl_numpy(pred.numpy(), target.numpy(), **kwargs), rel=1e-10)


def test_gaussian_weighted_l1_of_one_pixel():
    """An error at the centre of a large image keeps its whole Gaussian mass; at a corner the quadrant inside."""
    target = torch.zeros(1, 1, 64, 64, dtype=torch.float64)
    centre, corner = target.clone(), target.clone()
    centre[0, 0, 32, 32] = 1
    corner[0, 0, 0, 0] = 1
    assert gaussian_weighted_l1(centre, target, 3.0).item() == pytest.approx(1 / 64 ** 2, rel=1e-9)
    corner_mass = gaussian_window(19, 3.0, torch.float64)[9:].sum().item() ** 2  # the quadrant inside the image
    assert gaussian_weighted_l1(corner, target, 3.0).item() == pytest.approx(corner_mass / 64 ** 2, rel=1e-9)
    assert 0.32 < corner_mass < 0.33
    pred = _rand(2, 3, 64, 64, seed=5)
    mix = MSSSIML1Loss(alpha=0.0, scales=1, l1_sigma=3.0)(pred, target.expand(2, 3, 64, 64))
    assert mix.item() == pytest.approx(gaussian_weighted_l1(pred, target, 3.0).mean().item(), rel=1e-12)


def test_ms_ssim_l1_is_the_weighted_sum():
    pred, target = _photo_pair('astronaut', 0, (64, 64), 20, (60, 120))
    ms = MSSSIMLoss(scales=3)(pred, target).item()
    l1 = gaussian_weighted_l1(pred, target, 8.0).mean().item()
    assert MSSSIML1Loss(scales=3)(pred, target).item() == pytest.approx(0.84 * ms + 0.16 * l1, rel=1e-5)


def test_ms_ssim_too_small_is_one_line_naming_the_size():
    assert [min_size(s) for s in range(1, 6)] == [11, 21, 41, 81, 161]
    x = torch.rand(1, 3, 128, 160)
    with pytest.raises(OptionError) as err:
        MSSSIMLoss()(x, x)
    msg = str(err.value)
    assert '\n' not in msg and '128x160' in msg and 'at least 161x161' in msg and 'scales 4 from 81' in msg
    assert MSSSIMLoss(scales=4)(x, x).item() == pytest.approx(0, abs=1e-6)
    x = torch.rand(1, 3, 161, 161)
    assert MSSSIMLoss()(x, x).item() == pytest.approx(0, abs=1e-6)
    with pytest.raises(OptionError, match='scales must be an int from 1 to 5'):
        build_loss({'type': 'MSSSIML1Loss', 'scales': 6})


# --------------------------------------------------------------------------------------------------------------
# gradients (float64, tiny inputs)


@pytest.mark.parametrize('norm', ['backward', 'ortho'])
def test_fft_loss_gradcheck(norm):
    pred, target = _rand(1, 2, 4, 5, seed=6).requires_grad_(), _rand(1, 2, 4, 5, seed=7)
    assert torch.autograd.gradcheck(lambda p: FFTLoss(norm=norm)(p, target), (pred, ))


def test_focal_frequency_loss_gradient_treats_the_weight_as_constant():
    """The weight matrix is detached: the gradient is that of ``w * d`` with ``w`` fixed at its current value."""
    loss = FocalFrequencyLoss(patch_factor=2)
    pred, target = _rand(2, 2, 4, 6, seed=8).requires_grad_(), _rand(2, 2, 4, 6, seed=9)
    with torch.no_grad():
        weight = loss.weight_matrix(loss.spectrum(pred) - loss.spectrum(target))
    assert torch.autograd.gradcheck(lambda p: loss(p, target, matrix=weight), (pred, ))
    online, = torch.autograd.grad(loss(pred, target), pred)
    fixed, = torch.autograd.grad(loss(pred, target, matrix=weight), pred)
    torch.testing.assert_close(online, fixed, rtol=1e-12, atol=0)


def test_ms_ssim_gradcheck_five_scales():
    """5 scales on the minimum 161x161 (fast mode: a random projection of the Jacobian, so a few evaluations)."""
    target = _rand(1, 1, 161, 161, seed=10)
    pred = (target + 0.1 * _rand(1, 1, 161, 161, seed=11)).requires_grad_()
    assert torch.autograd.gradcheck(lambda p: MSSSIMLoss()(p, target), (pred, ), fast_mode=True)


def test_ms_ssim_and_mix_gradcheck_small():
    target = _rand(1, 1, 21, 22, seed=12)
    pred = (target + 0.2 * _rand(1, 1, 21, 22, seed=13)).requires_grad_()
    assert torch.autograd.gradcheck(lambda p: MSSSIMLoss(scales=2)(p, target), (pred, ))
    assert torch.autograd.gradcheck(lambda p: MSSSIML1Loss(scales=2, l1_sigma=1.5)(p, target), (pred, ),
                                    fast_mode=True)


# --------------------------------------------------------------------------------------------------------------
# MS-SSIM against pyiqa


@pytest.fixture(scope='module')
def photo_pairs():
    """Noisy / clean photo crops of an even size and of the minimum height with an odd width."""
    return [_photo_pair('astronaut', 0, (168, 168), 12, (60, 120)),
            _photo_pair('coffee', 1, (161, 175), 30, (100, 200))]


def test_ms_ssim_equals_pyiqa(photo_pairs):
    """pyiqa's ``ms_ssim`` on R, G, B (``test_y_channel: false``) and on its Y (its default).

    Inputs are 8-bit, so pyiqa's rounding to 8 bits changes nothing on RGB; measured differences <= 1e-7 on these
    pairs (float32 here, float64 and float32 weights in pyiqa). On Y pyiqa rounds the (non-integer) luma to 8 bits
    and this loss does not: measured <= 9e-5; on grey images (R = G = B, integer luma) 1.5e-7, like RGB."""
    from irtoolkit.utils.pyiqa_offline import build_pyiqa_metric
    rgb, y = build_pyiqa_metric('ms_ssim', test_y_channel=False), build_pyiqa_metric('ms_ssim')
    rgb_loss, y_loss = MSSSIMLoss(), MSSSIMLoss(y_channel=True)
    for pred, target in photo_pairs:
        d_rgb = abs(rgb_loss.similarity(pred, target).item() - rgb(pred, target).item())
        d_y = abs(y_loss.similarity(pred, target).item() - y(pred, target).item())
        print(f'MS-SSIM - pyiqa ms_ssim, {pred.shape[-2]}x{pred.shape[-1]}: RGB {d_rgb:.1e}, Y {d_y:.1e}')  # with -s
        assert d_rgb < 1e-6 and d_y < 3e-4
    pred, target = (t.mean(1, keepdim=True).mul(255).round().div(255).expand(-1, 3, -1, -1) for t in photo_pairs[1])
    d_grey = abs(y_loss.similarity(pred, target).item() - y(pred, target).item())
    print(f'MS-SSIM - pyiqa ms_ssim, grey: Y {d_grey:.1e}')
    assert d_grey < 1e-6
    pred, target = photo_pairs[0]
    assert rgb_loss(pred, target).item() == pytest.approx(1 - rgb_loss.similarity(pred, target).item(), abs=1e-7)


# --------------------------------------------------------------------------------------------------------------
# IQALoss


def test_iqa_loss_ssim_is_one_minus_pyiqa_ssim_with_gradients(photo_pairs):
    from irtoolkit.utils.pyiqa_offline import build_pyiqa_metric
    noisy, clean = (t[..., :96, :96] for t in photo_pairs[0])
    loss = build_loss({'type': 'IQALoss', 'metric': 'ssim'})
    assert not loss.lower_better and loss.full_reference
    assert not any(p.requires_grad for p in loss.parameters())
    pred = noisy.clone().requires_grad_()
    value = loss(pred, clean)
    assert value.item() == pytest.approx(1 - build_pyiqa_metric('ssim')(noisy, clean).item(), abs=1e-6)
    value.backward()
    assert torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0
    # a step against the gradient moves towards the target: the loss falls
    with torch.no_grad():
        assert loss(pred - 1e-3 * pred.grad.sign(), clean).item() < value.item()
    assert loss(clean, clean).item() == pytest.approx(0, abs=1e-6)
    per_image = IQALoss('ssim', reduction='none', loss_weight=2.0)(torch.cat([noisy, clean]), torch.cat([clean] * 2))
    assert per_image.shape == (2, ) and per_image[0].item() == pytest.approx(2 * value.item(), abs=2e-6)


def test_iqa_loss_lower_better_metric_is_the_score():
    """GMSD (lower is better) is used as it is: the loss is pyiqa's score, and grows with the distortion."""
    from irtoolkit.utils.pyiqa_offline import build_pyiqa_metric
    target = _rand(2, 3, 48, 48, seed=14, dtype=torch.float32)
    noisy = (target + 0.1 * _rand(2, 3, 48, 48, seed=15, dtype=torch.float32)).clamp(0, 1)
    loss = IQALoss('gmsd')
    assert loss.lower_better
    score = build_pyiqa_metric('gmsd')(noisy, target).mean().item()
    assert loss(noisy, target).item() == pytest.approx(score, rel=1e-5)
    assert loss((target + noisy) / 2, target).item() < loss(noisy, target).item()


def test_iqa_loss_without_weights_names_the_file(tmp_path, monkeypatch):
    folder = tmp_path / 'no_weights'
    monkeypatch.setenv('IRTOOLKIT_WEIGHTS', str(folder))
    with pytest.raises(MissingWeightsError) as err:
        build_loss({'type': 'IQALoss', 'metric': 'dists'})
    msg = str(err.value)
    assert '\n' not in msg and err.value.filename == 'vgg16-397923af.pth'
    assert msg.startswith(f'loss IQALoss (dists) needs weight file vgg16-397923af.pth: put it in {folder}')
    with pytest.raises(OptionError, match=r"unknown pyiqa metric 'dist'; closest: dists"):
        build_loss({'type': 'IQALoss', 'metric': 'dist'})


# --------------------------------------------------------------------------------------------------------------
# each loss trains in the runner


TRAINED = {
    'fft': {'type': 'FFTLoss', 'loss_weight': 0.1},
    'ffl': {'type': 'FocalFrequencyLoss', 'loss_weight': 1.0},
    'msssim': {'type': 'MSSSIMLoss', 'scales': 2},  # 32x32 crops: 2 scales (5 need 161x161)
    'msssim_l1': {'type': 'MSSSIML1Loss', 'scales': 2},
    'iqa_ssim': {'type': 'IQALoss', 'metric': 'ssim'},
    'charbonnier': {'type': 'CharbonnierLoss', 'loss_weight': 1.0, 'eps': 1e-6},  # basicsr's
}


@pytest.mark.parametrize('name', list(TRAINED))
def test_loss_trains_in_the_runner(tiny_data, in_tmp, name):
    opt = shrink_recipe(tiny_data, f'loss_{name}', 4, print_freq=1, checkpoint_freq=4, val_freq=100, batch=2,
                        update={'train': {'pixel_opt': TRAINED[name]}})
    run_train(['-opt', write_options(opt, in_tmp / 'train.yml')])
    exp = in_tmp / 'experiments' / f'loss_{name}'
    log = next(exp.glob('train_*.log')).read_text()
    values = [float(v) for v in re.findall(r'l_pixel: (\S+)', log)]
    assert len(values) == 4 and all(math.isfinite(v) for v in values), values
    ckpt = torch.load(exp / 'models' / 'net_g_4.pth', weights_only=True)
    assert all(torch.isfinite(v).all() for v in ckpt['params'].values())
