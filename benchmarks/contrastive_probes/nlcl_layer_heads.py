"""Repro of issue 20's NLCL finding (run from /work/main: .venv/bin/python
benchmarks/contrastive_probes/nlcl_layer_heads.py).

The demo NLCL model on the demo rain data trains WARM iterations (D warm-up off), then G, D and one batch of
images are frozen and only projection heads are trained on the layer contrast (Adam, the recipe's optim_heads lr),
from fresh heads: 'separate' = a background and a rain head (NLCL's design, irtoolkit's default before the fix),
'shared' = one head for both sides, 'release' = the background head at its init, the rain head trained with two
Adam steps per iteration (the official release's optimiser mis-wiring). Printed per head step: the layer term, its
separated minimum (each class collapsed to one point, the two opposite) and the norm of its gradient on G_B + G_R
parameters; plus the other G terms' gradient norms for scale."""
import os
import sys

import torch
from probe_setup import overrides, probe_model, start

from irtoolkit.config.recipe import load_recipe
from irtoolkit.contrastive.heads import PatchProjectionHeads
from irtoolkit.contrastive.training import embed_patches
from irtoolkit.losses.supcon_loss import supcon

WARM, STEPS = int(os.environ.get('REPRO_WARM', 10)), int(os.environ.get('REPRO_STEPS', 20))
OUT = 'results/contrastive_probes/nlcl_layer_heads'
start(OUT)
opt = load_recipe('options/train/NLCL/demo_NLCL_rain.yml')
opt['nlcl']['d_warmup_iter'] = 0
extra = overrides()  # e.g. layer_head=shared (the model's own heads in training)
model, batch = probe_model(opt, 'nlcl', f'{OUT}/nlcl.yml', batch_size=2)

for it in range(1, WARM + 1):
    model.feed_data(batch())
    model.optimize_parameters(it)
data = batch()
o, clean = data['lq'], data['gt']
g_params = [p for n in ('net_g', 'net_r') for p in model.networks[n].parameters()]
for p in [p for net in model.networks.values() for p in net.parameters()]:
    p.requires_grad_(False)
for p in g_params:
    p.requires_grad_(True)
loss, nopt = model.losses['nlcl'], model.opt['nlcl']
P, Q = nopt['num_bg'], nopt['num_rain']
n_layers = len(model.layer_encoder.channels())


def gnorm(term):
    grads = torch.autograd.grad(term, g_params, retain_graph=True, allow_unused=True)
    return torch.sqrt(sum((g ** 2).sum() for g in grads if g is not None)).item()


# the other terms for scale (model's own heads, as training left them)
b = model.net_g(o)
terms = model.g_losses(o, clean, b)
print(f'model {extra or "(defaults)"} after {WARM} training iterations, |grad on G_B+G_R| per G term:',
      ' '.join(f'{k} {gnorm(v):.2e}' for k, v in terms.items()))

# separated minimum
zb = torch.zeros(1, P, 4)
zb[..., 0] = 1
zr = torch.zeros(1, Q, 4)
zr[..., 0] = -1
z_min = torch.cat((zb, zr), 1)
lab = torch.cat((torch.ones(P), torch.zeros(Q)))
minimum = supcon(z_min, lab, loss.supcon.temperature, loss.supcon.base_temperature).mean().item()

torch.manual_seed(0)
c_bg = model.layer_sampler(b.detach(), P)
c_rain = model.layer_sampler(model._rain(o, b.detach()).detach(), Q)
head_opt = model.opt['train']['optim_heads']


def layer_term(h_bg, h_rain):
    b = model.net_g(o)
    r = model._rain(o, b)
    return loss.supcon(embed_patches(model.layer_encoder(b), c_bg, h_bg),
                       embed_patches(model.layer_encoder(r), c_rain, h_rain))


summary = {}
for arm in (('separate', 'shared', 'release') if os.environ.get('REPRO_ARMS', '1') == '1' else ()):
    torch.manual_seed(1)
    channels = model.layer_encoder.channels()
    h_bg = PatchProjectionHeads(channels, **(nopt['head'] or {}))
    h_rain = h_bg if arm == 'shared' else PatchProjectionHeads(channels, **(nopt['head'] or {}))
    trained = list(h_rain.parameters()) if arm == 'release' else list({id(p): p for h in (h_bg, h_rain)
                                                                      for p in h.parameters()}.values())
    opts = [torch.optim.Adam(trained, lr=head_opt['lr'], betas=tuple(head_opt['betas']))
            for _ in range(2 if arm == 'release' else 1)]
    rows = []
    for step in range(STEPS + 1):
        term = layer_term(h_bg, h_rain)
        rows.append((step, term.item(), gnorm(term)))
        if step == STEPS:
            break
        for op in opts:
            op.zero_grad()
        for p in g_params:
            p.requires_grad_(False)
        layer_term(h_bg, h_rain).backward()
        for p in g_params:
            p.requires_grad_(True)
        for op in opts:
            op.step()
    summary[arm] = rows
if not summary:
    sys.exit(0)
print(f'layer term (D layers: {n_layers}, P={P} bg, Q={Q} rain); separated minimum {minimum:.3f}')
print('  step ' + ''.join(f'| {a:>8}: value  |grad G| ' for a in summary))
for i in sorted({0, 1, 2, 3, 5, 10, 20, STEPS} & set(range(STEPS + 1))):
    print(f'  {i:4d} ' + ''.join(f'|        {summary[a][i][1]:6.3f} {summary[a][i][2]:8.2e} ' for a in summary))
