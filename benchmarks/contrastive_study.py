"""The pre-registered miniature study of issue 20: does each contrastive method beat its degraded input and its
ablations? Protocol (settings, seeds, arms, metrics, statistic, success criteria): docs/contrastive.md, section
"Miniature study (issue 20): protocol". This script is that protocol; change one and you must change the other.

    python benchmarks/contrastive_study.py [--method cddgan nlcl uniremoval constyle] [--seeds 1 2 3]
                                           [--arms ARM ...] [--quick] [--device cpu|cuda] [--jobs 2]
                                           [--set METHOD.KEY=VALUE ...] [--out DIR] [--fresh]
    python benchmarks/contrastive_study.py --report [--quick] [--device ...]   # tables from the finished runs only

Arms (one seed gives every arm of a method the same initialisation stream and the same batches):

    cddgan      full (NEGCUT's adversarial PatchNCE in CycleGAN) / cut (PatchNCE, in-image negatives, no N) /
                none (the plain CycleGAN)                                     -- unpaired haze, demo data
    nlcl        full / no-nonlocal (no NonLocalContrastiveLoss, no heads) / shared-head (one layer head for the
                background and rain patches)                                  -- unpaired HEAVY rain (built here)
    uniremoval  full / no-mgcl (distillation + pixel loss only)                -- haze + rain + blur, 3 shared teachers
    constyle    ConStyle-joint / prior-random (untrained prior, frozen) / NAFNet   -- haze + rain + noise + blur

Every run is ``irtoolkit/train.py``'s entry (:func:`irtoolkit.engine.runner.train`) on a generated recipe, in its
own process (``--threads`` each, default 1; ``--jobs`` processes at once), then scored in that process on the held-out
pairs of its degradations (8 x 256 x 256 per set, photos never used for training): PSNR / SSIM (RGB, 0..255, no
border crop, basicsr's arithmetic) and NIQE (no-reference; pyiqa's NIQE with basicsr's shipped pristine-image
parameters, no download), of the raw generator and of its EMA where the recipe keeps one; the degraded inputs are
scored the same way. Each finished run is written at once to ``<out>/runs/<method>_<arm>_s<seed>.json`` and skipped
on a rerun with the same settings (``--fresh`` ignores them). The tables (paired differences per seed, mean and 95 %
t interval) go to ``<out>/table.md`` and ``<out>/summary.json``.

Scales: the default ``cpu`` (the CPU study, ~1 h on two cores), ``--quick`` (the pipeline end to end in minutes: every
arm and seed at a few iterations; its numbers say nothing about the methods) and, with ``--device cuda`` and no
``--quick``, ``gpu`` (longer runs, larger crops and networks; SCALES below).
"""
import argparse
import concurrent.futures
import json
import math
import os
import os.path as osp
import subprocess
import sys
import time
from copy import deepcopy

import numpy as np
import yaml

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))

DEMO = 'datasets/demo'
HEAVY_RAIN_ROOT = 'datasets/study_heavy_rain'
# Heavier than the demo's rain (density 0.002-0.008, intensity 0.4-0.8, width 0.4-1.0): the old NLCL ablation's
# input already scored 23.6 dB, so removing streaks could move PSNR little and a critic separated the sets at once
HEAVY_RAIN = [{'type': 'rain', 'density': [0.01, 0.02], 'length': [15, 35], 'angle': [-25, 25], 'width': [0.6, 1.2],
               'intensity': [0.6, 0.9]}]
METHODS = ('cddgan', 'nlcl', 'uniremoval', 'constyle')
ARMS = {'cddgan': ('full', 'cut', 'none'), 'nlcl': ('full', 'no-nonlocal', 'shared-head'),
        'uniremoval': ('full', 'no-mgcl'), 'constyle': ('ConStyle-joint', 'prior-random', 'NAFNet')}
# the comparisons the protocol names: (arm, reference); 'input' = the degraded input of the same images
COMPARISONS = {'cddgan': [('full', 'input'), ('full', 'cut'), ('full', 'none'), ('cut', 'input'), ('none', 'input'),
                          ('cut', 'none')],
               'nlcl': [('full', 'input'), ('full', 'no-nonlocal'), ('shared-head', 'no-nonlocal'),
                        ('shared-head', 'full'), ('shared-head', 'input'), ('no-nonlocal', 'input')],
               'uniremoval': [('full', 'input'), ('full', 'no-mgcl'), ('no-mgcl', 'input')],
               'constyle': [('ConStyle-joint', 'input'), ('ConStyle-joint', 'prior-random'),
                            ('ConStyle-joint', 'NAFNet'), ('prior-random', 'NAFNet'), ('prior-random', 'input'),
                            ('NAFNet', 'input')]}
# success (protocol): each (arm, reference) here must have the lower end of its 95 % interval above 0 (primary metric)
SUCCESS = {'cddgan': [('full', 'input'), ('full', 'cut'), ('full', 'none')],
           'nlcl': [('full', 'input'), ('full', 'no-nonlocal')],
           'uniremoval': [('full', 'input'), ('full', 'no-mgcl')],
           'constyle': [('ConStyle-joint', 'input'), ('ConStyle-joint', 'prior-random'), ('ConStyle-joint', 'NAFNet')]}
VAL_SETS = {'cddgan': ['haze'], 'nlcl': ['rain_heavy'], 'uniremoval': ['haze', 'rain', 'blur'],
            'constyle': ['haze', 'rain', 'noise', 'blur']}
# shared-head arm: the NLCL model's switch for one head over both layer-contrast sets (issue 20 fix)
NLCL_SHARED_HEAD = {'nlcl.layer_head': 'shared'}

NAFNET_16 = {'type': 'NAFNet', 'width': 16, 'middle_blk_num': 1, 'enc_blk_nums': [1, 1, 1], 'dec_blk_nums': [1, 1, 1]}
NAFNET_32 = dict(NAFNET_16, width=32)
RESNET_DEMO = {'type': 'ResnetGenerator', 'ngf': 16, 'num_blocks': 6, 'norm': 'instance', 'init_type': 'xavier',
               'init_gain': 0.02}
RESNET_CUT = dict(RESNET_DEMO, ngf=64, num_blocks=9)
# Per scale: iterations, crops, batches, widths, EMA. cpu: the budget of the protocol (<= 2 h on two shared cores).
SCALES = {
    'quick': {'cddgan': {'iters': 20, 'batch': 1, 'crop': 64, 'ema': 0.9, 'identity': 5.0, 'net': RESNET_DEMO},
              'nlcl': {'iters': 30, 'warmup': 10, 'batch': 2, 'crop': 64, 'ema': 0.9, 'net': NAFNET_16},
              'uniremoval': {'iters': 15, 'teacher_iters': 20, 'batch': 6, 'crop': 64, 'net': NAFNET_16},
              'constyle': {'iters': 20, 'batch': 8, 'crop': 48, 'dim': 16}},
    'cpu': {'cddgan': {'iters': 500, 'batch': 1, 'crop': 64, 'ema': 0.98, 'identity': 5.0, 'net': RESNET_DEMO},
            'nlcl': {'iters': 800, 'warmup': 100, 'batch': 2, 'crop': 64, 'ema': 0.98, 'net': NAFNET_16},
            'uniremoval': {'iters': 300, 'teacher_iters': 500, 'batch': 6, 'crop': 64, 'net': NAFNET_16},
            'constyle': {'iters': 500, 'batch': 8, 'crop': 48, 'dim': 16}},
    'gpu': {'cddgan': {'iters': 10000, 'batch': 1, 'crop': 128, 'ema': 0.999, 'identity': 5.0, 'net': RESNET_CUT},
            'nlcl': {'iters': 5500, 'warmup': 500, 'batch': 4, 'crop': 128, 'ema': 0.999, 'net': NAFNET_32},
            'uniremoval': {'iters': 4000, 'teacher_iters': 4000, 'batch': 12, 'crop': 128, 'net': NAFNET_32},
            'constyle': {'iters': 4000, 'batch': 16, 'crop': 96, 'dim': 32}},
}
METRICS = {'psnr': {'type': 'calculate_psnr', 'crop_border': 0, 'test_y_channel': False},
           'ssim': {'type': 'calculate_ssim', 'crop_border': 0, 'test_y_channel': False},
           'niqe': {'type': 'niqe'}}
LOWER_BETTER = {'psnr': False, 'ssim': False, 'niqe': True}
PRIMARY = 'psnr'


# ---------------------------------------------------------------------------------------------- helpers
_SIBLINGS = {}


def sibling(name):
    """The benchmark script ``benchmarks/<name>.py`` as a module (loaded once; benchmarks/ is not a package)."""
    if name not in _SIBLINGS:
        import importlib.util
        spec = importlib.util.spec_from_file_location(f'irtk_bench_{name}', osp.join(ROOT, 'benchmarks', f'{name}.py'))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _SIBLINGS[name] = module
    return _SIBLINGS[name]


def set_key(opt, dotted, value):
    *path, last = dotted.split('.')
    for k in path:
        opt = opt.setdefault(k, {})
    opt[last] = value


def load_recipe(rel):
    from irtoolkit.config.recipe import load_recipe as load
    return load(osp.join(ROOT, rel))


def write_json(path, obj):
    os.makedirs(osp.dirname(path), exist_ok=True)
    with open(path + '.tmp', 'w') as f:
        json.dump(obj, f, indent=1)
    os.replace(path + '.tmp', path)


def build_heavy_rain(root=HEAVY_RAIN_ROOT):
    """The demo's rain set (same photos, splits, sizes, seed) with :data:`HEAVY_RAIN` streaks, under ``root/rain``."""
    from irtoolkit.data import demo
    saved = demo.DEMO_DEGRADATIONS['rain']
    demo.DEMO_DEGRADATIONS['rain'] = HEAVY_RAIN  # build_demo reads its spec table; the manifest records it
    try:
        demo.build_demo(osp.join(ROOT, root), degradations=['rain'], workers=1, log=lambda *a: None)
    finally:
        demo.DEMO_DEGRADATIONS['rain'] = saved


def val_folder(deg):
    if deg == 'rain_heavy':
        return osp.join(ROOT, HEAVY_RAIN_ROOT, 'rain', 'val')
    return osp.join(ROOT, DEMO, deg, 'val')


def last_conv_name(net_opt):
    """The module zeroed for an identity start: the last convolution before the global residual."""
    if net_opt['type'] == 'NAFNet':
        return 'ending'
    if net_opt['type'] == 'ConStyleNAFNet':
        return 'Finetune_Module.-1'
    raise ValueError(f'no identity start known for {net_opt["type"]}')


def identity_start(net_opt, seed, path):
    """A checkpoint of ``net_opt`` with seed-``seed`` initialisation and its last convolution zeroed, so that the
    network is exactly the identity at step 0 (``path.pretrain_network_*`` loads it). Checked on a random input."""
    import torch

    import irtoolkit  # noqa: F401
    from irtoolkit.utils.checkpoint import atomic_save
    from irtoolkit.utils.registry import build_network
    if osp.isfile(path):
        return path
    torch.manual_seed(seed)
    net = build_network(deepcopy(net_opt), 'network_g')
    name = last_conv_name(net_opt)
    module = net
    for part in name.split('.'):
        module = module[int(part)] if part.lstrip('-').isdigit() else getattr(module, part)
    with torch.no_grad():
        module.weight.zero_()
        if module.bias is not None:
            module.bias.zero_()
        x = torch.rand(1, 3, 64, 64)
        net.eval()
        err = (net(x) - x).abs().max().item()
    if err > 1e-6:
        raise RuntimeError(f'identity start of {net_opt["type"]}: |net(x) - x| = {err}')
    os.makedirs(osp.dirname(path), exist_ok=True)
    atomic_save({'params': net.state_dict()}, path)
    return path


def schedule(kind, total, hold=0.75):
    if kind == 'hold':  # CUT / NEGCUT / NLCL's policy: the base lr held, then a linear decay to 0
        return {'type': 'HoldLinearDecayLR', 'hold_iters': int(hold * total), 'decay_iters': total - int(hold * total)}
    return {'type': 'CosineAnnealingRestartLR', 'periods': [total], 'restart_weights': [1], 'eta_min': 1e-5}


def common(opt, name, seed, total, args):
    opt['name'] = name
    opt['manual_seed'] = seed
    opt['device'] = args.device
    opt['num_gpu'] = 1 if args.device == 'cuda' else 0
    opt['datasets'] = {'train': opt['datasets']['train']}
    opt['logger'] = {'print_freq': 1, 'save_checkpoint_freq': total, 'use_tb_logger': False}
    opt.setdefault('val', {})['val_freq'] = 10 ** 9
    opt['train']['total_iter'] = total
    opt['train']['warmup_iter'] = -1
    return opt


# ---------------------------------------------------------------------------------------------- recipes
def cddgan_recipe(arm, seed, s, args):
    opt = load_recipe('options/train/CDDGAN/demo_CDDGAN_haze.yml')
    common(opt, f'cst_cddgan_{arm}_s{seed}_{args.scale}', seed, s['iters'], args)
    # CUT's ResNet generator from scratch, as the recipe: an identity start (NAFNet, zeroed ending) makes q = k, where
    # the adversarial PatchNCE is ~0 and N's gradient vanishes (measured: 0.00 over a whole run)
    opt['network_g'] = dict(s['net'])
    ds = opt['datasets']['train']
    ds.update(gt_size=s['crop'], batch_size_per_gpu=s['batch'])
    tr = opt['train']
    tr['ema_decay'] = s['ema']
    # CycleGAN's identity term (G_c(clear) = clear, G_h(hazy) = hazy; weight 0.5 x lambda_cycle): it teaches a
    # from-scratch generator to reproduce the scene within the budget, in every arm alike
    tr['identity_opt'] = {'type': 'L1Loss', 'loss_weight': s['identity']}
    lr = 5e-4  # one lr for G, D, F and N (NEGCUT: one lr; issue 20 drops the demo's 10x N)
    for o in ('optim_g', 'optim_d', 'optim_f', 'optim_n'):
        tr[o] = dict(tr.get(o) or {}, type='Adam', lr=lr, betas=[0.5, 0.999])
    tr['scheduler'] = schedule('hold', s['iters'])
    if arm == 'none':
        for k in ('nce_opt', 'optim_f', 'optim_n'):
            tr.pop(k, None)
    elif arm == 'cut':
        # PatchNCE with CUT's in-image negatives and no negative generator: N gives one constant random negative
        # next to the 63 in-image ones (neg_mode both), never trained (optim_n lr 0, no diversity term)
        tr['nce_opt'].update(neg_mode='both', lambda_div=0.0)
        opt['network_n']['num_negatives'] = 1
        tr['optim_n']['lr'] = 0.0
    return opt


def nlcl_recipe(arm, seed, s, args):
    opt = load_recipe('options/train/NLCL/demo_NLCL_rain.yml')
    common(opt, f'cst_nlcl_{arm}_s{seed}_{args.scale}', seed, s['iters'], args)
    opt['network_g'] = dict(s['net'])
    root = f'{HEAVY_RAIN_ROOT}/rain'
    ds = opt['datasets']['train']
    ds.update(dataroot_lq=f'{root}/unpaired_lq.lmdb', dataroot_gt=f'{root}/unpaired_gt.lmdb', gt_size=s['crop'],
              batch_size_per_gpu=s['batch'])
    opt['nlcl']['d_warmup_iter'] = s['warmup']
    tr = opt['train']
    tr['ema_decay'] = s['ema']
    tr['optim_g']['lr'] = 5e-4
    tr['optim_heads']['lr'] = 5e-4
    tr['optim_d']['lr'] = 1e-3
    tr['scheduler'] = schedule('hold', s['iters'])
    if arm == 'no-nonlocal':
        for k in ('nlcl_opt', 'optim_heads'):
            tr.pop(k, None)
    elif arm == 'shared-head':
        for k, v in NLCL_SHARED_HEAD.items():
            set_key(opt, k, v)
    return opt


def teacher_recipe(deg, s, args, start):
    opt = load_recipe(f'options/train/UniRemoval/demo_UniRemoval_teacher_{deg}.yml')
    iters = s['teacher_iters']
    common(opt, f'cst_teacher_{deg}_{args.scale}', 0, iters, args)
    opt['network_g'] = dict(s['net'])
    opt['path']['pretrain_network_g'] = start
    opt['datasets']['train'].update(gt_size=s['crop'])
    opt['train']['scheduler'] = schedule('cos', iters)
    return opt


def uniremoval_recipe(arm, seed, s, args, start, teachers):
    opt = load_recipe('options/train/UniRemoval/demo_UniRemoval_stage1.yml')
    common(opt, f'cst_uniremoval_{arm}_s{seed}_{args.scale}', seed, s['iters'], args)
    opt['network_g'] = dict(s['net'])
    opt['path']['pretrain_network_g'] = start
    for t in opt['uniremoval']['teachers']:
        t['network'] = dict(s['net'])
        t['checkpoint'] = teachers[t['label']]
    opt['datasets']['train'].update(gt_size=s['crop'], batch_size_per_gpu=s['batch'])
    opt['train']['scheduler'] = schedule('cos', s['iters'])
    if arm == 'no-mgcl':
        opt['train'].pop('mgcl_opt', None)
    return opt


def constyle_recipe(arm, seed, s, args, start):
    ce = sibling('constyle_effect')
    ce.DIM = s['dim']
    lr = 2e-3
    model_type, net, extra, path, constyle = ce.arm_options(arm, s['iters'], lr)
    opt = ce.options(f'cst_constyle_{arm}_s{seed}_{args.scale}', model_type, net, extra, path, s['iters'], lr, seed,
                     constyle=constyle)
    opt['datasets'] = {'train': {
        'name': 'demo_all_train', 'type': 'MultiDegradationDataset',
        'sets': [{'name': d, 'dataroot_lq': f'{DEMO}/{d}/train_lq.lmdb', 'dataroot_gt': f'{DEMO}/{d}/train_gt.lmdb'}
                 for d in VAL_SETS['constyle']],
        'io_backend': {'type': 'lmdb'}, 'gt_size': s['crop'], 'use_hflip': True, 'use_rot': True,
        'batch_size_per_gpu': s['batch'], 'num_worker_per_gpu': 0, 'dataset_enlarge_ratio': 100}}
    common(opt, opt['name'], seed, s['iters'], args)
    opt['path']['pretrain_network_g'] = start
    return opt


# ---------------------------------------------------------------------------------------------- one run (worker)
def score_images(nets, folder, device, limit=None):
    """{key: {metric: [per image]}} for each net (and for 'input' / 'gt' when ``nets`` has those as None) on the
    held-out pairs in ``folder`` (its first ``limit`` images when given), plus 'names'."""
    import cv2
    import torch
    from basicsr.utils import img2tensor

    from irtoolkit.metrics.calculate import MetricSet
    metrics = MetricSet(METRICS, device='cpu')
    out = {k: {m: [] for m in METRICS} for k in nets}
    names = sorted(os.listdir(osp.join(folder, 'lq')))[:limit]
    for name in names:
        lq = img2tensor(cv2.imread(osp.join(folder, 'lq', name)).astype(np.float32) / 255., bgr2rgb=True)[None]
        gt = img2tensor(cv2.imread(osp.join(folder, 'gt', name)).astype(np.float32) / 255., bgr2rgb=True)[None]
        with torch.no_grad():
            for key, net in nets.items():
                img = {'input': lq, 'gt': gt}[key] if net is None else net(lq.to(device)).float().clamp(0, 1).cpu()
                for m, v in metrics.score(img, gt).items():
                    out[key][m].append(float(v[0]))
    out['names'] = names
    return out


def input_scores(args, sets):
    """Scores of the degraded inputs and of the clean targets (NIQE's reference), once per study:
    ``<out>/inputs.json``."""
    path = osp.join(args.out, 'inputs.json')
    cached = {}
    if osp.isfile(path):
        with open(path) as f:
            cached = json.load(f)
    if cached.get('val_images') != args.val_images:
        cached = {'val_images': args.val_images}
    for deg in sets:
        if deg not in cached:
            cached[deg] = score_images({'input': None, 'gt': None}, val_folder(deg), 'cpu', args.val_images)
    write_json(path, cached)
    return cached


def evaluate_run(opt, exp, sets, device, inputs_path):
    """Scores of the final raw weights (``params``) and of the EMA (``params_ema``) when the checkpoint has one."""
    import irtoolkit  # noqa: F401
    from irtoolkit.utils.checkpoint import load_checkpoint, read_state_dict
    from irtoolkit.utils.registry import build_network
    path = osp.join(exp, 'models', 'net_g_latest.pth')
    nets = {}
    for key in ('params', 'params_ema'):
        try:
            read_state_dict(path, key)
        except (KeyError, ValueError):
            continue
        net = build_network(deepcopy(opt['network_g']), 'network_g').to(device).eval()
        load_checkpoint(net, path, key, True)
        nets['raw' if key == 'params' else 'ema'] = net
    if not nets:
        raise RuntimeError(f'{path}: neither params nor params_ema')
    with open(inputs_path) as f:
        inputs = json.load(f)
    out = {}
    for deg in sets:
        out[deg] = score_images(nets, val_folder(deg), device, inputs.get('val_images'))
        if out[deg]['names'] != inputs[deg]['names']:
            raise RuntimeError(f'{deg}: the held-out images changed since {inputs_path} was written')
        out[deg].update(input=inputs[deg]['input'], gt=inputs[deg]['gt'])
    return out


def worker(spec_path):
    """Train one recipe through the runner's train entry, score it, write the record (run in its own process)."""
    import logging

    import torch
    with open(spec_path) as f:
        spec = json.load(f)
    torch.set_num_threads(spec['threads'])
    from irtoolkit.engine.runner import train
    opt = spec['opt']
    exp = osp.join(ROOT, 'experiments', opt['name'])
    finished = osp.join(exp, 'training_states', f'{opt["train"]["total_iter"]}.state')
    yml = spec_path[:-5] + '.yml'
    same = osp.isfile(yml) and yaml.safe_load(open(yml)) == opt
    if osp.isfile(finished) and same:  # trained to the end with these options, only its scoring failed: score it
        import glob
        start = min(osp.getmtime(f) for f in glob.glob(osp.join(exp, 'options_*_resolved.yml')))
        wall, cpu = osp.getmtime(finished) - start, None  # the training's wall time, from its own files
    else:
        if osp.isdir(exp):  # this study's own interrupted run of the same name
            import shutil
            shutil.rmtree(exp)
        with open(yml, 'w') as f:
            yaml.safe_dump(opt, f, sort_keys=False)
        t0, c0 = time.time(), time.process_time()
        train(['-opt', yml])
        wall, cpu = time.time() - t0, time.process_time() - c0
    logging.getLogger('irtoolkit').setLevel(logging.WARNING)
    rec = {k: spec[k] for k in ('method', 'arm', 'seed', 'settings')}
    rec.update(wall_s=wall, cpu_s=cpu, iters=opt['train']['total_iter'], options=opt, experiment=exp)
    if spec['sets']:
        t1 = time.time()
        rec['scores'] = evaluate_run(opt, exp, spec['sets'], spec['device'], spec['inputs'])
        rec['eval_s'] = time.time() - t1
        log = sorted(p for p in os.listdir(exp) if p.startswith('train_') and p.endswith('.log'))
        if log and spec['method'] in ('cddgan', 'nlcl', 'uniremoval') and 'terms' in spec:
            rec['terms'] = sibling('ablate_contrastive').term_stats(osp.join(exp, log[-1]), spec['terms'])
    write_json(spec['record'], rec)
    return 0


# ---------------------------------------------------------------------------------------------- scheduling
def settings_of(method, scale_settings, args):
    return dict(scale_settings[method], scale=args.scale, val_images=args.val_images, device=args.device,
                heavy_rain=HEAVY_RAIN if method == 'nlcl' else None,
                shared_head=NLCL_SHARED_HEAD if method == 'nlcl' else None)


def launch(spec, args):
    """Run ``worker(spec)`` in a new process; returns the record (raises with the run's output tail on failure)."""
    if osp.isfile(spec['record']) and not args.fresh:
        with open(spec['record']) as f:
            rec = json.load(f)
        if rec.get('settings') == spec['settings']:
            print(f'{spec["label"]}: done before, skipped', flush=True)
            return rec
    spec_path = osp.join(args.out, 'recipes', spec['label'] + '.json')
    write_json(spec_path, spec)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads), HF_HUB_OFFLINE='1',
               PYTHONPATH=os.pathsep.join([ROOT, os.environ.get('PYTHONPATH', '')]))
    proc = subprocess.run([sys.executable, osp.abspath(__file__), '_worker', spec_path], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    if proc.returncode:
        tail = (proc.stdout + proc.stderr)[-3000:]
        with open(spec_path[:-5] + '.failed.log', 'w') as f:
            f.write(proc.stdout + proc.stderr)
        raise RuntimeError(f'{spec["label"]} failed (exit {proc.returncode}):\n{tail}')
    with open(spec['record']) as f:
        rec = json.load(f)
    primary = ''
    if 'scores' in rec:
        primary = ', '.join(f'{w} {mean_over_sets(rec, w, PRIMARY):.2f} dB' for w in weights_of(rec))
        primary += f' (input {mean_over_sets(rec, "input", PRIMARY):.2f})'
    print(f'{spec["label"]}: {rec["wall_s"]:.0f} s train, {primary}', flush=True)
    return rec


def terms_for(method, opt):
    if method not in ('cddgan', 'nlcl', 'uniremoval') or (method == 'cddgan' and 'nce_opt' not in opt['train']) or \
            (method == 'nlcl' and 'nlcl_opt' not in opt['train']) or \
            (method == 'uniremoval' and 'mgcl_opt' not in opt['train']):
        return None
    return sibling('ablate_contrastive').contrastive_terms(method, opt)


def plan(args):
    """Every run as a spec, seeds outermost (an interrupted study holds whole seeds), plus the shared teachers."""
    scale = SCALES[args.scale]
    starts_dir = osp.join(args.out, 'starts')
    specs, teachers = [], {}
    if 'uniremoval' in args.method:
        s = scale['uniremoval']
        start = identity_start(s['net'], 0, osp.join(starts_dir, 'teacher_s0.pth'))
        for deg in VAL_SETS['uniremoval']:
            opt = teacher_recipe(deg, s, args, start)
            label = f'uniremoval_teacher_{deg}'
            specs.append(spec_of('uniremoval', f'teacher-{deg}', 0, opt, [deg], args, label))
            teachers[deg] = osp.join(ROOT, 'experiments', opt['name'], 'models', 'net_g_latest.pth')
    for seed in args.seeds:
        for method in args.method:
            s = scale[method]
            for arm in ARMS[method]:
                if args.arms and arm not in args.arms:
                    continue
                if method == 'cddgan':
                    opt = cddgan_recipe(arm, seed, s, args)
                elif method == 'nlcl':
                    opt = nlcl_recipe(arm, seed, s, args)
                elif method == 'uniremoval':
                    start = identity_start(s['net'], seed, osp.join(starts_dir, f'uniremoval_s{seed}.pth'))
                    opt = uniremoval_recipe(arm, seed, s, args, start, teachers)
                else:
                    ce = sibling('constyle_effect')
                    ce.DIM = s['dim']
                    net = ce.arm_options(arm, s['iters'], 2e-3)[1]
                    start = identity_start(net, seed, osp.join(starts_dir, f'constyle_{arm}_s{seed}.pth'))
                    opt = constyle_recipe(arm, seed, s, args, start)
                specs.append(spec_of(method, arm, seed, opt, VAL_SETS[method], args))
    return specs


def spec_of(method, arm, seed, opt, sets, args, label=None):
    label = label or f'{method}_{arm}_s{seed}'
    spec = {'label': label, 'method': method, 'arm': arm, 'seed': seed, 'opt': opt, 'sets': sets,
            'device': args.device, 'threads': args.threads, 'inputs': osp.join(args.out, 'inputs.json'),
            'record': osp.join(args.out, 'runs', label + '.json'),
            'settings': settings_of(method, SCALES[args.scale], args)}
    terms = terms_for(method, opt)
    if terms:
        spec['terms'] = terms
    return spec


def run_all(specs, args):
    records = []
    teacher_specs = [s for s in specs if s['arm'].startswith('teacher-')]
    others = [s for s in specs if not s['arm'].startswith('teacher-')]
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        teacher_futs = [pool.submit(launch, s, args) for s in teacher_specs]

        def after_teachers(spec):
            if spec['method'] == 'uniremoval':
                for f in teacher_futs:
                    f.result()
            return launch(spec, args)

        futs = [pool.submit(after_teachers, s) for s in others]
        errors = []
        for f in teacher_futs + futs:
            try:
                records.append(f.result())
            except RuntimeError as err:
                errors.append(str(err))
                print(str(err), file=sys.stderr, flush=True)
    return records, errors


# ---------------------------------------------------------------------------------------------- statistics
def weights_of(rec):
    """Which weights a run was scored with: 'raw', and 'ema' when the model kept one."""
    first = next(iter(rec['scores'].values()))
    return [w for w in ('ema', 'raw') if w in first]


def mean_over_sets(rec, key, metric):
    """Mean over the run's sets of the per-set mean over images (each set weighs the same)."""
    return float(np.mean([np.mean(s[key][metric]) for s in rec['scores'].values()]))


def t_interval(diffs, level=0.95):
    """(mean, half-width of the two-sided t interval, n); half-width nan for n < 2."""
    from scipy import stats
    d = np.asarray(diffs, float)
    n = len(d)
    if n < 2:
        return float(d.mean()) if n else float('nan'), float('nan'), n
    half = stats.t.ppf(0.5 + level / 2, n - 1) * d.std(ddof=1) / math.sqrt(n)
    return float(d.mean()), float(half), n


def primary_weights(method):
    """The pre-registered primary weights: the EMA where the recipe keeps one (CDD-GAN, NLCL), else raw."""
    return 'ema' if method in ('cddgan', 'nlcl') else 'raw'


def value(rec, arm_or_input, metric, weights):
    return mean_over_sets(rec, 'input' if arm_or_input == 'input' else weights, metric)


def paired(runs, method, a, b, metric, weights):
    """Per seed: metric(arm a) - metric(b) (b an arm of the same seed, or the input); returns (diffs, seeds)."""
    by = {(r['arm'], r['seed']): r for r in runs if r['method'] == method}
    seeds = sorted({s for (arm, s) in by if arm == a and (b == 'input' or (b, s) in by)})
    diffs = []
    for s in seeds:
        ra = by[(a, s)]
        rb = ra if b == 'input' else by[(b, s)]
        diffs.append(value(ra, a, metric, weights) - value(rb, b, metric, weights))
    return diffs, seeds


def fmt_ci(mean, half, digits):
    return f'{mean:+.{digits}f} [{mean - half:+.{digits}f}, {mean + half:+.{digits}f}]' if not math.isnan(half) \
        else f'{mean:+.{digits}f}'


def method_table(method, runs):
    """Markdown of one method: per-arm means, the input, every paired comparison with its interval, and the verdict
    of the pre-registered criteria."""
    runs = [r for r in runs if r['method'] == method and r['arm'] in ARMS[method] and 'scores' in r]
    if not runs:
        return f'**{method}**: no finished run.'
    primary_w = primary_weights(method)
    seeds = sorted({r['seed'] for r in runs})
    sets = list(runs[0]['scores'])
    digits = {'psnr': 2, 'ssim': 4, 'niqe': 2}
    lines = [f'**{method}** — held-out {", ".join(sets)} ({len(runs[0]["scores"][sets[0]]["names"])} images per set'
             f'{", mean over sets" if len(sets) > 1 else ""}); seeds {seeds}; {runs[0]["iters"]} iterations per run; '
             f'primary: PSNR of the {primary_w} weights', '',
             '| arm | weights | PSNR (dB) | SSIM | NIQE (lower better) | per seed PSNR | train wall s / run |',
             '|---|---|---:|---:|---:|---|---:|']
    inp = runs[0]
    gt_niqe = mean_over_sets(inp, 'gt', 'niqe')
    lines.append(f'| degraded input | | {value(inp, "input", "psnr", None):.2f} | '
                 f'{value(inp, "input", "ssim", None):.4f} | '
                 f'{value(inp, "input", "niqe", None):.2f} (clean targets: {gt_niqe:.2f}) | | |')
    for arm in ARMS[method]:
        rs = sorted((r for r in runs if r['arm'] == arm), key=lambda r: r['seed'])
        if not rs:
            continue
        for w in weights_of(rs[0]):
            cells = []
            for m in ('psnr', 'ssim', 'niqe'):
                v = [value(r, arm, m, w) for r in rs]
                sd = f' ± {np.std(v, ddof=1):.{digits[m]}f}' if len(v) > 1 else ''
                cells.append(f'{np.mean(v):.{digits[m]}f}{sd}')
            per_seed = ' / '.join(f'{value(r, arm, "psnr", w):.2f}' for r in rs)
            tag = ' (primary)' if w == primary_w else ''
            lines.append(f'| {arm} | {w}{tag} | ' + ' | '.join(cells) + f' | {per_seed} | '
                         f'{np.mean([r["wall_s"] for r in rs]):.0f} |')
    lines += ['', f'Paired by seed (first minus second, {primary_w} weights; mean [95 % t interval]; NIQE: negative '
              'is better):', '', '| comparison | ΔPSNR (dB) | ΔSSIM | ΔNIQE | seeds first better (PSNR) | criterion |',
              '|---|---:|---:|---:|---:|---|']
    verdicts = []
    for a, b in COMPARISONS[method]:
        cells, ok = [], None
        for m in ('psnr', 'ssim', 'niqe'):
            diffs, s = paired(runs, method, a, b, m, primary_w)
            if not diffs:
                break
            mean, half, n = t_interval(diffs)
            cells.append(fmt_ci(mean, half, digits[m]))
            if m == PRIMARY:
                better = sum(d > 0 for d in diffs)
                ok = (mean - half > 0) if n >= 2 else None
        if len(cells) < 3:
            continue
        crit = (a, b) in SUCCESS[method]
        verdict = '' if not crit else ('**met**' if ok else 'not met' if ok is not None else 'n < 2')
        if crit:
            verdicts.append((a, b, verdict))
        lines.append(f'| {a} − {b} | ' + ' | '.join(cells) + f' | {better}/{len(diffs)} | {verdict} |')
    if runs[0].get('scores') and weights_of(runs[0]) == ['ema', 'raw']:
        lines += ['', 'Raw weights, the same comparisons (secondary): ' + '; '.join(
            f'{a} − {b} {fmt_ci(*t_interval(paired(runs, method, a, b, PRIMARY, "raw")[0])[:2], 2)} dB'
            for a, b in COMPARISONS[method] if paired(runs, method, a, b, PRIMARY, 'raw')[0])]
    terms = [r for r in runs if r.get('terms')]
    if terms:
        lines += ['', '| arm | term | chance | start (it. 1-10) | end (last 10 %) |', '|---|---|---:|---:|---:|']
        for arm in ARMS[method]:
            ts = [r for r in terms if r['arm'] == arm]
            if not ts:
                continue
            chance = terms_for(method, ts[0]['options'])
            for name in ts[0]['terms']:
                st = [t['terms'][name]['start'] for t in ts if name in t['terms']]
                en = [t['terms'][name]['end'] for t in ts if name in t['terms']]
                lines.append(f'| {arm} | `{name}` | {chance[name][0]:.2f} | {np.mean(st):.2f} | {np.mean(en):.2f} |')
    if verdicts:
        success = all(v == '**met**' for _, _, v in verdicts)
        lines += ['', f'Pre-registered success ({"; ".join(f"{a} > {b}" for a, b, _ in verdicts)}, each with the '
                  f'95 % interval of ΔPSNR above 0): **{"yes" if success else "no"}**.']
    return '\n'.join(lines)


def report(records, args, wall, errors):
    teachers = [r for r in records if r['arm'].startswith('teacher-')]
    parts = [f'`{args.command}`', '',
             f'Scale `{args.scale}`, device {args.device}, {args.jobs} parallel run(s) of {args.threads} thread(s); '
             + ('tables rebuilt from the finished runs' if args.report else f'this call {wall / 60:.1f} min wall')
             + f'; training wall summed over the runs {sum(r["wall_s"] for r in records) / 60:.1f} min.']
    if teachers:
        parts.append('Uni-Removal teachers (seed 0, shared; held-out PSNR of the teacher / of its input): ' + ', '.join(
            f'{r["arm"][8:]} {r["iters"]} its {r["wall_s"]:.0f} s' + (
                f' {mean_over_sets(r, "raw", PRIMARY):.2f} / {mean_over_sets(r, "input", PRIMARY):.2f} dB'
                if 'scores' in r else '') for r in teachers) + '.')
    for method in args.method:
        parts += ['', method_table(method, records)]
    if errors:
        parts += ['', f'{len(errors)} run(s) failed: ' + '; '.join(e.splitlines()[0] for e in errors)]
    return '\n'.join(parts) + '\n'


def load_records(args):
    """Finished runs of this scale in ``<out>/runs`` (for ``--report``)."""
    runs_dir = osp.join(args.out, 'runs')
    out = []
    for name in sorted(os.listdir(runs_dir)) if osp.isdir(runs_dir) else []:
        with open(osp.join(runs_dir, name)) as f:
            rec = json.load(f)
        if rec['method'] in args.method and (rec['seed'] in args.seeds or rec['arm'].startswith('teacher-')):
            out.append(rec)
    return out


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ['_worker']:
        return worker(argv[1])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--method', nargs='+', default=list(METHODS), choices=METHODS)
    p.add_argument('--seeds', type=int, nargs='+', help='default: 1 2 3 (--quick: 0 1)')
    p.add_argument('--arms', nargs='+', choices=sorted({a for v in ARMS.values() for a in v}),
                   help='only these arms (default: every arm)')
    p.add_argument('--quick', action='store_true', help='every arm and seed at a few iterations: the pipeline only')
    p.add_argument('--device', default='cpu', choices=('cpu', 'cuda'))
    p.add_argument('--jobs', type=int, default=2, help='runs in parallel (processes)')
    p.add_argument('--threads', type=int, default=1, help='torch threads per run')
    p.add_argument('--out', help='default: results/contrastive_study_<scale>')
    p.add_argument('--fresh', action='store_true', help='rerun finished runs too')
    p.add_argument('--val-images', type=int, help='score only the first N held-out images per set (default: all 8; '
                   '--quick: 4)')
    p.add_argument('--report', action='store_true', help='only rebuild the tables from the finished runs')
    p.add_argument('--set', nargs='+', default=[], metavar='METHOD.KEY=YAML',
                   help='change a setting of the scale (SCALES), e.g. cddgan.iters=500 (recorded with each run)')
    args = p.parse_args(argv)
    args.scale = 'quick' if args.quick else ('gpu' if args.device == 'cuda' else 'cpu')
    if args.quick:
        args.seeds = args.seeds or [0, 1]
        args.val_images = args.val_images or 4
    args.seeds = args.seeds or [1, 2, 3]  # seed 0: the smoke tests and the calibration pilot (protocol)
    for item in args.set:
        key, _, val = item.partition('=')
        method, _, name = key.partition('.')
        if method not in METHODS or not name or not _:
            p.error(f'--set {item}: expected METHOD.KEY=VALUE with METHOD one of {METHODS}')
        SCALES[args.scale][method][name] = yaml.safe_load(val)
    args.out = osp.abspath(args.out or osp.join(ROOT, 'results', f'contrastive_study_{args.scale}'))
    args.command = 'python benchmarks/contrastive_study.py ' + ' '.join(argv)
    t0 = time.time()
    errors = []
    if args.report:
        records = load_records(args)
    else:
        from irtoolkit.data.demo import build_demo
        build_demo(osp.join(ROOT, DEMO), log=lambda *a: None)
        if 'nlcl' in args.method:
            build_heavy_rain()
        input_scores(args, sorted({d for m in args.method for d in VAL_SETS[m]}))
        records, errors = run_all(plan(args), args)
    text = report(records, args, time.time() - t0, errors)
    os.makedirs(args.out, exist_ok=True)
    with open(osp.join(args.out, 'table.md'), 'w') as f:
        f.write(text)
    write_json(osp.join(args.out, 'summary.json'), {'command': args.command, 'scale': args.scale,
                                                    'scales': SCALES[args.scale], 'wall_s': time.time() - t0,
                                                    'runs': records, 'errors': errors})
    print('\n' + text)
    return 1 if errors else 0


if __name__ == '__main__':
    sys.exit(main())
