"""BaseModel: what every irtoolkit model shares, written once.

A model owns its networks and optimisers; the runner owns the loop and only calls::

    feed_data(batch); optimize_parameters(iter); update_learning_rate(iter, warmup_iter)
    get_current_log(); validation(loader, iter, tb_logger, save_img); save(iter, epoch, batch_in_epoch)
    resume_training(state)

Building a model runs, in order (a subclass overrides the steps it needs)::

    setup_networks()                      # what inference needs (net_g), built with build_net
    init_training_settings()              # training only:
        setup_training_networks()         #   critics, heads, teachers ... (build_net / add_net)
        setup_ema('net_g')                #   when train.ema_decay > 0
        self.losses = setup_losses()      #   build_losses(required=..., optional=...)
        setup_optimizers()                #   add_optimizer(name, params, 'optim_<x>')
        setup_schedulers()

so a method's model reads as its networks, its losses and what one iteration does. Networks: :meth:`build_net`
(from options, trainable or frozen, saved or not, ``path.pretrain_network_*`` loaded) and :meth:`add_net` (modules
built in code) wrap trainable networks for DDP with one rule (:func:`irtoolkit.utils.dist.wrap_ddp`); saved ones
land in ``models/<name>_<iter>.pth`` with ``params`` and, with EMA, ``params_ema``. Keys, types, defaults and
allowed values of a model's options live in its ``OPTION_SCHEMA`` (merged into
:data:`irtoolkit.config.options.BASE_SCHEMA`, defaults filled before the model is built). Validation on image pairs
comes from :class:`~irtoolkit.training.image_validation.ImageValidation`.
"""
import contextlib
import logging
import os.path as osp
from collections import OrderedDict
from copy import deepcopy

import torch

from irtoolkit.utils.memory import keep_freed_memory
from irtoolkit.training.nonfinite import NonFiniteError, NonFiniteGuard
from irtoolkit.training.image_validation import ImageValidation
from irtoolkit.utils.checkpoint import atomic_save, get_rng_state, load_checkpoint, load_state_into, read_state_dict
from irtoolkit.utils.dist import bare, get_dist_info, reduce_mean, run_device, wrap_ddp
from irtoolkit.utils.optim import build_optimizer, build_scheduler
from irtoolkit.utils.registry import build_loss, build_network
from irtoolkit.config.schema import fill_defaults
from irtoolkit.utils.errors import OptionError

__all__ = ['BaseModel', 'bare']
logger = logging.getLogger('irtoolkit')


class BaseModel(ImageValidation):
    """What every model shares: networks, losses, optimisers, EMA, AMP, checkpoints, resume and validation."""

    OPTION_SCHEMA = {}

    def __init__(self, opt):
        # resolved options already hold the schema's defaults; options built by hand (tests, benchmarks) get them
        # here, on a copy: a model never writes into the options it was given
        self.opt = fill_defaults(deepcopy(opt), self.OPTION_SCHEMA)
        self.device = run_device(opt)
        self.is_train = opt['is_train']
        self.rank, self.world_size = get_dist_info()
        self.networks = OrderedDict()  # save name -> network (DDP-wrapped when distributed and trainable)
        self.ema_networks = OrderedDict()  # save name -> EMA copy (bare module)
        self.optimizers = OrderedDict()  # name -> optimizer
        self.schedulers = []
        self.losses = OrderedDict()
        self.log_dict = OrderedDict()
        self.best_metric_results = {}  # dataset -> metric -> (best value, iter)
        self._unsaved = set()
        self.guard, self._skipped = NonFiniteGuard((opt.get('train') or {}).get('nonfinite')), set()
        self.micro = (0, 1)  # (micro-batch, micro-batches per iteration): see micro_batch
        self._trainable = OrderedDict()  # name -> parameters that learn, of the networks registered trainable
        self._setup_precision((opt.get('train') or {}) if self.is_train else {})
        self.setup_networks()
        if self.is_train:
            self.init_training_settings()

    def to_device(self, t):
        """A batch tensor on the model's device (channels-last images with ``train.channels_last``)."""
        fmt = torch.channels_last if self.speed['channels_last'] and t.dim() == 4 else torch.preserve_format
        return t.to(self.device, non_blocking=True, memory_format=fmt)

    def _setup_precision(self, train_opt):
        amp = train_opt.get('amp') or {}
        self.amp_enabled = bool(amp.get('enabled', False))
        self.amp_dtype = torch.float16 if amp.get('dtype', 'bf16') in ('fp16', 'float16') else torch.bfloat16
        use_scaler = self.amp_enabled and self.amp_dtype == torch.float16
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=use_scaler)
        clip = train_opt.get('grad_clip')
        if train_opt.get('use_grad_clip'):  # NAFNet's official switch: max-norm 0.01
            clip = clip or 0.01
        self.grad_clip = dict(max_norm=float(clip)) if isinstance(clip, (int, float)) else clip
        compile_opt = train_opt.get('compile')
        self.speed = {'channels_last': bool(train_opt.get('channels_last')),
                      'compile': ({} if compile_opt is True else dict(compile_opt or {})) if compile_opt else None}
        if self.device.type == 'cpu' and train_opt.get('keep_freed_memory'):
            keep_freed_memory()  # else glibc unmaps and re-faults every step's activations (docs/performance.md)

    # ------------------------------------------------------------------ the steps a model overrides
    def setup_networks(self):
        """Build the networks inference needs (a model with ``net_g`` builds it here)."""

    def setup_training_networks(self):
        """Build the networks only training needs (critics, heads, teachers)."""

    def setup_losses(self):
        """The losses of one iteration, by name: ``return self.build_losses(required=(...), optional=(...))``."""
        return OrderedDict()

    def setup_optimizers(self):
        """``self.add_optimizer(name, params, 'optim_<x>')`` for every optimiser; by default ``g`` over ``net_g``
        from ``train.optim_g``."""
        if 'net_g' in self.networks:
            self.add_optimizer('g', self.networks['net_g'].parameters(), 'optim_g')

    def init_training_settings(self):
        self.setup_training_networks()
        if 'net_g' in self.networks:
            self.setup_ema('net_g')
        self.losses = self.setup_losses()
        self.setup_optimizers()
        self.setup_schedulers()

    # ------------------------------------------------------------------ networks
    def build_net(self, key='network_g', name=None, trainable=True, save=True, net_opt=None, args=None,
                  checkpoint=None):
        """Build the network of ``opt[key]`` (or ``net_opt``, reported as ``key``) and register it as ``name``.

        ``args`` adds constructor arguments the model computes (e.g. sizes), without writing them into the options.
        Weights: ``checkpoint`` (``{path, strict, param_key, key}``, ``key`` naming the option in errors) or else
        ``path.pretrain_network_<suffix>``.
        ``trainable=False`` freezes it (eval mode, no grad, no DDP); ``save=False`` keeps it out of checkpoints.
        """
        net_opt = net_opt if net_opt is not None else self.opt.get(key)
        if net_opt is None:
            raise OptionError(f'{self.opt.get("opt_path", "")}: {key}: missing (needed by {type(self).__name__})')
        net = build_network({**net_opt, **(args or {})}, key)
        suffix = key[len('network_'):] if key.startswith('network_') else key
        path_opt = self.opt.get('path') or {}
        if checkpoint is None and path_opt.get(f'pretrain_network_{suffix}'):
            checkpoint = {'path': path_opt[f'pretrain_network_{suffix}'], 'key': f'path.pretrain_network_{suffix}',
                          'strict': path_opt.get(f'strict_load_{suffix}', True),
                          'param_key': path_opt.get(f'param_key_{suffix}', 'params')}
        if checkpoint:
            self.load_network(net, checkpoint['path'], checkpoint.get('strict', True),
                              checkpoint.get('param_key', 'params'), f'{checkpoint.get("key", key)}: ')
        return self.add_net(name or f'net_{suffix}', net, trainable, save)

    def add_net(self, name, net, trainable=True, save=True):
        """Register a module as network ``name``: on the device, frozen (eval, no grad) or wrapped for DDP."""
        net = net.to(self.device)
        if not trainable:
            net.requires_grad_(False).eval()
        else:
            self._trainable[name] = [p for p in net.parameters() if p.requires_grad]
        net = self.wrap(net)
        self.networks[name] = net
        if not save:
            self._unsaved.add(name)
        return net

    def wrap(self, net):
        """``net`` (bare) in DDP when distributed and it has trainable parameters, else ``net`` itself; then
        ``train.channels_last`` and ``train.compile`` (trainable networks only). Checkpoints, EMA and frozen uses
        go through :func:`~irtoolkit.utils.dist.bare`, so saved keys never carry ``module.`` or ``_orig_mod.``."""
        net = bare(net)
        if self.speed['channels_last']:
            net = net.to(memory_format=torch.channels_last)
        trainable = any(p.requires_grad for p in net.parameters())
        net = wrap_ddp(net, self.device, self.opt) if self.opt.get('dist') else net
        if self.speed['compile'] and trainable:
            net = torch.compile(net, mode=self.speed['compile'].get('mode'),
                                backend=self.speed['compile'].get('backend', 'inductor'))
        return net

    def rewrap(self, name):
        """Wrap network ``name`` again after its trainable parameters changed (DDP waits for every parameter it
        was built with)."""
        self.networks[name] = self.wrap(self.networks[name])
        return self.networks[name]

    def load_network(self, net, path, strict=True, param_key='params', where=''):
        """Load ``path`` into ``net`` (``weights_only``; ``param_key`` picks params / params_ema / auto)."""
        try:
            return load_checkpoint(net, path, param_key, strict)
        except (OSError, KeyError, ValueError, RuntimeError) as err:
            if not where:
                raise
            raise OptionError(f'{self.opt.get("opt_path", "")}: {where}cannot load {path}: '
                              f'{str(err).splitlines()[0]}') from None

    def setup_ema(self, name='net_g'):
        """Keep an EMA copy of ``name`` when ``train.ema_decay > 0`` (BasicSR's option)."""
        decay = (self.opt.get('train') or {}).get('ema_decay', 0) or 0
        if decay <= 0:
            return None
        ema = deepcopy(bare(self.networks[name])).eval().requires_grad_(False)
        load_path = (self.opt.get('path') or {}).get(f'pretrain_network_{name[4:]}')
        if load_path:  # start from the file's EMA when it has one
            state, used = read_state_dict(load_path, 'auto')
            if used == 'params_ema':
                load_state_into(ema, state, True, f'{load_path} (params_ema)')
        self.ema_networks[name] = ema
        self.ema_decay = decay
        return ema

    @torch.no_grad()
    def update_ema(self):
        """EMA of parameters; buffers (BatchNorm statistics, queues) are copied, not averaged. Not after an
        iteration whose step the non-finite guard skipped."""
        if self.micro[0] < self.micro[1] - 1 or any(it == self.guard.iteration for it, _ in self._skipped):
            return
        for name, ema in self.ema_networks.items():
            src = bare(self.networks[name])
            src_params = dict(src.named_parameters())
            for k, p in ema.named_parameters():
                p.mul_(self.ema_decay).add_(src_params[k].detach(), alpha=1 - self.ema_decay)
            src_buffers = dict(src.named_buffers())
            for k, b in ema.named_buffers():
                b.copy_(src_buffers[k])

    @contextlib.contextmanager
    def training_step(self, *names):
        """Inside, only the trainable networks ``names`` learn: their parameters require grad, every other trainable
        network's do not (frozen networks stay frozen); the previous flags are restored on exit. A model's
        optimisation step reads ``with self.training_step('net_d'): ...``."""
        unknown = [n for n in names if n not in self._trainable]
        if unknown:
            raise KeyError(f'training_step: {unknown} are not trainable networks of {type(self).__name__} '
                           f'(trainable: {list(self._trainable)})')
        saved = [(p, p.requires_grad) for params in self._trainable.values() for p in params]
        for n, params in self._trainable.items():
            for p in params:
                p.requires_grad_(n in names)
        try:
            yield
        finally:
            for p, flag in saved:
                p.requires_grad_(flag)

    def step(self, optimizers, nets, losses, log):
        """One optimisation step: inside :meth:`training_step` (only ``nets`` learn), ``losses()`` returns the named
        terms (an OrderedDict of scalars), their sum is back-propagated and ``optimizers`` step; each term is logged
        as ``l_<name>``. Tests call ``losses()`` the same way to see which networks each term reaches."""
        names = [optimizers] if isinstance(optimizers, str) else list(optimizers)
        with self.training_step(*nets):
            self.zero_grad(*names)
            terms = losses()
            self.backward_step(sum(terms.values()), names, terms={f'l_{k}': v for k, v in terms.items()})
        log.update((f'l_{k}', v.detach()) for k, v in terms.items())
        return terms

    def inference_net(self, name='net_g'):
        """The network to use for validation/testing: the EMA copy if there is one, else the bare net."""
        return self.ema_networks.get(name) or bare(self.networks[name])

    # ------------------------------------------------------------------ losses and optimisation
    def build_losses(self, required=(), optional=(), rest=False, exclude=()):
        """Losses from ``train.<name>_opt``, by name: every ``required`` one (missing: one-line error), the
        ``optional`` ones given, and with ``rest`` every other ``train.*_opt`` not in ``exclude`` (sorted)."""
        train_opt = self.opt.get('train') or {}
        for name in required:
            if train_opt.get(f'{name}_opt') is None:
                raise OptionError(f'{self.opt.get("opt_path", "")}: train.{name}_opt: missing '
                                  f'(needed by {type(self).__name__})')
        names = list(required) + list(optional)
        if rest:
            names += sorted(k[:-4] for k in train_opt
                            if k.endswith('_opt') and k[:-4] not in names and k not in exclude)
        return OrderedDict((n, build_loss(train_opt[f'{n}_opt'], f'train.{n}_opt').to(self.device))
                           for n in names if train_opt.get(f'{n}_opt') is not None)

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

    def backward_step(self, loss, optimizer_names, params=None, retain_graph=False, terms=None):
        """Backward, then — unless the non-finite guard stops or skips it (``terms``: the loss terms by name, for
        the message) — unscale, clip (``train.grad_clip``) and step the named optimisers. Returns whether it
        stepped."""
        names = [optimizer_names] if isinstance(optimizer_names, str) else list(optimizer_names)
        k, n_micro = self.micro
        self.scaler.scale(loss / n_micro).backward(retain_graph=retain_graph)  # the mean over the micro-batches
        if k < n_micro - 1:  # gradients accumulate; the last micro-batch steps (losses checked on the way)
            self.guard.allow_step(loss, terms, None, names) or self._drop_grads(names)
            return False
        if any((self.guard.iteration, n) in self._skipped for n in names):  # skipped at an earlier micro-batch
            self._drop_grads(names)
            return False
        groups = [p for n in names for g in self.optimizers[n].param_groups for p in g['params']]
        grads = None if self.scaler.is_enabled() else [p.grad for p in groups if p.grad is not None]
        if not self.guard.allow_step(loss, terms, grads, names):
            self._drop_grads(names)
            return False
        for n in names:
            opt = self.optimizers[n]
            if self.grad_clip:
                self.scaler.unscale_(opt)
                group_params = params or [p for g in opt.param_groups for p in g['params']]
                torch.nn.utils.clip_grad_norm_(group_params, **self.grad_clip)
            self.scaler.step(opt)
        self.scaler.update()
        return True

    def _drop_grads(self, names):
        """A skipped step: no gradient of it survives, no EMA update follows in this iteration."""
        for n in names:
            self.optimizers[n].zero_grad(set_to_none=True)
        it = self.guard.iteration
        self._skipped = {x for x in self._skipped if x[0] == it} | {(it, n) for n in names}

    def zero_grad(self, *names):
        """Clear the named optimisers' gradients (only at the first micro-batch when accumulating)."""
        if self.micro[0] > 0:
            return
        for n in names:
            self.optimizers[n].zero_grad(set_to_none=True)

    @contextlib.contextmanager
    def micro_batch(self, k, n):
        """Micro-batch ``k`` of ``n`` of one iteration (``train.accumulate``): backward_step accumulates and steps at
        the last one; DDP synchronises gradients only there (``no_sync`` on the others, forward included)."""
        self.micro = (k, n)
        with contextlib.ExitStack() as stack:
            if k < n - 1:
                for net in self.networks.values():
                    ddp = getattr(net, '_orig_mod', net)
                    if hasattr(ddp, 'no_sync'):
                        stack.enter_context(ddp.no_sync())
            try:
                yield
            finally:
                self.micro = (0, 1)

    def update_learning_rate(self, current_iter, warmup_iter=-1):
        """The runner's first call of every iteration: schedulers step, warm-up, and the iteration is noted."""
        self.guard.iteration = current_iter
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
        """Networks first, then the training state; each file atomically. ``current_iter`` may be 'latest'.
        Never non-finite weights: a network with a NaN or an infinity stops the run instead."""
        if self.rank != 0:
            return
        for name, net in list(self.networks.items()) + [(f'{k} (EMA)', v) for k, v in self.ema_networks.items()]:
            if not all(torch.isfinite(p).all() for p in bare(net).parameters()):
                raise NonFiniteError(f'iteration {current_iter}: {name} has non-finite weights; not saved')
        for name in self.networks:
            if name not in self._unsaved:
                self.save_network_file(name, current_iter)
        if current_iter == 'latest':
            return
        state = {'epoch': epoch, 'iter': current_iter, 'batch_in_epoch': batch_in_epoch,
                 'optimizers': {k: o.state_dict() for k, o in self.optimizers.items()},
                 'schedulers': [s.state_dict() for s in self.schedulers], 'scaler': self.scaler.state_dict(),
                 'scheduler_opt': (self.opt.get('train') or {}).get('scheduler'),
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
        self.load_schedulers(state['schedulers'], state.get('scheduler_opt', self.opt['train'].get('scheduler')))
        self.scaler.load_state_dict(state.get('scaler', {}))
        self.load_extra_state(state.get('extra', {}))

    def load_schedulers(self, states, saved_opt):
        """The schedulers' states; when ``train.scheduler`` changed since the checkpoint (e.g. longer periods for a
        larger ``total_iter``), the recipe's schedule continues from the saved position (counters only)."""
        changed = saved_opt != (self.opt.get('train') or {}).get('scheduler')
        for s, s_state in zip(self.schedulers, states):
            if changed:
                s_state = {k: s_state[k] for k in ('last_epoch', '_step_count', '_last_lr') if k in s_state}
                s.__dict__.update(s_state)
            else:
                s.load_state_dict(s_state)
        if changed:
            logger.info('train.scheduler differs from the checkpoint\'s: the recipe\'s schedule continues from '
                        f'scheduler step {states[0].get("last_epoch") if states else "?"}')

    # ------------------------------------------------------------------ interface for subclasses
    def optimize_parameters(self, current_iter):
        raise NotImplementedError(f'{type(self).__name__}.optimize_parameters')
