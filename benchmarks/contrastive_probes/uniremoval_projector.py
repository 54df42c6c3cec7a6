"""Repro of issue 20's Uni-Removal findings (run from /work/main with .venv/bin/python
benchmarks/contrastive_probes/uniremoval_projector.py).

1. feature-grain InfoNCE (raw) after a short stage-1 run vs chance ln(1 + (P-1) + (T-1)P);
2. patch cosines (mean off-diagonal cos between projected patches, per student layer) on the SAME student features
   through the current projector (1x1 convs with bias, torch default init) and a TKL&MR-style one (3x3, bias-free,
   kaiming);
3. the fraction of the stage-2 momentum key copy that is still its initialisation after the demo's 200 iterations.
Teachers: the demo's teacher architecture with distinct random weights (stand-ins; no demo teacher checkpoints
here). Data: the demo LMDBs (datasets/demo)."""
import math
import os

import torch
import torch.nn.functional as F
from probe_setup import overrides, probe_model, start
from torch import nn

from irtoolkit.config.recipe import load_recipe
from irtoolkit.contrastive.heads import FeatureProjector
from irtoolkit.contrastive.samplers import RandomPatchSampler, gather
from irtoolkit.utils.registry import build_network

ITERS = int(os.environ.get('REPRO_ITERS', 60))
OUT = 'results/contrastive_probes/uniremoval_projector'
start(OUT)
opt = load_recipe('options/train/UniRemoval/demo_UniRemoval_stage1.yml')
for i, t in enumerate(opt['uniremoval']['teachers']):
    path = f'{OUT}/teacher_{t["label"]}.pth'
    if not os.path.exists(path):
        torch.manual_seed(100 + i)
        net = build_network(t['network'])
        for p in net.parameters():  # NAFNet's zero scales would make every teacher the identity
            p.data.add_(0.05 * torch.randn_like(p))
        torch.save({'params': net.state_dict()}, path)
    t['checkpoint'] = path
opt['train']['total_iter'] = ITERS
opt['train']['scheduler']['periods'] = [ITERS]
extra = overrides()  # e.g. projector=pointwise
model, batch = probe_model(opt, 'uniremoval', f'{OUT}/stage1.yml')


P, T = opt['uniremoval']['num_patches'], len(opt['uniremoval']['teachers'])
chance = math.log(1 + (P - 1) + (T - 1) * P)

# 2. patch cosines on the same student features
b0 = batch()
with torch.no_grad():
    feats = model.s_tap(b0['lq'])
coords = RandomPatchSampler(P)(b0['lq'])


def tkl_projector(c_in, c_out):  # 3x3, bias-free, kaiming (TKL&MR's projector shape and init)
    net = nn.Sequential(nn.Conv2d(c_in, c_out, 3, 1, 1, bias=False), nn.ReLU(inplace=True),
                        nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False))
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode='fan_in', nonlinearity='relu')
    return net


def patch_cos(proj, f):
    with torch.no_grad():
        z = F.normalize(gather(proj(f), coords), dim=-1)  # (B, P, D)
        sim = z @ z.transpose(1, 2)
        off = ~torch.eye(P, dtype=torch.bool)
        return sim[:, off].mean().item()


C = opt['uniremoval']['proj_channels']
torch.manual_seed(1)
cos_1x1 = [patch_cos(FeatureProjector(f.shape[1], C), f) for f in feats]
torch.manual_seed(1)
cos_3x3 = [patch_cos(tkl_projector(f.shape[1], C), f) for f in feats]
torch.manual_seed(1)
cos_3x3_default = [patch_cos(nn.Sequential(nn.Conv2d(f.shape[1], C, 3, 1, 1, bias=False), nn.ReLU(),
                                           nn.Conv2d(C, C, 3, 1, 1, bias=False)), f) for f in feats]
cos_model = [patch_cos(model.proj['student'][i], f) for i, f in enumerate(feats)]
print('patch cosines per student layer (same features):')
print('  1x1 + bias, default init  :', ' '.join(f'{c:.3f}' for c in cos_1x1))
print('  3x3, no bias, kaiming     :', ' '.join(f'{c:.3f}' for c in cos_3x3))
print('  3x3, no bias, torch init  :', ' '.join(f'{c:.3f}' for c in cos_3x3_default))
print('  this model\'s projector    :', ' '.join(f'{c:.3f}' for c in cos_model), extra or '(defaults)')

# 1. feature-grain InfoNCE over a short run
raw = []
for it in range(1, ITERS + 1):
    model.feed_data(batch())
    model.optimize_parameters(it)
    raw.append(model.get_current_log()['l_mgcl_feature_raw'])
first, last = sum(raw[:5]) / 5, sum(raw[-10:]) / 10
print(f'feature-grain InfoNCE (raw), P={P}, T={T}: chance ln({1 + (P - 1) + (T - 1) * P}) = {chance:.3f}; '
      f'iters 1-5 mean {first:.3f}, iters {ITERS - 9}-{ITERS} mean {last:.3f} ({extra or "defaults"})')

# 3. stage-2 key momentum
s2 = load_recipe('options/train/UniRemoval/demo_UniRemoval_stage2.yml')
m, n = s2['uniremoval'].get('key_momentum', 0.999), s2['train']['total_iter']  # the demo's (base: 0.999)
print(f'stage-2 demo: key_momentum {m} over {n} iterations: {m ** n:.3f} of the momentum copy is still its init'
      f' (0.999^200 = {0.999 ** 200:.3f})')
