"""RestorationModel: supervised image restoration (LQ -> GT) with pixel / perceptual losses and EMA."""
from collections import OrderedDict

import torch

from irtoolkit.config.schema import NUM, Option
from irtoolkit.models.base_model import BaseModel
from irtoolkit.utils.registry import MODEL_REGISTRY

MIXING_AUGS_SCHEMA = {
    'mixup': Option(bool, False, doc="Restormer's mixing augmentation on training pairs"),
    'mixup_beta': Option(NUM, 1.2, doc='lam ~ Beta(beta, beta) blends each pair with another pair of the batch'),
    'use_identity': Option(bool, False, doc='leave half of the batches unmixed'),
}


@MODEL_REGISTRY.register()
class RestorationModel(BaseModel):
    """One network ``network_g`` trained on pairs; losses from ``train.<name>_opt`` summed with their weights.

    Options: ``train.pixel_opt`` (e.g. ``{type: L1Loss, loss_weight: 1.0}``), optional ``train.perceptual_opt``
    and any other ``train.*_opt`` naming a registered loss called as ``loss(output, gt)``; Restormer's
    ``train.mixing_augs``. Logged as ``l_<name>``.
    """

    OPTION_SCHEMA = {'train': {'mixing_augs': Option(MIXING_AUGS_SCHEMA, doc="Restormer's mixup, training batches "
                                                     'only')}}

    def setup_networks(self):
        self.net_g = self.build_net('network_g')

    def setup_losses(self):
        losses = self.build_losses(rest=True)
        if not losses:
            raise self.option_error('train', 'no loss given (e.g. pixel_opt: {type: L1Loss})')
        return losses

    def image_losses(self, output, gt):
        """The image losses of ``output`` against ``gt``, by name (basicsr's PerceptualLoss gives two terms)."""
        terms = OrderedDict()
        for name, loss_fn in self.losses.items():
            value = loss_fn(output, gt)
            if isinstance(value, tuple):  # basicsr's PerceptualLoss returns (percep, style)
                terms.update((f'{name}{sub}', v) for sub, v in zip(('', '_style'), value) if v is not None)
            else:
                terms[name] = value
        return terms

    def mixup(self, lq, gt):
        """Restormer's mixing augmentation: blend each pair with another pair of the batch (lam ~ Beta(b, b));
        training batches only (validation batches stay as read)."""
        mix = self.opt['train']['mixing_augs']
        if not mix['mixup'] or (mix['use_identity'] and torch.rand(()) < 0.5):
            return lq, gt
        lam = torch.distributions.Beta(mix['mixup_beta'], mix['mixup_beta']).sample().item()
        perm = torch.randperm(lq.shape[0], device=lq.device)
        return lam * lq + (1 - lam) * lq[perm], lam * gt + (1 - lam) * gt[perm]

    def train_iteration(self, batch, current_iter):
        lq, gt = self.mixup(batch['lq'], batch['gt'])
        self.optimize('g', self.g_losses, lq, gt)

    def g_losses(self, lq, gt):
        with self.autocast():
            output = self.net_g(lq)
        return self.image_losses(output.float(), gt)
