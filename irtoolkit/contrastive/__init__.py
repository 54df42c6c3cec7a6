"""Backbone-agnostic building blocks of the contrastive objectives (CUT/NEGCUT, CDD-GAN, NLCL, Uni-Removal).

* :mod:`.feature_tap` — intermediate features of any network by module name, with an early exit;
* :mod:`.samplers` — random / non-local / grid patch samplers returning normalised coordinates, and ``gather``;
* :mod:`.heads` — projection heads sized at construction, feature projectors, momentum update;
* :mod:`.queue` — a FIFO embedding queue for extra negatives;
* :mod:`.encoders` — the feature encoder of a loss: generator, discriminator, VGG or timm ``features_only``.

The losses are registered in ``irtoolkit/losses`` (``PatchNCELoss``, ``SupConPatchLoss``,
``AdversarialContrastiveLoss``, ``NonLocalContrastiveLoss``, ``MultiGrainedContrastiveLoss``,
``ClusterGrainedContrastiveLoss``); the networks in ``irtoolkit/archs`` (``PatchGANDiscriminator``,
``NegativeGenerator``, ``NLCLResGenerator``).
"""
from irtoolkit.contrastive.encoders import ContrastiveEncoder, build_encoder
from irtoolkit.contrastive.feature_tap import FeatureTap, tap_features
from irtoolkit.contrastive.heads import FeatureProjector, PatchProjectionHeads, momentum_update
from irtoolkit.contrastive.queue import EmbeddingQueue
from irtoolkit.contrastive.samplers import (GridPatchSampler, NonLocalPatchSampler, RandomPatchSampler, build_sampler,
                                            gather)

__all__ = [
    'ContrastiveEncoder', 'build_encoder', 'FeatureTap', 'tap_features', 'FeatureProjector', 'PatchProjectionHeads',
    'momentum_update', 'EmbeddingQueue', 'GridPatchSampler', 'NonLocalPatchSampler', 'RandomPatchSampler',
    'build_sampler', 'gather'
]
