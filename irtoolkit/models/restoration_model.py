"""RestorationModel: supervised image restoration (LQ -> GT) with pixel / perceptual losses and EMA."""
from collections import OrderedDict

from irtoolkit.models.base_model import BaseModel
from irtoolkit.utils.registry import MODEL_REGISTRY
from irtoolkit.utils.errors import OptionError


@MODEL_REGISTRY.register()
class RestorationModel(BaseModel):
    """One network ``network_g`` trained on pairs; losses from ``train.<name>_opt`` summed with their weights.

    Options: ``train.pixel_opt`` (e.g. ``{type: L1Loss, loss_weight: 1.0}``), optional ``train.perceptual_opt``
    and any other ``train.*_opt`` naming a registered loss called as ``loss(output, gt)``. Logged as ``l_<name>``.
    """

    def setup_networks(self):
        self.net_g = self.build_net('network_g')

    def setup_losses(self):
        losses = self.build_losses(rest=True)
        if not losses:
            raise OptionError(f'{self.opt.get("opt_path", "")}: train: no loss given '
                              '(e.g. pixel_opt: {type: L1Loss})')
        return losses

    def compute_losses(self, output, gt):
        """Sum and dict (``l_<name>``) of the image losses of ``output`` against ``gt``."""
        loss_dict, total = OrderedDict(), 0
        for name, loss_fn in self.losses.items():
            value = loss_fn(output, gt)
            if isinstance(value, tuple):  # basicsr's PerceptualLoss returns (percep, style)
                for sub, v in zip(('', '_style'), value):
                    if v is not None:
                        loss_dict[f'l_{name}{sub}'] = v
                        total = total + v
            else:
                loss_dict[f'l_{name}'] = value
                total = total + value
        return total, loss_dict

    def optimize_parameters(self, current_iter):
        self.zero_grad('g')
        with self.autocast():
            self.output = self.net_g(self.lq)
        total, loss_dict = self.compute_losses(self.output.float(), self.gt)
        self.backward_step(total, 'g', terms=loss_dict)
        self.reduce_loss_dict(loss_dict)
        self.update_ema()
