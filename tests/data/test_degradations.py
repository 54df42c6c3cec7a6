"""irtoolkit.data.degradations: seeded, in range, physically what they claim, and checked options."""
import numpy as np
import pytest
from skimage import data

from irtoolkit.data import degradations as D


@pytest.fixture(scope='module')
def img():
    return np.ascontiguousarray(data.astronaut()[100:196, 200:296]).astype(np.float32) / 255


@pytest.mark.parametrize('name', sorted(D.DEGRADATIONS))
def test_seeded_in_range_and_changes_the_image(img, name):
    fn = D.DEGRADATIONS[name]
    a, b, c = fn(img, 7), fn(img, np.random.default_rng(7)), fn(img, 8)
    assert a.dtype == np.float32 and a.shape == img.shape
    assert a.min() >= 0 and a.max() <= 1
    assert np.array_equal(a, b), 'same seed must give the same image'
    assert not np.array_equal(a, c), 'another seed must give another image'
    assert np.abs(a - img).mean() > 1e-3
    assert np.array_equal(img, np.ascontiguousarray(data.astronaut()[100:196, 200:296]).astype(np.float32) / 255)


def test_haze_follows_the_scattering_model(img):
    depth = np.tile(np.linspace(0, 1, img.shape[1], dtype=np.float32), (img.shape[0], 1))
    out = D.add_haze(img, 0, beta=1.2, airlight=0.9, tint=0, near=0.0, depth=depth)
    t = np.exp(-1.2 * depth)[..., None]
    np.testing.assert_allclose(out, img * t + 0.9 * (1 - t), atol=1e-6)
    # farther -> closer to the airlight, and contrast falls with depth
    assert np.abs(out[:, -8:] - 0.9).mean() < np.abs(out[:, :8] - 0.9).mean()
    assert out[:, -16:].std() < out[:, :16].std()


def test_depth_proxy_is_smooth_and_normalised(img):
    d = D.depth_proxy(img, 3)
    assert d.shape == img.shape[:2] and d.min() == 0 and abs(d.max() - 1) < 1e-6
    assert np.abs(np.diff(d, axis=0)).max() < 0.1 and np.abs(np.diff(d, axis=1)).max() < 0.1
    assert np.array_equal(d, D.depth_proxy(img, 3))


def test_gaussian_noise_sigma_and_poisson_level():
    flat = np.full((128, 128, 3), 0.5, np.float32)
    assert abs((D.add_gaussian_noise(flat, 0, sigma=25) - flat).std() * 255 - 25) < 1
    low, high = D.add_poisson_noise(flat, 0, peak=10), D.add_poisson_noise(flat, 0, peak=1000)
    assert (low - flat).std() > 5 * (high - flat).std()
    assert abs((low - flat).std() - np.sqrt(0.5 / 10)) < 0.02  # Poisson: var = mean / peak


def test_blur_kernels_preserve_brightness_and_reduce_detail(img):
    for out in (D.motion_blur(img, 0, length=11, angle=30), D.defocus_blur(img, 0, radius=3)):
        assert abs(out.mean() - img.mean()) < 0.01
        assert np.abs(np.diff(out, axis=1)).mean() < 0.7 * np.abs(np.diff(img, axis=1)).mean()
    # a horizontal motion blur leaves a horizontal edge (a vertical gradient) intact
    edge = np.zeros((32, 32, 3), np.float32)
    edge[16:] = 1
    np.testing.assert_allclose(D.motion_blur(edge, 0, length=9, angle=0)[:, 16], edge[:, 16], atol=1e-6)


def test_rain_only_brightens(img):
    out = D.add_rain(img, 1, density=0.01, length=20, angle=10)
    assert (out >= img - 1e-6).all() and (out > img + 0.05).mean() > 0.01


def test_pipeline_from_options_is_seeded(img):
    deg = D.build_degradation([{'type': 'motion_blur', 'length': [5, 9]},
                               {'type': 'one_of', 'choices': [{'type': 'gaussian_noise', 'sigma': [5, 30]},
                                                              {'type': 'poisson_noise'}], 'weights': [1, 1]},
                               {'type': 'jpeg', 'quality': [40, 80], 'prob': 0.5}])
    outs = [deg(img, s) for s in (0, 0, 1)]
    assert np.array_equal(outs[0], outs[1]) and not np.array_equal(outs[0], outs[2])
    assert all(o.min() >= 0 and o.max() <= 1 and o.dtype == np.float32 for o in outs)


def test_bad_options_fail_with_the_entry_and_the_name():
    with pytest.raises(ValueError, match=r"degradations\[0\]: unknown degradation type 'gausian_noise' "
                                         r"\(did you mean 'gaussian_noise'\?\)"):
        D.build_degradation([{'type': 'gausian_noise'}])
    with pytest.raises(ValueError, match=r"degradations\[1\] \(haze\): unknown parameter\(s\) \['density'\]"):
        D.build_degradation([{'type': 'jpeg'}, {'type': 'haze', 'density': 1}])
    with pytest.raises(ValueError, match=r'expected a number or \[low, high\]'):
        D.add_gaussian_noise(np.zeros((4, 4, 3), np.float32), 0, sigma=[30, 10])
    with pytest.raises(ValueError, match='float32'):
        D.add_haze(np.zeros((4, 4, 3), np.uint8))
