"""``CosineAnnealingRestartCyclicLR``: the schedule of Restormer's training code, used by every IRConStyle recipe.

Periods ``p_i`` with restart weights ``w_i`` and floors ``eta_min_i``; inside period i (starting at iteration
``s_i``): ``lr = eta_min_i + w_i * (base_lr - eta_min_i) * (1 + cos(pi * (t - s_i) / p_i)) / 2``. With upstream's
``periods [243312, 460320]``, ``eta_mins [3e-4, 1e-6]`` and base lr 3e-4 the lr is constant for the first period
and then decays to 1e-6. Registered with :func:`irtoolkit.engine.schedulers.register_scheduler` (imported by
``constyle_model.py``); a generic home would be ``irtoolkit/engine/schedulers.py``.
"""
import bisect
import math

from torch.optim.lr_scheduler import LRScheduler

from irtoolkit.engine.schedulers import register_scheduler


@register_scheduler
class CosineAnnealingRestartCyclicLR(LRScheduler):

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
