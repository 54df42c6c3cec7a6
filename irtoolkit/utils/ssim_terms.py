"""The two factors of SSIM (Wang et al., "Image Quality Assessment: From Error Visibility to Structural Similarity",
IEEE TIP 2004), written once for the paper metric (float64, in-place filtering) and the MS-SSIM loss (autograd)."""

__all__ = ['ssim_terms']


def ssim_terms(x, y, c1, c2, local_mean):
    """Luminance ``(2 mu_x mu_y + c1) / (mu_x^2 + mu_y^2 + c1)`` and contrast-structure
    ``(2 s_xy + c2) / (s_xx + s_yy + c2)`` maps of two (B, C, H, W) images; ``local_mean(t)`` is the caller's
    Gaussian window (its padding decides the maps' size)."""
    mu_x, mu_y = local_mean(x), local_mean(y)
    mu_xx, mu_yy, mu_xy = mu_x * mu_x, mu_y * mu_y, mu_x * mu_y
    s_xx = local_mean(x * x) - mu_xx
    s_yy = local_mean(y * y) - mu_yy
    s_xy = local_mean(x * y) - mu_xy
    return (2 * mu_xy + c1) / (mu_xx + mu_yy + c1), (2 * s_xy + c2) / (s_xx + s_yy + c2)
