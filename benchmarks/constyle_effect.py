"""Does the ConStyle prior help a CPU-sized restoration network? Arms x seeds on the built-in demo data.

    python benchmarks/constyle_effect.py [--quick] [--seeds 0 1 2] [--iters N] [--arms NAME ...]
                                         [--threads 1] [--out results/constyle_effect]

The all-in-one setting, where a degradation prior should matter most: one network learns haze, rain, noise and
blur removal at once (the four demo sets, ``python tools/make_demo_data.py``, built if missing), every batch
holding every degradation (``MultiDegradationDataset`` with balanced batches). Arms, all trained from the same
seed on the same batches with the same optimiser and schedule (AdamW 2e-3, one cosine, L1, no EMA):

    NAFNet            NAFNet width 16, one block per level (the `make demo` baseline)
    ConStyle-joint    ConStyleNAFNet at the same width (dim 16), IRConStyle v1 joint training: the ConStyle
                      losses (irtoolkit's normalised InfoNCE/Content, bounded Style, weight 0.1) for the first 75 %
                      of the iterations, then the prior is frozen
    prior-random      the same ConStyleNAFNet with an untrained (He-initialised) prior, frozen from the start: the
                      skeleton with a prior that knows nothing (the control for the next two)
    v2-bn-eval        ConStyle v2's two stages: the prior pre-trained alone (ConStylePretrainModel on the same
                      pairs: InfoNCE + Content + Style + a class head naming the degradation + the KL distillation
                      between the query's and the momentum key's class logits), then loaded and frozen in
                      ConStyleNAFNet (IRConStyleModel), its BatchNorm in eval mode (constyle.frozen_bn: eval)
    v2-bn-train       the same prior, BatchNorm in train mode as upstream (constyle.frozen_bn: train)

The pre-training of a seed runs once and serves both v2 arms; its wall time is reported on its own. Metrics: PSNR
and SSIM (RGB, uint8, no border crop) on the 8 held-out 256 x 256 validation images of each degradation (photos
not used for training), averaged over the four sets; per-set PSNR too. Every finished run is written to
``<out>/runs/<arm>_s<seed>.json`` at once, and a rerun with the same settings skips it, so an interrupted benchmark
continues where it stopped (``--fresh`` starts over). The table goes to ``<out>/table.md`` and ``<out>/summary.json``.

``--quick``: 60 iterations, 40 pre-training iterations, one seed: a smoke test of the whole pipeline (minutes).
On a shared 2-core CPU use ``--threads 1`` (the default): two-thread runs next to other jobs are slower.
"""
import argparse
import json
import logging
import os
import os.path as osp
import platform
import sys
import time

import numpy as np
import torch

import irtoolkit  # noqa: F401
from irtoolkit.engine.data import build_dataloader, build_dataset
from irtoolkit.engine.runner import set_random_seed
from irtoolkit.models.base_model import bare
from irtoolkit.utils.registry import build_model

DEGS = ('haze', 'rain', 'noise', 'blur')
ARMS = ('NAFNet', 'ConStyle-joint', 'prior-random', 'v2-bn-eval', 'v2-bn-train')
DIM = 16
PRIOR = {'K': 128, 'm': 0.99, 'T': 0.2, 'enqueue': 'key', 'init': 'kaiming'}
METRICS = {'psnr': {'type': 'calculate_psnr', 'crop_border': 0, 'test_y_channel': False},
           'ssim': {'type': 'calculate_ssim', 'crop_border': 0, 'test_y_channel': False}}
PRIOR_LOSSES = {'infonce_opt': {'type': 'QueueInfoNCELoss', 'normalize': True},
                'content_opt': {'type': 'ContentLoss', 'normalize': True},
                'style_opt': {'type': 'StyleLoss', 'mode': 'bounded'}}


def constyle_net(train, **prior):
    return {'type': 'ConStyleNAFNet', 'dim': DIM, 'left_blk_num': [1, 1, 1], 'bottom_blk_num': 1,
            'right_blk_num': [1, 1, 1], 'Train': train, 'constyle_opt': dict(PRIOR, **prior)}


def arm_options(arm, iters, lr, prior_path=None):
    """(model_type, network_g, extra train options, path options, constyle options) of an arm."""
    if arm == 'NAFNet':
        return 'RestorationModel', {'type': 'NAFNet', 'width': DIM, 'middle_blk_num': 1, 'enc_blk_nums': [1, 1, 1],
                                    'dec_blk_nums': [1, 1, 1]}, {}, {}, {}
    if arm == 'ConStyle-joint':
        losses = {k: dict(v, loss_weight=0.1) for k, v in PRIOR_LOSSES.items()}
        return 'ConStyleModel', constyle_net(True), losses, {}, {'iter': max(1, round(0.75 * iters))}
    if arm == 'prior-random':
        return 'IRConStyleModel', constyle_net(False), {}, {}, {}
    if arm in ('v2-bn-eval', 'v2-bn-train'):
        return ('IRConStyleModel', constyle_net(False), {}, {'pretrain_constyle': prior_path},
                {'frozen_bn': arm.rsplit('-', 1)[1]})
    raise ValueError(f'unknown arm {arm!r}; known: {ARMS}')


def options(name, model_type, net, train_extra, path_extra, iters, lr, seed, pixel=True, constyle=None):
    train = {'total_iter': iters, 'warmup_iter': -1, 'ema_decay': 0,
             'optim_g': {'type': 'AdamW', 'lr': lr, 'weight_decay': 1e-4, 'betas': [0.9, 0.9]},
             'scheduler': {'type': 'CosineAnnealingRestartLR', 'periods': [iters], 'restart_weights': [1],
                           'eta_min': 1e-5}}
    if pixel:
        train['pixel_opt'] = {'type': 'L1Loss', 'loss_weight': 1.0, 'reduction': 'mean'}
    train.update(train_extra)
    opt = {'name': name, 'model_type': model_type, 'num_gpu': 0, 'manual_seed': seed,
           'network_g': net, 'train': train, 'path': dict(path_extra), 'val': {'metrics': METRICS}}
    if constyle:
        opt['constyle'] = dict(constyle)
    return opt


def train_loader(root, crop, batch, seed):
    ds = {'name': 'demo_all_train', 'type': 'MultiDegradationDataset', 'phase': 'train',
          'sets': [{'name': d, 'dataroot_lq': f'{root}/{d}/train_lq.lmdb', 'dataroot_gt': f'{root}/{d}/train_gt.lmdb'}
                   for d in DEGS],
          'io_backend': {'type': 'lmdb'}, 'gt_size': crop, 'use_hflip': True, 'use_rot': True,
          'batch_size_per_gpu': batch, 'num_worker_per_gpu': 0, 'dataset_enlarge_ratio': 100}
    return build_dataloader(build_dataset(ds, 'datasets.train'), ds, 'train', seed=seed)[0]


def val_loaders(root, limit=None):
    """One loader per degradation over its validation images (the first ``limit`` of them when given)."""
    loaders = {}
    for d in DEGS:
        ds = {'name': d, 'type': 'PairedRestorationDataset', 'phase': 'val', 'dataroot_lq': f'{root}/{d}/val/lq',
              'dataroot_gt': f'{root}/{d}/val/gt', 'io_backend': {'type': 'disk'}}
        dataset = build_dataset(ds, f'datasets.val_{d}')
        if limit:
            dataset.sets.pairs = dataset.sets.pairs[:limit]
        loaders[d] = build_dataloader(dataset, ds, 'val')[0]
    return loaders


def val_labelled_loader(root):
    ds = {'name': 'demo_all_val', 'type': 'MultiDegradationDataset', 'phase': 'val',
          'sets': [{'name': d, 'dataroot_lq': f'{root}/{d}/val/lq', 'dataroot_gt': f'{root}/{d}/val/gt'} for d in DEGS],
          'io_backend': {'type': 'disk'}}
    return build_dataloader(build_dataset(ds, 'datasets.val'), ds, 'val')[0]


def run_training(model, loader, iters):
    """``iters`` steps; returns (wall s, CPU s, last logs averaged over the final 10 %)."""
    t0, c0 = time.time(), time.process_time()
    tail, it = [], 0
    while it < iters:
        for batch in loader:
            it += 1
            model.update_learning_rate(it)
            model.feed_data(batch)
            model.optimize_parameters(it)
            if it > 0.9 * iters:
                tail.append(dict(model.get_current_log()))
            if it == iters:
                break
    logs = {k: float(np.mean([t[k] for t in tail if k in t])) for k in (tail[-1] if tail else {})}
    return time.time() - t0, time.process_time() - c0, logs


def evaluate(model, loaders):
    out = {}
    for d, loader in loaders.items():
        res = model.validation(loader, 0)
        out[d] = {'psnr': float(res['psnr']), 'ssim': float(res['ssim'])}
    out['mean'] = {m: float(np.mean([out[d][m] for d in loaders])) for m in ('psnr', 'ssim')}
    return out


def count_params(model):
    net = bare(model.net_g)
    return sum(p.numel() for p in net.parameters()), sum(p.numel() for p in net.parameters() if p.requires_grad)


def pretrain_prior(args, seed, out_dir):
    """ConStyle v2 stage 1 on the training pairs (labels: the degradation set); returns (path, record)."""
    path = osp.join(out_dir, f'prior_s{seed}.pth')
    rec_path = osp.join(out_dir, 'runs', f'pretrain_s{seed}.json')
    if osp.isfile(path) and osp.isfile(rec_path) and not args.fresh:
        with open(rec_path) as f:
            rec = json.load(f)
        if rec.get('settings') == settings(args):
            return path, rec
    set_random_seed(seed)
    net = {'type': 'ConStyle', 'Train': True, 'num_classes': len(DEGS), **PRIOR}
    extra = dict(PRIOR_LOSSES, cls_opt={'type': 'LabelCrossEntropyLoss'}, kl_opt={'type': 'KLDistillLoss'})
    opt = options(f'pretrain_s{seed}', 'ConStylePretrainModel', net, extra, {}, args.pretrain_iters,
                  args.pretrain_lr, seed, pixel=False)
    model = build_model(opt)
    wall, cpu, logs = run_training(model, train_loader(args.data_root, args.crop, args.pretrain_batch, seed),
                                   args.pretrain_iters)
    val = model.validation(val_labelled_loader(args.data_root), args.pretrain_iters)
    os.makedirs(out_dir, exist_ok=True)
    torch.save({'params': bare(model.net_g).state_dict()}, path)
    rec = {'seed': seed, 'iters': args.pretrain_iters, 'wall_s': wall, 'cpu_s': cpu, 'train_tail': logs,
           'val': {k: float(v) for k, v in val.items()}, 'settings': settings(args)}
    write_json(rec_path, rec)
    return path, rec


def settings(args):
    keys = ('iters', 'pretrain_iters', 'crop', 'batch', 'pretrain_batch', 'lr', 'pretrain_lr', 'val_images')
    return {k: getattr(args, k) for k in keys if k != 'val_images' or args.val_images}


def write_json(path, obj):
    os.makedirs(osp.dirname(path), exist_ok=True)
    with open(path + '.tmp', 'w') as f:
        json.dump(obj, f, indent=1)
    os.replace(path + '.tmp', path)


def run_arm(args, arm, seed, prior_path, val):
    rec_path = osp.join(args.out, 'runs', f'{arm}_s{seed}.json')
    if osp.isfile(rec_path) and not args.fresh:
        with open(rec_path) as f:
            rec = json.load(f)
        if rec.get('settings') == settings(args):
            print(f'{arm} seed {seed}: done before ({rec["metrics"]["mean"]["psnr"]:.2f} dB), skipped', flush=True)
            return rec
    set_random_seed(seed)
    model_type, net, extra, path, constyle = arm_options(arm, args.iters, args.lr, prior_path)
    model = build_model(options(f'{arm}_s{seed}', model_type, net, extra, path, args.iters, args.lr, seed,
                                constyle=constyle))
    params, trainable = count_params(model)
    wall, cpu, logs = run_training(model, train_loader(args.data_root, args.crop, args.batch, seed), args.iters)
    t0 = time.time()
    metrics = evaluate(model, val)
    rec = {'arm': arm, 'seed': seed, 'iters': args.iters, 'wall_s': wall, 'cpu_s': cpu, 'val_s': time.time() - t0,
           'params': params, 'trainable': trainable, 'train_tail': logs, 'metrics': metrics, 'settings': settings(args)}
    write_json(rec_path, rec)
    per_set = ', '.join(f"{d} {metrics[d]['psnr']:.2f}" for d in DEGS)
    print(f'{arm} seed {seed}: {metrics["mean"]["psnr"]:.2f} dB / {metrics["mean"]["ssim"]:.4f} '
          f'({per_set}), {wall:.0f} s wall, {cpu:.0f} s CPU',
          flush=True)
    return rec


def input_metrics(val):
    """PSNR/SSIM of the degraded inputs themselves."""
    from irtoolkit.metrics.calculate import MetricSet
    out = {}
    for d, loader in val.items():
        metrics = MetricSet(METRICS)
        for i, data in enumerate(loader):
            metrics.update(data['lq'][:1], data['gt'][:1], str(i))
        out[d] = {k: float(v) for k, v in metrics.results().items()}
    out['mean'] = {m: float(np.mean([out[d][m] for d in val])) for m in ('psnr', 'ssim')}
    return out


def table(records, pre, inputs, args, total_wall):
    def ms(values, fmt):
        values = np.asarray(values, float)
        sd = values.std(ddof=1) if len(values) > 1 else float('nan')
        return f'{values.mean():{fmt}} ± {sd:{fmt.lstrip("+")}}'

    lines = ['| arm | params (trainable) | PSNR | SSIM | ' + ' | '.join(f'{d} PSNR' for d in DEGS)
             + ' | train wall s (CPU s) per run |', '|---|---:|---:|---:|' + '---:|' * len(DEGS) + '---:|']
    lines.append('| degraded input | | ' + f'{inputs["mean"]["psnr"]:.2f} | {inputs["mean"]["ssim"]:.4f} | '
                 + ' | '.join(f'{inputs[d]["psnr"]:.2f}' for d in DEGS) + ' | |')
    for arm in args.arms:
        rs = [r for r in records if r['arm'] == arm]
        if not rs:
            continue
        cells = [f'{arm}', f'{rs[0]["params"] / 1e6:.2f} M ({rs[0]["trainable"] / 1e6:.2f} M)',
                 ms([r['metrics']['mean']['psnr'] for r in rs], '.2f'),
                 ms([r['metrics']['mean']['ssim'] for r in rs], '.4f')]
        cells += [ms([r['metrics'][d]['psnr'] for r in rs], '.2f') for d in DEGS]
        cells.append(f'{np.mean([r["wall_s"] for r in rs]):.0f} ({np.mean([r["cpu_s"] for r in rs]):.0f})')
        lines.append('| ' + ' | '.join(cells) + ' |')
    seeds = sorted({r['seed'] for r in records})
    paired = []
    for ref in ('NAFNet', 'prior-random'):
        by_seed = {r['seed']: r['metrics']['mean']['psnr'] for r in records if r['arm'] == ref}
        cells = []
        for arm in args.arms:
            d = [r['metrics']['mean']['psnr'] - by_seed[r['seed']] for r in records
                 if r['arm'] == arm and arm != ref and r['seed'] in by_seed]
            if d:
                cells.append(f'{arm} {ms(d, "+.2f")} ({sum(x > 0 for x in d)}/{len(d)} seeds above)')
        if cells:
            paired.append(f'PSNR minus {ref} of the same seed: ' + '; '.join(cells) + '.')
    notes = [f'Mean ± sample std over seeds {seeds} ({len(seeds)} runs per arm); {args.iters} iterations, batch '
             f'{args.batch} ({args.batch // len(DEGS)} per degradation), {args.crop} px crops, threads {args.threads}.']
    notes += paired
    if pre:
        notes.append('v2 stage 1 (per seed, shared by both v2 arms): '
                     f'{args.pretrain_iters} iterations, batch {args.pretrain_batch}; '
                     + '; '.join(f'seed {p["seed"]}: {p["wall_s"]:.0f} s wall, class accuracy '
                                 f'{p["val"].get("cls_acc", float("nan")):.2f}, retrieval top-1 '
                                 f'{p["val"]["retrieval_top1"]:.2f}' for p in pre) + '.')
    runs = list(records) + list(pre)
    notes.append(f'Training wall time, all runs and pre-trainings: {sum(r["wall_s"] for r in runs) / 60:.1f} min '
                 f'({sum(r["cpu_s"] for r in runs) / 60:.1f} min CPU); this call {total_wall / 60:.1f} min on '
                 f'{platform.processor() or platform.machine()} ({os.cpu_count()} CPUs, load average '
                 f'{os.getloadavg()[0]:.1f} at the end).')
    return '\n'.join(lines + [''] + notes) + '\n'


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--quick', action='store_true', help='60 iterations, 40 pre-training iterations, seed 0')
    p.add_argument('--seeds', type=int, nargs='+', default=None, help='default: 0 1 2 (--quick: 0)')
    p.add_argument('--iters', type=int, default=None, help='training iterations per arm (default 300)')
    p.add_argument('--pretrain-iters', type=int, default=None, help='v2 stage-1 iterations (default 300)')
    p.add_argument('--arms', nargs='+', default=list(ARMS), choices=ARMS)
    p.add_argument('--crop', type=int, default=48)
    p.add_argument('--batch', type=int, default=8)
    p.add_argument('--pretrain-batch', type=int, default=16)
    p.add_argument('--lr', type=float, default=2e-3)
    p.add_argument('--pretrain-lr', type=float, default=1e-3)
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--val-images', type=int, default=None, help='score only the first N validation images per set')
    p.add_argument('--data-root', default='datasets/demo')
    p.add_argument('--out', default=None, help='default: results/constyle_effect(_quick)')
    p.add_argument('--fresh', action='store_true', help='ignore finished runs of an earlier call')
    args = p.parse_args(argv)
    args.seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    args.iters = args.iters or (60 if args.quick else 300)
    args.pretrain_iters = args.pretrain_iters or (40 if args.quick else 300)
    args.out = args.out or ('results/constyle_effect_quick' if args.quick else 'results/constyle_effect')
    torch.set_num_threads(args.threads)
    logging.getLogger('irtoolkit').setLevel(logging.WARNING)
    t_start = time.time()

    from irtoolkit.data.demo import build_demo
    build_demo(args.data_root, degradations=list(DEGS), log=lambda *a: None)
    val = val_loaders(args.data_root, args.val_images)
    inputs = input_metrics(val)
    records, pre = [], []
    for seed in args.seeds:
        prior_path = None
        if any(a.startswith('v2') for a in args.arms):
            prior_path, rec = pretrain_prior(args, seed, args.out)
            pre.append(rec)
            print(f'v2 stage 1 seed {seed}: {rec["wall_s"]:.0f} s wall, val {rec["val"]}', flush=True)
        for arm in args.arms:
            records.append(run_arm(args, arm, seed, prior_path, val))
    total = time.time() - t_start
    text = table(records, pre, inputs, args, total)
    cmd = 'python benchmarks/constyle_effect.py ' + ' '.join(argv if argv is not None else sys.argv[1:])
    with open(osp.join(args.out, 'table.md'), 'w') as f:
        f.write(f'`{cmd.strip()}`\n\n{text}')
    write_json(osp.join(args.out, 'summary.json'), {'command': cmd.strip(), 'settings': settings(args),
                                                    'seeds': args.seeds, 'inputs': inputs, 'pretrain': pre,
                                                    'runs': records, 'wall_s': total})
    print('\n' + text)


if __name__ == '__main__':
    main()
