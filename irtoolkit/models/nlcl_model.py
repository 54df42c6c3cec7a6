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
from irtoolkit.contrastive.training import ddp_wrap, discriminator_loss, embed_patches, set_requires_grad
from irtoolkit.models.base_model import bare
from irtoolkit.models.restoration_model import RestorationModel
from irtoolkit.utils.registry import MODEL_REGISTRY, OptionError, build_loss

_NLCL_SCHEMA = {
    'rain_mode': str, 'location_encoder': dict, 'location_sampler': dict, 'location_guide': str,
    'num_patches': int, 'idt': bool, 'layer_encoder': dict, 'layer_sampler': dict, 'num_bg': int, 'num_rain': int,
    'head': dict, 'identity_init': list, 'rain_activation': str, 'd_warmup_iter': int,
}


@MODEL_REGISTRY.register()
class NLCLModel(RestorationModel):
    """Options: ``nlcl`` (see ``docs/contrastive.md``) and ``train``: ``gan_opt``, ``nlcl_opt``
    (``NonLocalContrastiveLoss``), ``recon_opt`` (MSE of B + R vs O), ``fidelity_opt`` (L1 of B vs O),
    ``optim_g`` (G_B and G_R), ``optim_d``, ``optim_heads`` (all heads)."""

    OPTION_SCHEMA = {'nlcl': _NLCL_SCHEMA}

    def init_training_settings(self):
        opt, train_opt = self.opt, self.opt['train']
        where = f'{opt.get("opt_path", "")}: '
        nopt = opt.get('nlcl') or {}
        self.net_g.train()
        self._identity_init(nopt.get('identity_init') or [], where)
        self.setup_ema('net_g')
        self.rain_mode = nopt.get('rain_mode', 'network')
        if self.rain_mode not in ('network', 'residual'):
            raise OptionError(f'{where}nlcl.rain_mode: expected network or residual, got {self.rain_mode!r}')
        # D-only warm-up: a fresh critic needs a few hundred steps to tell thin rain streaks from clean texture;
        # before that its gradient on B is about content, not rain, and only damages the identity-initialised G_B
        self.d_warmup = int(nopt.get('d_warmup_iter', 0))
        self.rain_act = nopt.get('rain_activation', 'none')
        if self.rain_act not in ('none', 'relu'):
            raise OptionError(f'{where}nlcl.rain_activation: expected none or relu, got {self.rain_act!r}')
        self.net_r = self.build_net('network_r', 'net_r') if self.rain_mode == 'network' else None
        self.net_d = self.build_net('network_d', 'net_d')
        self.num_patches = int(nopt.get('num_patches', 256))
        self.num_bg, self.num_rain = int(nopt.get('num_bg', 8)), int(nopt.get('num_rain', 128))
        self.idt = bool(nopt.get('idt', True))
        self.guide = nopt.get('location_guide', 'feat')
        if self.guide not in ('feat', 'image'):
            raise OptionError(f'{where}nlcl.location_guide: expected feat or image, got {self.guide!r}')
        try:
            self.loc_sampler = build_sampler(nopt.get('location_sampler', {'type': 'nonlocal'}), 'nonlocal')
            self.layer_sampler = build_sampler(nopt.get('layer_sampler', {'type': 'nonlocal'}), 'nonlocal')
            self.loc_encoder = build_encoder(nopt.get('location_encoder', {'type': 'self', 'layers': ['intro']}),
                                             self.net_g, self.net_d, f'{where}nlcl.location_encoder').to(self.device)
            self.layer_encoder = build_encoder(nopt.get('layer_encoder', {'type': 'disc', 'layers': ['input']}),
                                               self.net_g, self.net_d, f'{where}nlcl.layer_encoder').to(self.device)
        except ValueError as err:
            raise OptionError(f'{where}nlcl.{err}' if not str(err).startswith(where) else str(err)) from None
        head_opt = dict(nopt.get('head') or {})
        try:
            self.h_loc = PatchProjectionHeads(self.loc_encoder.channels(), **head_opt).to(self.device)
            layer_ch = self.layer_encoder.channels()
            self.h_bg = PatchProjectionHeads(layer_ch, **head_opt).to(self.device)
            self.h_rain = PatchProjectionHeads(layer_ch, **head_opt).to(self.device)
        except TypeError as err:
            raise OptionError(f'{where}nlcl.head: {err}') from None
        # DDP-wrapped when distributed (no-op otherwise); checkpoints keep the bare key names
        self.h_loc, self.h_bg, self.h_rain = (ddp_wrap(h, opt, self.device)
                                              for h in (self.h_loc, self.h_bg, self.h_rain))
        self.networks.update(net_h_loc=self.h_loc, net_h_bg=self.h_bg, net_h_rain=self.h_rain)
        losses = {}
        for key in ('gan_opt', 'nlcl_opt', 'recon_opt', 'fidelity_opt'):
            if key in train_opt:
                losses[key[:-4]] = build_loss(train_opt[key], f'train.{key}').to(self.device)
        for key in ('gan_opt', 'nlcl_opt'):
            if key not in train_opt:
                raise OptionError(f'{where}train.{key}: missing (needed by NLCLModel)')
        self.losses = losses
        g_params = list(self.net_g.parameters()) + (list(self.net_r.parameters()) if self.net_r is not None else [])
        self.add_optimizer('g', g_params, 'optim_g')
        self.add_optimizer('d', self.net_d.parameters(), 'optim_d')
        # one optimiser over *all* heads: the release's second bug was a head optimiser built on the wrong net
        self.add_optimizer('heads', [p for h in (self.h_loc, self.h_bg, self.h_rain) for p in h.parameters()],
                           'optim_heads')
        self.setup_schedulers()

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
        return torch.relu(r) if self.rain_act == 'relu' else r

    def _loc_coords(self, o):
        guide = o if self.guide == 'image' else self.loc_encoder(o)[0]
        return self.loc_sampler(guide, self.num_patches)

    def _loc_pair(self, src, out):
        """Location-contrast queries (from ``out``) and keys (from ``src``), non-local locations from ``src``."""
        with torch.no_grad():
            coords = self._loc_coords(src)
            k = embed_patches(self.loc_encoder(src), coords, self.h_loc)
        q = embed_patches(self.loc_encoder(out), coords, self.h_loc)
        return q, k

    def optimize_parameters(self, current_iter):
        log = OrderedDict()
        o, y = self.lq, self.gt
        warmup = current_iter <= self.d_warmup
        with self.autocast(), torch.set_grad_enabled(not warmup):
            b = self.net_g(o).float()
        self.output = b
        gan = self.losses['gan']

        # D step: clean images real, predicted backgrounds fake
        set_requires_grad(self.net_d, True)
        self.optimizers['d'].zero_grad(set_to_none=True)
        l_d = discriminator_loss(gan, self.net_d, y, b)
        self.backward_step(l_d, 'd')
        log['l_d'] = l_d.detach()
        set_requires_grad(self.net_d, False)  # D is now a fixed critic and a fixed contrastive encoder
        if warmup:
            self.reduce_loss_dict(log)
            return
        r = self._rain(o, b)

        # G step
        self.optimizers['g'].zero_grad(set_to_none=True)
        self.optimizers['heads'].zero_grad(set_to_none=True)
        # the frozen critic through its bare module: a DDP forward whose parameters get no gradient would leave DDP
        # waiting for that reduction
        l_gan = gan(bare(self.net_d)(b), True, is_disc=False)
        q, k = self._loc_pair(o, b)
        q_idt = k_idt = None
        if self.idt:
            with self.autocast():
                b_y = self.net_g(y).float()
            q_idt, k_idt = self._loc_pair(y, b_y)
        with torch.no_grad():
            c_bg = self.layer_sampler(b, self.num_bg)  # self-similar background patches
            c_rain = self.layer_sampler(r, self.num_rain)  # self-similar rain patches (independent centre)
        z_bg = embed_patches(self.layer_encoder(b), c_bg, self.h_bg)
        z_rain = embed_patches(self.layer_encoder(r), c_rain, self.h_rain)
        l_con, terms = self.losses['nlcl'](q, k, z_bg, z_rain, q_idt, k_idt)
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
        self.reduce_loss_dict(log)
        self.update_ema()
