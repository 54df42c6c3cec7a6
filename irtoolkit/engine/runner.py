"""The training and test runners behind ``irtoolkit/train.py`` and ``irtoolkit/test.py``.

Reuses basicsr's registries, datasets and metrics but not its ``train_pipeline`` (which hard-codes CUDA in
resume, distributed init and DDP). Folder layout is BasicSR's: ``experiments/<name>/{models,training_states,
visualization}``, the log and an options copy in ``experiments/<name>``, TensorBoard in ``tb_logger/<name>``,
test outputs in ``results/<name>``.
"""
import argparse
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

from irtoolkit.utils import dist as dist_util
from irtoolkit.utils.checkpoint import latest_training_state, prune_checkpoints, safe_load, set_rng_state
from irtoolkit.engine.data import build_dataloader, build_dataset
from irtoolkit.engine.logging import TrainProgress, get_logger, init_tb_logger
from irtoolkit.utils.options import copy_options, dict2str, parse_options
from irtoolkit.utils.registry import MODEL_REGISTRY, get_from_registry


def parse_args(argv, is_train=True):
    p = argparse.ArgumentParser(description=f'irtoolkit {"training" if is_train else "testing"}')
    p.add_argument('-opt', '--opt', required=True, help='path to the options YAML')
    p.add_argument('--launcher', choices=['none', 'pytorch', 'slurm'], default='none')
    p.add_argument('--local_rank', '--local-rank', type=int, default=0, help='set by old launchers; ignored')
    p.add_argument('--force_yml', nargs='+', default=None, help='override options: key.sub=value ...')
    if is_train:
        p.add_argument('--auto_resume', action='store_true', help='resume from the latest training state')
        p.add_argument('--debug', action='store_true', help='prefix the name with debug_ (print every iter)')
    return p.parse_args(argv)


def set_random_seed(seed):
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def build_model(opt):
    return get_from_registry(MODEL_REGISTRY, opt['model_type'], 'model_type')(opt)


def _setup(args, is_train):
    opt = parse_options(args.opt, is_train, args.force_yml)
    if is_train and getattr(args, 'debug', False) and not opt['name'].startswith('debug'):
        opt = parse_options(args.opt, is_train, (args.force_yml or []) + [f'name=debug_{opt["name"]}'])
    opt['dist'] = args.launcher != 'none'
    if opt['dist']:
        dp = opt.get('dist_params') or {}
        rank, world, _ = dist_util.init_dist(args.launcher, dp.get('backend'), dp.get('port'))
        if not torch.cuda.is_available():
            opt['num_gpu'] = 0
    else:
        rank, world = 0, 1
    opt['rank'], opt['world_size'] = rank, world
    torch.backends.cudnn.benchmark = bool(opt.get('cudnn_benchmark', False))
    if opt.get('deterministic'):
        torch.use_deterministic_algorithms(True, warn_only=True)
    return opt


def _fresh_experiment_dir(opt):
    """Archive an existing experiment folder of the same name (BasicSR's mkdir_and_rename), then create it."""
    exp = opt['path']['experiments_root']
    if osp.exists(exp):
        new = f'{exp}_archived_{time.strftime("%Y%m%d_%H%M%S")}'
        os.rename(exp, new)
    for k in ('experiments_root', 'models', 'training_states', 'visualization'):
        os.makedirs(opt['path'][k], exist_ok=True)


class _StopFlag:
    """SIGTERM (SLURM pre-emption, ``kill``) asks for a checkpoint at the end of the current iteration."""

    def __init__(self):
        self.raised = False
        try:
            signal.signal(signal.SIGTERM, self._handler)
        except ValueError:  # not the main thread
            pass

    def _handler(self, *_):
        self.raised = True

    def should_stop(self):
        if dist_util.get_dist_info()[1] > 1:
            t = torch.tensor([int(self.raised)], device='cuda' if torch.distributed.get_backend() == 'nccl' else 'cpu')
            torch.distributed.all_reduce(t)
            return bool(t.item())
        return self.raised


def _validate(model, val_loaders, current_iter, tb_logger, opt, logger):
    # validation must not disturb the training RNG streams (exact resume)
    py, npst = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        results = {}
        for loader in val_loaders:
            results[loader.dataset.opt.get('name', 'val')] = model.validation(
                loader, current_iter, tb_logger, (opt.get('val') or {}).get('save_img', False), logger=logger)
    random.setstate(py)
    np.random.set_state(npst)
    dist_util.barrier()
    return results


def train(argv=None):
    args = parse_args(argv, True)
    opt = _setup(args, True)
    rank = opt['rank']
    resume_path = opt['path'].get('resume_state')
    if args.auto_resume and not resume_path:
        resume_path = latest_training_state(opt['path']['training_states'])
    state = safe_load(resume_path) if resume_path else None

    if rank == 0:
        if state is None:
            _fresh_experiment_dir(opt)
        copy_options(opt, opt['path']['experiments_root'])
    dist_util.barrier()
    log_file = osp.join(opt['path']['log'], f'train_{opt["name"]}_{time.strftime("%Y%m%d_%H%M%S")}.log')
    logger = get_logger(log_file, rank)
    device = 'cuda' if opt['num_gpu'] and torch.cuda.is_available() else 'cpu'
    logger.info(f'irtoolkit: torch {torch.__version__}, device {device}, world size {opt["world_size"]}, '
                f'launcher {args.launcher}')
    logger.info('options:\n' + dict2str(opt))
    tb_logger = None
    if rank == 0 and opt['logger'].get('use_tb_logger') and 'debug' not in opt['name']:
        tb_logger = init_tb_logger(osp.join(opt['root_path'], 'tb_logger', opt['name']))

    seed = opt['manual_seed']
    set_random_seed(seed + rank)
    train_opt = opt['datasets']['train']
    train_set = build_dataset(train_opt, 'datasets.train')
    use_cuda = device == 'cuda'
    train_loader, sampler = build_dataloader(train_set, train_opt, 'train', opt['world_size'], rank, seed, use_cuda)
    val_loaders = []
    for key, dopt in opt['datasets'].items():
        if key.startswith('val'):
            val_loaders.append(build_dataloader(build_dataset(dopt, f'datasets.{key}'), dopt, 'val', 1, 0, seed,
                                                use_cuda)[0])
    iters_per_epoch = len(train_loader)
    total_iter = int(opt['train']['total_iter'])
    logger.info(f'train set {train_opt.get("name")}: {len(train_set)} samples, batch {train_opt["batch_size_per_gpu"]}'
                f' x {opt["world_size"]} rank(s), {iters_per_epoch} iters/epoch, {total_iter} iters '
                f'(~{math.ceil(total_iter / iters_per_epoch)} epochs)')

    model = build_model(opt)
    epoch, current_iter, start_batch = 0, 0, 0
    if state is not None:
        model.resume_training(state)
        epoch, current_iter, start_batch = state['epoch'], state['iter'], state.get('batch_in_epoch', 0)
        set_rng_state(state['rng'])
        logger.info(f'Resuming training from {resume_path}: epoch {epoch}, iter {current_iter}')
        if start_batch >= iters_per_epoch:
            epoch, start_batch = epoch + 1, 0

    val_freq = (opt.get('val') or {}).get('val_freq') if val_loaders else None
    save_freq = opt['logger'].get('save_checkpoint_freq')
    keep = opt['logger'].get('keep_last_checkpoints')
    warmup = opt['train'].get('warmup_iter', -1)
    show_bar = rank == 0 and opt['logger'].get('progress_bar', sys.stderr.isatty())
    progress = TrainProgress(opt, current_iter, tb_logger, logger, show_bar)
    stop = _StopFlag()
    logger.info(f'Start training from epoch: {epoch}, iter: {current_iter}')
    t_data = time.time()
    while current_iter < total_iter:
        sampler.set_epoch(epoch, start_batch * train_opt['batch_size_per_gpu'])
        batch_idx = start_batch
        start_batch = 0
        for batch in train_loader:
            data_time = time.time() - t_data
            current_iter += 1
            batch_idx += 1
            model.update_learning_rate(current_iter, warmup)
            model.feed_data(batch)
            model.optimize_parameters(current_iter)
            progress.update(current_iter, epoch, model.get_current_learning_rate(), model.get_current_log(),
                            time.time() - t_data, data_time)
            stopping = stop.should_stop()
            if (save_freq and current_iter % save_freq == 0) or stopping:
                logger.info(f'Saving models and training states at iter {current_iter}.')
                model.save(current_iter, epoch, batch_idx)
                if rank == 0:
                    prune_checkpoints(opt['path']['models'], opt['path']['training_states'], keep)
            if stopping:  # terminate as asked (exit status 143), but only after the checkpoint is on disk
                logger.info('SIGTERM received: checkpoint written, stopping. Resume with --auto_resume.')
                progress.close()
                dist_util.cleanup()
                raise SystemExit(128 + signal.SIGTERM)
            if val_freq and current_iter % val_freq == 0:
                _validate(model, val_loaders, current_iter, tb_logger, opt, logger)
            t_data = time.time()
            if current_iter >= total_iter:
                break
        else:
            epoch += 1
            continue
        break
    progress.close()
    logger.info('End of training. Saving the latest model.')
    if not (save_freq and current_iter % save_freq == 0):
        model.save(current_iter, epoch, batch_idx)  # the final state, so a run can be extended later
    model.save('latest')
    if val_freq and current_iter % val_freq != 0:
        _validate(model, val_loaders, current_iter, tb_logger, opt, logger)
    if tb_logger is not None:
        tb_logger.close()
    dist_util.cleanup()
    return opt


def test(argv=None):
    args = parse_args(argv, False)
    opt = _setup(args, False)
    os.makedirs(opt['path']['results_root'], exist_ok=True)
    log_file = osp.join(opt['path']['log'], f'test_{opt["name"]}_{time.strftime("%Y%m%d_%H%M%S")}.log')
    logger = get_logger(log_file, opt['rank'])
    logger.info('options:\n' + dict2str(opt))
    loaders = []
    for key, dopt in (opt.get('datasets') or {}).items():
        dataset = build_dataset(dopt, f'datasets.{key}')
        loaders.append(build_dataloader(dataset, dopt, 'test', seed=opt['manual_seed'])[0])
    if not loaders:
        raise ValueError(f'{opt["opt_path"]}: datasets: no test_* dataset given')
    model = build_model(opt)
    save_img = (opt.get('val') or {}).get('save_img', True)
    all_results = {}
    for loader in loaders:
        name = loader.dataset.opt.get('name', 'test')
        logger.info(f'Testing {name} ({len(loader.dataset)} images)...')
        all_results[name] = model.validation(loader, opt['name'], None, save_img, logger=logger)
    if opt['rank'] == 0:
        with open(osp.join(opt['path']['results_root'], 'metrics.json'), 'w') as f:
            json.dump(all_results, f, indent=2)
    dist_util.cleanup()
    return all_results
