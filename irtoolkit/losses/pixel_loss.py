"""Pixel losses that basicsr lacks."""
import math

import torch
from torch import nn

from irtoolkit.utils.registry import LOSS_REGISTRY


@LOSS_REGISTRY.register()
class PSNRLoss(nn.Module):
    """Negative PSNR, as NAFNet trains with it: ``w * 10/ln(10) * mean_b log(MSE_b + 1e-8)``.

    Minimising it maximises the per-image PSNR (for images in [0, 1]). ``toY`` computes it on the BT.601 luma.
    pred, target: (B, C, H, W). Returns a scalar.
    """

    def __init__(self, loss_weight=1.0, reduction='mean', toY=False):
        super().__init__()
        if reduction != 'mean':
            raise ValueError(f'PSNRLoss: reduction must be "mean", got {reduction!r}')
        self.loss_weight = loss_weight
        self.scale = 10 / math.log(10)
        self.toY = toY
        self.register_buffer('coef', torch.tensor([65.481, 128.553, 24.966]).view(1, 3, 1, 1), persistent=False)

    def forward(self, pred, target):
        if self.toY:
            pred = ((pred * self.coef).sum(1, keepdim=True) + 16.) / 255.
            target = ((target * self.coef).sum(1, keepdim=True) + 16.) / 255.
        mse = ((pred - target) ** 2).flatten(1).mean(1)
        return self.loss_weight * self.scale * torch.log(mse + 1e-8).mean()
