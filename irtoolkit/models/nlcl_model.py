"""NLCLModel: unsupervised deraining by background + rain decomposition with non-local contrastive learning
(Ye et al., "Unsupervised Deraining: Where Contrastive Learning Meets Self-similarity", CVPR 2022; official code
``yunguo224/NLCL`` read for the notes, §3 — none of it is copied).

Networks: ``net_g`` G_B (background; validated/tested; NAFNet by default), ``net_r`` G_R (rain layer;
``NLCLResGenerator`` in NLCL) — or, with ``nlcl.rain_mode: residual``, R = O - G_B(O) and no ``net_r`` (the
notes' advice for backbones with a global skip), ``net_d`` PatchGAN (judges backgrounds against unpaired clean
images, and doubles as the layer-contrast encoder), heads ``net_h_loc`` (location contrast), ``net_h_bg`` and
``net_h_rain`` (layer contrast).

Generator loss (NLCL's code defaults)::

    L_G = l_gan(D(B)) + NonLocalContrastiveLoss(location on G_B features with identity, layer on D features)
          + ||B + R - O||^2 + 0.1 ||B - O||_1

Differences from the official release, on purpose (its bugs, notes §3.4): every projection head is trained,
by **one** optimiser ``optim_heads`` over all heads (the release never steps the location head and builds the
background head's optimiser on the rain head); any batch size and crop size (vectorised sampler, normalised
coordinates); no hard-coded resume path; every term is logged (the release never prints the NCE term).
Per iteration: D step, then G step (generators + heads; D frozen while used as encoder).

Options beyond the release (defaults = its behaviour): ``identity_init`` (zero G_B's last layer so B = O at step 0),
``rain_activation: relu`` (R >= 0: rain only adds light), ``d_warmup_iter`` (D-only steps first, so that the
critic knows rain from clean texture before it steers G_B). Without the first and third the demo fell below its
input (docs/contrastive.md, *Demo results*).

Data: ``lq`` = rainy images O, ``gt`` = *unpaired* clean images (NLCL's trainA/trainB).
"""
from collections import OrderedDict

import torch

from irtoolkit.contrastive.encoders import build_encoder
from irtoolkit.contrastive.heads import PatchProjectionHeads
from irtoolkit.contrastive.samplers import build_sampler
from irtoolkit.contrastive.training import discriminator_loss, embed_patches, set_requires_grad
from irtoolkit.models.base_model import BaseModel
from irtoolkit.utils.dist import bare
from irtoolkit.utils.registry import MODEL_REGISTRY, OptionError
from irtoolkit.utils.schema import Option

NLCL_SCHEMA = {
    'rain_mode': Option(str, 'network', choices=('network', 'residual'),
                        doc='rain layer from G_R (network) or R = O - G_B(O) (residual, no net_r)'),
    'location_encoder': Option(dict, {'type': 'self', 'layers': ['intro']}, doc='features of the location contrast'),
    'location_sampler': Option(dict, {'type': 'nonlocal'}, doc='patch sampler of the location contrast'),
    'location_guide': Option(str, 'feat', choices=('feat', 'image'),
                             doc='non-local locations found on G_B features or on the image'),
    'num_patches': Option(int, 256, doc='location-contrast patches per image (NLCL: 256)'),
    'idt': Option(bool, True, doc='location contrast also on clean images through G_B (identity)'),
    'layer_encoder': Option(dict, {'type': 'disc', 'layers': ['input']}, doc='features of the layer contrast'),
    'layer_sampler': Option(dict, {'type': 'nonlocal'}, doc='patch sampler of the layer contrast'),
    'num_bg': Option(int, 8, doc='self-similar background patches (NLCL: 8)'),
    'num_rain': Option(int, 128, doc='self-similar rain patches (NLCL: 128)'),
    'head': Option(dict, {}, doc='PatchProjectionHeads arguments (out_dim, hidden_dim, use_mlp, init_gain)'),
    'identity_init': Option(list, [], doc="modules of G_B zeroed so that B = O at step 0 (e.g. NAFNet's ending)"),
    'rain_activation': Option(str, 'none', choices=('none', 'relu'), doc='relu: R >= 0 (rain only adds light)'),
    'd_warmup_iter': Option(int, 0, doc='D-only steps first, so the critic knows rain before it steers G_B'),
}


@MODEL_REGISTRY.register()
class NLCLModel(BaseModel):
    """Options: ``nlcl`` (below, and ``docs/contrastive.md``), the networks ``network_g`` (G_B), ``network_r`` (G_R,
    with ``rain_mode: network``), ``network_d``, and ``train``: ``gan_opt``, ``nlcl_opt``
    (``NonLocalContrastiveLoss``), optional ``recon_opt`` (MSE of B + R vs O) and ``fidelity_opt`` (L1 of B vs O),
    ``optim_g`` (G_B and G_R), ``optim_d``, ``optim_heads`` (all heads)."""

    OPTION_SCHEMA = {'nlcl': NLCL_SCHEMA}

    # ------------------------------------------------------------------ networks, losses, optimisers
    def setup_networks(self):
        self.net_g = self.build_net('network_g')

    def setup_training_networks(self):
        nopt, where = self.opt['nlcl'], f'{self.opt.get("opt_path", "")}: '
        self._identity_init(nopt['identity_init'] or [], where)
        self.net_r = self.build_net('network_r', 'net_r') if nopt['rain_mode'] == 'network' else None
        self.net_d = self.build_net('network_d', 'net_d')
        try:
            self.loc_sampler = build_sampler(nopt['location_sampler'], 'nonlocal')
            self.layer_sampler = build_sampler(nopt['layer_sampler'], 'nonlocal')
            self.loc_encoder = build_encoder(nopt['location_encoder'], self.net_g, self.net_d,
                                             f'{where}nlcl.location_encoder').to(self.device)
            self.layer_encoder = build_encoder(nopt['layer_encoder'], self.net_g, self.net_d,
                                               f'{where}nlcl.layer_encoder').to(self.device)
        except ValueError as err:
            raise OptionError(f'{where}nlcl.{err}' if not str(err).startswith(where) else str(err)) from None
        head_opt = nopt['head'] or {}
        try:
            heads = [PatchProjectionHeads(enc.channels(), **head_opt)
                     for enc in (self.loc_encoder, self.layer_encoder, self.layer_encoder)]
        except TypeError as err:
            raise OptionError(f'{where}nlcl.head: {err}') from None
        # DDP-wrapped when distributed; checkpoints keep the bare key names
        self.h_loc, self.h_bg, self.h_rain = (self.add_net(name, h)
                                              for name, h in zip(('net_h_loc', 'net_h_bg', 'net_h_rain'), heads))

    def setup_losses(self):
        return self.build_losses(required=('gan', 'nlcl'), optional=('recon', 'fidelity'))

    def setup_optimizers(self):
        g_params = list(self.net_g.parameters()) + (list(self.net_r.parameters()) if self.net_r is not None else [])
        self.add_optimizer('g', g_params, 'optim_g')
        self.add_optimizer('d', self.net_d.parameters(), 'optim_d')
        # one optimiser over *all* heads: the release's second bug was a head optimiser built on the wrong net
        self.add_optimizer('heads', [p for h in (self.h_loc, self.h_bg, self.h_rain) for p in h.parameters()],
                           'optim_heads')

    def _identity_init(self, names, where):
        """Zero the weights and biases of ``names`` (modules of G_B, e.g. NAFNet's ``ending``): with a global skip
        G_B(O) = O at step 0, so B starts at the rainy input instead of the input plus a random conv's output (NAFNet's
        default init puts the demo's B ~4 dB below O, and the EMA carries that for hundreds of iterations). Skipped
        when ``path.pretrain_network_g`` loads weights."""
        if not names or (self.opt.get('path') or {}).get('pretrain_network_g'):
            return
        modules = dict(bare(self.net_g).named_modules())
        for name in names:
            if name not in modules or not hasattr(modules[name], 'weight'):
                raise OptionError(f'{where}nlcl.identity_init: {name!r} is not a module with weights of network_g')
            with torch.no_grad():
                for p in modules[name].parameters(recurse=False):
                    p.zero_()

    def _rain(self, o, b):
        if self.net_r is None:
            return o - b
        with self.autocast():
            r = self.net_r(o).float()
        # rain only adds light (O = B + R, R >= 0): a signed R lets B + R = O hold with B brighter than O
        return torch.relu(r) if self.opt['nlcl']['rain_activation'] == 'relu' else r

    def _loc_coords(self, o):
        guide = o if self.opt['nlcl']['location_guide'] == 'image' else self.loc_encoder(o)[0]
        return self.loc_sampler(guide, self.opt['nlcl']['num_patches'])

    def _loc_pair(self, src, out):
        """Location-contrast queries (from ``out``) and keys (from ``src``), non-local locations from ``src``."""
        with torch.no_grad():
            coords = self._loc_coords(src)
            k = embed_patches(self.loc_encoder(src), coords, self.h_loc)
        q = embed_patches(self.loc_encoder(out), coords, self.h_loc)
        return q, k

    # ------------------------------------------------------------------ one iteration
    def optimize_parameters(self, current_iter):
        log = OrderedDict()
        warmup = current_iter <= self.opt['nlcl']['d_warmup_iter']
        with self.autocast(), torch.set_grad_enabled(not warmup):
            self.output = self.net_g(self.lq).float()
        self.step_d(log, self.output)
        if not warmup:
            self.step_g(log, self.output)
            self.update_ema()
        self.reduce_loss_dict(log)

    def step_d(self, log, b):
        """D: clean images real, predicted backgrounds fake; then frozen (a fixed critic and contrastive encoder)."""
        set_requires_grad(self.net_d, True)
        self.zero_grad('d')
        l_d = discriminator_loss(self.losses['gan'], self.net_d, self.gt, b)
        self.backward_step(l_d, 'd')
        log['l_d'] = l_d.detach()
        set_requires_grad(self.net_d, False)

    def step_g(self, log, b):
        """G_B, G_R and the heads: GAN + non-local contrast (location, layer) + recon + fidelity."""
        o = self.lq
        r = self._rain(o, b)
        self.zero_grad('g', 'heads')
        # the frozen critic through its bare module: a DDP forward whose parameters get no gradient would leave DDP
        # waiting for that reduction
        l_gan = self.losses['gan'](bare(self.net_d)(b), True, is_disc=False)
        l_con, terms = self._contrast(o, b, r)
        total = l_gan + l_con
        log.update(l_g_gan=l_gan.detach(), l_location=terms['location'].detach(), l_layer=terms['layer'].detach())
        if 'recon' in self.losses:
            l_rec = self.losses['recon'](b + r, o)
            total = total + l_rec
            log['l_recon'] = l_rec.detach()
        if 'fidelity' in self.losses:
            l_fid = self.losses['fidelity'](b, o)
            total = total + l_fid
            log['l_fidelity'] = l_fid.detach()
        self.backward_step(total, ['g', 'heads'])
        log['l_g_total'] = total.detach()

    def _contrast(self, o, b, r):
        """NonLocalContrastiveLoss of location pairs (O vs B, and y vs G_B(y) with ``idt``) and layer patches."""
        nopt = self.opt['nlcl']
        q, k = self._loc_pair(o, b)
        q_idt = k_idt = None
        if nopt['idt']:
            with self.autocast():
                b_y = self.net_g(self.gt).float()
            q_idt, k_idt = self._loc_pair(self.gt, b_y)
        with torch.no_grad():
            c_bg = self.layer_sampler(b, nopt['num_bg'])  # self-similar background patches
            c_rain = self.layer_sampler(r, nopt['num_rain'])  # self-similar rain patches (independent centre)
        z_bg = embed_patches(self.layer_encoder(b), c_bg, self.h_bg)
        z_rain = embed_patches(self.layer_encoder(r), c_rain, self.h_rain)
        return self.losses['nlcl'](q, k, z_bg, z_rain, q_idt, k_idt)
