"""Adversarial contrastive loss of CDD-GAN (Chen et al., "Unpaired Deep Image Dehazing Using Contrastive
Disentanglement Learning", ECCV 2022), in the NEGCUT form its code is said to derive from (notes §1.2, §2.2 [I]).

Per contrastive layer l, query q (the dehazed output's patch embedding), positive k+ (the hazy input's patch at
the same location) and K generated negatives n_1..n_K (from the negative generator N)::

    L_con = mean_{l, patches} -log( e^{q.k+/tau} / (e^{q.k+/tau} + sum_i e^{q.n_i/tau}) )

* generator side (``role='generator'``): minimise ``w * L_con`` over the generator and projection heads, with
  the negatives detached by default (``detach_negatives=True``; NEGCUT does not detach them, so gradients leak
  through N and the momentum head into the encoder — notes §1.2);
* negative-generator side (``role='negative'``): N *maximises* the same InfoNCE and the diversity of its
  negatives, i.e. minimises ``-w * L_con(q.detach(), k.detach(), n) - lambda_div * D(n_fresh)`` with
  ``D(n) = mean |n_{1..K/2} - n_{K/2+1..K}|`` (NEGCUT's mode-seeking term, lambda_div = 1). As in NEGCUT,
  ``loss_weight`` (lambda_NCE) scales the InfoNCE only, not lambda_div, and D is taken over the K negatives generated
  in this call (``fresh``), never over queued ones (a queue would mix old and new negatives in the two halves).

``neg_mode='both'`` adds the in-image patch negatives (CUT) to the generated ones; ``'external'`` (NEGCUT,
default) uses the generated negatives only. Shapes: lists over layers of q, k (B, P, D) and n (B, K, D).
"""
from torch import nn

from irtoolkit.losses.patch_nce_loss import patch_nce
from irtoolkit.utils.registry import LOSS_REGISTRY

__all__ = ['AdversarialContrastiveLoss']


def _diversity(neg):
    half = neg.shape[1] // 2
    return (neg[:, :half] - neg[:, half:2 * half]).abs().mean() if half else neg.new_zeros(())


@LOSS_REGISTRY.register()
class AdversarialContrastiveLoss(nn.Module):
    """Args:
        temperature: tau (0.07).
        lambda_div: weight of the diversity term in the negative generator's objective (NEGCUT: 1; not scaled by
            ``loss_weight``).
        neg_mode: ``external`` (generated negatives only, NEGCUT) or ``both`` (plus in-image patches).
        neg_scope: ``image`` (each image's own negatives) or ``batch``.
        detach_negatives: detach n in the generator step (recommended; NEGCUT leaks gradients).
        loss_weight: multiplier (lambda_NCE; CUT 1, DCD-GAN 2).
    """

    def __init__(self, temperature=0.07, lambda_div=1.0, neg_mode='external', neg_scope='image',
                 detach_negatives=True, loss_weight=1.0):
        super().__init__()
        if neg_mode not in ('external', 'both'):
            raise ValueError(f'AdversarialContrastiveLoss: neg_mode must be external or both, got {neg_mode!r}')
        self.temperature, self.lambda_div = temperature, lambda_div
        self.neg_mode, self.neg_scope = neg_mode, neg_scope
        self.detach_negatives, self.loss_weight = detach_negatives, loss_weight

    def nce(self, q, k, negatives):
        """Mean over layers and patches of the InfoNCE values."""
        vals = [patch_nce(qi, ki, ni, self.temperature, self.neg_mode, self.neg_scope).mean()
                for qi, ki, ni in zip(q, k, negatives)]
        return sum(vals) / len(vals)

    def diversity(self, negatives):
        return sum(_diversity(n) for n in negatives) / len(negatives)

    def forward(self, q, k, negatives, role='generator', fresh=None):
        """Returns the scalar to *minimise* for ``role`` (``generator`` or ``negative``). ``negatives``: what the
        queries are contrasted with (generated, possibly extended by a queue); ``fresh``: the negatives generated in
        this call, for the diversity term (default: ``negatives``)."""
        if role == 'generator':
            negs = [n.detach() for n in negatives] if self.detach_negatives else negatives
            return self.loss_weight * self.nce(q, k, negs)
        if role == 'negative':
            q = [x.detach() for x in q]
            k = [x.detach() for x in k]
            fresh = negatives if fresh is None else fresh
            return -self.loss_weight * self.nce(q, k, negatives) - self.lambda_div * self.diversity(fresh)
        raise ValueError(f'AdversarialContrastiveLoss: role must be generator or negative, got {role!r}')
