"""The demo command (`make demo`): build the demo data, train NAFNet and ConStyleNAFNet, evaluate them, write a
report.

    irtk-demo [--degradation haze|rain|noise|blur] [--iters N] [--device auto|cpu|cuda] [--out results/demo]
              [--repo CHECKOUT]
    python tools/demo.py [...]    # the same command

Stages (each with its own progress display):
  1. the built-in demo dataset (datasets/demo), built if missing by :mod:`irtoolkit.data.demo` (the dataset
     builder; this module only runs the pipeline);
  2. training with the runner, from options/train/NAFNet/demo_NAFNet_haze.yml and
     options/train/ConStyle/demo_ConStyleNAFNet_haze.yml of the checkout (``--repo``; default: the one holding the
     package, else the current directory); other degradations swap the data paths;
  3. inference (irtk-infer) on the held-out validation images and irtk-evaluate on three rows: the degraded input,
     NAFNet and ConStyleNAFNet (PSNR/SSIM and the no-reference metrics that need no downloaded weights);
  4. <out>/report.md with the table, a comparison grid (input | NAFNet | ConStyleNAFNet | ground truth) and the
     training curves; the table is printed at the end.
"""
import argparse
import json
import logging
import os
import os.path as osp
import sys
import time

from irtoolkit.cli import checkout_root
from irtoolkit.cli import evaluate as evaluate_cli
from irtoolkit.cli import infer as infer_cli
from irtoolkit.engine.run_log import TqdmHandler, parse_log

RECIPES = {'NAFNet': 'options/train/NAFNet/demo_NAFNet_haze.yml',
           'ConStyleNAFNet': 'options/train/ConStyle/demo_ConStyleNAFNet_haze.yml'}
METRICS = ['psnr_rgb', 'ssim_rgb', 'niqe', 'piqe']


def stage(i, text):
    print(f'\n=== [{i}/4] {text}', flush=True)


def build_data(data_root, deg):
    from irtoolkit.data.demo import build_demo
    t0 = time.time()
    manifest = build_demo(data_root, degradations=[deg])
    took = time.time() - t0
    print(f'demo data: {data_root}/{deg} ({manifest["sizes_bytes"][deg] / 2 ** 20:.1f} MiB), {took:.1f} s')


def train_model(label, deg, data_root, iters, device, repo=None):
    from irtoolkit.engine.runner import train
    from irtoolkit.config.recipe import load_recipe
    recipe = osp.join(repo or checkout_root(), RECIPES[label])
    opt = load_recipe(recipe)
    name = opt['name'].replace('haze', deg)
    overrides = [f'name={name}', 'logger.progress_bar=true', f'device={device}']
    for split, dataset in opt['datasets'].items():
        for key in [k for k in dataset if k.startswith('dataroot')]:
            path = dataset[key].replace('datasets/demo', data_root).replace('/haze/', f'/{deg}/')
            if path != dataset[key]:
                overrides.append(f'datasets.{split}.{key}={path}')
        if deg != 'haze':
            overrides.append(f'datasets.{split}.name={dataset["name"].replace("haze", deg)}')
    total = opt['train']['total_iter']
    overrides.append(f'logger.print_freq={max(1, (iters or total) // 40)}')  # ~40 points per training curve
    if iters:
        overrides += [f'train.total_iter={iters}', f'logger.save_checkpoint_freq={iters}', f'val.val_freq={iters}']
        if 'periods' in (opt['train'].get('scheduler') or {}):
            overrides.append(f'train.scheduler.periods=[{iters}]')
        joint = (opt.get('constyle') or {}).get('iter')
        if joint is not None and joint >= 0:  # keep the same share of joint training
            overrides.append(f'constyle.iter={max(1, round(joint * iters / total))}')
    t0 = time.time()
    train(['-opt', recipe, '--force_yml', *overrides])
    took = time.time() - t0
    exp = osp.join(os.getcwd(), 'experiments', name)
    print(f'{label}: trained in {took:.0f} s -> {exp}')
    return dict(name=name, exp=exp, recipe=recipe, seconds=took, overrides=overrides)


def plot_curves(runs, path):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(runs), figsize=(6 * len(runs), 4), squeeze=False)
    for ax, (label, run) in zip(axes[0], runs.items()):
        logs = sorted(f for f in os.listdir(run['exp']) if f.startswith('train_') and f.endswith('.log'))
        for key, (iters, values) in parse_log(osp.join(run['exp'], logs[-1])).items():
            ax.plot(iters, values, label=key)
        ax.set_title(f'{label} training losses')
        ax.set_xlabel('iteration')
        ax.set_yscale('symlog', linthresh=1e-2)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def comparison_grid(columns, path, n_rows=3):
    """Rows of (input | NAFNet | ConStyleNAFNet | ground truth) for the first ``n_rows`` validation images."""
    import cv2
    import numpy as np
    names = sorted(os.listdir(columns['ground truth']))[:n_rows]
    rows = []
    for name in names:
        stem = osp.splitext(name)[0]
        tiles = []
        for label, folder in columns.items():
            match = next(f for f in os.listdir(folder) if osp.splitext(f)[0] == stem)
            img = cv2.imread(osp.join(folder, match), cv2.IMREAD_COLOR)
            img = cv2.copyMakeBorder(img, 22, 2, 2, 2, cv2.BORDER_CONSTANT, value=(255, 255, 255))
            cv2.putText(img, label, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
            tiles.append(img)
        rows.append(np.concatenate(tiles, axis=1))
    cv2.imwrite(path, np.concatenate(rows, axis=0))
    return path


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--degradation', default='haze', choices=['haze', 'rain', 'noise', 'blur'])
    p.add_argument('--iters', type=int, default=None, help='training iterations per model (default: the recipes)')
    p.add_argument('--device', default='auto', choices=['auto', 'cpu', 'cuda'])
    p.add_argument('--data-root', default='datasets/demo')
    p.add_argument('--out', default='results/demo')
    p.add_argument('--repo', default=None, help='checkout whose options/ holds the demo recipes (default: the one '
                   'holding the package, else the current directory)')
    args = p.parse_args(argv)
    repo = args.repo or checkout_root()
    t_start = time.time()
    deg, out = args.degradation, args.out
    os.makedirs(out, exist_ok=True)
    logger = logging.getLogger('irtoolkit')  # console: warnings only (the log files keep everything)
    quiet = TqdmHandler()
    quiet.setLevel(logging.WARNING)
    logger.addHandler(quiet)

    stage(1, f'demo data ({deg})')
    build_data(args.data_root, deg)
    val_lq = osp.join(args.data_root, deg, 'val', 'lq')
    val_gt = osp.join(args.data_root, deg, 'val', 'gt')

    runs = {}
    for i, label in enumerate(RECIPES):
        stage(2, f'training {label} ({i + 1}/{len(RECIPES)}) on demo {deg}, device {args.device}')
        runs[label] = train_model(label, deg, args.data_root, args.iters, args.device, repo)

    stage(3, 'inference on the held-out images, then irtk-evaluate')
    folders = {'input': val_lq}
    for label, run in runs.items():
        folders[label] = osp.join(out, 'restored', label)
        infer_cli.main(['-opt', run['recipe'], '--ckpt', osp.join(run['exp'], 'models', 'net_g_latest.pth'),
                        '--input', val_lq, '--output', folders[label], '--device', args.device, '--tile', '0'])
    methods = [f'--method={label}={folder}' for label, folder in folders.items()]
    evaluate_cli.main(['--gt', val_gt, *methods, '--metrics', *METRICS, '--out', osp.join(out, 'eval'),
                       '--device', args.device, '--workers', '0'])

    stage(4, 'report')
    with open(osp.join(out, 'eval', 'eval.md'), encoding='utf-8') as f:
        table = f.read().strip()
    grid = comparison_grid({**folders, 'ground truth': val_gt}, osp.join(out, 'grid.png'))
    curves = plot_curves(runs, osp.join(out, 'curves.png'))
    total = time.time() - t_start
    lines = [f'# irtoolkit demo: {deg} removal on the built-in data', '',
             f'Held-out validation images: `{val_lq}` (degraded) and `{val_gt}` (clean), photos not used for '
             'training.', '', table, '',
             f'![input | NAFNet | ConStyleNAFNet | ground truth]({osp.basename(grid)})', '',
             f'![training curves]({osp.basename(curves)})', '', '## Runs', '']
    for label, run in runs.items():
        lines.append(f'- {label}: `python irtoolkit/train.py -opt {osp.relpath(run["recipe"], repo)} --force_yml '
                     f'{" ".join(run["overrides"])}` — {run["seconds"]:.0f} s, experiment `{run["exp"]}`')
    lines += ['', f'Total wall time of this demo: {total / 60:.1f} min (`irtk-demo '
              f'{" ".join(argv if argv is not None else sys.argv[1:])}`).', '']
    with open(osp.join(out, 'report.md'), 'w', encoding='utf-8') as f:
        f.write('\n'.join(lines))
    with open(osp.join(out, 'runs.json'), 'w', encoding='utf-8') as f:
        json.dump({'degradation': deg, 'runs': runs, 'wall_seconds': total}, f, indent=2)
    print(f'\n{table}\n\nreport: {osp.join(out, "report.md")}\ngrid: {grid}\ncurves: {curves}\n'
          f'demo wall time: {total / 60:.1f} min')


if __name__ == '__main__':
    sys.exit(main())
