"""NLCL's two contrastive terms (Ye et al., "Unsupervised Deraining: Where Contrastive Learning Meets
Self-similarity", CVPR 2022; as implemented in the official release, notes §3.3):

1. **location contrast** (non-local PatchNCE on the background generator's features): query = embedding of the
   predicted background B at a location, positive = the rainy input O at the same location (detached),
   negatives = the other sampled locations — which the non-local sampler makes *self-similar*, hence hard::

       L_loc = mean -log( e^{q_i.k_i/tau} / (e^{q_i.k_i/tau} + sum_{j != i} e^{q_i.k_j/tau}) )

   with the identity version on the unpaired clean image averaged in (``idt``: 0.5 (L_loc(O->B) + L_loc(y->G(y)))).
2. **layer contrast** (supervised contrast on discriminator features): the P most self-similar patches of B
   (label background) and the Q most self-similar patches of the rain layer R (label rain), at every
   discriminator layer; SupCon with tau = tau_b = 0.07 (see :mod:`irtoolkit.losses.supcon_loss`)::

       L_layer = mean_layers SupCon({z(B)}, {z(R)})

Total: ``loss_weight * (lambda_location * L_loc + lambda_layer * L_layer)``.
``forward`` returns ``(total, {'location': ..., 'layer': ...})``.
"""
from torch import nn

from irtoolkit.losses.patch_nce_loss import patch_nce
from irtoolkit.losses.supcon_loss import SupConPatchLoss
from irtoolkit.utils.registry import LOSS_REGISTRY

__all__ = ['NonLocalContrastiveLoss']


@LOSS_REGISTRY.register()
class NonLocalContrastiveLoss(nn.Module):
    """Args:
        temperature: tau of the location PatchNCE (0.07).
        layer_temperature / base_temperature: SupCon temperatures (0.07 / 0.07).
        lambda_location / lambda_layer: weights of the two terms (1 / 1).
        neg_scope: location negatives from the same image (``image``, NLCL) or the batch.
        class_weights: (background, rain) anchor weights of the layer contrast (asymmetric variant).
        batch_reduction: SupCon over images, ``sum`` (NLCL's code) or ``mean``.
        loss_weight: multiplier.
    Shapes: lists over layers of (B, P, D) embeddings.
    """

    def __init__(self, temperature=0.07, layer_temperature=0.07, base_temperature=0.07, lambda_location=1.0,
                 lambda_layer=1.0, neg_scope='image', class_weights=(1.0, 1.0), batch_reduction='mean',
                 loss_weight=1.0):
        super().__init__()
        self.temperature, self.neg_scope = temperature, neg_scope
        self.lambda_location, self.lambda_layer, self.loss_weight = lambda_location, lambda_layer, loss_weight
        self.supcon = SupConPatchLoss(layer_temperature, base_temperature, class_weights, batch_reduction)

    def location(self, q, k):
        vals = [patch_nce(qi, ki, None, self.temperature, 'internal', self.neg_scope).mean() for qi, ki in zip(q, k)]
        return sum(vals) / len(vals)

    def forward(self, q, k, bg, rain, q_idt=None, k_idt=None):
        """q, k: location embeddings of (B, O); bg, rain: layer embeddings of B and R; q_idt, k_idt: optional
        identity pair (G(y), y)."""
        terms = {}
        loc = self.location(q, k)
        if q_idt is not None:
            loc = 0.5 * (loc + self.location(q_idt, k_idt))
        terms['location'] = loc
        terms['layer'] = self.supcon(bg, rain)
        total = self.loss_weight * (self.lambda_location * terms['location'] + self.lambda_layer * terms['layer'])
        return total, terms
