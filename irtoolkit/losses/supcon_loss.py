"""Supervised contrastive loss on patch embeddings (Khosla et al., "Supervised Contrastive Learning",
NeurIPS 2020), as NLCL's layer contrast ("DisNCE", Ye et al. CVPR 2022) applies it to background vs rain
patches.

For one image with embeddings z_1..z_N (unit norm) and labels y_i, every sample is an anchor::

    L_i = -(tau / tau_b) * 1/|P(i)| * sum_{p in P(i)} log( exp(z_i.z_p / tau) / sum_{a != i} exp(z_i.z_a / tau) )

with P(i) = {p != i : y_p = y_i}; anchors without positives are skipped. The image's loss is the (optionally
class-weighted) mean over anchors; images are then summed (NLCL's code) or averaged (``batch_reduction``).
The two-label call ``forward(feat_a (B, P, D), feat_b (B, Q, D))`` labels feat_a 1 and feat_b 0: a-patches are
pulled together, b-patches are pulled together, and the two sets pushed apart (NLCL's code; the CVPR text
only describes the first pull, the TPAMI extension the symmetric one). ``class_weights=(w_a, w_b)`` weights the
anchors of each set — the asymmetric variant (TPAMI, arXiv 2211.00837) as an option.
"""
import torch
from torch import nn

from irtoolkit.utils.registry import LOSS_REGISTRY

__all__ = ['SupConPatchLoss', 'supcon']


def supcon(z, labels, temperature=0.07, base_temperature=0.07, anchor_weights=None):
    """Per-image SupCon (B,) for embeddings z (B, N, D) and labels (B, N) or (N,)."""
    b, n, _ = z.shape
    labels = labels.expand(b, n) if labels.dim() == 1 else labels
    logits = torch.bmm(z, z.transpose(1, 2)) / temperature  # (B, N, N)
    self_mask = torch.eye(n, dtype=torch.bool, device=z.device)[None]
    logits = logits.masked_fill(self_mask, float('-inf'))
    log_prob = logits - torch.logsumexp(logits, dim=-1, keepdim=True)
    pos = (labels[:, :, None] == labels[:, None, :]) & ~self_mask
    n_pos = pos.sum(-1)
    mean_log_pos = log_prob.masked_fill(~pos, 0).sum(-1) / n_pos.clamp(min=1)
    per_anchor = -(temperature / base_temperature) * mean_log_pos  # (B, N)
    w = (n_pos > 0).float()
    if anchor_weights is not None:
        w = w * anchor_weights.expand(b, n)
    return (per_anchor * w).sum(-1) / w.sum(-1).clamp(min=1e-12)


@LOSS_REGISTRY.register()
class SupConPatchLoss(nn.Module):
    """Two-set SupCon over patch embeddings (see the module docstring).

    Args:
        temperature / base_temperature: tau and tau_b (NLCL: 0.07 and 0.07).
        class_weights: anchor weights (w_a, w_b) for the two sets, default (1, 1).
        batch_reduction: ``sum`` (NLCL's code) or ``mean`` over images.
        loss_weight: multiplier.

    ``forward(feat_a (B, P, D), feat_b (B, Q, D))``; lists of per-layer tensors are averaged over layers.
    """

    def __init__(self, temperature=0.07, base_temperature=0.07, class_weights=(1.0, 1.0), batch_reduction='mean',
                 loss_weight=1.0):
        super().__init__()
        if batch_reduction not in ('mean', 'sum'):
            raise ValueError(f'SupConPatchLoss: batch_reduction must be mean or sum, got {batch_reduction!r}')
        self.temperature, self.base_temperature = temperature, base_temperature
        self.class_weights = tuple(float(w) for w in class_weights)
        self.batch_reduction, self.loss_weight = batch_reduction, loss_weight

    def forward(self, feat_a, feat_b):
        if isinstance(feat_a, (list, tuple)):
            values = [self(a, b) for a, b in zip(feat_a, feat_b)]
            return sum(values) / len(values)
        if feat_a.dim() != 3 or feat_b.dim() != 3 or feat_a.shape[0] != feat_b.shape[0]:
            raise ValueError(f'SupConPatchLoss: expected (B, P, D) and (B, Q, D); got {tuple(feat_a.shape)} and '
                             f'{tuple(feat_b.shape)}')
        p, q = feat_a.shape[1], feat_b.shape[1]
        z = torch.cat((feat_a, feat_b), 1)
        labels = torch.cat((z.new_ones(p), z.new_zeros(q)))
        weights = torch.cat((z.new_full((p,), self.class_weights[0]), z.new_full((q,), self.class_weights[1])))
        per_image = supcon(z, labels, self.temperature, self.base_temperature, weights[None])
        loss = per_image.sum() if self.batch_reduction == 'sum' else per_image.mean()
        return self.loss_weight * loss
