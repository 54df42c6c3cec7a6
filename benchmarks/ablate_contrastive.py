"""Ablation of the contrastive terms of CDD-GAN, NLCL and Uni-Removal on the built-in demo data.

For each method, its demo recipe with and without its distinguishing term, at equal iterations, for several seeds:

    cddgan      options/train/CDDGAN/demo_CDDGAN_haze.yml        without: no train.nce_opt — the plain CycleGAN (no
                                                                 adversarial contrastive loss, no heads, no negative
                                                                 generators)
    nlcl        options/train/NLCL/demo_NLCL_rain.yml            without: no train.nlcl_opt (no location and layer
                                                                 contrast, no heads)
    uniremoval  options/train/UniRemoval/demo_UniRemoval_stage1.yml   without: no train.mgcl_opt (distillation + pixel
                                                                 loss only, no projectors); the three demo teachers are
                                                                 trained once (seed 0) and shared by every run

Reported: PSNR / SSIM (RGB, 0..255, no border crop; basicsr's ``calculate_psnr`` / ``calculate_ssim``, the metrics of
the recipes' validation) of the final generator (its EMA when the recipe keeps one) on the held-out demo pairs
(``datasets/demo/<deg>/val``: 8 pairs of 256x256 crops from photos disjoint from the training photos), mean ± std
over seeds; and each contrastive term's value at the start (mean of iterations 1-10 of the term) and at the end (mean
of its last 10 % of iterations) against its chance level (the InfoNCE value when every logit is equal) and, where it
has one, its minimum. Every run is ``irtoolkit/train.py`` on a generated recipe, in its own process with one thread.

    python tools/make_demo_data.py                              # the demo data, once
    python benchmarks/ablate_contrastive.py --quick --jobs 2 --md benchmarks/ablation_results/ablation_quick.md
                                                                # every method, 3 seeds, reduced iterations
    python benchmarks/ablate_contrastive.py --method nlcl --seeds 0 1 2 3 4     # the demo recipe's iterations

Results: ``benchmarks/ablation_results/ablation_<method>[_quick].json`` (every run: metrics per image set, term
statistics, wall time, the exact options) and markdown tables on stdout (``--md FILE`` also writes them).
"""
import argparse
import concurrent.futures
import json
import math
import os
import os.path as osp
import shutil
import subprocess
import sys
import time

import numpy as np
import yaml

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))

RECIPES = {'cddgan': 'options/train/CDDGAN/demo_CDDGAN_haze.yml', 'nlcl': 'options/train/NLCL/demo_NLCL_rain.yml',
           'uniremoval': 'options/train/UniRemoval/demo_UniRemoval_stage1.yml'}
WITHOUT = {'cddgan': ('nce_opt', 'optim_f', 'optim_n'), 'nlcl': ('nlcl_opt', 'optim_heads'),
           'uniremoval': ('mgcl_opt', )}
VAL = {'cddgan': ['haze'], 'nlcl': ['rain'], 'uniremoval': ['haze', 'rain', 'blur']}
# --quick: iterations (and what depends on them) that keep the 18 runs (+ 3 teachers) to about 40 minutes on two
# shared CPU cores (--jobs 2); CDD-GAN at NEGCUT's batch 1
QUICK = {'cddgan': {'train.total_iter': 200, 'datasets.train.batch_size_per_gpu': 1},
         'nlcl': {'train.total_iter': 300, 'nlcl.d_warmup_iter': 100},
         'uniremoval': {'train.total_iter': 100}}
TEACHER_ITERS_QUICK = 200


# ---------------------------------------------------------------------------------------------- recipes
def set_key(opt, dotted, value):
    *path, last = dotted.split('.')
    for k in path:
        opt = opt[k]
    opt[last] = value


def run_options(method, variant, seed, overrides, teachers=None):
    """The recipe of one run: the demo recipe, ``overrides``, the seed, no validation during training (the script
    evaluates), every iteration logged, one checkpoint at the end; ``without`` drops the method's term."""
    from irtoolkit.config.recipe import load_recipe
    opt = load_recipe(osp.join(ROOT, RECIPES[method]))
    for key, value in overrides.items():
        set_key(opt, key, value)
    total = opt['train']['total_iter']
    sched = opt['train'].get('scheduler') or {}
    if sched.get('type') == 'HoldLinearDecayLR':  # keep the recipe's shape: hold half, decay half
        sched.update(hold_iters=total // 2, decay_iters=total - total // 2)
    elif sched.get('type') == 'CosineAnnealingRestartLR':
        sched['periods'] = [total]
    opt['name'] = f'abl_{method}_{variant}_s{seed}'
    opt['manual_seed'] = seed
    opt['datasets'] = {k: v for k, v in opt['datasets'].items() if k == 'train'}
    opt['logger'].update(print_freq=1, save_checkpoint_freq=total, use_tb_logger=False)
    if variant == 'without':
        for key in WITHOUT[method]:
            opt['train'].pop(key, None)
    if teachers:
        for t in opt['uniremoval']['teachers']:
            t['checkpoint'] = teachers[t['label']]
    return opt


def teacher_options(deg, iters):
    from irtoolkit.config.recipe import load_recipe
    opt = load_recipe(osp.join(ROOT, f'options/train/UniRemoval/demo_UniRemoval_teacher_{deg}.yml'))
    opt['name'] = f'abl_uniremoval_teacher_{deg}_{iters}'
    opt['train']['total_iter'] = iters
    opt['train']['scheduler']['periods'] = [iters]
    opt['datasets'] = {'train': opt['datasets']['train']}
    opt['logger'].update(save_checkpoint_freq=iters, use_tb_logger=False)
    return opt


# ---------------------------------------------------------------------------------------------- running
def train(opt, workdir):
    """``irtoolkit/train.py`` on ``opt`` in its own process (one thread); returns (experiment dir, wall seconds)."""
    path = osp.join(workdir, f'{opt["name"]}.yml')
    with open(path, 'w') as f:
        yaml.safe_dump(opt, f, sort_keys=False)
    exp = osp.join(ROOT, 'experiments', opt['name'])
    if osp.isdir(exp):  # this script's own earlier run of the same name
        shutil.rmtree(exp)
    env = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', HF_HUB_OFFLINE='1',
               PYTHONPATH=os.pathsep.join([ROOT, os.environ.get('PYTHONPATH', '')]))
    start = time.time()
    proc = subprocess.run([sys.executable, osp.join(ROOT, 'irtoolkit/train.py'), '-opt', path], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f'{opt["name"]} failed:\n{(proc.stdout + proc.stderr)[-3000:]}')
    return exp, time.time() - start


def evaluate(opt, exp, degradations):
    """PSNR / SSIM of the final generator (EMA if kept) and of the input on every held-out demo pair."""
    import cv2
    import torch
    from basicsr.metrics import calculate_psnr, calculate_ssim
    from basicsr.utils import img2tensor, tensor2img

    import irtoolkit  # noqa: F401  (registrations)
    from irtoolkit.utils.checkpoint import load_checkpoint
    from irtoolkit.utils.registry import build_network
    torch.set_num_threads(1)
    net = build_network(opt['network_g']).eval()
    load_checkpoint(net, osp.join(exp, 'models', 'net_g_latest.pth'), 'auto', True)
    out = {}
    for deg in degradations:
        folder = osp.join(ROOT, 'datasets', 'demo', deg, 'val')
        rows = []
        for name in sorted(os.listdir(osp.join(folder, 'lq'))):
            lq = cv2.imread(osp.join(folder, 'lq', name), cv2.IMREAD_COLOR)
            gt = cv2.imread(osp.join(folder, 'gt', name), cv2.IMREAD_COLOR)
            with torch.no_grad():
                y = tensor2img(net(img2tensor(lq.astype(np.float32) / 255., bgr2rgb=True, float32=True)[None]))
            rows.append((calculate_psnr(y, gt, 0), calculate_ssim(y, gt, 0), calculate_psnr(lq, gt, 0),
                         calculate_ssim(lq, gt, 0)))
        r = np.array(rows)
        out[deg] = dict(zip(('psnr', 'ssim', 'input_psnr', 'input_ssim'), map(float, r.mean(0))), n=len(rows))
    return out


def contrastive_terms(method, opt):
    """{logged term: (chance level, minimum or None, what)} of the method's contrastive terms, from its options."""
    if method == 'cddgan':
        k = opt['network_n']['num_negatives'] + opt['network_n'].get('queue_size', 0)
        if opt['train']['nce_opt'].get('neg_mode', 'external') == 'both':
            k += opt['cddgan']['num_patches'] - 1
        chance = math.log(1 + k)
        return {'l_nce_x': (chance, 0.0, 'adversarial PatchNCE (G step), (G(x), x)'),
                'l_nce_y': (chance, 0.0, 'adversarial PatchNCE (G step), identity (G(y), y)'),
                'l_n_nce': (chance, 0.0, 'adversarial PatchNCE seen by N (before its step)')}
    if method == 'nlcl':
        n = opt['nlcl']
        b, r = n['num_bg'], n['num_rain']
        separated = (b * math.log(b - 1) + r * math.log(r - 1)) / (b + r)
        return {'l_location': (math.log(n['num_patches']), 0.0, 'location PatchNCE (non-local negatives)'),
                'l_layer': (math.log(b + r - 1), separated, 'layer SupCon (bg vs rain; min = separated sets)')}
    u = opt['uniremoval']
    t = len(u['teachers']) if u['feature_negatives'] == 'other_teachers' else 1
    return {'l_mgcl_feature_raw': (math.log(t * u['num_patches']), 0.0, 'feature grain InfoNCE'),
            'l_mgcl_image_raw': (1.0, 0.0, 'image grain ratio (1: anchor as far from positive as from negatives)')}


def term_stats(log_path, terms):
    from irtoolkit.engine.run_log import parse_log
    curves = parse_log(log_path)
    stats = {}
    for name in terms:
        if name in curves:
            ys = curves[name][1]
            tail = max(10, len(ys) // 10)
            stats[name] = {'start': float(np.mean(ys[:10])), 'end': float(np.mean(ys[-tail:])), 'first': ys[0]}
    return stats


def one_run(method, variant, seed, overrides, teachers, workdir):
    opt = run_options(method, variant, seed, overrides, teachers)
    exp, wall = train(opt, workdir)
    log = sorted(p for p in os.listdir(exp) if p.startswith('train_') and p.endswith('.log'))[-1]
    result = {'method': method, 'variant': variant, 'seed': seed, 'wall_s': wall, 'iters': opt['train']['total_iter'],
              'metrics': evaluate(opt, exp, VAL[method]), 'options': opt}
    if variant == 'full':
        result['terms'] = term_stats(osp.join(exp, log), contrastive_terms(method, opt))
    scores = ', '.join(f'{d} {m["psnr"]:.2f} dB / {m["ssim"]:.4f}' for d, m in result['metrics'].items())
    print(f'{opt["name"]}: {wall:.0f} s, {scores}', flush=True)
    return result


def train_teachers(iters, workdir):
    paths = {}
    for deg in VAL['uniremoval']:
        opt = teacher_options(deg, iters)
        path = osp.join(ROOT, 'experiments', opt['name'], 'models', 'net_g_latest.pth')
        if not osp.isfile(path):
            _, wall = train(opt, workdir)
            print(f'{opt["name"]}: {wall:.0f} s', flush=True)
        paths[deg] = path
    return paths


# ---------------------------------------------------------------------------------------------- report
def mean_std(values):
    return f'{np.mean(values):.2f} ± {np.std(values):.2f}' if len(values) > 1 else f'{values[0]:.2f}'


def summarise(method, runs):
    """Markdown: metrics per variant (mean ± std over seeds) and the terms' start / end against chance."""
    degs = VAL[method]
    lines = [f'**{method}** ({len({r["seed"] for r in runs})} seeds, {runs[0]["iters"]} iterations per run)', '',
             '| variant | ' + ' | '.join(f'{d} PSNR (dB) | {d} SSIM' for d in degs) + ' | wall per run (s) |',
             '|---|' + '---|---|' * len(degs) + '---|']
    first = runs[0]['metrics']
    inputs = [f'{first[d]["input_psnr"]:.2f} | {first[d]["input_ssim"]:.4f}' for d in degs]
    lines.append('| input | ' + ' | '.join(inputs) + ' | |')
    for variant in ('full', 'without'):
        rs = [r for r in runs if r['variant'] == variant]
        if not rs:
            continue
        cells = []
        for d in degs:
            psnr = [r['metrics'][d]['psnr'] for r in rs]
            ssim = [r['metrics'][d]['ssim'] for r in rs]
            cells.append(f'{mean_std(psnr)} | {np.mean(ssim):.4f} ± {np.std(ssim):.4f}')
        lines.append(f'| {variant} | ' + ' | '.join(cells) + f' | {np.mean([r["wall_s"] for r in rs]):.0f} |')
    full = [r for r in runs if r['variant'] == 'full']
    if full:
        terms = contrastive_terms(method, full[0]['options'])
        lines += ['', '| term | chance | minimum | start (it. 1-10) | end (last 10 %) |', '|---|---|---|---|---|']
        for name, (chance, minimum, what) in terms.items():
            got = [r['terms'][name] for r in full if name in r.get('terms', {})]
            if got:
                lines.append(f'| `{name}` ({what}) | {chance:.2f} | {minimum:.2f} | '
                             f'{mean_std([g["start"] for g in got])} | {mean_std([g["end"] for g in got])} |')
    return '\n'.join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--method', nargs='+', default=list(RECIPES), choices=list(RECIPES))
    p.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    p.add_argument('--quick', action='store_true', help='reduced iterations (QUICK): minutes per run on a CPU')
    p.add_argument('--iters', type=int, help='train.total_iter of every run (overrides --quick)')
    p.add_argument('--set', nargs='+', default=[], metavar='KEY=YAML',
                   help='recipe overrides for every run, e.g. nlcl.d_warmup_iter=100')
    p.add_argument('--jobs', type=int, default=1, help='runs in parallel (one thread each)')
    p.add_argument('--md', help='also write the markdown tables to this file')
    args = p.parse_args(argv)
    if not osp.isdir(osp.join(ROOT, 'datasets', 'demo')):
        sys.exit('datasets/demo: missing; build it first: python tools/make_demo_data.py')
    workdir = osp.join(ROOT, 'experiments', 'ablation_recipes')
    os.makedirs(workdir, exist_ok=True)
    os.makedirs(osp.join(ROOT, 'benchmarks', 'ablation_results'), exist_ok=True)
    tables = []
    for method in args.method:
        overrides = dict(QUICK[method]) if args.quick else {}
        if args.iters:
            overrides['train.total_iter'] = args.iters
        overrides.update((k, yaml.safe_load(v)) for k, v in (a.split('=', 1) for a in args.set))
        teachers = None
        if method == 'uniremoval':
            teachers = train_teachers(TEACHER_ITERS_QUICK if args.quick else 300, workdir)
        start = time.time()
        with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
            futures = [pool.submit(one_run, method, v, s, overrides, teachers, workdir)
                       for s in args.seeds for v in ('full', 'without')]
            runs = [f.result() for f in futures]
        wall = time.time() - start
        name = f'ablation_{method}{"_quick" if args.quick else ""}.json'
        out = osp.join(ROOT, 'benchmarks', 'ablation_results', name)
        with open(out, 'w') as f:
            json.dump({'argv': sys.argv[1:] if argv is None else argv, 'wall_s': wall, 'runs': runs}, f, indent=1)
        tables.append(summarise(method, runs) + f'\n\n{len(runs)} runs in {wall / 60:.1f} min wall ({out})')
        print(tables[-1], flush=True)
    if args.md:
        with open(args.md, 'w') as f:
            f.write('\n\n'.join(tables) + '\n')


if __name__ == '__main__':
    main()
