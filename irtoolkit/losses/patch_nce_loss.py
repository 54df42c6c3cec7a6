"""PatchNCE: InfoNCE over patch embeddings (Park et al., "Contrastive Learning for Unpaired Image-to-Image
Translation" (CUT), ECCV 2020), with internal negatives, external negatives, or both.

For a query q_i (output-image patch i), its positive k_i (input-image patch at the same location) and a set
of negatives N_i, all unit vectors::

    l_i = -log( exp(q_i.k_i / tau) / (exp(q_i.k_i / tau) + sum_{n in N_i} exp(q_i.n / tau)) )

* ``neg_mode='internal'``: N_i = {k_j, j != i} (the other sampled key patches); ``neg_scope='image'`` takes
  them from the same image (CUT's default), ``'batch'`` from every image of the batch;
* ``neg_mode='external'``: N_i = the given negatives (B, K, D) of that image (``'image'``) or of the whole batch
  (``'batch'``): NEGCUT / CDD-GAN generated negatives (in-image patches are dropped, as in NEGCUT);
* ``neg_mode='both'``: the union.

Keys are detached (``detach_keys=True``): they are targets, never trained through (CUT). External negatives are
used as given — the caller detaches them or not (the negative generator's ascent step needs their gradient).
The loss is averaged over patches (``reduction='mean'``) and multiplied by ``loss_weight``.
Shapes: q, k (B, P, D); negatives (B, K, D) or None.
"""
import torch
import torch.nn.functional as F
from torch import nn

from irtoolkit.utils.registry import LOSS_REGISTRY

__all__ = ['PatchNCELoss', 'patch_nce']


def patch_nce(q, k, negatives=None, temperature=0.07, neg_mode='internal', neg_scope='image', detach_keys=True,
              detach_negatives=False):
    """Per-patch PatchNCE values (B, P) (see the module docstring). ``detach_negatives``: the negatives (the other
    keys and the external ones) are constants even when the positive keys carry gradient (``detach_keys=False``): a
    trainable key encoder is then pulled to the query at the same location and never pushed by the negatives."""
    if q.shape != k.shape or q.dim() != 3:
        raise ValueError(f'PatchNCE: q and k must both be (B, P, D); got {tuple(q.shape)} and {tuple(k.shape)}')
    if neg_mode not in ('internal', 'external', 'both') or neg_scope not in ('image', 'batch'):
        raise ValueError(f'PatchNCE: neg_mode must be internal|external|both and neg_scope image|batch; got '
                         f'{neg_mode!r}, {neg_scope!r}')
    if neg_mode != 'internal' and negatives is None:
        raise ValueError(f'PatchNCE: neg_mode={neg_mode!r} needs external negatives (B, K, D)')
    if detach_keys:
        k = k.detach()
    k_neg = k.detach() if detach_negatives else k
    if negatives is not None and detach_negatives:
        negatives = negatives.detach()
    b, p, d = q.shape
    pos = (q * k).sum(-1, keepdim=True)  # (B, P, 1)
    parts = [pos]
    if neg_mode in ('internal', 'both'):
        if neg_scope == 'image':
            sim = torch.bmm(q, k_neg.transpose(1, 2))  # (B, P, P)
            eye = torch.eye(p, dtype=torch.bool, device=q.device)[None]
        else:
            sim = (q.reshape(b * p, d) @ k_neg.reshape(b * p, d).t()).reshape(b, p, b * p)
            eye = torch.eye(b * p, dtype=torch.bool, device=q.device).reshape(b, p, b * p)
        parts.append(sim.masked_fill(eye, float('-inf')))  # the positive is not its own negative
    if neg_mode in ('external', 'both'):
        if negatives.dim() != 3 or negatives.shape[0] != b or negatives.shape[2] != d:
            raise ValueError(f'PatchNCE: negatives must be (B={b}, K, D={d}); got {tuple(negatives.shape)}')
        if neg_scope == 'image':
            parts.append(torch.bmm(q, negatives.transpose(1, 2)))  # (B, P, K)
        else:
            parts.append((q.reshape(b * p, d) @ negatives.reshape(-1, d).t()).reshape(b, p, -1))
    logits = torch.cat(parts, -1) / temperature
    return -F.log_softmax(logits, dim=-1)[..., 0]


@LOSS_REGISTRY.register()
class PatchNCELoss(nn.Module):
    """Registered PatchNCE (see the module docstring).

    Args:
        temperature: tau (CUT: 0.07).
        neg_mode: ``internal`` | ``external`` | ``both``.
        neg_scope: ``image`` | ``batch``.
        loss_weight: multiplier.
        reduction: ``mean`` | ``sum`` | ``none`` (over patches and images).
        detach_keys: stop gradients through the keys (default True).

    ``forward(q, k, negatives=None)``; lists of per-layer tensors are averaged over layers.
    """

    def __init__(self, temperature=0.07, neg_mode='internal', neg_scope='image', loss_weight=1.0, reduction='mean',
                 detach_keys=True):
        super().__init__()
        if reduction not in ('mean', 'sum', 'none'):
            raise ValueError(f'PatchNCELoss: reduction must be mean, sum or none, got {reduction!r}')
        self.temperature, self.neg_mode, self.neg_scope = temperature, neg_mode, neg_scope
        self.loss_weight, self.reduction, self.detach_keys = loss_weight, reduction, detach_keys

    def forward(self, q, k, negatives=None):
        if isinstance(q, (list, tuple)):
            negs = negatives if negatives is not None else [None] * len(q)
            values = [self(qi, ki, ni) for qi, ki, ni in zip(q, k, negs)]
            return sum(values) / len(values)
        loss = patch_nce(q, k, negatives, self.temperature, self.neg_mode, self.neg_scope, self.detach_keys)
        if self.reduction == 'mean':
            loss = loss.mean()
        elif self.reduction == 'sum':
            loss = loss.sum()
        return self.loss_weight * loss
