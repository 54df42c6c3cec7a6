"""Learning-rate schedulers by name (irtoolkit's own registry, then basicsr's, then torch's); optimisers by name are
:mod:`irtoolkit.utils.optimizers` (re-exported here)."""
import bisect
import logging
import math

import torch
from torch.optim.lr_scheduler import LRScheduler

from irtoolkit.utils.errors import OptionError
from irtoolkit.utils.optimizers import build_optimizer
from irtoolkit.utils.registry import check_kwargs
from irtoolkit.utils.schedule_free import is_schedule_free

__all__ = ['SCHEDULERS', 'register_scheduler', 'build_scheduler', 'build_optimizer']
logger = logging.getLogger('irtoolkit')

SCHEDULERS = {}


def register_scheduler(cls):
    """Decorator: make ``cls`` available as ``train.scheduler.type: <ClassName>``."""
    SCHEDULERS[cls.__name__] = cls
    return cls


@register_scheduler
class CosineAnnealingRestartCyclicLR(LRScheduler):
    """The schedule of Restormer's training code, used by every IRConStyle recipe.

    Periods ``p_i`` with restart weights ``w_i`` and floors ``eta_min_i``; inside period i (starting at iteration
    ``s_i``): ``lr = eta_min_i + w_i * (base_lr - eta_min_i) * (1 + cos(pi * (t - s_i) / p_i)) / 2``. With
    upstream's ``periods [243312, 460320]``, ``eta_mins [3e-4, 1e-6]`` and base lr 3e-4 the lr is constant for the
    first period and then decays to 1e-6.
    """

    def __init__(self, optimizer, periods, restart_weights=(1, ), eta_mins=(0, ), last_epoch=-1):
        if not (len(periods) == len(restart_weights) == len(eta_mins)):
            raise ValueError(f'CosineAnnealingRestartCyclicLR: periods {list(periods)}, restart_weights '
                             f'{list(restart_weights)} and eta_mins {list(eta_mins)} need the same length')
        self.periods, self.restart_weights, self.eta_mins = list(periods), list(restart_weights), list(eta_mins)
        self.cumulative = [sum(self.periods[:i + 1]) for i in range(len(self.periods))]
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        t = self.last_epoch
        i = min(bisect.bisect_right(self.cumulative, t - 1) if t > 0 else 0, len(self.periods) - 1)
        start = self.cumulative[i - 1] if i else 0
        w, eta_min, period = self.restart_weights[i], self.eta_mins[i], self.periods[i]
        cos = 1 + math.cos(math.pi * min(t - start, period) / period)
        return [eta_min + w * 0.5 * (base - eta_min) * cos for base in self.base_lrs]


@register_scheduler
class HoldLinearDecayLR(LRScheduler):
    """CUT / NEGCUT / NLCL's ``linear`` policy, per iteration: the base lr for ``hold_iters`` iterations, then a
    linear decay to 0 over ``decay_iters`` (``lr = base * (1 - max(0, t - hold_iters) / decay_iters)``, never below
    0). CUT: 200 + 200 epochs; NLCL: 200 + 10 epochs.
    """

    def __init__(self, optimizer, hold_iters, decay_iters, last_epoch=-1):
        if hold_iters < 0 or decay_iters <= 0:
            raise ValueError(f'HoldLinearDecayLR: need hold_iters >= 0 and decay_iters > 0, got {hold_iters}, '
                             f'{decay_iters}')
        self.hold_iters, self.decay_iters = int(hold_iters), int(decay_iters)
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        factor = max(0.0, 1.0 - max(0, self.last_epoch - self.hold_iters) / self.decay_iters)
        return [base * factor for base in self.base_lrs]


def build_scheduler(optimizer, opt, key='train.scheduler'):
    from basicsr.models import lr_scheduler as bsr
    opt = dict(opt)
    name = opt.pop('type', None)
    cls = SCHEDULERS.get(name) or getattr(bsr, name or '', None) or getattr(torch.optim.lr_scheduler, name or '', None)
    if cls is None or not isinstance(cls, type):
        known = sorted(set(SCHEDULERS) | {'MultiStepRestartLR', 'CosineAnnealingRestartLR'}
                       | {n for n in dir(torch.optim.lr_scheduler) if n.endswith('LR')})
        raise OptionError(f'{key}.type: unknown scheduler {name!r}; known: {", ".join(known)}')
    check_kwargs(cls.__init__, {'optimizer': optimizer, **opt}, key, name)
    if is_schedule_free(optimizer):  # the package: "no need to use a learning rate scheduler", but compatible
        logger.warning(f'{key}: {type(optimizer).__name__} is schedule-free and needs no schedule (warm-up: its '
                       f'warmup_steps argument); {name} still applies')
    return cls(optimizer, **opt)
