"""NLCLModel: unsupervised deraining by background + rain decomposition with non-local contrastive learning
(Ye et al., "Unsupervised Deraining: Where Contrastive Learning Meets Self-similarity", CVPR 2022; official code
``yunguo224/NLCL`` read for the notes, §3 — none of it is copied).

Networks: ``net_g`` G_B (background; validated/tested; NAFNet by default), ``net_r`` G_R (rain layer;
``NLCLResGenerator`` in NLCL) — or, with ``nlcl.rain_mode: residual``, R = O - G_B(O) and no ``net_r`` (the
notes' advice for backbones with a global skip), ``net_d`` PatchGAN (judges backgrounds against unpaired clean
images, and doubles as the layer-contrast encoder), heads ``net_h_loc`` (location contrast), ``net_h_bg`` and
``net_h_rain`` (layer contrast; with ``nlcl.layer_head: shared``, one head ``net_h_layer`` for both).

Generator loss (NLCL's code defaults)::

    L_G = l_gan(D(B)) + NonLocalContrastiveLoss(location on G_B features with identity, layer on D features)
          + lambda_MSE ||B + R - O||^2 + lambda_L1 ||B - O||_1

**Value range.** NLCL's images are in [-1, 1], irtoolkit's in [0, 1]. With O' = 2 O - 1, B' = 2 B - 1 and
R' = O' - B' = 2 R, the official terms are MSE(B' + R', O') = 4 MSE(B + R, O) and L1(B', O') = 2 L1(B, O); the GAN and
the contrastive terms (unit-norm embeddings, a critic that learns its own scale) do not change with the range. So
the official lambda_MSE = 1 and lambda_L1 = 0.1 are ``recon_opt.loss_weight: 4`` and ``fidelity_opt.loss_weight:
0.2`` here (``options/_base_/models/nlcl.yml``): the same balance against the GAN and NCE terms.

The layer contrast taps D where NLCL does: its ``adv_nce_layers 0,3,7`` are the outputs of the first three
convolutions of CUT's flat discriminator, ``body.0.0``, ``body.1.0``, ``body.2.0`` here (255 / 127 / 63 px on a
256 crop), after the RGB input that NLCL's discriminator prepends (``input``). As in the release, the in-place
LeakyReLU that follows the first convolution overwrites the tapped tensor, so ``body.0.0`` gives LeakyReLU(conv0),
an activation; the second and third convolutions are followed by the instance norm (a new tensor), so their taps
are the convolutions' outputs before norm and activation. D is initialised as NLCL's
(``init_type: xavier``, gain 0.02) and the lr is held, then decayed linearly (NLCL: 200 + 10 epochs).

Differences from the official release, on purpose (its bugs, notes §3.4): every projection head is trained,
by **one** optimiser ``optim_heads`` over all heads (the release never steps the location head and builds the
background head's optimiser on the rain head); any batch size and crop size (vectorised sampler, normalised
coordinates); no hard-coded resume path; every term is logged (the release never prints the NCE term).
``nlcl.head_training: release`` reproduces the release's heads instead: the location and background heads stay at
their initialisation, and the rain head takes two Adam steps per iteration from two optimisers that see the same
gradients — identical states, hence exactly one step at twice ``optim_heads``' lr (Adam without weight decay),
which is how it is built here.

**Layer head.** The bg and rain patches are each chosen *self-similar* (the most similar patches around one
centre), so two separately trained heads can separate the two sets by themselves: each maps its own input to one
direction, whatever G_B and G_R produce. With G, D and the images frozen, two fresh heads reach the term's
separated minimum within a few steps and its gradient on G falls by orders of magnitude (docs/contrastive.md). With
``layer_head: shared`` one head embeds both sets, so only features that differ between background and rain can
separate them, and the term keeps steering G_B and G_R. ``separate`` (two heads, NLCL's design) stays the
default; ``shared`` is the variant the evidence favours.
Per iteration: D step, then G step (generators + heads; D frozen while used as encoder). Without ``train.nlcl_opt``
the model has no heads and no contrastive terms: the ablation "NLCL without the non-local contrastive terms".

Options beyond the release (defaults = its behaviour): ``identity_init`` (zero G_B's last layer so B = O at step 0),
``rain_activation: relu`` (R >= 0: rain only adds light), ``d_warmup_iter`` (D-only steps first, so that the
critic knows rain from clean texture before it steers G_B). Without the first and third the demo fell below its
input (docs/contrastive.md, *Demo results*).

Data: ``lq`` = rainy images O, ``gt`` = *unpaired* clean images (NLCL's trainA/trainB).
"""
from collections import OrderedDict

import torch

from irtoolkit.config.schema import Option
from irtoolkit.contrastive.encoders import build_encoder
from irtoolkit.contrastive.heads import PatchProjectionHeads
from irtoolkit.contrastive.samplers import build_sampler
from irtoolkit.contrastive.training import discriminator_loss, embed_patches
from irtoolkit.models.base_model import BaseModel
from irtoolkit.utils.dist import bare
from irtoolkit.utils.registry import MODEL_REGISTRY

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
    'layer_head': Option(str, 'separate', choices=('separate', 'shared'),
                         doc='layer contrast: a background and a rain head (NLCL) or one head for both sets'),
    'head_training': Option(str, 'all', choices=('all', 'release'),
                            doc="all heads trained, or the release's: location and background heads never "
                            'stepped, the rain head stepped twice'),
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
        nopt, where = self.opt['nlcl'], self.run.where()
        self._identity_init(nopt['identity_init'] or [])
        self.net_r = self.build_net('network_r', 'net_r') if nopt['rain_mode'] == 'network' else None
        self.net_d = self.build_net('network_d', 'net_d')
        self.use_contrast = self.opt['train'].get('nlcl_opt') is not None
        if not self.use_contrast:
            return
        self.loc_sampler = self.checked(lambda: build_sampler(nopt['location_sampler'], 'nonlocal'), 'nlcl.')
        self.layer_sampler = self.checked(lambda: build_sampler(nopt['layer_sampler'], 'nonlocal'), 'nlcl.')
        self.loc_encoder, self.layer_encoder = (
            self.checked(lambda: build_encoder(nopt[key], self.net_g, self.net_d, f'{where}nlcl.{key}'), 'nlcl.')
            .to(self.device) for key in ('location_encoder', 'layer_encoder'))
        if nopt['layer_head'] == 'shared' and nopt['head_training'] == 'release':
            raise self.option_error('nlcl.layer_head', "shared: the release's heads (head_training: release) are "
                                    'a background and a rain head')
        shared = nopt['layer_head'] == 'shared'
        names = ('net_h_loc', 'net_h_layer') if shared else ('net_h_loc', 'net_h_bg', 'net_h_rain')
        encoders = (self.loc_encoder, ) + (self.layer_encoder, ) * (len(names) - 1)
        heads = [self.checked(lambda: PatchProjectionHeads(enc.channels(), **(nopt['head'] or {})), 'nlcl.head: ')
                 for enc in encoders]
        # the release never steps the location and background heads: frozen at their initialisation (and saved)
        frozen = ('net_h_loc', 'net_h_bg') if nopt['head_training'] == 'release' else ()
        # DDP-wrapped when distributed; checkpoints keep the bare key names
        added = [self.add_net(name, h, trainable=name not in frozen) for name, h in zip(names, heads)]
        if frozen and self.run.dist:  # not DDP-wrapped, so not broadcast: every rank takes rank 0's random heads
            for name in frozen:
                for tensor in self.networks[name].state_dict().values():
                    torch.distributed.broadcast(tensor, 0)
        self.h_loc, self.h_bg, self.h_rain = added if not shared else (added[0], added[1], added[1])
        self.trained_heads = tuple(n for n in names if n not in frozen)

    def setup_losses(self):
        return self.build_losses(required=('gan', ), optional=('nlcl', 'recon', 'fidelity'))

    def setup_optimizers(self):
        self.add_optimizer('g', 'optim_g', ('net_g', ) + (('net_r', ) if self.net_r is not None else ()))
        self.add_optimizer('d', 'optim_d', ('net_d', ))
        if self.use_contrast:  # one optimiser over *all* trained heads: the release built one on the wrong net
            heads = self.add_optimizer('heads', 'optim_heads', self.trained_heads)
            if self.opt['nlcl']['head_training'] == 'release':  # its two optimisers step the rain head alike
                for group in heads.param_groups:
                    group['lr'] *= 2

    def _identity_init(self, names):
        """Zero the weights and biases of ``names`` (modules of G_B, e.g. NAFNet's ``ending``): with a global skip
        G_B(O) = O at step 0, so B starts at the rainy input instead of the input plus a random conv's output (NAFNet's
        default init puts the demo's B ~4 dB below O, and the EMA carries that for hundreds of iterations). Skipped
        when ``path.pretrain_network_g`` loads weights."""
        if not names or self.opt['path'].get('pretrain_network_g'):
            return
        modules = dict(bare(self.net_g).named_modules())
        for name in names:
            if name not in modules or not hasattr(modules[name], 'weight'):
                raise self.option_error('nlcl.identity_init', f'{name!r} is not a module with weights of network_g')
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
    def train_iteration(self, batch, current_iter):
        o, clean = batch['lq'], batch['gt']
        warmup = current_iter <= self.opt['nlcl']['d_warmup_iter']
        with self.autocast(), torch.set_grad_enabled(not warmup):  # B = G_B(O); D alone while it warms up
            b = self.net_g(o).float()
        self.optimize('d', self.d_losses, clean, b)
        if not warmup:
            self.optimize(('g', 'heads') if self.use_contrast else 'g', self.g_losses, o, clean, b)

    def d_losses(self, clean, b):
        """D: clean images real, predicted backgrounds (detached) fake."""
        return OrderedDict(d=discriminator_loss(self.losses['gan'], self.net_d, clean, b))

    def g_losses(self, o, clean, b):
        """G_B, G_R and the heads, D fixed (critic and contrastive encoder): GAN + non-local contrast (location,
        layer) + reconstruction + fidelity."""
        r = self._rain(o, b)
        # the frozen critic through its bare module: a DDP forward whose parameters get no gradient would leave DDP
        # waiting for that reduction
        terms = OrderedDict(g_gan=self.losses['gan'](bare(self.net_d)(b), True, is_disc=False))
        if self.use_contrast:
            loss = self.losses['nlcl']
            _, raw = self._contrast(o, clean, b, r)
            scale = loss.loss_weight
            terms['location'] = scale * loss.lambda_location * raw['location']
            terms['layer'] = scale * loss.lambda_layer * raw['layer']
        if 'recon' in self.losses:
            terms['recon'] = self.losses['recon'](b + r, o)
        if 'fidelity' in self.losses:
            terms['fidelity'] = self.losses['fidelity'](b, o)
        return terms

    def _contrast(self, o, clean, b, r):
        """NonLocalContrastiveLoss of location pairs (O vs B, and y vs G_B(y) with ``idt``) and layer patches."""
        nopt = self.opt['nlcl']
        q, k = self._loc_pair(o, b)
        q_idt = k_idt = None
        if nopt['idt']:
            with self.autocast():
                b_y = self.net_g(clean).float()
            q_idt, k_idt = self._loc_pair(clean, b_y)
        with torch.no_grad():
            c_bg = self.layer_sampler(b, nopt['num_bg'])  # self-similar background patches
            c_rain = self.layer_sampler(r, nopt['num_rain'])  # self-similar rain patches (independent centre)
        z_bg = embed_patches(self.layer_encoder(b), c_bg, self.h_bg)
        z_rain = embed_patches(self.layer_encoder(r), c_rain, self.h_rain)
        return self.losses['nlcl'](q, k, z_bg, z_rain, q_idt, k_idt)
