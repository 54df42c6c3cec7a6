"""Schedule-free optimisers in the training loop (Defazio et al., "The Road Less Scheduled", arXiv:2405.15682).

A schedule-free optimiser keeps three weight sequences: ``z`` (the base optimiser's iterates, in its state), ``x``
(their weighted average: the weights to evaluate and to ship) and ``y = (1 - beta1) z + beta1 x``, where gradients are
taken. The parameters hold ``y`` in train mode and ``x`` in eval mode; ``optimizer.train()`` / ``optimizer.eval()``
switch them in place. Told apart by that interface (both methods and a ``train_mode`` flag in the parameter groups):
``schedulefree``'s optimisers, ``pytorch_optimizer``'s ScheduleFree* and SPlus. irtoolkit handles them once, for
every model:

* :func:`~irtoolkit.utils.optimizers.build_optimizer` returns them in train mode;
* :func:`evaluation_weights` switches them to ``x`` around validation (the runner's ``validate``, sample images
  included) and around the network files of ``BaseModel.save``: validated and saved weights are ``x``. On exit
  the train weights ``y`` are put back bit for bit (copied before the switch: recomputing them from ``x`` and ``z``
  is off by rounding), so validating or saving never changes the training trajectory;
* the training state holds ``y`` (:func:`train_weights`) beside the optimiser's state (``z``, moments, the
  ``train_mode`` flags); resume loads the network files (``x``), the optimiser state, then ``y``
  (:func:`restore_train_weights`), so a resumed run continues with exactly the weights of an uninterrupted one;
* EMA (``train.ema_decay``) averages the train weights ``y`` after every step, as for any other optimiser: the
  bookkeeping stays one code path and costs no switch per iteration, and ``x`` is already an average (the authors
  use no EMA; an EMA of ``x`` would lag behind an average). With EMA the validated network is the EMA copy
  (``params_ema``); ``params`` is ``x``.
"""
import contextlib
import logging
from collections.abc import Mapping

import torch

__all__ = ['is_schedule_free', 'evaluation_weights', 'train_weights', 'restore_train_weights']
logger = logging.getLogger('irtoolkit')


def is_schedule_free(optimizer):
    """Whether ``optimizer`` switches its parameters between train and eval weights (``train()`` / ``eval()``)."""
    return (callable(getattr(optimizer, 'train', None)) and callable(getattr(optimizer, 'eval', None))
            and any('train_mode' in g for g in optimizer.param_groups))


def _in_train_mode(optimizer):
    return is_schedule_free(optimizer) and any(g.get('train_mode') for g in optimizer.param_groups)


def _listed(optimizers):
    """A model's optimisers: a mapping (irtoolkit's models) or a sequence (basicsr's)."""
    return list(optimizers.values()) if isinstance(optimizers, Mapping) else list(optimizers or ())


def _params(optimizer):
    return [p for g in optimizer.param_groups for p in g['params']]


@contextlib.contextmanager
def evaluation_weights(optimizers):
    """Inside, every schedule-free optimiser of ``optimizers`` (a mapping or a sequence) that is in train mode holds
    its eval weights ``x``; on exit it is back in train mode with its train weights restored bit for bit. A no-op for
    other optimisers and when nested. Costs one copy of those parameters while inside."""
    switched = [o for o in _listed(optimizers) if _in_train_mode(o)]
    kept = [[p.detach().clone() for p in _params(o)] for o in switched]
    for o in switched:
        o.eval()
    try:
        yield
    finally:
        with torch.no_grad():
            for o, ys in zip(switched, kept):
                o.train()
                for p, y in zip(_params(o), ys):
                    p.copy_(y)


def train_weights(optimizers):
    """``{name: [parameter tensors on the CPU]}``: the train weights ``y`` of the schedule-free optimisers of
    ``optimizers`` (a mapping) in train mode, for the training state; empty without any."""
    return {name: [p.detach().cpu() for p in _params(o)] for name, o in optimizers.items() if _in_train_mode(o)}


def restore_train_weights(optimizers, saved):
    """After the networks (holding the saved eval weights ``x``) and the optimiser states are loaded: the train weights
    ``y`` of every schedule-free optimiser, from ``saved`` (:func:`train_weights` of the training state). A state
    without them (written by other code) gets ``y`` recomputed from ``x`` and ``z`` by the optimiser, exact up to
    rounding."""
    for name, o in optimizers.items():
        if not is_schedule_free(o):
            continue
        params, ys = _params(o), (saved or {}).get(name)
        if ys is None:
            logger.warning(f'resume: no train weights of schedule-free optimizer {name!r} in the training state; '
                           'recomputed from the saved weights (exact up to rounding)')
            for g in o.param_groups:
                g['train_mode'] = False  # the parameters hold x, as saved
            o.train()
            continue
        if len(ys) != len(params):
            raise ValueError(f'resume: the training state has {len(ys)} train weights of optimizer {name!r}, '
                             f'the optimizer has {len(params)} parameters')
        with torch.no_grad():
            for p, y in zip(params, ys):
                p.copy_(y)  # taken in train mode: the loaded state's train_mode flags say so already
