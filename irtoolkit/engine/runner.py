"""The training and test runners behind ``irtoolkit/train.py`` and ``irtoolkit/test.py``.

Reuses basicsr's registries, datasets and metrics but not its ``train_pipeline`` (which hard-codes CUDA in
resume, distributed init and DDP). Folder layout is BasicSR's: ``experiments/<name>/{models,training_states,
visualization}``, the log and an options copy in ``experiments/<name>``, TensorBoard in ``tb_logger/<name>``,
test outputs in ``results/<name>``.
"""
import argparse
import contextlib
import gc
import json
import math
import os
import os.path as osp
import random
import signal
import sys
import time

import numpy as np
import torch

from irtoolkit.config.options import copy_options, dict2str, parse_options
from irtoolkit.config.run import RunContext
from irtoolkit.engine.basicsr_models import BasicSRModel, has_basicsr_interface
from irtoolkit.engine.data import build_dataloader, build_dataset
from irtoolkit.engine.describe import describe
from irtoolkit.engine.run_log import TrainProgress, get_logger, init_tb_logger
from irtoolkit.engine.tracking import build_tracker, sample_strip
from irtoolkit.inference.recognise import recognise_file
from irtoolkit.training.nonfinite import NonFiniteError
from irtoolkit.training.validation_tiling import TILE_EXACT_WORDS, tile_with_overrides
from irtoolkit.utils import dist as dist_util
from irtoolkit.utils.checkpoint import latest_usable_state, prune_checkpoints, safe_load, set_rng_state
from irtoolkit.utils.errors import OptionError, UserError
from irtoolkit.utils.registry import MODEL_REGISTRY, get_from_registry
from irtoolkit.utils.schedule_free import evaluation_weights


def parse_args(argv, is_train=True):
    p = argparse.ArgumentParser(description=f'irtoolkit {"training" if is_train else "testing"}')
    p.add_argument('-opt', '--opt', help='path to the options YAML')
    p.add_argument('--describe', metavar='NAME', help='print the options of a registered model, arch or loss and exit')
    p.add_argument('--launcher', choices=['none', 'pytorch', 'slurm'], default='none')
    p.add_argument('--local_rank', '--local-rank', type=int, default=0, help='set by old launchers; ignored')
    p.add_argument('--force_yml', nargs='+', default=None, help='override options: key.sub=value ...')
    if is_train:
        p.add_argument('--auto_resume', action='store_true', help='resume from the latest training state')
        p.add_argument('--debug', action='store_true', help='prefix the name with debug_ (print every iter)')
    else:  # over the recipe's val.tile (irtoolkit.training.validation_tiling)
        p.add_argument('--tile', type=_cli_int(16), metavar='N',
                       help='test tile by tile, N px tiles (>= 16; 0: whole images); exact tiles when the network has '
                            'a schedule, so metrics equal whole-image ones on images larger than memory')
        p.add_argument('--tile-overlap', type=_cli_int(0), metavar='N', help='blended tiles: minimum overlap (32)')
        p.add_argument('--tile-exact', choices=tuple(TILE_EXACT_WORDS),
                       help='auto (default): exact tiles when the network has a schedule, else blended; true: exact or '
                            'an error; false: blended overlapping tiles')
    args = p.parse_args(argv)
    if args.describe:
        print(describe(args.describe))
        raise SystemExit(0)
    if not args.opt:
        p.error('the following arguments are required: -opt')
    return args


def _cli_int(least):
    """argparse type: 0 or an int >= ``least``."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f'expected an int, got {text!r}') from None
        if value and value < least or value < 0:
            raise argparse.ArgumentTypeError(f'expected 0 or an int >= {least}, got {value}')
        return value
    return parse


def set_random_seed(seed):
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


class WorkerDiedError(UserError):
    """A data-loader worker was killed (out of memory, a signal) or crashed."""


def build_run_model(opt, run, state=None):
    """The model of ``opt`` for this run (training or testing); a class with basicsr's interface behind
    :class:`BasicSRModel`."""
    cls = get_from_registry(MODEL_REGISTRY, opt['model_type'], 'model_type')
    if not has_basicsr_interface(cls):
        return cls(opt, run)
    if run.accumulate > 1:
        raise OptionError(f'{run.where("train.accumulate")}{cls.__name__} steps its own optimisers; accumulation '
                          'needs an irtoolkit model')
    if run.is_train and (opt['logger'].get('checkpoint_format', 'pth') != 'pth' or opt['val'].get('save_best')):
        key = 'val.save_best' if opt['val'].get('save_best') else 'logger.checkpoint_format'
        raise OptionError(f'{run.where(key)}{cls.__name__} saves its own .pth files; this needs an irtoolkit model')
    if opt['val'].get('tile'):
        raise OptionError(f'{run.where("val.tile")}{cls.__name__} validates with its own code, which does not tile; '
                          'val.tile / --tile need an irtoolkit model')
    return BasicSRModel(cls, opt, run, state)


def derive_batch(opt, run):
    """``datasets.train.global_batch_size`` over the actual world size: the per-GPU batch (at most
    ``batch_size_per_gpu`` when given) and the micro-batches per step, into the run context."""
    ds, world = opt['datasets']['train'], run.world_size
    total = ds.get('global_batch_size')
    if not total:
        return
    per_gpu = min(ds.get('batch_size_per_gpu') or total, max(total // world, 1))
    if total % (world * per_gpu):
        raise OptionError(f'{run.where("datasets.train.global_batch_size")}{total} is not a multiple of {world} '
                          f'rank(s) x batch {per_gpu}')
    run.batch_size_per_gpu, run.accumulate = per_gpu, total // (world * per_gpu)


def setup_run(args, is_train):
    """The resolved recipe of ``args.opt`` (``--force_yml`` applied, ``debug_`` name) and its run context
    (distributed init, device, output folders); torch flags set."""
    overrides = list(args.force_yml or [])
    opt = parse_options(args.opt, is_train, overrides)
    if is_train and getattr(args, 'debug', False) and not opt['name'].startswith('debug'):
        opt = parse_options(args.opt, is_train, overrides + [f'name=debug_{opt["name"]}'])
    if args.launcher != 'none':
        dp = opt.get('dist_params') or {}
        dist_util.init_dist(args.launcher, dp.get('backend'), dp.get('port'))
    run = RunContext.create(opt, args.opt, is_train, args.launcher)
    if is_train:
        derive_batch(opt, run)
    torch.backends.cudnn.benchmark = bool(opt.get('cudnn_benchmark', False))
    if opt.get('deterministic'):
        torch.use_deterministic_algorithms(True, warn_only=True)
    return opt, run


def fresh_experiment_dir(run):
    """Archive an existing experiment folder of the same name (BasicSR's mkdir_and_rename), then create it."""
    exp = run.paths['experiments_root']
    if osp.exists(exp):
        new = f'{exp}_archived_{time.strftime("%Y%m%d_%H%M%S")}'
        os.rename(exp, new)
    for k in ('experiments_root', 'models', 'training_states', 'visualization'):
        os.makedirs(run.paths[k], exist_ok=True)


class StopFlag:
    """SIGTERM (SLURM pre-emption, ``kill``) asks for a checkpoint at the end of the current iteration. The handler
    before the run comes back when it ends (:meth:`restore`): a process that trains in-process (a notebook, a test
    session) stays killable afterwards."""

    def __init__(self):
        self.raised, self.previous = False, None
        try:
            self.previous = signal.signal(signal.SIGTERM, self._handler)
        except ValueError:  # not the main thread
            pass

    def _handler(self, *_):
        self.raised = True

    def restore(self):
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)
            self.previous = None

    def should_stop(self):
        if dist_util.get_dist_info()[1] > 1:
            t = torch.tensor([int(self.raised)], device='cuda' if torch.distributed.get_backend() == 'nccl' else 'cpu')
            torch.distributed.all_reduce(t)
            return bool(t.item())
        return self.raised


def validate(model, val_loaders, current_iter, tb_logger, opt, logger, tracker=None):
    """Every validation set (metrics and a sample image to the tracker); the training RNG streams are left as they
    were (exact resume). Schedule-free optimisers hold their eval weights meanwhile (and the train weights after)."""
    py, npst = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]), evaluation_weights(getattr(model, 'optimizers', None)):
        results = {}
        for loader in val_loaders:
            name = loader.dataset.opt.get('name', 'val')
            results[name] = model.validation(loader, current_iter, tb_logger, opt['val'].get('save_img', False),
                                             logger=logger)
            if tracker is not None:
                tracker.log({f'metrics/{name}/{k}': v for k, v in (results[name] or {}).items()}, current_iter)
                strip = sample_strip(model, loader)
                if strip is not None:
                    tracker.log_images({f'samples/{name}': strip}, current_iter)
    random.setstate(py)
    np.random.set_state(npst)
    dist_util.barrier()
    return results


class Trainer:
    """The training loop with named steps: ``prepare`` (state, folders, logs, data, model), ``run`` (epochs of
    ``run_iteration`` + ``after_iteration``: log, checkpoint, SIGTERM, validation), ``finish`` (final state,
    latest weights, last validation). Models only see ``feed_data`` / ``optimize_parameters`` and the calls in
    :mod:`irtoolkit.models.base_model`."""

    def __init__(self, opt, run, auto_resume=False):
        self.opt, self.context, self.rank = opt, run, run.rank
        self.auto_resume = auto_resume
        self.epoch, self.current_iter, self.start_batch, self.batch_idx = 0, 0, 0, 0
        self.last_checkpoint = None
        self.total_iter = int(opt['train']['total_iter'])
        self.accumulate = run.accumulate

    # ------------------------------------------------------------------ prepare
    def prepare(self):
        opt, paths = self.opt, self.context.paths
        self.resume_path = opt['path'].get('resume_state')
        self.state = safe_load(self.resume_path) if self.resume_path else None  # explicit: must load
        unusable = []  # logged once the run's log is open
        if self.auto_resume and not self.resume_path:  # the newest state whose files all load
            self.resume_path, self.state = latest_usable_state(paths['training_states'], paths['models'],
                                                               unusable.append)
        if self.rank == 0:
            if self.state is None:
                fresh_experiment_dir(self.context)
            copy_options(opt, paths['experiments_root'], self.context.opt_path)
        dist_util.barrier()
        self.prepare_logging()
        for line in unusable:
            self.logger.warning(line)
        set_random_seed(opt['manual_seed'] + self.rank)
        self.prepare_data()
        self.model = build_run_model(opt, self.context, self.state)
        self.prepare_validation()
        if self.state is not None:
            self.restore()
        self.progress = TrainProgress(opt, self.current_iter, self.tb_logger, self.logger,
                                      self.rank == 0 and opt['logger'].get('progress_bar', sys.stderr.isatty()),
                                      self.tracker)
        self.stop = StopFlag()

    def prepare_logging(self):
        opt = self.opt
        log_file = osp.join(self.context.paths['log'], f'train_{opt["name"]}_{time.strftime("%Y%m%d_%H%M%S")}.log')
        self.logger = get_logger(log_file, self.rank)
        self.logger.info(f'irtoolkit: torch {torch.__version__}, {self.context.describe()}')
        self.logger.info('options:\n' + dict2str(opt))
        self.tb_logger = None
        if self.rank == 0 and opt['logger'].get('use_tb_logger') and 'debug' not in opt['name']:
            self.tb_logger = init_tb_logger(osp.join(self.context.root_path, 'tb_logger', opt['name']))
        self.tracker = build_tracker(opt, self.context, resumed=self.state is not None)

    def prepare_data(self):
        opt, seed, world = self.opt, self.opt['manual_seed'], self.context.world_size
        train_opt = dict(opt['datasets']['train'])
        if self.context.batch_size_per_gpu:  # derived from global_batch_size for this world size
            train_opt['batch_size_per_gpu'] = self.context.batch_size_per_gpu
        self.train_opt = train_opt
        train_set = build_dataset(train_opt, 'datasets.train')
        self.train_loader, self.sampler = build_dataloader(train_set, train_opt, 'train', world, self.rank, seed,
                                                           self.context.device.type == 'cuda', 'datasets.train',
                                                           self.accumulate)
        per_epoch = max(len(self.train_loader) // self.accumulate, 1)
        batch = train_opt['batch_size_per_gpu']
        self.logger.info(f'train set {train_opt.get("name")}: {len(train_set)} samples, batch {batch} x {world} '
                         f'rank(s) x {self.accumulate} accumulation step(s) = {batch * world * self.accumulate} per '
                         f'iteration, {per_epoch} iters/epoch, {self.total_iter} iters '
                         f'(~{math.ceil(self.total_iter / per_epoch)} epochs)')

    def prepare_validation(self):
        self.val_loaders = validation_loaders(self.model, self.opt, self.context, 'val')

    def restore(self):
        """Networks, optimisers, position in the epoch and RNG streams of the training state being resumed."""
        self.model.resume_training(self.state)
        self.epoch, self.current_iter = self.state['epoch'], self.state['iter']
        # the position in the epoch counts iterations: another world size or accumulation (the same global batch,
        # datasets.train.global_batch_size) reads the epoch's remaining global batches from where the run stopped
        iterations = self.state.get('batch_in_epoch', 0) // self.state.get('accumulate', self.accumulate)
        self.start_batch = self.batch_idx = iterations * self.accumulate
        set_rng_state(self.state['rng'])
        self.last_checkpoint = self.resume_path
        saved_world = self.state.get('world_size', self.context.world_size)
        self.logger.info(f'Resuming training from {self.resume_path}: epoch {self.epoch}, iter {self.current_iter}'
                         + (f' (saved by {saved_world} rank(s), resumed on {self.context.world_size})'
                            if saved_world != self.context.world_size else ''))
        if self.start_batch >= len(self.train_loader):
            self.epoch, self.start_batch = self.epoch + 1, 0

    # ------------------------------------------------------------------ the loop
    def run(self):
        self.prepare()
        if self.state is not None and self.current_iter >= self.total_iter:
            self.logger.info(f'Training is complete: iter {self.current_iter} of {self.total_iter} (raise '
                             'train.total_iter to continue).')
            self.close()
            return
        self.logger.info(f'Start training from epoch: {self.epoch}, iter: {self.current_iter}')
        try:
            while self.current_iter < self.total_iter:
                self.train_epoch()
        except NonFiniteError as err:
            self.close()
            raise NonFiniteError(f'{err}; last good checkpoint: {self.last_checkpoint or "none yet"}') from None
        except RuntimeError as err:
            if 'DataLoader worker' not in str(err):
                raise
            self.close()
            raise WorkerDiedError(f'datasets.train: a data-loader worker died ({str(err).splitlines()[0]}) at '
                                  f'iteration {self.current_iter + 1}; nothing was written for it; last good '
                                  f'checkpoint: {self.last_checkpoint or "none yet"} (resume with --auto_resume)') \
                from None
        self.finish()

    def train_epoch(self):
        """Batches from the current position of the epoch, ``train.accumulate`` micro-batches per iteration; the
        epoch advances only when its loader is done."""
        self.sampler.set_epoch(self.epoch, self.start_batch * self.train_opt['batch_size_per_gpu'])
        self.batch_idx, self.start_batch = self.start_batch, 0
        self.t_data, micro = time.time(), []
        for batch in self.train_loader:
            micro.append(batch)
            if len(micro) < self.accumulate:
                continue
            self.run_iteration(micro)
            micro = []
            self.after_iteration()
            if self.current_iter >= self.total_iter:
                return
        self.epoch += 1

    def run_iteration(self, micro):
        """One iteration: the learning rate, then every micro-batch through the model (one optimiser step)."""
        data_time = time.time() - self.t_data
        self.current_iter += 1
        self.batch_idx += len(micro)
        self.model.update_learning_rate(self.current_iter, self.opt['train']['warmup_iter'])
        for k, batch in enumerate(micro):  # one batch: no micro-batch context (basicsr models have none)
            with self.model.micro_batch(k, len(micro)) if len(micro) > 1 else contextlib.nullcontext():
                self.model.feed_data(batch)
                self.model.optimize_parameters(self.current_iter)
        self.progress.update(self.current_iter, self.epoch, self.model.get_current_learning_rate(),
                             self.model.get_current_log(), time.time() - self.t_data, data_time)

    def after_iteration(self):
        """Checkpoint (every ``save_checkpoint_freq`` and on SIGTERM, then exit 143), validation."""
        save_freq = self.opt['logger'].get('save_checkpoint_freq')
        stopping = self.stop.should_stop()
        if (save_freq and self.current_iter % save_freq == 0) or stopping:
            self.checkpoint()
        if stopping:  # terminate as asked (exit status 143), but only after the checkpoint is on disk
            self.logger.info('SIGTERM received: checkpoint written, stopping. Resume with --auto_resume.')
            self.close()
            raise SystemExit(128 + signal.SIGTERM)
        if self.val_freq and self.current_iter % self.val_freq == 0:
            validate(self.model, self.val_loaders, self.current_iter, self.tb_logger, self.opt, self.logger,
                     self.tracker)
        self.t_data = time.time()

    @property
    def val_freq(self):
        return self.opt['val'].get('val_freq') if self.val_loaders else None

    def checkpoint(self):
        self.logger.info(f'Saving models and training states at iter {self.current_iter}.')
        self.model.save(self.current_iter, self.epoch, self.batch_idx)
        self.last_checkpoint = osp.join(self.context.paths['training_states'], f'{self.current_iter}.state')
        if self.rank == 0:
            prune_checkpoints(self.context.paths['models'], self.context.paths['training_states'],
                              self.opt['logger'].get('keep_last_checkpoints'))

    def finish(self):
        """The final training state (so a run can be extended), the latest weights and a last validation."""
        self.logger.info('End of training. Saving the latest model.')
        save_freq = self.opt['logger'].get('save_checkpoint_freq')
        if not (save_freq and self.current_iter % save_freq == 0):
            self.model.save(self.current_iter, self.epoch, self.batch_idx)
        self.model.save('latest')
        if self.val_freq and self.current_iter % self.val_freq != 0:
            validate(self.model, self.val_loaders, self.current_iter, self.tb_logger, self.opt, self.logger,
                     self.tracker)
        self.close()

    def close(self):
        self.progress.close()
        if self.tb_logger is not None:
            self.tb_logger.close()
        if self.tracker is not None:
            self.tracker.finish()


def user_errors(fn, argv=None):
    """Run ``fn(argv)``; a user error (options, missing files, unreadable checkpoints, bad data) ends with its
    lines on stderr and exit status 2, without a traceback (shown with ``--debug`` or ``IRTK_TRACEBACK=1``)."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        return fn(argv)
    except UserError as err:
        if '--debug' in argv or os.environ.get('IRTK_TRACEBACK') == '1':
            raise
        print(f'error: {err}', file=sys.stderr)
        raise SystemExit(2) from None


def validation_loaders(model, opt, run, prefix):
    """Loaders of the ``datasets`` whose key starts with ``prefix`` ('val' in training, every one in testing): sharded
    over the ranks when the model gathers its scores (``sharded_validation``), else whole on every rank (the model
    validates on rank 0)."""
    world, rank = (run.world_size, run.rank) if getattr(model, 'sharded_validation', False) else (1, 0)
    phase = 'val' if run.is_train else 'test'
    return [build_dataloader(build_dataset(d, f'datasets.{k}'), d, phase, world, rank, opt['manual_seed'],
                             run.device.type == 'cuda', f'datasets.{k}')[0]
            for k, d in opt['datasets'].items() if k.startswith(prefix)]


def recognised_network(opt, run, logger, key='g'):
    """``network_<key>`` of a recipe that leaves it out: the options of the network in ``path.pretrain_network_<key>``
    recognised from the file's contents (:mod:`irtoolkit.inference.recognise`), logged as one line. A network only
    spandrel builds (no registered arch) or none at all is a one-line option error."""
    path = opt['path'][f'pretrain_network_{key}']
    where = run.where(f'network_{key}')
    found = recognise_file(path, opt['path'].get(f'param_key_{key}', 'params'),
                           hint=f'add network_{key} ({{type: ..., ...}}) to {run.opt_path or "the recipe"}')
    if found.net_opt is None:
        raise OptionError(f'{where}missing, and {path} holds {found.arch} ({found.how}), which no registered arch '
                          'builds; irtk-infer --weights runs it')
    logger.info(f'network_{key} from {path}: {found.line()}')
    return found.net_opt


def train(argv=None):
    args = parse_args(argv, True)
    opt, run = setup_run(args, True)
    trainer = Trainer(opt, run, args.auto_resume)
    together = False  # did every rank stop here (the group can be torn down) or only this one?
    try:
        trainer.run()
        together = True
    except (SystemExit, NonFiniteError):  # SIGTERM and non-finite losses are decided by all ranks together
        together = True
        raise
    finally:
        if hasattr(trainer, 'stop'):  # made in prepare(): restored also after an error close() did not see
            trainer.stop.restore()
        # the process group goes only after the trainer's DDP wrappers: a gloo group torn down under a live DDP
        # reducer aborts the process at exit ('terminate called without an active exception'; 3 runs in 30 of
        # the NLCL heads DDP test's worker under load, none in 50 once the models were freed first). The model is
        # dropped from the trainer because an exception's traceback still holds the trainer itself.
        trainer.model = None
        gc.collect()
        if together:  # a rank that failed alone skips the barrier (the others are inside a collective): exit
            dist_util.cleanup()
    return opt


def test(argv=None):
    args = parse_args(argv, False)
    opt, run = setup_run(args, False)
    if (args.tile, args.tile_overlap, args.tile_exact) != (None, None, None):
        exact = TILE_EXACT_WORDS.get(args.tile_exact)
        opt['val']['tile'] = tile_with_overrides(opt['val'].get('tile'), args.tile, args.tile_overlap, exact)
    os.makedirs(run.paths['results_root'], exist_ok=True)
    log_file = osp.join(run.paths['log'], f'test_{opt["name"]}_{time.strftime("%Y%m%d_%H%M%S")}.log')
    logger = get_logger(log_file, run.rank)
    logger.info('options:\n' + dict2str(opt))
    if not opt['datasets']:
        raise OptionError(f'{run.where("datasets")}no test_* dataset given')
    if 'network_g' not in opt and opt['path'].get('pretrain_network_g'):
        opt['network_g'] = recognised_network(opt, run, logger)
    model = build_run_model(opt, run)
    save_img = opt['val'].get('save_img', True)
    all_results = {}
    for loader in validation_loaders(model, opt, run, ''):
        name = loader.dataset.opt.get('name', 'test')
        logger.info(f'Testing {name} ({len(loader.dataset)} images)...')
        all_results[name] = model.validation(loader, opt['name'], None, save_img, logger=logger)
    if run.rank == 0:
        with open(osp.join(run.paths['results_root'], 'metrics.json'), 'w') as f:
            json.dump(all_results, f, indent=2)
    del model  # before the process group: see train()
    gc.collect()
    dist_util.cleanup()
    return all_results
