"""Models with basicsr's interface (its ``SRModel``, ``SwinIRModel``, ``ESRGANModel``, ``RealESRGANModel`` and
subclasses from other projects) in irtoolkit's runner, told apart by the interface the class has, never by name.

basicsr's interface differs from irtoolkit's in four places, which :class:`BasicSRModel` bridges:

* ``save(epoch, current_iter)`` (``-1, -1`` for the latest weights) instead of ``save(iter, epoch, batch)``;
* resume: basicsr loads the networks of the resumed iteration at construction, from ``path.pretrain_network_*``
  (its ``check_resume``), and only optimisers and schedulers in ``resume_training``;
* ``validation(loader, iter, tb_logger, save_img)`` logs through the ``basicsr`` logger;
* basicsr reads the run (``is_train``, ``dist``, ``rank``, output folders) from its options: it gets the recipe with
  the run context written in (:meth:`~irtoolkit.config.run.RunContext.basicsr_options`).

What the runner adds, as for its own models: the training state also holds the RNG streams (Python, NumPy, torch)
and the position in the epoch, so ``--auto_resume`` continues with the same batches and random draws. Resume is then
exact when everything the model changes lives in its networks (EMA copies included), optimisers and schedulers,
as in basicsr's models; state a model keeps elsewhere (e.g. RealESRGAN's training-pair queue) restarts empty.
"""
import logging
import os.path as osp

from irtoolkit.utils.checkpoint import atomic_save, get_rng_state, safe_load
from irtoolkit.utils.registry import has_basicsr_interface

__all__ = ['has_basicsr_interface', 'BasicSRModel']


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

    def __getattr__(self, name):
        return getattr(self.model, name)

    def save(self, current_iter, epoch=0, batch_in_epoch=0):
        if current_iter == 'latest':
            return self.model.save(-1, -1)
        self.model.save(epoch, current_iter)  # networks and basicsr's training state, written atomically (compat)
        if self.run.rank == 0:
            path = osp.join(self.run.paths['training_states'], f'{current_iter}.state')
            state = safe_load(path)
            state.update(batch_in_epoch=batch_in_epoch, accumulate=self.run.accumulate,
                         world_size=self.run.world_size, rng=get_rng_state())
            atomic_save(state, path)

    def resume_training(self, state):
        """Optimisers and schedulers (the networks were loaded at construction, from the resumed iteration)."""
        self.model.resume_training(state)

    def validation(self, dataloader, current_iter, tb_logger=None, save_img=False, logger=None):
        self.model.validation(dataloader, current_iter, tb_logger, save_img)
        return {k: float(v) for k, v in (getattr(self.model, 'metric_results', None) or {}).items()}
