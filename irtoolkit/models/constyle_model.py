"""ConStyleModel: IRConStyle's joint training (Fan et al., arXiv 2402.15784).

While ``iter <= train.ConStyle_iter`` every step runs ``net_g(lq, gt)``: ConStyle's training forward (query
encoder on LQ, momentum key encoder on GT, queue) and the restoration, and minimises

    pixel (and any other ``train.*_opt`` image loss) + InfoNCE(q, k, queue) + Content(q, k) + Style([q0, q1], neg)

Afterwards the prior is frozen (no gradients) and the step is ``net_g(lq)`` with the image losses only; the
momentum update and enqueue are skipped. The frozen prior's BatchNorm (``train.ConStyle_bn``): ``eval`` (default)
normalises with the stored statistics in training as in testing; ``train`` is upstream's behaviour (its frozen prior
keeps running in train mode): each training batch is normalised with its own statistics and the running statistics
keep moving towards the training data, which testing then uses. Upstream's ``CrossEntropy_opt: {type:
CrossEntropyLoss}`` is accepted for ``infonce_opt``. Logged: ``l_<name>`` for every term, ``l_total`` and
``acc_infonce`` (share of samples whose positive beats all queue entries). The network must expose ``ConStyle``
and accept ``net(lq, gt)`` (see ``ConStyleUNet``).
"""
import logging
from collections import OrderedDict

import torch

from irtoolkit.models.restoration_model import RestorationModel
from irtoolkit.utils.dist import bare
from irtoolkit.utils.registry import MODEL_REGISTRY, build_loss
from irtoolkit.config.schema import NUM, Option
from irtoolkit.utils.errors import OptionError

CONSTYLE_LOSSES = ('infonce', 'content', 'style')
CONSTYLE_LOSS_KEYS = ('infonce_opt', 'CrossEntropy_opt', 'content_opt', 'style_opt')
MIXING_AUGS_SCHEMA = {
    'mixup': Option(bool, False, doc="Restormer's mixing augmentation on training pairs"),
    'mixup_beta': Option(NUM, 1.2, doc='lam ~ Beta(beta, beta) blends each pair with another pair of the batch'),
    'use_identity': Option(bool, False, doc='leave half of the batches unmixed'),
}
logger = logging.getLogger('irtoolkit')


@MODEL_REGISTRY.register()
class ConStyleModel(RestorationModel):
    OPTION_SCHEMA = {'train': {
        'ConStyle_iter': Option(int, None, doc='last iteration with the ConStyle losses, then the prior is frozen; '
                                '-1 freezes at once; unset: never'),
        'ConStyle_bn': Option(str, 'eval', choices=('eval', 'train'),
                              doc='BatchNorm of the frozen prior while the network trains: eval (stored statistics, '
                                  'as in testing) or train (upstream: batch statistics, running ones keep moving)'),
        'mixing_augs': Option(MIXING_AUGS_SCHEMA, doc="Restormer's mixup, training batches only"),
        'CrossEntropy_opt': Option(dict, doc="upstream IRConStyle's name of infonce_opt ({type: CrossEntropyLoss})"),
    }}
    uses_constyle_losses = True

    # ------------------------------------------------------------------ networks and losses
    def setup_training_networks(self):
        net = bare(self.net_g)
        if not hasattr(net, 'ConStyle'):
            raise OptionError(f'{self.opt.get("opt_path", "")}: network_g: {type(net).__name__} has no ConStyle '
                              f'prior (use ConStyleNAFNet, ConStyleRestormer or ConStyleUNet)')
        it = self.opt['train']['ConStyle_iter']
        self.constyle_iter = float('inf') if it is None else it
        self.constyle_frozen = False

    def setup_losses(self):
        self.constyle_losses = build_constyle_losses(self) if self.uses_constyle_losses else OrderedDict()
        if self.constyle_losses and not bare(self.net_g).ConStyle.Train:
            raise OptionError(f'{self.opt.get("opt_path", "")}: network_g.Train: false, but the ConStyle losses need '
                              'the key encoder and the queue (set Train: true, or ConStyle_iter: -1 without them)')
        return self.build_losses(rest=True, exclude=CONSTYLE_LOSS_KEYS)

    def constyle_active(self, current_iter):
        return bool(self.constyle_losses) and current_iter <= self.constyle_iter

    def freeze_constyle(self, current_iter=None):
        """Freeze the prior in the trained network and its EMA copy; re-wrap DDP without the frozen parameters."""
        for net in [bare(self.net_g)] + list(self.ema_networks.values()):
            net.ConStyle.freeze(self.opt['train']['ConStyle_bn'])
        self.net_g = self.rewrap('net_g')
        self.constyle_frozen = True
        logger.info(f'ConStyle frozen at iter {current_iter}: its losses and training forward stop')

    # ------------------------------------------------------------------ one iteration
    def apply_mixup(self):
        """Restormer's mixing augmentation: blend each pair with another pair of the batch (lam ~ Beta(b, b))."""
        mix = self.opt['train']['mixing_augs']
        if mix['use_identity'] and torch.rand(()) < 0.5:
            return
        lam = torch.distributions.Beta(mix['mixup_beta'], mix['mixup_beta']).sample().item()
        perm = torch.randperm(self.lq.shape[0], device=self.lq.device)
        self.lq = lam * self.lq + (1 - lam) * self.lq[perm]
        self.gt = lam * self.gt + (1 - lam) * self.gt[perm]

    def optimize_parameters(self, current_iter):
        if self.opt['train']['mixing_augs']['mixup']:  # here, not in feed_data: validation batches stay as read
            self.apply_mixup()
        active = self.constyle_active(current_iter)
        if not active and not self.constyle_frozen:
            self.freeze_constyle(current_iter)
        self.zero_grad('g')
        with self.autocast():
            out = self.net_g(self.lq, self.gt) if active else None
            self.output = out['output'] if active else self.net_g(self.lq)
        total, loss_dict = self.compute_losses(self.output.float(), self.gt)
        if active:
            c_total, c_dict = constyle_loss_terms(self.constyle_losses, out)
            total = total + c_total
            loss_dict.update(c_dict)
        loss_dict['l_total'] = total
        self.backward_step(total, 'g', terms=loss_dict)
        self.reduce_loss_dict(loss_dict)
        self.update_ema()


def build_constyle_losses(model):
    """``infonce`` / ``content`` / ``style`` losses of ``train.*_opt``; upstream's ``CrossEntropy_opt`` (cross-entropy
    over ConStyle's logits) is read as ``infonce_opt`` when that is not given."""
    losses = model.build_losses(optional=CONSTYLE_LOSSES)
    alias = model.opt['train'].get('CrossEntropy_opt')
    if 'infonce' not in losses and alias is not None:
        nce = dict(alias, type='QueueInfoNCELoss') if alias.get('type') == 'CrossEntropyLoss' else alias
        losses['infonce'] = build_loss(nce, 'train.CrossEntropy_opt').to(model.device)
        losses.move_to_end('infonce', last=False)
    return losses


def constyle_loss_terms(losses, out):
    """Sum and dict of the prior's loss terms from ConStyle's training outputs (``net(lq, gt)``'s dict)."""
    q = [t.float() for t in out['q']]
    k, queue = out['k'].float(), out['queue'].float()
    loss_dict, total = OrderedDict(), 0
    for name in CONSTYLE_LOSSES:
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
