"""ConStyleModel: IRConStyle's joint training (Fan et al., arXiv 2402.15784).

While ``iter <= constyle.iter`` every step runs ``net_g(lq, gt)``: ConStyle's training forward (query
encoder on LQ, momentum key encoder on GT, queue) and the restoration, and minimises

    pixel (and any other ``train.*_opt`` image loss) + InfoNCE(q, k, queue) + Content(q, k) + Style([q0, q1], neg)

Afterwards the prior is frozen (no gradients) and the step is ``net_g(lq)`` with the image losses only; the
momentum update and enqueue are skipped. The frozen prior's BatchNorm (``constyle.frozen_bn``): ``eval`` (default)
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

from irtoolkit.config.schema import Option
from irtoolkit.models.restoration_model import RestorationModel
from irtoolkit.utils.dist import bare
from irtoolkit.utils.registry import MODEL_REGISTRY, build_loss

CONSTYLE_LOSSES = ('infonce', 'content', 'style')
CONSTYLE_LOSS_KEYS = ('infonce_opt', 'CrossEntropy_opt', 'content_opt', 'style_opt')
logger = logging.getLogger('irtoolkit')


@MODEL_REGISTRY.register()
class ConStyleModel(RestorationModel):
    """IRConStyle's joint training: the restoration losses and, up to ``constyle.iter``, the ConStyle prior's
    InfoNCE, content and style terms; then the prior is frozen."""

    OPTION_SCHEMA = {
        'constyle': {
            'iter': Option(int, None, doc='last iteration with the ConStyle losses, then the prior is frozen; -1 '
                           'freezes at once; unset: never (upstream: train.ConStyle_iter)'),
            'frozen_bn': Option(str, 'eval', choices=('eval', 'train'),
                                doc='BatchNorm of the frozen prior while the network trains: eval (stored statistics, '
                                    'as in testing) or train (upstream: batch statistics, running ones keep moving)'),
        },
        'train': {'CrossEntropy_opt': Option(dict, doc="upstream IRConStyle's name of infonce_opt "
                                             '({type: CrossEntropyLoss})')},
    }
    RENAMED_OPTIONS = {'train.ConStyle_iter': 'constyle.iter', 'train.ConStyle_bn': 'constyle.frozen_bn'}
    uses_constyle_losses = True

    # ------------------------------------------------------------------ networks and losses
    def setup_training_networks(self):
        net = bare(self.net_g)
        if not hasattr(net, 'ConStyle'):
            raise self.option_error('network_g', f'{type(net).__name__} has no ConStyle prior (use ConStyleNAFNet, '
                                    'ConStyleRestormer or ConStyleUNet)')
        it = self.opt['constyle']['iter']
        self.constyle_iter = float('inf') if it is None else it
        self.constyle_frozen = False

    def setup_losses(self):
        self.constyle_losses = build_constyle_losses(self) if self.uses_constyle_losses else OrderedDict()
        if self.constyle_losses and not bare(self.net_g).ConStyle.Train:
            raise self.option_error('network_g.Train', 'false, but the ConStyle losses need the key encoder and the '
                                    'queue (set Train: true, or constyle.iter: -1 without them)')
        return self.build_losses(rest=True, exclude=CONSTYLE_LOSS_KEYS)

    def constyle_active(self, current_iter):
        return bool(self.constyle_losses) and current_iter <= self.constyle_iter

    def freeze_constyle(self, current_iter=None):
        """Freeze the prior in the trained network and its EMA copy; re-wrap DDP without the frozen parameters."""
        for net in [bare(self.net_g)] + list(self.ema_networks.values()):
            net.ConStyle.freeze(self.opt['constyle']['frozen_bn'])
        self.net_g = self.rewrap('net_g')
        self.constyle_frozen = True
        logger.info(f'ConStyle frozen at iter {current_iter}: its losses and training forward stop')

    # ------------------------------------------------------------------ one iteration
    def train_iteration(self, batch, current_iter):
        lq, gt = self.mixup(batch['lq'], batch['gt'])
        active = self.constyle_active(current_iter)
        if not active and not self.constyle_frozen:
            self.freeze_constyle(current_iter)
        terms = self.optimize('g', self.g_losses, lq, gt, active)
        self.record(l_total=sum(terms.values()))

    def g_losses(self, lq, gt, active):
        """The image losses and, while the prior trains, its InfoNCE, content and style terms."""
        with self.autocast():
            out = self.net_g(lq, gt) if active else {'output': self.net_g(lq)}
        terms = self.image_losses(out['output'].float(), gt)
        if active:
            terms.update(constyle_loss_terms(self.constyle_losses, out, self.record))
        return terms


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


def constyle_loss_terms(losses, out, record):
    """The prior's loss terms from ConStyle's training outputs (``net(lq, gt)``'s dict), by name; ``record`` gets
    the diagnostic ``acc_infonce`` (does the clean key outscore every queue entry?)."""
    q = [t.float() for t in out['q']]
    k, queue = out['k'].float(), out['queue'].float()
    terms = OrderedDict()
    for name in CONSTYLE_LOSSES:
        if name not in losses:
            continue
        if name == 'infonce':
            terms[name] = losses[name](q[1], k, queue, out['temperature'])
        elif name == 'content':
            terms[name] = losses[name](q[1], k)
        else:
            terms[name] = losses[name](q, [n.float() for n in out['neg']])
    with torch.no_grad():
        pos = (q[1] * k).sum(1)
        record(acc_infonce=(pos > (q[1] @ queue).max(1).values).float().mean())
    return terms
