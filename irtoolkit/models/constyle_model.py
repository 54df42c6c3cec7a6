"""ConStyleModel: IRConStyle's joint training (Fan et al., arXiv 2402.15784).

While ``iter <= train.ConStyle_iter`` every step runs ``net_g(lq, gt)``: ConStyle's training forward (query
encoder on LQ, momentum key encoder on GT, queue) and the restoration, and minimises

    pixel (and any other ``train.*_opt`` image loss) + InfoNCE(q, k, queue) + Content(q, k) + Style([q0, q1], neg)

Afterwards the prior is frozen (no gradients, eval-mode BatchNorm) and the step is ``net_g(lq)`` with the image
losses only; the momentum update and enqueue are skipped. Options (besides RestorationModel's):

    train.ConStyle_iter: int          # last iteration with the ConStyle losses; -1 freezes at once; ~ never
    train.infonce_opt: {type: QueueInfoNCELoss, ...}   # upstream's ``CrossEntropy_opt: {type: CrossEntropyLoss}``
    train.content_opt: {type: ContentLoss, ...}        # is accepted as an alias
    train.style_opt: {type: StyleLoss, ...}
    train.mixing_augs: {mixup: bool, mixup_beta: 1.2, use_identity: bool}   # Restormer's mixup, training only

Logged: ``l_<name>`` for every term, ``l_total`` and ``acc_infonce`` (share of samples whose positive beats all
queue entries). The network must expose ``ConStyle`` and accept ``net(lq, gt)`` (see ``ConStyleUNet``).
"""
import logging
from collections import OrderedDict

import torch
from torch.nn.parallel import DistributedDataParallel

from irtoolkit.models.base_model import bare
from irtoolkit.models.restoration_model import RestorationModel
from irtoolkit.utils.registry import MODEL_REGISTRY, OptionError, build_loss

CONSTYLE_LOSS_KEYS = ('infonce_opt', 'CrossEntropy_opt', 'content_opt', 'style_opt')
logger = logging.getLogger('irtoolkit')


@MODEL_REGISTRY.register()
class ConStyleModel(RestorationModel):
    OPTION_SCHEMA = {'train': {'ConStyle_iter': int, 'mixing_augs': dict}}
    uses_constyle_losses = True
    _validating = False

    def init_training_settings(self):
        train_opt = self.opt['train']
        net = bare(self.net_g)
        if not hasattr(net, 'ConStyle'):
            raise OptionError(f'{self.opt.get("opt_path", "")}: network_g: {type(net).__name__} has no ConStyle '
                              f'prior (use ConStyleNAFNet, ConStyleRestormer or ConStyleUNet)')
        self.constyle_iter = train_opt.get('ConStyle_iter')
        if self.constyle_iter is None:
            self.constyle_iter = float('inf')
        self.constyle_frozen = False
        self.constyle_losses = self.build_constyle_losses() if self.uses_constyle_losses else {}
        if self.constyle_losses and not net.ConStyle.Train:
            raise OptionError(f'{self.opt.get("opt_path", "")}: network_g.Train: false, but the ConStyle losses need '
                              'the key encoder and the queue (set Train: true, or ConStyle_iter: -1 without them)')
        self.mixup = train_opt.get('mixing_augs') or {}
        super().init_training_settings()

    def build_losses(self, skip=()):
        return super().build_losses(skip=tuple(skip) + CONSTYLE_LOSS_KEYS)

    def build_constyle_losses(self):
        return build_constyle_losses(self.opt['train'], self.device)

    # ------------------------------------------------------------------ training
    def feed_data(self, data):
        super().feed_data(data)
        if self.is_train and self.mixup.get('mixup') and not self._validating and self.gt is not None:
            self.apply_mixup()

    def validation(self, *args, **kwargs):
        self._validating = True  # feed_data is shared: no mixup on validation images (upstream bug)
        try:
            return super().validation(*args, **kwargs)
        finally:
            self._validating = False

    def apply_mixup(self):
        """Restormer's mixing augmentation: blend each pair with another pair of the batch (lam ~ Beta(b, b))."""
        if self.mixup.get('use_identity') and torch.rand(()) < 0.5:
            return
        beta = float(self.mixup.get('mixup_beta', 1.2))
        lam = torch.distributions.Beta(beta, beta).sample().item()
        perm = torch.randperm(self.lq.shape[0], device=self.lq.device)
        self.lq = lam * self.lq + (1 - lam) * self.lq[perm]
        self.gt = lam * self.gt + (1 - lam) * self.gt[perm]

    def constyle_active(self, current_iter):
        return bool(self.constyle_losses) and current_iter <= self.constyle_iter

    def freeze_constyle(self, current_iter=None):
        """Freeze the prior in the trained network and its EMA copy; re-wrap DDP without the frozen parameters."""
        for net in [bare(self.net_g)] + list(self.ema_networks.values()):
            net.ConStyle.freeze()
        if isinstance(self.net_g, DistributedDataParallel):  # DDP would wait for gradients that never come
            ids = [self.device.index] if self.device.type == 'cuda' else None
            self.net_g = DistributedDataParallel(bare(self.net_g), device_ids=ids,
                                                 find_unused_parameters=self.opt.get('find_unused_parameters', False))
            self.networks['net_g'] = self.net_g
        self.constyle_frozen = True
        logger.info(f'ConStyle frozen at iter {current_iter}: its losses and training forward stop')

    def optimize_parameters(self, current_iter):
        active = self.constyle_active(current_iter)
        if not active and not self.constyle_frozen:
            self.freeze_constyle(current_iter)
        self.optimizers['g'].zero_grad(set_to_none=True)
        with self.autocast():
            out = self.net_g(self.lq, self.gt) if active else None
            self.output = out['output'] if active else self.net_g(self.lq)
        total, loss_dict = self.compute_losses(self.output.float(), self.gt)
        if active:
            c_total, c_dict = self.compute_constyle_losses(out)
            total = total + c_total
            loss_dict.update(c_dict)
        loss_dict['l_total'] = total
        self.backward_step(total, 'g')
        self.reduce_loss_dict(loss_dict)
        self.update_ema()

    def compute_constyle_losses(self, out):
        return constyle_loss_terms(self.constyle_losses, out)


def build_constyle_losses(train_opt, device):
    """``infonce`` / ``content`` / ``style`` losses from ``train.*_opt`` (upstream's ``CrossEntropy_opt`` too)."""
    losses = OrderedDict()
    nce = train_opt.get('infonce_opt')
    if nce is None and train_opt.get('CrossEntropy_opt') is not None:
        nce = dict(train_opt['CrossEntropy_opt'])
        if nce.get('type') == 'CrossEntropyLoss':  # upstream recipes: CE over ConStyle's logits
            nce['type'] = 'QueueInfoNCELoss'
    for name, opt in (('infonce', nce), ('content', train_opt.get('content_opt')),
                      ('style', train_opt.get('style_opt'))):
        if opt is not None:
            losses[name] = build_loss(opt, f'train.{name}_opt').to(device)
    return losses


def constyle_loss_terms(losses, out):
    """Sum and dict of the prior's loss terms from ConStyle's training outputs (``net(lq, gt)``'s dict)."""
    q = [t.float() for t in out['q']]
    k, queue = out['k'].float(), out['queue'].float()
    loss_dict, total = OrderedDict(), 0
    for name in ('infonce', 'content', 'style'):
        if name not in losses:
            continue
        if name == 'infonce':
            value = losses[name](q[1], k, queue, out['temperature'])
        elif name == 'content':
            value = losses[name](q[1], k)
        else:
            value = losses[name](q, [n.float() for n in out['neg']])
        loss_dict[f'l_{name}'] = value
        total = total + value
    with torch.no_grad():  # diagnostic: does the clean key outscore every queue entry?
        pos = (q[1] * k).sum(1)
        loss_dict['acc_infonce'] = (pos > (q[1] @ queue).max(1).values).float().mean()
    return total, loss_dict
