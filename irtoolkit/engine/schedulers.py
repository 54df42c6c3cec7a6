"""Learning-rate schedulers by name: irtoolkit's own registry, then basicsr's, then torch's."""
import torch

from irtoolkit.utils.registry import OptionError, check_kwargs

SCHEDULERS = {}


def register_scheduler(cls):
    """Decorator: make ``cls`` available as ``train.scheduler.type: <ClassName>``."""
    SCHEDULERS[cls.__name__] = cls
    return cls


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
    return cls(optimizer, **opt)


def build_optimizer(params, opt, key='train.optim_g'):
    opt = dict(opt)
    name = opt.pop('type', None)
    cls = getattr(torch.optim, name or '', None)
    if cls is None or not isinstance(cls, type) or not issubclass(cls, torch.optim.Optimizer):
        known = [n for n in dir(torch.optim) if isinstance(getattr(torch.optim, n), type)
                 and issubclass(getattr(torch.optim, n), torch.optim.Optimizer) and n != 'Optimizer']
        raise OptionError(f'{key}.type: unknown optimizer {name!r}; known: {", ".join(sorted(known))}')
    if 'betas' in opt and isinstance(opt['betas'], list):
        opt['betas'] = tuple(opt['betas'])
    check_kwargs(cls.__init__, {'params': params, **opt}, key, name)
    return cls(params, **opt)
