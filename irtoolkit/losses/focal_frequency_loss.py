"""Focal frequency loss: Jiang, Dai, Wu, Loy, "Focal Frequency Loss for Image Reconstruction and Synthesis",
ICCV 2021 (definition and defaults of the authors' ``focal_frequency_loss`` package, re-implemented).

With F the orthonormal 2-D DFT (``torch.fft.fft2(norm='ortho')``, the full spectrum, as the authors use) of each
image channel (or of each of the ``patch_factor ** 2`` non-overlapping patches), per frequency (u, v):

    d(u, v) = |F_pred(u, v) - F_target(u, v)|^2                       squared frequency distance
    w(u, v) = |F_pred(u, v) - F_target(u, v)|^alpha                    spectrum weight matrix (Eq. 4)
    w <- log(w + 1)                                                    if log_matrix
    w <- w / max(w)                                                    max over the spectrum of each image, patch and
                                                                       channel; over the whole batch if batch_matrix
    loss = loss_weight * mean(w * d)                                   (Eq. 5, averaged over batch, patches, channels)

``w`` is detached (the paper's "gradient locked" weight): it only says which frequencies are hard now, the gradient
is that of ``w * d`` with ``w`` constant. A 0/0 (identical spectra) gives weight 0. With ``ave_spectrum`` the
spectra are first averaged over the mini-batch (the authors' option for synthesis). ``forward(pred, target,
matrix)`` takes a predefined weight matrix instead, broadcastable to (B, P, C, H/p, W/p).

Defaults are the paper's: alpha 1, no patches, no averaging, no log, per-image normalisation.
Shapes: pred, target (B, C, H, W) with H and W divisible by ``patch_factor``; returns a scalar.
"""
import torch
from torch import nn

from irtoolkit.utils.errors import OptionError
from irtoolkit.utils.registry import LOSS_REGISTRY


@LOSS_REGISTRY.register()
class FocalFrequencyLoss(nn.Module):
    """Focal frequency loss (see the module docstring).

    Args:
        loss_weight: multiplier.
        alpha: exponent of the spectrum weight matrix (0: plain squared spectrum distance).
        patch_factor: split each image into ``patch_factor x patch_factor`` patches before the DFT.
        ave_spectrum: compare the mini-batch average spectra.
        log_matrix: weight ``log(1 + |dF|^alpha)`` instead of ``|dF|^alpha``.
        batch_matrix: normalise the weight by its maximum over the batch instead of per image, patch and channel.
    """

    def __init__(self, loss_weight=1.0, alpha=1.0, patch_factor=1, ave_spectrum=False, log_matrix=False,
                 batch_matrix=False):
        super().__init__()
        if not isinstance(patch_factor, int) or patch_factor < 1:
            raise OptionError(f'FocalFrequencyLoss: patch_factor must be an int >= 1, got {patch_factor!r}')
        if alpha < 0:
            raise OptionError(f'FocalFrequencyLoss: alpha must be >= 0, got {alpha}')
        self.loss_weight, self.alpha, self.patch_factor = loss_weight, alpha, patch_factor
        self.ave_spectrum, self.log_matrix, self.batch_matrix = ave_spectrum, log_matrix, batch_matrix

    def spectrum(self, x):
        """(B, C, H, W) -> complex (B, P, C, H/p, W/p): orthonormal DFT of each patch (P = p * p, row-major)."""
        b, c, h, w = x.shape
        p = self.patch_factor
        if h % p or w % p:
            raise OptionError(f'FocalFrequencyLoss: image size {h}x{w} is not divisible by patch_factor {p}')
        if x.dtype in (torch.float16, torch.bfloat16):  # the FFT has no half-precision CPU kernel
            x = x.float()
        patches = x.reshape(b, c, p, h // p, p, w // p).permute(0, 2, 4, 1, 3, 5).reshape(b, p * p, c, h // p, w // p)
        return torch.fft.fft2(patches, norm='ortho')

    def weight_matrix(self, diff):
        """The detached spectrum weight matrix in [0, 1] of a complex spectrum difference."""
        w = diff.detach().abs() ** self.alpha
        if self.log_matrix:
            w = torch.log1p(w)
        peak = w.amax() if self.batch_matrix else w.amax(dim=(-2, -1), keepdim=True)
        return torch.nan_to_num(w / peak, nan=0.0).clamp(0, 1)

    def forward(self, pred, target, matrix=None):
        pred_freq, target_freq = self.spectrum(pred), self.spectrum(target)
        if self.ave_spectrum:
            pred_freq, target_freq = pred_freq.mean(0, keepdim=True), target_freq.mean(0, keepdim=True)
        diff = pred_freq - target_freq
        weight = self.weight_matrix(diff) if matrix is None else matrix.detach()
        distance = diff.real ** 2 + diff.imag ** 2
        return self.loss_weight * (weight * distance).mean()
