"""BaseModel: what every irtoolkit model shares (devices, DDP, EMA, AMP, optimisers, checkpoints).

A model owns its networks and optimisers; the runner owns the loop. The runner only calls::

    feed_data(batch); optimize_parameters(iter); update_learning_rate(iter, warmup_iter)
    get_current_log(); validation(loader, iter, tb_logger, save_img); save(iter, epoch, batch_in_epoch)
    resume_training(state)

Subclasses register networks with :meth:`build_net` (saved as ``models/<name>_<iter>.pth`` with ``params``
and, when EMA is on, ``params_ema``), optimisers with :meth:`add_optimizer`, and may extend the option schema
through ``OPTION_SCHEMA`` (merged into :data:`irtoolkit.utils.options.BASE_SCHEMA`).
"""
import contextlib
import os.path as osp
from collections import OrderedDict
from copy import deepcopy

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from irtoolkit.utils.checkpoint import atomic_save, get_rng_state, safe_load
from irtoolkit.utils.dist import get_dist_info, reduce_mean
from irtoolkit.utils.optim import build_optimizer, build_scheduler
from irtoolkit.utils.registry import OptionError, build_network


def resolve_device(opt):
    if opt.get('num_gpu', 0) and torch.cuda.is_available() and opt.get('device', 'auto') != 'cpu':
        return torch.device('cuda', torch.cuda.current_device())
    return torch.device('cpu')


def bare(net):
    """The module inside a DDP / DataParallel wrapper."""
    return net.module if isinstance(net, (DistributedDataParallel, nn.DataParallel)) else net


class BaseModel:
    OPTION_SCHEMA = {}

    def __init__(self, opt):
        self.opt = opt
        self.device = resolve_device(opt)
        self.is_train = opt['is_train']
        self.rank, self.world_size = get_dist_info()
        self.networks = OrderedDict()  # save name -> network (possibly DDP-wrapped)
        self.ema_networks = OrderedDict()  # save name -> EMA copy (bare module)
        self.optimizers = OrderedDict()  # name -> optimizer
        self.schedulers = []
        self.log_dict = OrderedDict()
        self.best_metric_results = {}  # dataset -> metric -> (best value, iter)
        self._unsaved = set()
        train_opt = opt.get('train') or {}
        amp = train_opt.get('amp') or {}
        self.amp_enabled = bool(amp.get('enabled', False)) and self.is_train
        self.amp_dtype = torch.float16 if amp.get('dtype', 'bf16') in ('fp16', 'float16') else torch.bfloat16
        use_scaler = self.amp_enabled and self.amp_dtype == torch.float16
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=use_scaler)
        clip = train_opt.get('grad_clip')
        if train_opt.get('use_grad_clip'):  # NAFNet's official switch: max-norm 0.01
            clip = clip or 0.01
        self.grad_clip = dict(max_norm=float(clip)) if isinstance(clip, (int, float)) else clip

    # ------------------------------------------------------------------ networks
    def build_net(self, key='network_g', name=None, trainable=True, save=True):
        """Build ``opt[key]``, load ``path.pretrain_<key>`` if set, move to the device, wrap in DDP if distributed.

        ``trainable=False`` freezes it (eval mode, no grad, no DDP); ``save=False`` keeps it out of checkpoints
        (e.g. frozen teachers that are always loaded from their own files).
        """
        if key not in self.opt:
            raise OptionError(f'{self.opt.get("opt_path", "")}: {key}: missing (needed by {type(self).__name__})')
        net = build_network(self.opt[key], key).to(self.device)
        suffix = key[len('network_'):] if key.startswith('network_') else key
        path_opt = self.opt.get('path') or {}
        load_path = path_opt.get(f'pretrain_network_{suffix}')
        if load_path:
            self.load_network(net, load_path, path_opt.get(f'strict_load_{suffix}', True),
                              path_opt.get(f'param_key_{suffix}', 'params'))
        if not trainable:
            net.requires_grad_(False)
            net.eval()
        if self.opt.get('dist') and trainable and any(p.requires_grad for p in net.parameters()):
            ids = [self.device.index] if self.device.type == 'cuda' else None
            net = DistributedDataParallel(net, device_ids=ids,
                                          find_unused_parameters=self.opt.get('find_unused_parameters', False))
        self.networks[name or f'net_{suffix}'] = net
        if not save:
            self._unsaved.add(name or f'net_{suffix}')
        return net

    def load_network(self, net, path, strict=True, param_key='params'):
        """Load ``path`` (``weights_only``) into ``net``; ``param_key`` picks params / params_ema."""
        state = safe_load(path)
        if isinstance(state, dict) and param_key and param_key in state:
            state = state[param_key]
        elif isinstance(state, dict) and param_key and any(k in state for k in ('params', 'params_ema')):
            raise KeyError(f'{path}: no {param_key!r} entry; has {", ".join(state)}')
        state = {k[7:] if k.startswith('module.') else k: v for k, v in state.items()}
        target = bare(net)
        if hasattr(target, 'load_checkpoint_state'):  # archs with their own key handling (e.g. upstream renames)
            return target.load_checkpoint_state(state, strict=strict)
        result = target.load_state_dict(state, strict=strict)
        return result

    def setup_ema(self, name='net_g'):
        """Keep an EMA copy of ``name`` when ``train.ema_decay > 0`` (BasicSR's option)."""
        decay = (self.opt.get('train') or {}).get('ema_decay', 0) or 0
        if decay <= 0:
            return None
        ema = deepcopy(bare(self.networks[name])).eval().requires_grad_(False)
        load_path = (self.opt.get('path') or {}).get(f'pretrain_network_{name[4:]}')
        if load_path:  # initialise from params_ema when the checkpoint has it
            state = safe_load(load_path)
            if isinstance(state, dict) and 'params_ema' in state:
                self.load_network(ema, load_path, True, 'params_ema')
        self.ema_networks[name] = ema
        self.ema_decay = decay
        return ema

    @torch.no_grad()
    def update_ema(self):
        """EMA of parameters; buffers (BatchNorm statistics, queues) are copied, not averaged."""
        for name, ema in self.ema_networks.items():
            src = bare(self.networks[name])
            src_params = dict(src.named_parameters())
            for k, p in ema.named_parameters():
                p.mul_(self.ema_decay).add_(src_params[k].detach(), alpha=1 - self.ema_decay)
            src_buffers = dict(src.named_buffers())
            for k, b in ema.named_buffers():
                b.copy_(src_buffers[k])

    def inference_net(self, name='net_g'):
        """The network to use for validation/testing: the EMA copy if there is one, else the bare net."""
        return self.ema_networks.get(name) or bare(self.networks[name])

    # ------------------------------------------------------------------ optimisation
    def add_optimizer(self, name, params, key):
        """Build the optimiser from ``train.<key>`` over the parameters that require grad."""
        params = [p for p in params if p.requires_grad]
        opt = (self.opt.get('train') or {}).get(key)
        if opt is None:
            raise OptionError(f'{self.opt.get("opt_path", "")}: train.{key}: missing (needed by {type(self).__name__})')
        self.optimizers[name] = build_optimizer(params, opt, f'train.{key}')
        return self.optimizers[name]

    def setup_schedulers(self):
        opt = (self.opt.get('train') or {}).get('scheduler')
        if opt:
            self.schedulers = [build_scheduler(o, opt) for o in self.optimizers.values()]

    def autocast(self):
        """Mixed-precision context from ``train.amp`` (bf16 or fp16; a no-op when off)."""
        if not self.amp_enabled:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def backward_step(self, loss, optimizer_names, params=None, retain_graph=False):
        """Backward, unscale, clip (``train.grad_clip``) and step the named optimisers."""
        names = [optimizer_names] if isinstance(optimizer_names, str) else list(optimizer_names)
        self.scaler.scale(loss).backward(retain_graph=retain_graph)
        for n in names:
            opt = self.optimizers[n]
            if self.grad_clip:
                self.scaler.unscale_(opt)
                group_params = params or [p for g in opt.param_groups for p in g['params']]
                torch.nn.utils.clip_grad_norm_(group_params, **self.grad_clip)
            self.scaler.step(opt)
        self.scaler.update()

    def update_learning_rate(self, current_iter, warmup_iter=-1):
        if current_iter > 1:
            for s in self.schedulers:
                s.step()
        if current_iter < warmup_iter:  # linear warm-up from the scheduler's initial lr
            for opt in self.optimizers.values():
                for g in opt.param_groups:
                    g.setdefault('initial_lr', g['lr'])
                    g['lr'] = g['initial_lr'] * current_iter / warmup_iter

    def get_current_learning_rate(self):
        return [g['lr'] for opt in self.optimizers.values() for g in opt.param_groups[:1]]

    def reduce_loss_dict(self, loss_dict):
        """Scalars averaged over ranks, as floats, for logging."""
        self.log_dict = OrderedDict((k, float(reduce_mean(v.detach() if torch.is_tensor(v) else v)))
                                    for k, v in loss_dict.items())
        return self.log_dict

    def get_current_log(self):
        return self.log_dict

    # ------------------------------------------------------------------ checkpoints
    def save_network_file(self, name, current_iter):
        state = {'params': {k: v.detach().cpu() for k, v in bare(self.networks[name]).state_dict().items()}}
        if name in self.ema_networks:
            state['params_ema'] = {k: v.detach().cpu() for k, v in self.ema_networks[name].state_dict().items()}
        atomic_save(state, osp.join(self.opt['path']['models'], f'{name}_{current_iter}.pth'))

    def extra_state(self):
        """Anything a subclass must carry across resume besides networks/optimisers (plain types/tensors)."""
        return {}

    def load_extra_state(self, state):
        pass

    def save(self, current_iter, epoch=0, batch_in_epoch=0):
        """Networks first, then the training state; each file atomically. ``current_iter`` may be 'latest'."""
        if self.rank != 0:
            return
        for name in self.networks:
            if name not in self._unsaved:
                self.save_network_file(name, current_iter)
        if current_iter == 'latest':
            return
        state = {'epoch': epoch, 'iter': current_iter, 'batch_in_epoch': batch_in_epoch,
                 'optimizers': {k: o.state_dict() for k, o in self.optimizers.items()},
                 'schedulers': [s.state_dict() for s in self.schedulers], 'scaler': self.scaler.state_dict(),
                 'rng': get_rng_state(), 'extra': self.extra_state()}
        atomic_save(state, osp.join(self.opt['path']['training_states'], f'{current_iter}.state'))

    def resume_training(self, state):
        """Load networks of ``state['iter']`` and the optimiser/scheduler/scaler states."""
        it = state['iter']
        for name, net in self.networks.items():
            if name in self._unsaved:
                continue
            path = osp.join(self.opt['path']['models'], f'{name}_{it}.pth')
            self.load_network(net, path, True, 'params')
            if name in self.ema_networks:
                self.load_network(self.ema_networks[name], path, True, 'params_ema')
        for k, o in self.optimizers.items():
            if k not in state['optimizers']:
                raise KeyError(f'resume state has no optimizer {k!r} (has {list(state["optimizers"])})')
            o.load_state_dict(state['optimizers'][k])
        if len(state['schedulers']) != len(self.schedulers):
            raise ValueError(f'resume state has {len(state["schedulers"])} schedulers, '
                             f'the model has {len(self.schedulers)}')
        for s, s_state in zip(self.schedulers, state['schedulers']):
            s.load_state_dict(s_state)
        self.scaler.load_state_dict(state.get('scaler', {}))
        self.load_extra_state(state.get('extra', {}))

    # ------------------------------------------------------------------ validation logging
    def log_validation(self, dataset_name, results, metrics, current_iter, tb_logger, logger, count=None):
        """Track the best value of each metric, log them and write them to TensorBoard.

        ``metrics`` answers ``lower_is_better(name)`` (a MetricSet) or is None (higher is better for all).
        """
        best = self.best_metric_results.setdefault(dataset_name, {})
        count = count if count is not None else f'{len(metrics.per_image)} images'
        lines = [f'Validation {dataset_name} ({count})']
        for m, v in results.items():
            lower = metrics is not None and metrics.lower_is_better(m)
            prev = best.get(m)
            if prev is None or (v < prev[0] if lower else v > prev[0]):
                best[m] = (v, current_iter)
            lines.append(f'\t # {m}: {v:.4f}\tBest: {best[m][0]:.4f} @ {best[m][1]} iter')
            if tb_logger is not None:
                tb_logger.add_scalar(f'metrics/{dataset_name}/{m}', v, current_iter)
        if logger is not None:
            logger.info('\n'.join(lines))

    # ------------------------------------------------------------------ interface for subclasses
    def feed_data(self, data):
        raise NotImplementedError

    def optimize_parameters(self, current_iter):
        raise NotImplementedError

    def validation(self, dataloader, current_iter, tb_logger=None, save_img=False):
        raise NotImplementedError
