"""The non-finite guard: no optimiser step, EMA update or checkpoint ever takes a NaN or an infinity.

``train.nonfinite: {policy: stop|skip, max_skips: N}`` (``--describe BaseModel``). Before every optimiser step,
:meth:`NonFiniteGuard.check` looks at the loss terms and, without an fp16 gradient scaler, at the gradients' total
norm; all ranks decide together (one all-reduce), so no rank steps while another stops. With ``stop`` (the default)
the run ends with one line naming the iteration and the non-finite terms (the runner adds the last good checkpoint).
With ``skip`` the step is dropped — weights, optimiser, scaler and EMA untouched, the gradients cleared — logged, and
the run stops after ``max_skips`` consecutive skips. Under fp16 AMP the scaler's own skipped steps (gradients that
overflow the scale) are normal and not errors: only a non-finite loss is.
"""
import logging

import torch

from irtoolkit.utils.dist import any_rank
from irtoolkit.utils.errors import UserError
from irtoolkit.config.schema import Option, fill_defaults

__all__ = ['NONFINITE_SCHEMA', 'NonFiniteError', 'NonFiniteGuard']
logger = logging.getLogger('irtoolkit')
NONFINITE_SCHEMA = {
    'policy': Option(str, 'stop', choices=('stop', 'skip'), doc='on a NaN/inf loss or gradient: stop, or skip it'),
    'max_skips': Option(int, 10, doc='skip: stop after this many skipped steps in a row'),
}


class NonFiniteError(UserError):
    """Training stopped on a non-finite loss or gradient (one line; nothing non-finite was written)."""


class NonFiniteGuard:

    def __init__(self, opt=None):
        opt = fill_defaults(dict(opt or {}), NONFINITE_SCHEMA)
        self.policy, self.max_skips = opt['policy'], int(opt['max_skips'])
        self.consecutive = 0
        self.iteration = None  # set by the model at the start of every iteration

    @staticmethod
    def nonfinite_terms(loss, terms, grads):
        """Names of what is not finite: loss terms (``terms``: name -> tensor), the total, the gradients."""
        bad = [k for k, v in (terms or {}).items() if torch.is_tensor(v) and v.dim() == 0 and not torch.isfinite(v)]
        if not bad and not torch.isfinite(loss.detach()).all():  # a named term explains a non-finite total
            bad.append('total loss')
        if grads is not None and grads and not torch.isfinite(torch.nn.utils.get_total_norm(grads)):
            bad.append('gradient norm')
        return bad

    def allow_step(self, loss, terms, grads, optimizer_names):
        """True when the step may go ahead; False to skip it; raises NonFiniteError to stop."""
        bad = self.nonfinite_terms(loss, terms, grads)
        if not any_rank(bool(bad)):
            self.consecutive = 0
            return True
        what = ', '.join(bad) if bad else 'a value on another rank'
        where = f'iteration {self.iteration}: non-finite {what} before the {"/".join(optimizer_names)} step'
        if self.policy == 'stop':
            raise NonFiniteError(f'{where}; stopped (train.nonfinite.policy: stop), nothing written for it')
        self.consecutive += 1
        if self.consecutive > self.max_skips:
            raise NonFiniteError(f'{where}; {self.consecutive} steps in a row skipped (train.nonfinite.max_skips '
                                 f'{self.max_skips}), stopped')
        logger.warning(f'{where}; step skipped ({self.consecutive} in a row)')
        return False
