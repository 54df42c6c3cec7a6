"""Seeded synthetic degradations: haze, rain streaks, Gaussian/Poisson noise, motion/defocus blur, JPEG, and
Real-ESRGAN's second-order pipeline (``realesrgan``: blur kernels, resizes, noise, JPEG, sinc, twice).

Every function takes an RGB float32 image ``(H, W, 3)`` in [0, 1] and returns a new one of the same shape,
clipped to [0, 1]. A parameter is a number or a ``[low, high]`` range drawn uniformly from ``rng`` (an
``np.random.Generator`` or an int seed), so one seed always gives the same image (validation sets are the same
on every run) and the same functions serve on-the-fly training (``SyntheticDegradationDataset``) and the tools
(``tools/make_demo_data.py``).

From options, :func:`build_degradation` turns a list of ``{type: <name>, <param>: value | [lo, hi], prob: p}``
into one callable; ``{type: one_of, choices: [...], weights: [...]}`` picks one entry per image.
"""
import difflib
import inspect

import cv2
import numpy as np

__all__ = ['DEGRADATIONS', 'build_degradation', 'add_haze', 'add_rain', 'add_gaussian_noise', 'add_poisson_noise',
           'motion_blur', 'defocus_blur', 'jpeg_compress', 'depth_proxy', 'as_rng', 'realesrgan', 'blur_kernel',
           'sinc_kernel', 'usm_sharpen']


def as_rng(rng):
    """``rng`` as a ``np.random.Generator`` (an int or tuple seeds a new one; None gives an unseeded one)."""
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _draw(rng, value, name, integer=False):
    """A number, or a uniform draw from ``[low, high]``."""
    if isinstance(value, (list, tuple)):
        if len(value) != 2 or value[0] > value[1]:
            raise ValueError(f'degradation parameter {name}: expected a number or [low, high], got {value!r}')
        v = rng.uniform(value[0], value[1]) if value[0] < value[1] else value[0]
    else:
        v = value
    return int(round(v)) if integer else float(v)


def _check(img, name):
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.float32:
        raise ValueError(f'{name}: expected a float32 (H, W, 3) image in [0, 1], got {img.dtype} {img.shape}')


def _smooth_field(h, w, rng, cells):
    """Low-frequency random field in [0, 1]: a ``cells x cells`` Gaussian grid upsampled bicubically."""
    grid = rng.standard_normal((cells, cells)).astype(np.float32)
    field = cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
    return (field - field.min()) / max(float(np.ptp(field)), 1e-6)


def depth_proxy(img, rng=None, tilt=(-0.3, 0.3), field_weight=0.25, sky_weight=0.25):
    """A relative scene depth in [0, 1] (1 = far) for a photo without a depth map. ``(H, W)`` float32.

    Three cues, blended and smoothed: (1) a vertical ramp with a random horizon tilt (the top of an outdoor
    photo is usually farther than the bottom), (2) bright, unsaturated, smooth regions are far (the sky / haze
    prior behind the dark channel of He et al., CVPR 2009), (3) a low-frequency random field so that depth is
    not a function of position alone. Smoothing keeps the transmission free of texture, as real depth is.
    """
    _check(img, 'depth_proxy')
    rng = as_rng(rng)
    h, w = img.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    ramp = 1.0 - ys / max(h - 1, 1) + _draw(rng, tilt, 'tilt') * (xs / max(w - 1, 1) - 0.5)
    ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
    lum = img.mean(axis=2)
    sat = img.max(axis=2) - img.min(axis=2)
    sky = np.clip(lum - sat, 0, 1)
    field = _smooth_field(h, w, rng, int(rng.integers(2, 6)))
    depth = (1 - field_weight - sky_weight) * ramp + field_weight * field + sky_weight * sky
    sigma = 0.04 * min(h, w)
    depth = cv2.GaussianBlur(depth, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    return ((depth - depth.min()) / max(float(np.ptp(depth)), 1e-6)).astype(np.float32)


def add_haze(img, rng=None, beta=(0.6, 1.8), airlight=(0.7, 1.0), tint=0.05, near=0.2, depth=None):
    """Atmospheric scattering model (Koschmieder; as used for RESIDE, Li et al., TIP 2019):
    ``I = J t + A (1 - t)``, ``t = exp(-beta d)``.

    ``d`` is ``depth`` (``(H, W)`` in [0, 1]) or :func:`depth_proxy`, mapped to ``[near, 1]`` so that the
    nearest point still gets some haze. ``beta`` is the scattering coefficient (density), ``airlight`` the
    grey level of ``A``, ``tint`` the largest per-channel deviation of ``A`` (blue-ish or yellow-ish haze).
    Defaults are RESIDE's ranges (beta 0.6-1.8, A 0.7-1.0).
    """
    _check(img, 'add_haze')
    rng = as_rng(rng)
    if depth is None:
        depth = depth_proxy(img, rng)
    elif depth.shape != img.shape[:2]:
        raise ValueError(f'add_haze: depth shape {depth.shape} does not match image {img.shape[:2]}')
    b = _draw(rng, beta, 'beta')
    a = _draw(rng, airlight, 'airlight') + (rng.uniform(-tint, tint, size=3) if tint else np.zeros(3))
    t = np.exp(-b * (near + (1 - near) * depth))[..., None]
    out = img * t + np.asarray(a, np.float32) * (1 - t)
    return np.clip(out, 0, 1).astype(np.float32)


def _line_kernel(length, angle_deg, size=None):
    """Anti-aliased straight-line blur kernel of ``length`` px at ``angle_deg`` (0 = horizontal), sum 1."""
    length = max(float(length), 1.0)
    size = size or int(np.ceil(length)) // 2 * 2 + 3
    k = np.zeros((size, size), np.float32)
    c = (size - 1) / 2
    th = np.deg2rad(angle_deg)
    for s in np.linspace(-(length - 1) / 2, (length - 1) / 2, int(np.ceil(length)) * 4):
        x, y = c + s * np.cos(th), c - s * np.sin(th)
        x0, y0 = int(np.floor(x)), int(np.floor(y))
        fx, fy = x - x0, y - y0
        # bilinear splat: sub-pixel positions keep thin lines smooth at any angle
        for dy, dx, wgt in ((0, 0, (1 - fx) * (1 - fy)), (0, 1, fx * (1 - fy)), (1, 0, (1 - fx) * fy),
                            (1, 1, fx * fy)):
            if 0 <= y0 + dy < size and 0 <= x0 + dx < size:
                k[y0 + dy, x0 + dx] += wgt
    return k / k.sum()


def add_rain(img, rng=None, density=(0.002, 0.008), length=(10, 30), angle=(-25, 25), width=(0.5, 1.2),
             intensity=(0.5, 0.9)):
    """Rain streaks: sparse random drops smeared along one direction, screen-blended onto the image.

    ``density`` is the fraction of pixels that seed a drop, ``length`` the streak length in px, ``angle`` the
    tilt from vertical in degrees (one per image, a little jitter per layer), ``width`` the Gaussian thickness
    (sigma, px) and ``intensity`` the peak opacity. Two layers of different length give depth of field, as in
    the Rain100/Rain13K synthetic sets (streaks of several scales and one dominant direction).
    """
    _check(img, 'add_rain')
    rng = as_rng(rng)
    h, w = img.shape[:2]
    d, ln, an = _draw(rng, density, 'density'), _draw(rng, length, 'length'), _draw(rng, angle, 'angle')
    wd, it = _draw(rng, width, 'width'), _draw(rng, intensity, 'intensity')
    streaks = np.zeros((h, w), np.float32)
    for scale, share in ((1.0, 0.6), (0.5, 0.4)):
        drops = (rng.random((h, w)) < d * share).astype(np.float32) * rng.uniform(0.5, 1.0, (h, w)).astype(
            np.float32)
        k = _line_kernel(max(ln * scale, 2), 90 + an + rng.uniform(-3, 3))
        layer = cv2.filter2D(drops, -1, k, borderType=cv2.BORDER_REFLECT) * max(ln * scale, 2)
        streaks = np.maximum(streaks, layer * (1.0 if scale == 1.0 else 0.7))
    streaks = cv2.GaussianBlur(streaks, (0, 0), wd) * (1 + wd)
    alpha = np.clip(streaks * it, 0, 1)[..., None]
    return np.clip(1 - (1 - img) * (1 - alpha), 0, 1).astype(np.float32)


def add_gaussian_noise(img, rng=None, sigma=(15, 50), gray=False):
    """Additive white Gaussian noise; ``sigma`` on the 0-255 scale (CBSD68 convention: 15, 25, 50)."""
    _check(img, 'add_gaussian_noise')
    rng = as_rng(rng)
    s = _draw(rng, sigma, 'sigma') / 255.0
    shape = img.shape[:2] + (1, ) if gray else img.shape
    return np.clip(img + rng.standard_normal(shape).astype(np.float32) * s, 0, 1).astype(np.float32)


def add_poisson_noise(img, rng=None, peak=(10, 100)):
    """Shot noise: ``Poisson(img * peak) / peak``; ``peak`` is the photon count at white (lower = noisier)."""
    _check(img, 'add_poisson_noise')
    rng = as_rng(rng)
    p = _draw(rng, peak, 'peak')
    if p <= 0:
        raise ValueError(f'add_poisson_noise: peak must be > 0, got {p}')
    return np.clip(rng.poisson(img.astype(np.float64) * p) / p, 0, 1).astype(np.float32)


def motion_blur(img, rng=None, length=(5, 15), angle=(0, 180)):
    """Linear camera motion: convolution with a ``length`` px line at ``angle`` degrees."""
    _check(img, 'motion_blur')
    rng = as_rng(rng)
    k = _line_kernel(_draw(rng, length, 'length'), _draw(rng, angle, 'angle'))
    return np.clip(cv2.filter2D(img, -1, k, borderType=cv2.BORDER_REFLECT), 0, 1).astype(np.float32)


def defocus_blur(img, rng=None, radius=(1.5, 4.0)):
    """Out-of-focus blur: convolution with an anti-aliased disk of ``radius`` px (the pillbox PSF)."""
    _check(img, 'defocus_blur')
    rng = as_rng(rng)
    r = max(_draw(rng, radius, 'radius'), 0.5)
    n = int(np.ceil(r)) * 2 + 1
    sub = 8  # supersampling: the disk edge gets fractional coverage, so small radii are not jumpy
    g = (np.arange(n * sub, dtype=np.float32) + 0.5) / sub - n / 2
    inside = (g[None, :] ** 2 + g[:, None] ** 2 <= r * r).astype(np.float32)
    k = inside.reshape(n, sub, n, sub).mean(axis=(1, 3))
    return np.clip(cv2.filter2D(img, -1, k / k.sum(), borderType=cv2.BORDER_REFLECT), 0, 1).astype(np.float32)


def jpeg_compress(img, rng=None, quality=(30, 95)):
    """JPEG round trip through OpenCV at ``quality`` (1-100); output is quantised to 8 bits."""
    _check(img, 'jpeg_compress')
    rng = as_rng(rng)
    q = int(np.clip(_draw(rng, quality, 'quality', integer=True), 1, 100))
    u8 = cv2.cvtColor((img * 255).round().astype(np.uint8), cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode('.jpg', u8, [cv2.IMWRITE_JPEG_QUALITY, q])
    if not ok:
        raise RuntimeError(f'jpeg_compress: OpenCV could not encode a {img.shape} image at quality {q}')
    out = cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    return out.astype(np.float32) / 255.0


# ---------------------------------------------------------------------------------------------------------------
# Real-ESRGAN's second-order degradation (Wang et al., ICCVW 2021, arXiv 2107.10833), as ConStyle v2 uses it to
# pre-train its prior. Written from the paper's formulas and the parameter names of its option files.

def _cov(sig_x, sig_y, theta):
    """Covariance R diag(sx^2, sy^2) R^T of an anisotropic kernel rotated by ``theta``."""
    c, s = np.cos(theta), np.sin(theta)
    rot = np.array([[c, -s], [s, c]])
    return rot @ np.diag([sig_x ** 2, sig_y ** 2]) @ rot.T


def _quad_form(size, cov):
    """x^T cov^-1 x on a ``size`` x ``size`` grid centred on 0."""
    r = np.arange(size) - size // 2
    xx, yy = np.meshgrid(r, r)
    pts = np.stack([xx, yy], -1).astype(np.float64)
    return np.einsum('...i,ij,...j->...', pts, np.linalg.inv(cov), pts)


def blur_kernel(kind, size, sigma_x, sigma_y=None, theta=0.0, beta=1.0):
    """A normalised ``size`` x ``size`` blur kernel: ``iso``/``aniso`` Gaussian ``exp(-q/2)``,
    ``generalized_*`` ``exp(-q^beta/2)`` and ``plateau_*`` ``1/(1 + q^beta)`` with ``q = x^T S^-1 x``
    (Real-ESRGAN, Eq. 2 and its generalised and plateau variants). ``iso`` kinds use ``sigma_x`` for both axes."""
    if kind.endswith('iso') and not kind.endswith('aniso'):
        sigma_y, theta = sigma_x, 0.0
    q = _quad_form(size, _cov(sigma_x, sigma_y, theta))
    if kind in ('iso', 'aniso'):
        k = np.exp(-0.5 * q)
    elif kind.startswith('generalized'):
        k = np.exp(-0.5 * q ** beta)
    elif kind.startswith('plateau'):
        k = 1.0 / (1.0 + q ** beta)
    else:
        raise ValueError(f'blur_kernel: unknown kind {kind!r}')
    return (k / k.sum()).astype(np.float32)


def sinc_kernel(size, cutoff):
    """2-D circular low-pass (sinc) kernel ``cutoff / (2 pi r) * J1(cutoff r)`` (Real-ESRGAN Eq. 3), normalised."""
    from scipy.special import j1
    r = np.arange(size) - size // 2
    rr = np.hypot(*np.meshgrid(r, r)).astype(np.float64)
    with np.errstate(divide='ignore', invalid='ignore'):
        k = cutoff * j1(cutoff * rr) / (2 * np.pi * rr)
    k[size // 2, size // 2] = cutoff ** 2 / (4 * np.pi)  # the limit at r = 0
    return (k / k.sum()).astype(np.float32)


def _random_kernel(rng, kernel_list, kernel_prob, sinc_prob, sigma, betag, betap, sizes=range(7, 22, 2)):
    size = int(rng.choice(list(sizes)))
    if rng.random() < sinc_prob:
        cutoff = rng.uniform(np.pi / 3, np.pi) if size < 13 else rng.uniform(np.pi / 5, np.pi)
        return sinc_kernel(size, cutoff)
    p = np.asarray(kernel_prob, np.float64)
    kind = kernel_list[int(rng.choice(len(kernel_list), p=p / p.sum()))]
    beta = 1.0
    if kind.startswith('generalized'):
        beta = rng.uniform(*betag) if rng.random() < 0.5 else rng.uniform(betag[0], 1)
    elif kind.startswith('plateau'):
        beta = rng.uniform(*betap) if rng.random() < 0.5 else rng.uniform(betap[0], 1)
    return blur_kernel(kind, size, rng.uniform(*sigma), rng.uniform(*sigma), rng.uniform(-np.pi, np.pi), beta)


def _filter(img, k):
    return cv2.filter2D(img, -1, k, borderType=cv2.BORDER_REFLECT_101)


_RESIZE_MODES = {'area': cv2.INTER_AREA, 'bilinear': cv2.INTER_LINEAR, 'bicubic': cv2.INTER_CUBIC}


def _resize(img, h, w, rng):
    mode = list(_RESIZE_MODES)[int(rng.integers(3))]
    return cv2.resize(img, (max(int(w), 1), max(int(h), 1)), interpolation=_RESIZE_MODES[mode])


def _random_scale(rng, prob, scale_range):
    kind = int(rng.choice(3, p=np.asarray(prob, np.float64) / np.sum(prob)))  # up, down, keep
    return rng.uniform(1, scale_range[1]) if kind == 0 else rng.uniform(scale_range[0], 1) if kind == 1 else 1.0


def _noise(img, rng, gaussian_prob, sigma_range, poisson_range, gray_prob):
    gray = rng.random() < gray_prob
    if rng.random() < gaussian_prob:
        shape = img.shape[:2] + (1, ) if gray else img.shape
        noise = rng.standard_normal(shape) * rng.uniform(*sigma_range) / 255.0
    else:  # Poisson noise at the image's own quantisation, scaled (Real-ESRGAN's poisson_scale_range)
        src = img.mean(axis=2, keepdims=True) if gray else img
        vals = 2 ** np.ceil(np.log2(max(len(np.unique(np.round(src * 255))), 2)))
        noise = (rng.poisson(np.clip(src, 0, 1) * vals) / vals - src) * rng.uniform(*poisson_range)
    return np.clip(img + noise, 0, 1).astype(np.float32)


def usm_sharpen(img, weight=0.5, radius=50, threshold=10):
    """Unsharp masking as Real-ESRGAN sharpens its targets: ``img + weight * (img - blur)`` where the residual
    exceeds ``threshold`` (0-255 scale), blended through a blurred mask."""
    k = radius + 1 if radius % 2 == 0 else radius
    blur = cv2.GaussianBlur(img, (k, k), 0)
    residual = img - blur
    mask = (np.abs(residual) * 255 > threshold).astype(np.float32)
    soft = cv2.GaussianBlur(mask, (k, k), 0)
    sharp = np.clip(img + weight * residual, 0, 1)
    return (soft * sharp + (1 - soft) * img).astype(np.float32)


def realesrgan(img, rng=None, usm=True,
               resize_prob=(0.2, 0.7, 0.1), resize_range=(0.15, 1.5), gaussian_noise_prob=0.5, noise_range=(1, 30),
               poisson_scale_range=(0.05, 3), gray_noise_prob=0.4, jpeg_range=(30, 95),
               second_blur_prob=0.8, resize_prob2=(0.3, 0.4, 0.3), resize_range2=(0.3, 1.2), gaussian_noise_prob2=0.5,
               noise_range2=(1, 25), poisson_scale_range2=(0.05, 2.5), gray_noise_prob2=0.4, jpeg_range2=(30, 95),
               kernel_list=('iso', 'aniso', 'generalized_iso', 'generalized_aniso', 'plateau_iso', 'plateau_aniso'),
               kernel_prob=(0.45, 0.25, 0.12, 0.03, 0.12, 0.03), sinc_prob=0.1, blur_sigma=(0.2, 3),
               betag_range=(0.5, 4), betap_range=(1, 2), kernel_list2=None, kernel_prob2=None, sinc_prob2=0.1,
               blur_sigma2=(0.2, 1.5), betag_range2=(0.5, 4), betap_range2=(1, 2), final_sinc_prob=0.8):
    """Real-ESRGAN's second-order degradation at scale 1 (the output has the input's size), ConStyle v2's
    pre-training degradation; defaults are the values of upstream ConStyle v2's ``real_esrgan`` options.

    Optional unsharp masking of the clean image, then twice: blur (a random Gaussian, generalised or plateau
    kernel, or a sinc; the second time with probability ``second_blur_prob``), a random resize (up, down or keep
    with ``resize_prob``; area, bilinear or bicubic), Gaussian (colour or grey) or Poisson noise, JPEG (the
    second JPEG comes with the last step); finally, in random order, [resize back + a sinc filter with probability
    ``final_sinc_prob``] and JPEG. Quantised to 8 bits.
    """
    _check(img, 'realesrgan')
    rng = as_rng(rng)
    h, w = img.shape[:2]
    out = usm_sharpen(img) if usm else img
    # first order
    out = _filter(out, _random_kernel(rng, kernel_list, kernel_prob, sinc_prob, blur_sigma, betag_range, betap_range))
    s = _random_scale(rng, resize_prob, resize_range)
    out = _resize(out, h * s, w * s, rng)
    out = _noise(out, rng, gaussian_noise_prob, noise_range, poisson_scale_range, gray_noise_prob)
    out = jpeg_compress(np.clip(out, 0, 1).astype(np.float32), rng, jpeg_range)
    # second order
    if rng.random() < second_blur_prob:
        k = _random_kernel(rng, kernel_list2 or kernel_list, kernel_prob2 or kernel_prob, sinc_prob2, blur_sigma2,
                           betag_range2, betap_range2)
        out = _filter(out, k)
    s = _random_scale(rng, resize_prob2, resize_range2)
    out = _resize(out, h * s, w * s, rng)
    out = _noise(out, rng, gaussian_noise_prob2, noise_range2, poisson_scale_range2, gray_noise_prob2)

    def back_and_sinc(x):
        x = _resize(x, h, w, rng)
        if rng.random() < final_sinc_prob:
            size = int(rng.choice(list(range(7, 22, 2))))
            x = _filter(x, sinc_kernel(size, rng.uniform(np.pi / 3, np.pi)))
        return np.clip(x, 0, 1).astype(np.float32)

    if rng.random() < 0.5:
        out = jpeg_compress(back_and_sinc(out), rng, jpeg_range2)
    else:
        out = back_and_sinc(jpeg_compress(np.clip(out, 0, 1).astype(np.float32), rng, jpeg_range2))
    return (np.round(np.clip(out, 0, 1) * 255) / 255).astype(np.float32)


DEGRADATIONS = {
    'haze': add_haze, 'rain': add_rain, 'gaussian_noise': add_gaussian_noise, 'poisson_noise': add_poisson_noise,
    'motion_blur': motion_blur, 'defocus_blur': defocus_blur, 'jpeg': jpeg_compress, 'realesrgan': realesrgan,
}


class _Step:
    """One option entry: a function with fixed keyword parameters, applied with probability ``prob``."""

    def __init__(self, spec, where):
        spec = dict(spec)
        kind = spec.pop('type', None)
        self.prob = float(spec.pop('prob', 1.0))
        if kind == 'one_of':
            choices = spec.pop('choices', None)
            if not choices:
                raise ValueError(f'{where}: one_of needs a non-empty "choices" list')
            self.choices = [_Step(c, f'{where}.choices[{i}]') for i, c in enumerate(choices)]
            weights = np.asarray(spec.pop('weights', [1] * len(choices)), np.float64)
            if len(weights) != len(choices) or (weights < 0).any() or weights.sum() <= 0:
                raise ValueError(f'{where}: one_of weights must be {len(choices)} non-negative numbers')
            self.weights = weights / weights.sum()
            self.fn = None
        elif kind in DEGRADATIONS:
            self.fn, self.choices = DEGRADATIONS[kind], None
            allowed = [p for p in inspect.signature(self.fn).parameters if p not in ('img', 'rng')]
            bad = [k for k in spec if k not in allowed]
            if bad:
                raise ValueError(f'{where} ({kind}): unknown parameter(s) {bad}; allowed: {allowed} and prob')
        else:
            hint = difflib.get_close_matches(str(kind), list(DEGRADATIONS) + ['one_of'], n=1)
            raise ValueError(f'{where}: unknown degradation type {kind!r}'
                             + (f' (did you mean {hint[0]!r}?)' if hint else '')
                             + f'; known: {sorted(DEGRADATIONS) + ["one_of"]}')
        self.kind, self.params = kind, spec

    def __call__(self, img, rng):
        if self.prob < 1 and rng.random() >= self.prob:
            return img
        if self.choices is not None:
            return self.choices[int(rng.choice(len(self.choices), p=self.weights))](img, rng)
        return self.fn(img, rng, **self.params)


class Degradation:
    """A list of option entries applied in order: ``Degradation(specs)(img, rng_or_seed)``."""

    def __init__(self, specs, where='degradations'):
        if isinstance(specs, dict):
            specs = [specs]
        if not isinstance(specs, (list, tuple)) or not specs:
            raise ValueError(f'{where}: expected a non-empty list of {{type: ..., ...}} entries')
        self.steps = [_Step(s, f'{where}[{i}]') for i, s in enumerate(specs)]

    def __call__(self, img, rng=None):
        rng = as_rng(rng)
        for step in self.steps:
            img = step(img, rng)
        return img

    def __repr__(self):
        return 'Degradation(' + ', '.join(s.kind for s in self.steps) + ')'


def build_degradation(specs, where='degradations'):
    """:class:`Degradation` from an option list (or a single mapping)."""
    return Degradation(specs, where)
