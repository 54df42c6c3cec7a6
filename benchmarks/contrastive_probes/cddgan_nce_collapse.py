"""Issue 20 repro (CDD-GAN): one learning rate for G, D, F and N; log the adversarial NCE per iteration and the
patch-embedding cosines cos(q_i, k_i) (same location) vs cos(q_i, k_j), j != i (other locations).

Run from the repository root:  OMP_NUM_THREADS=2 .venv/bin/python
benchmarks/contrastive_probes/cddgan_nce_collapse.py [--lr 2e-4] [--iters 40]
The demo recipe (demo data: python tools/make_demo_data.py), its networks (CUT ResNet ngf 16, 6 blocks), K = 64
negatives (chance ln 65 = 4.17), 64 patches, with every optimiser at --lr (no 10x N) and --crop px crops."""
import argparse
import math
import random
import tempfile
import time

import torch
import yaml

from irtoolkit.config.options import parse_options  # noqa: E402
from irtoolkit.config.recipe import load_recipe  # noqa: E402
from irtoolkit.engine.data import build_dataset  # noqa: E402
from irtoolkit.utils.registry import build_model  # noqa: E402


def cosines(model, x, y):
    """mean over layers/images of cos(q_i, k_i) and of cos(q_i, k_j) (j != i), direction a, main pair."""
    with torch.no_grad():
        fwd = model.forward_generators(x, y)
        p = fwd.pairs['a'][0]
        pos, neg = [], []
        for q, k in zip(p.q, p.k):
            sim = torch.bmm(q, k.transpose(1, 2))  # (B, P, P), unit vectors
            eye = torch.eye(sim.shape[1], dtype=torch.bool)[None].expand_as(sim)
            pos.append(sim[eye].mean())
            neg.append(sim[~eye].mean())
        # the NCE against freshly generated negatives, as the G step sees it
        nce = model.losses['nce'].nce(p.q, p.k, model.neg_gens['a'].with_queue(model.neg_gens['a'](p.cond)))
    return float(sum(pos) / len(pos)), float(sum(neg) / len(neg)), float(nce)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--lr', type=float, default=2e-4)
    ap.add_argument('--lr-n', type=float, default=None, help='default: --lr')
    ap.add_argument('--iters', type=int, default=40)
    ap.add_argument('--crop', type=int, default=64)
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--old-heads', action='store_true', help='heads re-initialised N(0, 0.02) (pre-fix init)')
    ap.add_argument('--old-n', action='store_true', help="N re-initialised with torch's default Linear init (pre-fix)")
    ap.add_argument('--full', action='store_true', help="the full recipe's networks and sizes (ResNet-9 ngf 64, "
                    '256 patches, K 256, 256-d heads, batch 1) on the demo data at --crop')
    ap.add_argument('--shared-coords', action='store_true', help="N step reuses the G step's pairs (pre-fix)")
    args = ap.parse_args()
    opt = load_recipe('options/train/CDDGAN/demo_CDDGAN_haze.yml')
    if args.full:
        full = load_recipe('options/train/CDDGAN/train_CDDGAN_RESIDE.yml')
        full['datasets']['train'] = dict(opt['datasets']['train'], batch_size_per_gpu=1)
        full['datasets']['val'] = opt['datasets']['val']
        opt = full
    opt['datasets']['train']['gt_size'] = args.crop
    for o in ('optim_g', 'optim_d', 'optim_f'):
        opt['train'][o]['lr'] = args.lr
    opt['train']['optim_n']['lr'] = args.lr_n or args.lr
    with tempfile.NamedTemporaryFile('w', suffix='.yml', delete=False) as f:
        yaml.safe_dump(opt, f, sort_keys=False)
    random.seed(args.seed)  # the dataset's crops and flips
    __import__('numpy').random.seed(args.seed)
    torch.manual_seed(args.seed)
    opt = parse_options(f.name, True)
    model = build_model(opt)
    for d in model.directions:
        if args.old_heads:
            for m in model.heads[d].modules():
                if isinstance(m, torch.nn.Linear):
                    torch.nn.init.normal_(m.weight, 0.0, 0.02)
                    torch.nn.init.zeros_(m.bias)
            model.heads_m[d].load_state_dict(model.heads[d].state_dict())
        if args.old_n:
            for m in model.neg_gens[d].modules():
                if isinstance(m, torch.nn.Linear):
                    m.reset_parameters()
    if args.shared_coords and hasattr(model, 'n_losses'):
        orig_pairs = model._pairs
        model._pairs = lambda d, fwd: fwd.pairs[d] if hasattr(fwd, 'pairs') else orig_pairs(d, fwd)
    data = build_dataset(opt['datasets']['train'], 'datasets.train')
    g = torch.Generator().manual_seed(args.seed)
    k = opt['network_n']['num_negatives'] + opt['network_n'].get('queue_size', 0)
    chance = math.log(1 + k)
    print(' '.join(a for a in ('old_heads', 'old_n', 'shared_coords') if getattr(args, a)) or 'as built')
    print('full recipe networks' if args.full else 'demo recipe')
    print(f'lr G/D/F {args.lr:g}, N {args.lr_n or args.lr:g}; crop {args.crop}; K {k}; chance ln(1+K) = {chance:.2f}')
    print(' it   l_nce  l_nce_x  l_n_nce  nce_fresh  cos(qi,ki) cos(qi,kj)')
    t0, rows = time.time(), {}
    for it in range(1, args.iters + 1):
        idx = torch.randint(len(data), (opt['datasets']['train']['batch_size_per_gpu'], ), generator=g).tolist()
        samples = [data[i] for i in idx]
        batch = {key: torch.stack([s[key] for s in samples]) for key in ('lq', 'gt')}
        model.feed_data(batch)
        model.optimize_parameters(it)
        log = model.get_current_log()
        cpos, cneg, nce = cosines(model, model.batch['lq'], model.batch['gt'])
        rows[it] = (float(log['l_nce']), float(log['l_nce_x']), float(log['l_n_nce']), nce, cpos, cneg)
        print(f'{it:3d} ' + ' '.join(f'{v:8.4f}' for v in rows[it]), flush=True)
    print(f'# {time.time() - t0:.0f} s')
    marks = [i for i in (1, 10, 20, 30, 40, 60, 80) if i in rows]
    print('SUMMARY %s lr=%g lr_n=%g  l_nce_x at %s: %s  (chance %.2f)' % (
        ','.join(a for a in ('old_heads', 'old_n', 'shared_coords') if getattr(args, a)) or 'as-built',
        args.lr, args.lr_n or args.lr, marks, ' '.join(f'{rows[i][1]:.3f}' for i in marks), chance))
    print('SUMMARY cos(qi,ki)/cos(qi,kj) at %s: %s' % (
        marks, ' '.join(f'{rows[i][4]:.2f}/{rows[i][5]:.2f}' for i in marks)))


if __name__ == '__main__':
    main()
