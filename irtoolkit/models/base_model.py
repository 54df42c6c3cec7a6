"""BaseModel: what every irtoolkit model shares, written once.

A model owns its networks and optimisers; the runner owns the loop and only calls (basicsr's model surface)::

    update_learning_rate(iter, warmup_iter); feed_data(batch); optimize_parameters(iter); get_current_log()
    validation(loader, iter, tb_logger, save_img); save(iter, epoch, batch_in_epoch); resume_training(state)

**The iteration contract.** A model writes one method, ``train_iteration(batch, current_iter)``: which networks
run, which losses, which optimiser steps, each step one call of :meth:`BaseModel.optimize`::

    def train_iteration(self, batch, current_iter):
        fake = self.net_g(batch['lq'])
        self.optimize('d', self.d_losses, batch['gt'], fake)      # only D learns; its terms are logged as l_<name>
        self.optimize('g', self.g_losses, batch['gt'], fake)

``optimize`` runs the losses function with only the optimisers' networks learning, back-propagates the sum of its
terms, lets the non-finite guard look at them and steps (clipped, scaled); the terms are logged as ``l_<name>``
(anything else worth logging: :meth:`record`). :meth:`optimize_parameters` — the base's, never overridden — does
the bookkeeping around every iteration: the log averaged over micro-batches and reduced over ranks, the EMA of
every network whose optimiser stepped, nothing after a step the non-finite guard skipped. There is nothing to
forget: a subclass that defines ``optimize_parameters`` is refused when it is defined.

Building a model runs, in order (a subclass overrides the steps it needs)::

    setup_networks()                      # what inference needs (net_g), built with build_net
    init_training_settings()              # training only:
        setup_training_networks()         #   critics, heads, teachers ... (build_net / add_net)
        setup_ema('net_g')                #   when train.ema_decay > 0
        self.losses = setup_losses()      #   build_losses(required=..., optional=...)
        setup_optimizers()                #   add_optimizer(name, 'optim_<x>', networks); default: g over net_g
        setup_schedulers()

Networks: :meth:`build_net` (from options, trainable or frozen, saved or not, ``path.pretrain_network_*`` loaded) and
:meth:`add_net` (modules built in code) wrap trainable networks for DDP with one rule
(:func:`irtoolkit.utils.dist.wrap_ddp`); saved ones land in ``models/<name>_<iter>.pth`` (or ``.safetensors``,
``logger.checkpoint_format``) with ``params``, with EMA ``params_ema``, and the options that built them
(``network``, what ``irtk-infer --weights`` builds without options); ``val.save_best`` adds
``models/<name>_best.*`` (:mod:`irtoolkit.training.best_checkpoint`). Keys, types, defaults and allowed values of a
model's options live in the ``OPTION_SCHEMA`` of its class and of the classes above it
(:func:`irtoolkit.config.options.class_schema`); a method's keys sit under one section named after it. The run
(rank, device, output folders, the options file) is ``self.run`` (:class:`~irtoolkit.config.run.RunContext`).
Validation on image pairs comes from :class:`~irtoolkit.training.image_validation.ImageValidation`.
"""
import contextlib
import logging
import os.path as osp
from collections import OrderedDict
from copy import deepcopy

import torch

from irtoolkit.config.options import BASE_SCHEMA, SECTIONS, class_schema, renamed_problems
from irtoolkit.config.run import RunContext
from irtoolkit.config.schema import NUM, Option, fill_defaults, merge_schema, true_false_auto
from irtoolkit.training.best_checkpoint import BestCheckpoint
from irtoolkit.training.image_validation import ImageValidation
from irtoolkit.training.nonfinite import NONFINITE_SCHEMA, NonFiniteError, NonFiniteGuard
from irtoolkit.utils.checkpoint import (atomic_save, find_network_file, get_rng_state, load_checkpoint, load_state_into,
                                        plain_options, read_state_dict, write_network_file)
from irtoolkit.utils.dist import bare, reduce_mean, wrap_ddp
from irtoolkit.utils.errors import OptionError
from irtoolkit.utils.memory import keep_freed_memory
from irtoolkit.utils.optim import build_optimizer, build_scheduler
from irtoolkit.utils.registry import build_loss, build_network
from irtoolkit.utils.schedule_free import evaluation_weights, restore_train_weights, train_weights

__all__ = ['BaseModel', 'bare', 'channels_last_on']
logger = logging.getLogger('irtoolkit')


def _amp_dtype(v):
    """bf16 or fp16"""
    return v in ('bf16', 'fp16', 'bfloat16', 'float16')


def channels_last_on(value, device):
    """Whether ``train.channels_last`` (true, false, auto or unset) puts a training model on ``device`` in the
    channels-last layout. auto / unset: on the CPU only. There oneDNN runs 3x3, depthwise and 1x1 convolutions on NHWC
    without reordering every input and output to its blocked layout, which made ConStyleNAFNet's and NAFNet's steps
    the fastest measured at equal weights (docs/performance.md); on CUDA it has not been measured yet
    (benchmarks/gpu_train_check.sh), so NCHW stays."""
    if value is None or value == 'auto':
        return torch.device(device).type == 'cpu'
    return bool(value)


TRAINING_SCHEMA = {
    'ema_decay': Option(NUM, doc='keep an EMA copy of net_g (validated and saved as params_ema); 0: none'),
    'scheduler': Option(dict, doc='learning-rate scheduler ({type: ..., ...}) applied to every optimiser'),
    'use_grad_clip': Option(bool, doc="NAFNet's switch: clip gradients at max-norm 0.01"),
    'grad_clip': Option((NUM, dict), doc='max-norm, or clip_grad_norm_ arguments, before every step'),
    're:^optim_\\w+$': Option(dict, doc='an optimiser ({type: <name>, lr, ...}) named by the model; <name> from, in '
                              'this order, torch.optim (Adam, AdamW, ...), schedulefree (AdamWScheduleFree, '
                              'SGDScheduleFree, RAdamScheduleFree: validated and saved at their averaged weights, no '
                              'scheduler needed), prodigyopt (Prodigy: lr 1.0) or pytorch_optimizer (Adan, ADOPT, '
                              'SOAP, Lion, ...); <source>.<name> picks a source; docs/optimizers.md'),
    're:^\\w+_opt$': Option(dict, doc='a loss ({type: <registered loss>, ...}) named by the model'),
    'amp': Option({'enabled': bool, 'dtype': _amp_dtype}, doc='mixed precision: {enabled, dtype: bf16|fp16}'),
    'nonfinite': Option(NONFINITE_SCHEMA, doc='the non-finite guard before every optimiser step'),
    'compile': Option((bool, {'mode': str, 'backend': str}), doc='torch.compile the trainable networks: true, '
                      'or {mode: default|reduce-overhead|max-autotune, backend: inductor|aot_eager|...}'),
    'channels_last': Option(true_false_auto, 'auto', doc='channels-last memory format for the networks and image '
                            'batches of training: true, false, or auto (default) = true on the CPU, where it is the '
                            'fastest setting measured and trains the same weights, false on other devices '
                            '(unmeasured there); docs/performance.md'),
    'keep_freed_memory': Option(bool, default=True, doc='CPU, glibc: keep freed activations in the process '
                                'for the next step instead of unmapping them (saves page faults and zero-fill; '
                                'peak RSS about the same)'),
}


class BaseModel(ImageValidation):
    """What every model shares: networks, losses, optimisers, the bookkeeping of an iteration (EMA, logs, the
    non-finite guard), AMP, checkpoints, resume and validation. A model writes :meth:`train_iteration`."""

    OPTION_SCHEMA = {'train': TRAINING_SCHEMA}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if 'optimize_parameters' in cls.__dict__:
            raise TypeError(f'{cls.__name__} defines optimize_parameters: write train_iteration(batch, current_iter) '
                            'instead; BaseModel.optimize_parameters does the bookkeeping of every iteration')

    def __init__(self, opt, run=None):
        # resolved recipes already hold their sections and defaults; recipes built in code (tests, benchmarks) get
        # them here, on a copy: a model never writes into the options it was given
        opt = deepcopy(opt)
        self.run = run or RunContext.create(opt)
        renamed = renamed_problems(opt, type(self))  # parse_options refuses them too; recipes built in code here
        if renamed:
            raise OptionError('\n'.join(self.run.where() + line for line in renamed))
        for section in SECTIONS:
            opt[section] = opt.get(section) or {}
        self.opt = fill_defaults(opt, merge_schema(BASE_SCHEMA, class_schema(type(self))))
        self.device, self.is_train = self.run.device, self.run.is_train
        self.rank, self.world_size = self.run.rank, self.run.world_size
        self.networks = OrderedDict()  # save name -> network (DDP-wrapped when distributed and trainable)
        self.ema_networks = OrderedDict()  # save name -> EMA copy (bare module)
        self.optimizers = OrderedDict()  # name -> optimizer
        self.optimizer_nets = OrderedDict()  # optimizer name -> the networks it updates
        self.schedulers = []
        self.losses = OrderedDict()
        self.log_dict = OrderedDict()
        self.best_metric_results = {}  # dataset -> metric -> (best value, iter)
        self.best_checkpoint = BestCheckpoint.from_options(self.opt, self.run) if self.is_train else None
        self.batch = {}
        self._unsaved = set()
        self.net_options = {}  # network name -> the options build_net built it from (saved with it)
        self.guard = NonFiniteGuard(self.opt['train'].get('nonfinite'))
        self.micro = (0, 1)  # (micro-batch, micro-batches per iteration): see micro_batch
        self._iteration = self._new_iteration()
        self._trainable = OrderedDict()  # name -> parameters that learn, of the networks registered trainable
        self._setup_precision(self.opt['train'] if self.is_train else {})
        self.setup_networks()
        self.setup_validation_tiling()  # val.tile checked against net_g before any training or testing
        if self.is_train:
            self.init_training_settings()

    def option_error(self, key, problem):
        """The one-line error of option ``key``: ``file: key: problem``."""
        return OptionError(f'{self.run.where(key)}{problem}')

    def checked(self, build, prefix=''):
        """``build()``; a ValueError or TypeError it raises (a builder's complaint about its arguments) becomes the
        one-line option error ``file: <prefix><message>`` (a message that already names the file is kept)."""
        try:
            return build()
        except (ValueError, TypeError) as err:
            msg, file = str(err), self.run.where()
            raise OptionError(msg if file and msg.startswith(file) else f'{file}{prefix}{msg}') from None

    def to_device(self, t):
        """A batch tensor on the model's device (channels-last images with ``train.channels_last``)."""
        fmt = torch.channels_last if self.speed['channels_last'] and t.dim() == 4 else torch.preserve_format
        return t.to(self.device, non_blocking=True, memory_format=fmt)

    def feed_data(self, data):
        """The loader's batch on the model's device, as ``self.batch`` (tensors moved, other entries as they are);
        :meth:`optimize_parameters` hands it to :meth:`train_iteration`, validation reads ``lq`` (and ``gt``)."""
        self.batch = {k: self.to_device(v) if torch.is_tensor(v) else v for k, v in data.items()}

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
        # inference models (train_opt {}) keep NCHW
        self.speed = {'channels_last': channels_last_on(train_opt.get('channels_last', False), self.device),
                      'compile': ({} if compile_opt is True else dict(compile_opt or {})) if compile_opt else None}
        if train_opt:
            logger.info(f'train.channels_last: {train_opt.get("channels_last")}: networks and batches '
                        f'{"channels-last" if self.speed["channels_last"] else "NCHW"} on {self.device.type}')
        if self.device.type == 'cpu' and train_opt.get('keep_freed_memory'):
            keep_freed_memory()  # else glibc unmaps and re-faults every step's activations (docs/performance.md)

    # ------------------------------------------------------------------ what a model writes
    def setup_networks(self):
        """Build the networks inference needs (a model with ``net_g`` builds it here)."""

    def setup_training_networks(self):
        """Build the networks only training needs (critics, heads, teachers)."""

    def setup_losses(self):
        """The losses of one iteration, by name: ``return self.build_losses(required=(...), optional=(...))``."""
        return OrderedDict()

    def setup_optimizers(self):
        """``self.add_optimizer(name, 'optim_<x>', networks)`` for every optimiser; by default ``g`` over ``net_g``
        from ``train.optim_g``."""
        if 'net_g' in self.networks:
            self.add_optimizer('g', 'optim_g', ('net_g', ))

    def train_iteration(self, batch, current_iter):
        """One iteration on ``batch`` (the loader's batch on the device): which networks run, which losses, which
        optimiser steps (:meth:`optimize`). What every iteration needs besides is the base's."""
        raise NotImplementedError(f'{type(self).__name__}.train_iteration')

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
            raise self.option_error(key, f'missing (needed by {type(self).__name__})')
        net = build_network({**net_opt, **(args or {})}, key)
        suffix = key[len('network_'):] if key.startswith('network_') else key
        path_opt = self.opt['path']
        if checkpoint is None and path_opt.get(f'pretrain_network_{suffix}'):
            checkpoint = {'path': path_opt[f'pretrain_network_{suffix}'], 'key': f'path.pretrain_network_{suffix}',
                          'strict': path_opt.get(f'strict_load_{suffix}', True),
                          'param_key': path_opt.get(f'param_key_{suffix}', 'params')}
        if checkpoint:
            self.load_network(net, checkpoint['path'], checkpoint.get('strict', True),
                              checkpoint.get('param_key', 'params'), checkpoint.get('key', key))
        name = name or f'net_{suffix}'
        net = self.add_net(name, net, trainable, save)
        self.net_options[name] = {**net_opt, **(args or {})}  # what built it: the checkpoints carry it
        return net

    def add_net(self, name, net, trainable=True, save=True):
        """Register a module as network ``name``: on the device, frozen (eval, no grad) or wrapped for DDP."""
        self.net_options.pop(name, None)  # built in code: no options say what it is
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
        net = wrap_ddp(net, self.device, self.opt) if self.run.dist else net
        if self.speed['compile'] and trainable:
            net = torch.compile(net, mode=self.speed['compile'].get('mode'),
                                backend=self.speed['compile'].get('backend', 'inductor'))
        return net

    def rewrap(self, name):
        """Wrap network ``name`` again after its trainable parameters changed (DDP waits for every parameter it
        was built with)."""
        self.networks[name] = self.wrap(self.networks[name])
        return self.networks[name]

    def load_network(self, net, path, strict=True, param_key='params', key=''):
        """Load ``path`` into ``net`` (``weights_only``; ``param_key`` picks params / params_ema / auto); with
        ``key`` (the option that named the file) a failure is that option's one-line error."""
        try:
            return load_checkpoint(net, path, param_key, strict)
        except (OSError, KeyError, ValueError, RuntimeError) as err:
            if not key:
                raise
            raise self.option_error(key, f'cannot load {path}: {str(err).splitlines()[0]}') from None

    def setup_ema(self, name='net_g'):
        """Keep an EMA copy of ``name`` when ``train.ema_decay > 0`` (BasicSR's option)."""
        decay = self.opt['train'].get('ema_decay') or 0
        if decay <= 0:
            return None
        ema = deepcopy(bare(self.networks[name])).eval().requires_grad_(False)
        load_path = self.opt['path'].get(f'pretrain_network_{name[4:]}')
        if load_path:  # start from the file's EMA when it has one
            state, used = read_state_dict(load_path, 'auto')
            if used == 'params_ema':
                load_state_into(ema, state, True, f'{load_path} (params_ema)')
        self.ema_networks[name] = ema
        self.ema_decay = decay
        return ema

    @torch.no_grad()
    def _update_ema(self, names):
        """EMA of the parameters of networks ``names``; buffers (BatchNorm statistics, queues) are copied, not
        averaged."""
        for name in names:
            ema, src = self.ema_networks[name], bare(self.networks[name])
            src_params = dict(src.named_parameters())
            for k, p in ema.named_parameters():
                p.mul_(self.ema_decay).add_(src_params[k].detach(), alpha=1 - self.ema_decay)
            src_buffers = dict(src.named_buffers())
            for k, b in ema.named_buffers():
                b.copy_(src_buffers[k])

    @contextlib.contextmanager
    def learning_only(self, *names):
        """Inside, only the trainable networks ``names`` learn: every other trainable network's parameters stop
        requiring grad (frozen networks, and parts a model froze later such as a ConStyle prior, stay frozen); the
        previous flags are restored on exit. :meth:`optimize` computes a step's losses inside it."""
        unknown = [n for n in names if n not in self._trainable]
        if unknown:
            raise KeyError(f'learning_only: {unknown} are not trainable networks of {type(self).__name__} '
                           f'(trainable: {list(self._trainable)})')
        saved = [(p, p.requires_grad) for params in self._trainable.values() for p in params]
        for n, params in self._trainable.items():
            if n not in names:
                for p in params:
                    p.requires_grad_(False)
        try:
            yield
        finally:
            for p, flag in saved:
                p.requires_grad_(flag)

    def inference_net(self, name='net_g'):
        """The network to use for validation/testing: the EMA copy if there is one, else the bare net."""
        return self.ema_networks.get(name) or bare(self.networks[name])

    # ------------------------------------------------------------------ losses and optimisers
    def build_losses(self, required=(), optional=(), rest=False, exclude=()):
        """Losses from ``train.<name>_opt``, by name: every ``required`` one (missing: one-line error), the
        ``optional`` ones given, and with ``rest`` every other ``train.*_opt`` not in ``exclude`` (sorted)."""
        train_opt = self.opt['train']
        for name in required:
            if train_opt.get(f'{name}_opt') is None:
                raise self.option_error(f'train.{name}_opt', f'missing (needed by {type(self).__name__})')
        names = list(required) + list(optional)
        if rest:
            names += sorted(k[:-4] for k in train_opt
                            if k.endswith('_opt') and k[:-4] not in names and k not in exclude)
        return OrderedDict((n, build_loss(train_opt[f'{n}_opt'], f'train.{n}_opt').to(self.device))
                           for n in names if train_opt.get(f'{n}_opt') is not None)

    def add_optimizer(self, name, key, networks):
        """Optimiser ``name`` from ``train.<key>`` over the parameters that require grad of ``networks`` (their
        names); :meth:`optimize` lets exactly these networks learn when it steps it."""
        networks = (networks, ) if isinstance(networks, str) else tuple(networks)
        params = [p for n in networks for p in self.networks[n].parameters() if p.requires_grad]
        opt = self.opt['train'].get(key)
        if opt is None:
            raise self.option_error(f'train.{key}', f'missing (needed by {type(self).__name__})')
        self.optimizers[name] = build_optimizer(params, opt, f'train.{key}')
        self.optimizer_nets[name] = networks
        return self.optimizers[name]

    def learning_networks(self, *optimizers):
        """The networks that the optimisers ``optimizers`` update, in order, each once."""
        return tuple(dict.fromkeys(n for o in optimizers for n in self.optimizer_nets[o]))

    def setup_schedulers(self):
        opt = self.opt['train'].get('scheduler')
        if opt:
            self.schedulers = [build_scheduler(o, opt) for o in self.optimizers.values()]

    def autocast(self):
        """Mixed-precision context from ``train.amp`` (bf16 or fp16; a no-op when off)."""
        if not self.amp_enabled:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    # ------------------------------------------------------------------ one iteration
    def optimize(self, optimizers, losses, *args, **kwargs):
        """One optimiser step: while only the networks of ``optimizers`` (a name or several) learn,
        ``losses(*args, **kwargs)`` returns the named terms (a mapping of scalars); their sum is back-propagated and,
        unless the non-finite guard stops or skips it, the optimisers step (unscaled, clipped with
        ``train.grad_clip``). Each term is logged as ``l_<name>``. Returns the terms."""
        names = (optimizers, ) if isinstance(optimizers, str) else tuple(optimizers)
        nets = self.learning_networks(*names)
        with self.learning_only(*nets):
            self.zero_grad(*names)
            terms = losses(*args, **kwargs)
            logged = OrderedDict((f'l_{k}', v) for k, v in terms.items())
            if self._backward_and_step(sum(terms.values()), names, logged):
                self._iteration['stepped'].update(nets)
        self.record(**logged)
        return terms

    def record(self, **values):
        """Log scalars of this iteration besides the loss terms (diagnostics: accuracies, raw values)."""
        log, n_micro = self._iteration['log'], self.micro[1]
        for k, v in values.items():
            v = float(v.detach()) if torch.is_tensor(v) else float(v)
            log[k] = log.get(k, 0.0) + v / n_micro  # the mean over the micro-batches of the iteration

    def optimize_parameters(self, current_iter):
        """The runner's call for every (micro-)batch: :meth:`train_iteration` on the fed batch, and around it what
        every iteration needs: a fresh log at its first micro-batch; at its last, the EMA of every network an
        optimiser stepped (none after a step the non-finite guard skipped) and the log reduced over ranks."""
        k, n_micro = self.micro
        if k == 0:
            self._iteration = self._new_iteration()
        self.train_iteration(self.batch, current_iter)
        if k < n_micro - 1:
            return
        stepped = self._iteration['stepped'] - self._iteration['skipped']
        self._update_ema([n for n in self.ema_networks if n in stepped])
        self.log_dict = OrderedDict((name, float(reduce_mean(torch.tensor(v))))
                                    for name, v in self._iteration['log'].items())

    @staticmethod
    def _new_iteration():
        """What one iteration collects: its log, the networks stepped, the networks and optimisers skipped."""
        return {'log': OrderedDict(), 'stepped': set(), 'skipped': set(), 'skipped_optimizers': set()}

    def _backward_and_step(self, loss, names, terms):
        """Backward, then — unless the non-finite guard stops or skips it (``terms``: the loss terms by name, for
        the message) — unscale, clip (``train.grad_clip``) and step the named optimisers. Returns whether it
        stepped."""
        k, n_micro = self.micro
        self.scaler.scale(loss / n_micro).backward()  # the mean over the micro-batches
        if k < n_micro - 1:  # gradients accumulate; the last micro-batch steps (losses checked on the way)
            self.guard.allow_step(loss, terms, None, names) or self._drop_grads(names)
            return False
        if self._iteration['skipped_optimizers'] & set(names):  # skipped at an earlier micro-batch
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
                torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g['params']], **self.grad_clip)
            self.scaler.step(opt)
        self.scaler.update()
        return True

    def _drop_grads(self, names):
        """A skipped step: no gradient of it survives, and its networks get no EMA update in this iteration."""
        for n in names:
            self.optimizers[n].zero_grad(set_to_none=True)
        self._iteration['skipped_optimizers'].update(names)
        self._iteration['skipped'].update(self.learning_networks(*names))

    def zero_grad(self, *names):
        """Clear the named optimisers' gradients (only at the first micro-batch when accumulating)."""
        if self.micro[0] > 0:
            return
        for n in names:
            self.optimizers[n].zero_grad(set_to_none=True)

    @contextlib.contextmanager
    def micro_batch(self, k, n):
        """Micro-batch ``k`` of ``n`` of one iteration (``train.accumulate``): gradients accumulate and the optimisers
        step at the last one; DDP synchronises gradients only there (``no_sync`` on the others, forward included)."""
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

    def get_current_log(self):
        return self.log_dict

    # ------------------------------------------------------------------ checkpoints
    def save_network_file(self, name, current_iter):
        """``models/<name>_<iter>.pth`` (or ``.safetensors``): ``params``, ``params_ema`` with EMA, and ``network``,
        the options :meth:`build_net` built it from (plain types only; none for networks built in code), so the file
        alone says what to build (:mod:`irtoolkit.inference.recognise`)."""
        # contiguous: a file holds NCHW tensors whatever layout trained them (channels-last weights load into NCHW
        # networks either way, but code that views a loaded tensor, e.g. a converter, would fail on strided ones)
        def on_cpu(net):
            return {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}

        state = {'params': on_cpu(bare(self.networks[name]))}
        if name in self.ema_networks:
            state['params_ema'] = on_cpu(self.ema_networks[name])
        network = plain_options(self.net_options.get(name))
        if network:
            state['network'] = network
        write_network_file(state, self.run.paths['models'], f'{name}_{current_iter}',
                           self.opt['logger'].get('checkpoint_format') or 'pth')

    def extra_state(self):
        """Anything a subclass must carry across resume besides networks/optimisers (plain types/tensors)."""
        return {}

    def load_extra_state(self, state):
        pass

    def save(self, current_iter, epoch=0, batch_in_epoch=0):
        """Networks first, then the training state; each file atomically. ``current_iter`` may be 'latest' or
        'best' (networks only, ``val.save_best``). Never non-finite weights: a network with a NaN or an infinity
        stops the run instead. Schedule-free optimisers: the network files hold their eval weights x, the training
        state their train weights y (:mod:`irtoolkit.utils.schedule_free`)."""
        if self.rank != 0:
            return
        for name, net in list(self.networks.items()) + [(f'{k} (EMA)', v) for k, v in self.ema_networks.items()]:
            if not all(torch.isfinite(p).all() for p in bare(net).parameters()):
                raise NonFiniteError(f'iteration {current_iter}: {name} has non-finite weights; not saved')
        with evaluation_weights(self.optimizers):  # schedule-free: the files hold the averaged weights x
            for name in self.networks:
                if name not in self._unsaved:
                    self.save_network_file(name, current_iter)
        if current_iter in ('latest', 'best'):
            return
        state = {'epoch': epoch, 'iter': current_iter, 'batch_in_epoch': batch_in_epoch,
                 'accumulate': self.run.accumulate, 'world_size': self.world_size,  # to resume on another world size
                 'optimizers': {k: o.state_dict() for k, o in self.optimizers.items()},
                 'train_weights': train_weights(self.optimizers),  # schedule-free: y, to resume exactly
                 'schedulers': [s.state_dict() for s in self.schedulers], 'scaler': self.scaler.state_dict(),
                 'scheduler_opt': self.opt['train'].get('scheduler'),
                 'rng': get_rng_state(), 'extra': self.extra_state()}
        atomic_save(state, osp.join(self.run.paths['training_states'], f'{current_iter}.state'))

    def resume_training(self, state):
        """Load networks of ``state['iter']`` (``.pth`` or ``.safetensors``, whatever ``logger.checkpoint_format``
        says now), the optimiser/scheduler/scaler states and the best validation so far (``val.save_best``)."""
        it = state['iter']
        for name, net in self.networks.items():
            if name in self._unsaved:
                continue
            path = find_network_file(self.run.paths['models'], f'{name}_{it}')
            self.load_network(net, path, True, 'params')
            if name in self.ema_networks:
                self.load_network(self.ema_networks[name], path, True, 'params_ema')
        for k, o in self.optimizers.items():
            if k not in state['optimizers']:
                raise KeyError(f'resume state has no optimizer {k!r} (has {list(state["optimizers"])})')
            o.load_state_dict(state['optimizers'][k])
        restore_train_weights(self.optimizers, state.get('train_weights'))  # schedule-free: y over the files' x
        if len(state['schedulers']) != len(self.schedulers):
            raise ValueError(f'resume state has {len(state["schedulers"])} schedulers, '
                             f'the model has {len(self.schedulers)}')
        self.load_schedulers(state['schedulers'], state.get('scheduler_opt', self.opt['train'].get('scheduler')))
        self.scaler.load_state_dict(state.get('scaler', {}))
        self.load_extra_state(state.get('extra', {}))
        if self.best_checkpoint is not None:
            self.best_checkpoint.restore(logger)

    def load_schedulers(self, states, saved_opt):
        """The schedulers' states; when ``train.scheduler`` changed since the checkpoint (e.g. longer periods for a
        larger ``total_iter``), the recipe's schedule continues from the saved position (counters only)."""
        changed = saved_opt != self.opt['train'].get('scheduler')
        for s, s_state in zip(self.schedulers, states):
            if changed:
                s_state = {k: s_state[k] for k in ('last_epoch', '_step_count', '_last_lr') if k in s_state}
                s.__dict__.update(s_state)
            else:
                s.load_state_dict(s_state)
        if changed:
            logger.info('train.scheduler differs from the checkpoint\'s: the recipe\'s schedule continues from '
                        f'scheduler step {states[0].get("last_epoch") if states else "?"}')
