"""Models with basicsr's interface (its ``SRModel``, ``SwinIRModel``, ``ESRGANModel``, ``RealESRGANModel`` and
subclasses from other projects) in irtoolkit's runner, told apart by the interface the class has, never by name.

basicsr's interface differs from irtoolkit's in four places, which :class:`BasicSRModel` bridges:

* ``save(epoch, current_iter)`` (``-1, -1`` for the latest weights) instead of ``save(iter, epoch, batch)``;
* resume: basicsr loads the networks of the resumed iteration at construction, from ``path.pretrain_network_*``
  (its ``check_resume``), and only optimisers and schedulers in ``resume_training``;
* ``validation(loader, iter, tb_logger, save_img)`` logs through the ``basicsr`` logger;
* basicsr reads the run (``is_train``, ``dist``, ``rank``, output folders) from its options: it gets the recipe with
  the run context written in (:meth:`~irtoolkit.config.run.RunContext.basicsr_options`).

What the runner adds, as for its own models: the training state also holds the RNG streams (Python, NumPy, torch) and
the position in the epoch, so ``--auto_resume`` continues with the same batches and random draws, and the state the
model keeps outside its networks, optimisers and schedulers (:func:`training_attributes`: e.g. RealESRGAN's
training-pair queue; Real-ESRGAN's own recipe, queue_size 180, gt_size 256, scale 4: 180 x 3 x (256² + 64²) float32
values, 150 MB per training state). Resume is then exact on one process (on a GPU with ``deterministic: true``: without
it, cuDNN/atomic kernels already make two uninterrupted runs differ). With several ranks each rank has its own such
state and only rank 0 writes the training state: it is left out there, and a resume on several ranks (or of a state
saved by several) starts it as the model builds it (RealESRGAN: an empty queue), saying so in the log.
"""
import logging
import os.path as osp

import numpy as np
import torch

from irtoolkit.utils.checkpoint import atomic_save, get_rng_state, safe_load
from irtoolkit.utils.registry import has_basicsr_interface

__all__ = ['has_basicsr_interface', 'BasicSRModel', 'training_attributes']

logger = logging.getLogger('irtoolkit')

NUMBERS = (bool, int, float, np.bool_, np.integer, np.floating)


def _version(tensor):
    """The in-place version counter (none on an inference-mode tensor, which cannot change in place)."""
    return None if tensor.is_inference() else tensor._version


def attribute_snapshot(model):
    """What :func:`training_attributes` compares with: each tensor attribute's identity and in-place version, each
    number's value."""
    return {k: (v, _version(v)) if isinstance(v, torch.Tensor) else v for k, v in vars(model).items()
            if isinstance(v, (torch.Tensor, *NUMBERS))}


def training_attributes(model, snapshot):
    """The tensors and numbers on ``model`` (its ``__dict__``, networks and optimisers aside) that training set or
    changed since ``snapshot`` (:func:`attribute_snapshot` right after construction): state a basicsr model carries from
    one iteration to the next outside its networks, such as RealESRGAN's training-pair queue (``queue_lr`` (Q, C, h,
    w), ``queue_gt`` (Q, C, H, W), ``queue_ptr``) or StyleGAN2's ``mean_path_length``; also the last batch's tensors
    (``lq``, ``gt``, ``output``), which the next ``feed_data`` replaces. What construction set from the options and
    training left alone is not included, so a changed option takes effect on resume. Tensors as detached CPU copies,
    numbers as Python numbers (both load with ``weights_only``)."""
    out = {}
    for k, v in vars(model).items():
        if isinstance(v, torch.Tensor):
            before = snapshot.get(k)
            if not (isinstance(before, tuple) and before[0] is v and before[1] == _version(v)):
                out[k] = v.detach().to('cpu', copy=True)
        elif isinstance(v, NUMBERS) and not (k in snapshot and snapshot[k] == v):
            out[k] = v.item() if isinstance(v, np.generic) else v
    return out


def resume_paths(opt, state):
    """Options for resuming ``state``: every ``network_<x>`` loads ``models/net_<x>_<iter>.pth`` (basicsr's
    ``check_resume``); a copy, the given options are not changed."""
    opt = dict(opt, path=dict(opt['path']))
    for key in [k for k in opt if k.startswith('network_')]:
        name = key[len('network_'):]
        opt['path'][f'pretrain_network_{name}'] = osp.join(opt['path']['models'], f'net_{name}_{state["iter"]}.pth')
        opt['path'].setdefault(f'param_key_{name}', 'params')
        opt['path'][f'strict_load_{name}'] = True
    return opt


class BasicSRModel:
    """A basicsr-interface model behind irtoolkit's runner calls (everything else is forwarded)."""

    def __init__(self, cls, opt, run, state=None):
        from basicsr.utils import get_root_logger
        ours, theirs = logging.getLogger('irtoolkit'), get_root_logger()  # basicsr's, initialised once
        theirs.handlers = list(ours.handlers)  # the model's own lines (network, validation) into the run's log
        theirs.setLevel(ours.level)
        theirs_opt = run.basicsr_options(opt)  # the recipe with the run's fields, as basicsr's models read them
        self.__dict__['model'] = cls(resume_paths(theirs_opt, state) if state is not None else theirs_opt)
        self.__dict__['run'] = run
        self.__dict__['constructed'] = attribute_snapshot(self.model)

    def __getattr__(self, name):
        return getattr(self.model, name)

    def save(self, current_iter, epoch=0, batch_in_epoch=0):
        if current_iter == 'latest':
            return self.model.save(-1, -1)
        self.model.save(epoch, current_iter)  # networks and basicsr's training state, written atomically (compat)
        if self.run.rank == 0:
            path = osp.join(self.run.paths['training_states'], f'{current_iter}.state')
            state = safe_load(path)
            attributes = training_attributes(self.model, self.constructed)
            if self.run.world_size > 1:  # rank 0's would stand in for every rank's: the names only, for the log
                attributes = {k: None for k in attributes}
            state.update(batch_in_epoch=batch_in_epoch, accumulate=self.run.accumulate,
                         world_size=self.run.world_size, rng=get_rng_state(), model_attributes=attributes)
            atomic_save(state, path)

    def resume_training(self, state):
        """Optimisers and schedulers (the networks were loaded at construction, from the resumed iteration), and on
        one process the model's :func:`training_attributes` (tensors onto the model's device)."""
        self.model.resume_training(state)
        saved = state.get('model_attributes') or {}
        if not saved:
            return
        if state.get('world_size', 1) != 1 or self.run.world_size != 1:
            logger.info(f'model attributes {", ".join(saved)} start as the model builds them: each rank keeps its own '
                        f'(saved by {state.get("world_size", 1)} rank(s), resumed on {self.run.world_size})')
            return
        for k, v in saved.items():
            setattr(self.model, k, v.to(self.model.device) if isinstance(v, torch.Tensor) else v)
        logger.info('restored model attributes: ' + ', '.join(
            f'{k} {tuple(v.shape)}' if isinstance(v, torch.Tensor) else f'{k}={v}' for k, v in saved.items()))

    def validation(self, dataloader, current_iter, tb_logger=None, save_img=False, logger=None):
        self.model.validation(dataloader, current_iter, tb_logger, save_img)
        return {k: float(v) for k, v in (getattr(self.model, 'metric_results', None) or {}).items()}
