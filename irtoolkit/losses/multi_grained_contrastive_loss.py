"""Uni-Removal's contrastive losses (Zhang, Yan, Cai, "Uni-Removal: A Semi-Supervised Framework for
Simultaneously Addressing Multiple Degradations in Real-World Images", arXiv 2307.05075; journal version
"Unified-Removal", J. Imaging 2024). No code is released; the abstract fixes the two grains (feature space and
image space, stage 1) and a cluster-grained extension (stage 2). The forms below follow the notes' reading
(§4.2 [I], modelled on TKL&MR, CVPR 2022); each alternative is an option.

**MultiGrainedContrastiveLoss** (stage 1, "instance-grained"), anchor a = student, positive p = teacher
(or ground truth), negatives n = the degraded input's encodings (or, in feature space, the other teachers')::

    feature grain, 'infonce' (default): mean_l PatchNCE(q = P_s(f_s^l), k+ = P_t(f_t^l), N = {n^l} (+ other patches))
    feature grain, 'ratio':             mean_l |a^l - p^l|_1 / (|a^l - n^l|_1 + eps)
    image grain,   'ratio' (default):   sum_l w_l |phi_l(a) - phi_l(p)|_1 / (mean_m |phi_l(a) - phi_l(n_m)|_1 + eps)
    image grain,   'infonce':           InfoNCE of pooled, normalised phi_l(a) vs phi_l(p) against phi_l(n_m)

    L = loss_weight * (feature_weight * L_feat + image_weight * L_img)

Gradients, feature grain: the positive is *not* detached — with learnable projectors on both sides (student and
teacher projectors into a common space, TKL&MR) the positive term pulls the teacher's projection towards the
student's as well as the student's towards the teacher's, so the projectors learn a shared space; every negative
(the other patches, the other teachers' projections) is a constant, so no projector is ever pushed away. Detach the
positive before the call for a fixed target. Image grain: positives and negatives are constants (targets).

The image ratio is AECR-Net's / TKL&MR's contrastive regulariser (weights 1/32, 1/16, 1/8, 1/4, 1 on VGG19
relu1_1..relu5_1); phi is any encoder from :mod:`irtoolkit.contrastive.encoders`.

**ClusterGrainedContrastiveLoss** (stage 2, "cluster-grained"): anchors = embeddings of restored real images,
a *cluster* of positives = embeddings of real clean images, negatives = embeddings of real degraded images
(batch plus queues), multi-positive SupCon form::

    L = mean_i -1/|P| sum_{p in P} log( e^{a_i.p/tau} / sum_{j in P u N} e^{a_i.j/tau} )
"""
import torch
import torch.nn.functional as F
from torch import nn

from irtoolkit.losses.patch_nce_loss import patch_nce
from irtoolkit.utils.registry import LOSS_REGISTRY

__all__ = ['MultiGrainedContrastiveLoss', 'ClusterGrainedContrastiveLoss']


def _as_multi(neg):
    """(B, C, H, W) -> (B, 1, C, H, W); (B, M, C, H, W) unchanged."""
    return neg.unsqueeze(1) if neg.dim() == 4 else neg


@LOSS_REGISTRY.register()
class MultiGrainedContrastiveLoss(nn.Module):
    """Args:
        feature_mode: ``infonce`` | ``ratio`` | ``none``.
        image_mode: ``ratio`` | ``infonce`` | ``none``.
        temperature: tau of the InfoNCE forms (0.07).
        feature_weight / image_weight: weights of the two grains.
        image_layer_weights: w_l of the image grain (default: equal).
        internal_negatives: in the feature InfoNCE, also use the other patches of the positive as negatives.
        loss_weight: multiplier.

    ``forward(anchor, positive, negatives)``, each a dict with ``feat`` (list over layers of (B, P, D) unit
    embeddings; negatives (B, K, D), or (B, P, D) for ``ratio``) and/or ``img`` (list over layers of encoder
    maps (B, C, H, W); negatives (B, C, H, W) or (B, M, C, H, W)). Returns ``(total, {'feature', 'image'})``.
    """

    def __init__(self, feature_mode='infonce', image_mode='ratio', temperature=0.07, feature_weight=1.0,
                 image_weight=1.0, image_layer_weights=None, internal_negatives=True, eps=1e-7, loss_weight=1.0):
        super().__init__()
        if feature_mode not in ('infonce', 'ratio', 'none') or image_mode not in ('infonce', 'ratio', 'none'):
            raise ValueError(f'MultiGrainedContrastiveLoss: modes must be infonce, ratio or none; got '
                             f'{feature_mode!r}, {image_mode!r}')
        self.feature_mode, self.image_mode, self.temperature = feature_mode, image_mode, temperature
        self.feature_weight, self.image_weight, self.eps = feature_weight, image_weight, eps
        self.image_layer_weights = list(image_layer_weights) if image_layer_weights else None
        self.internal_negatives, self.loss_weight = internal_negatives, loss_weight

    def feature_grain(self, a, p, n):
        vals = []
        for ai, pi, ni in zip(a, p, n):
            if self.feature_mode == 'infonce':
                mode = 'internal' if ni is None else ('both' if self.internal_negatives else 'external')
                vals.append(patch_nce(ai, pi, ni, self.temperature, mode, 'image', detach_keys=False,
                                      detach_negatives=True).mean())
            elif ni is None:
                raise ValueError('MultiGrainedContrastiveLoss: the ratio feature grain needs negatives')
            else:
                vals.append((ai - pi).abs().mean() / ((ai - ni.detach()).abs().mean() + self.eps))
        return sum(vals) / len(vals)

    def image_grain(self, a, p, n):
        weights = self.image_layer_weights or [1.0 / len(a)] * len(a)
        if len(weights) != len(a):
            raise ValueError(f'MultiGrainedContrastiveLoss: {len(weights)} image_layer_weights for {len(a)} layers')
        total = 0
        for w, ai, pi, ni in zip(weights, a, p, n):
            pi, ni = pi.detach(), _as_multi(ni).detach()
            if self.image_mode == 'ratio':
                d_neg = (ai.unsqueeze(1) - ni).abs().mean()
                total = total + w * (ai - pi).abs().mean() / (d_neg + self.eps)
            else:
                q = F.normalize(ai.mean((2, 3)), dim=-1)[:, None]
                k = F.normalize(pi.mean((2, 3)), dim=-1)[:, None]
                negs = F.normalize(ni.mean((3, 4)), dim=-1)
                total = total + w * patch_nce(q, k, negs, self.temperature, 'external', 'image').mean()
        return total

    def forward(self, anchor, positive, negatives):
        terms = {}
        total = 0
        if self.feature_mode != 'none':
            terms['feature'] = self.feature_grain(anchor['feat'], positive['feat'], negatives['feat'])
            total = total + self.feature_weight * terms['feature']
        if self.image_mode != 'none':
            terms['image'] = self.image_grain(anchor['img'], positive['img'], negatives['img'])
            total = total + self.image_weight * terms['image']
        return self.loss_weight * total, terms


@LOSS_REGISTRY.register()
class ClusterGrainedContrastiveLoss(nn.Module):
    """Multi-positive contrast of anchors against a cluster of positives and a set of negatives.

    Args: temperature (0.1), normalize (L2-normalise all inputs first), loss_weight.
    ``forward(anchors (N, D), positives (Np, D), negatives (Nn, D))`` -> scalar; gradients flow into the anchors
    only (positives and negatives are targets and are detached).
    """

    def __init__(self, temperature=0.1, normalize=True, loss_weight=1.0):
        super().__init__()
        self.temperature, self.normalize, self.loss_weight = temperature, normalize, loss_weight

    def forward(self, anchors, positives, negatives):
        if anchors.dim() != 2 or positives.dim() != 2 or negatives.dim() != 2:
            raise ValueError(f'ClusterGrainedContrastiveLoss: expected (N, D) tensors; got {tuple(anchors.shape)}, '
                             f'{tuple(positives.shape)}, {tuple(negatives.shape)}')
        positives, negatives = positives.detach(), negatives.detach()
        if self.normalize:
            anchors, positives, negatives = (F.normalize(x, dim=-1) for x in (anchors, positives, negatives))
        logits = torch.cat((anchors @ positives.t(), anchors @ negatives.t()), 1) / self.temperature
        log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
        return self.loss_weight * -log_prob[:, :positives.shape[0]].mean()
