"""CDDGANModel: unpaired dehazing with adversarial contrastive disentanglement (Chen et al., "Unpaired Deep Image
Dehazing Using Contrastive Disentanglement Learning", ECCV 2022). No code is released; the training loop follows
the notes' reconstruction (§2): NEGCUT (Wang et al., ICCV 2021) — CUT with instance-conditioned, adversarially
trained negatives — inside a CycleGAN frame, with NEGCUT's / CUT's choices unless an option says otherwise:

* networks: ``net_g`` G_c hazy -> clear (validated/tested), ``net_g_b`` G_h clear -> hazy, ``net_d`` D_c (clear),
  ``net_d_b`` D_h (hazy), per direction projection heads ``net_f``/``net_f_b`` with momentum copies
  ``net_fm``/``net_fm_b``, and negative generators ``net_n``/``net_n_b`` (:class:`NegativeGenerator`). The full
  recipe's generators are CUT's ResNet-9 (``ResnetGenerator``) trained from scratch, NEGCUT's generator;
* one optimiser per group: ``optim_g`` (both generators), ``optim_d`` (both discriminators), ``optim_f`` (heads),
  ``optim_n`` (negative generators), each with its own options;
* per generator, the contrastive pairs of CUT/NEGCUT: (G(x), x) on its source images and, with the ``identity``
  reading of the clear exemplars, (G(y), y) on its target domain's images, weighted ``1/2 (NCE_X + NCE_Y)``;
* per iteration: (1) D step (GAN loss on real vs generated); (2) N step — the negative generators *ascend* the
  adversarial PatchNCE of every pair (queries and keys fixed) plus the diversity of their fresh negatives;
  (3) G + F step — generators and heads *descend* GAN + cycle (+ identity L1) + adversarial PatchNCE with the
  generated negatives detached; (4) momentum update of the momentum heads; (5) push the negatives to the queue.
  N is conditioned on the momentum head applied to *every* location of the source's feature map, averaged
  (NEGCUT), and its InfoNCE is taken against its K fresh negatives (+ the optional queue).

Without ``train.nce_opt`` the model is the plain CycleGAN (no heads, no negative generators, no N step): the
ablation "without the adversarial contrastive loss and negative generators".

The "unpaired clear exemplars enhance the task-relevant factor" of the abstract is open (notes §2.2); both
readings are options (``contrastive.clear_exemplar``): ``identity`` — CUT/NEGCUT's identity NCE (G_c on clear
images, G_h on hazy ones), seen by the negative generators too; ``positive`` — an image-level InfoNCE whose
positive is the pooled embedding of an unpaired clear image and whose negatives are the hazy inputs.

Data: ``lq`` = hazy, ``gt`` = clear, *unpaired* (e.g. ``UnpairedImageDataset``); validation uses paired sets.
"""
from collections import OrderedDict
from copy import deepcopy

import torch
import torch.nn.functional as F

from irtoolkit.contrastive.encoders import build_encoder
from irtoolkit.contrastive.heads import PatchProjectionHeads, momentum_update
from irtoolkit.contrastive.samplers import build_sampler
from irtoolkit.contrastive.training import discriminator_loss, embed_patches
from irtoolkit.losses.patch_nce_loss import patch_nce
from irtoolkit.models.base_model import BaseModel
from irtoolkit.utils.dist import bare
from irtoolkit.utils.registry import MODEL_REGISTRY
from irtoolkit.utils.errors import OptionError
from irtoolkit.config.schema import NUM, Option


def _exemplar_readings(value):
    """a list of identity and/or positive"""
    return isinstance(value, list) and all(v in ('identity', 'positive') for v in value)


CONTRASTIVE_SCHEMA = {
    'encoder': Option(dict, doc='features of the PatchNCE ({type: self|disc|vgg|timm, layers}); unset: generator'),
    'num_patches': Option(int, 256, doc='patches sampled per image and layer (CUT: 256)'),
    'sampler': Option(dict, {'type': 'random'}, doc='patch sampler ({type: random|nonlocal|grid, ...})'),
    'head': Option(dict, {}, doc='PatchProjectionHeads arguments (out_dim, hidden_dim, use_mlp, init_gain)'),
    'momentum': Option(NUM, 0.9, doc='momentum of the momentum heads that condition the negative generators'),
    'both_directions': Option(bool, True, doc='PatchNCE in both directions (hazy->clear and clear->hazy)'),
    'clear_exemplar': Option(_exemplar_readings, ['identity'],
                             doc="readings of the clear exemplars: identity (CUT/NEGCUT's identity NCE G(y) vs y, "
                             'also seen by N), positive (pooled clear exemplar as positive, hazy inputs as negatives)'),
    'identity_weighting': Option(str, 'half', choices=('half', 'add'),
                                 doc='half: (NCE_X + NCE_Y) / 2 (CUT, NEGCUT); add: NCE_X + exemplar_weight * NCE_Y'),
    'condition_on': Option(str, 'map', choices=('map', 'patches'),
                           doc="the negative generators' condition: the momentum head averaged over the whole "
                           'feature map (NEGCUT) or over the sampled patches'),
    'exemplar_weight': Option(NUM, 1.0, doc='weight of the positive-exemplar term (and of NCE_Y with add)'),
    'exemplar_temperature': Option(NUM, 0.07, doc='temperature of the pooled exemplar InfoNCE'),
}


class _Pair:
    """One contrastive pair of an iteration: queries (from the generated image, with gradient), keys and the
    negative generator's condition (from the source image, fixed), and the pair's weight in the NCE."""

    def __init__(self, q, k, cond, weight):
        self.q, self.k, self.cond, self.weight = q, k, cond, weight


@MODEL_REGISTRY.register()
class CDDGANModel(BaseModel):
    """Options: ``contrastive`` (below, and ``docs/contrastive.md``), the networks ``network_g`` (G_c),
    ``network_g_b`` (G_h; default: G_c's options), ``network_d`` (D_c), ``network_d_b`` (D_h; default: D_c's),
    ``network_n`` (negative generators; default ``NegativeGenerator``), and ``train``: ``gan_opt`` (e.g. basicsr
    ``GANLoss`` lsgan), ``nce_opt`` (``AdversarialContrastiveLoss``; absent: plain CycleGAN), optional
    ``cycle_opt`` and ``identity_opt`` (L1), ``optim_g``, ``optim_d``, ``optim_f``, ``optim_n``.
    """

    OPTION_SCHEMA = {'contrastive': CONTRASTIVE_SCHEMA}

    # ------------------------------------------------------------------ networks, losses, optimisers
    def setup_networks(self):
        self.net_g = self.build_net('network_g')

    def setup_training_networks(self):
        opt, copt = self.opt, self.opt['contrastive']
        self.net_g_b = self.build_net('network_g_b', 'net_g_b', net_opt=opt.get('network_g_b') or opt['network_g'])
        self.net_d = self.build_net('network_d', 'net_d')
        self.net_d_b = self.build_net('network_d_b', 'net_d_b', net_opt=opt.get('network_d_b') or opt['network_d'])
        self.use_nce = (opt['train'] or {}).get('nce_opt') is not None
        if 'positive' in copt['clear_exemplar'] and not self.use_nce:
            raise OptionError(f'{opt.get("opt_path", "")}: contrastive.clear_exemplar: positive needs train.nce_opt '
                              '(it uses the projection heads)')
        self.directions = (['a', 'b'] if copt['both_directions'] else ['a']) if self.use_nce else []
        self.sampler = self._checked(lambda: build_sampler(copt['sampler'], 'random'), 'contrastive.')
        self.encoders, self.heads, self.heads_m, self.neg_gens = {}, {}, {}, {}
        for d in self.directions:
            self._build_direction(d)

    def _build_direction(self, d):
        """Encoder, projection heads (trained), their momentum copy and the negative generator of direction d."""
        opt, copt, where = self.opt, self.opt['contrastive'], f'{self.opt.get("opt_path", "")}: '
        sfx = '' if d == 'a' else '_b'
        gen, disc = (self.net_g, self.net_d) if d == 'a' else (self.net_g_b, self.net_d_b)
        enc = self._checked(lambda: build_encoder(copt['encoder'], gen, disc, f'{where}contrastive.encoder'))
        self.encoders[d] = enc.to(self.device)
        head_opt = copt['head'] or {}
        heads = self._checked(lambda: PatchProjectionHeads(enc.channels(), **head_opt), 'contrastive.head: ')
        self.heads[d] = self.add_net(f'net_f{sfx}', heads)
        # copied after wrapping: DDP has broadcast rank 0's weights, so every rank's momentum copy starts equal
        self.heads_m[d] = self.add_net(f'net_fm{sfx}', deepcopy(bare(self.heads[d])), trainable=False)
        n_opt = opt.get(f'network_n{sfx}') or opt.get('network_n') or {'type': 'NegativeGenerator'}
        self.neg_gens[d] = self.build_net(f'network_n{sfx}', f'net_n{sfx}', net_opt=n_opt,
                                          args={'dims': bare(heads).out_dims()})

    def _checked(self, build, key=''):
        """``build()``, its ValueError / TypeError as a one-line OptionError naming the file and ``key``."""
        try:
            return build()
        except (ValueError, TypeError) as err:
            msg = str(err)
            where = f'{self.opt.get("opt_path", "")}: '
            raise OptionError(msg if msg.startswith(where) else f'{where}{key}{msg}') from None

    def setup_losses(self):
        losses = self.build_losses(required=('gan', ), optional=('nce', 'cycle', 'identity'))
        if 'nce' in losses and not hasattr(losses['nce'], 'diversity'):
            raise OptionError(f'{self.opt.get("opt_path", "")}: train.nce_opt.type: CDDGANModel needs '
                              'AdversarialContrastiveLoss')
        return losses

    def setup_optimizers(self):
        self.add_optimizer('g', list(self.net_g.parameters()) + list(self.net_g_b.parameters()), 'optim_g')
        self.add_optimizer('d', list(self.net_d.parameters()) + list(self.net_d_b.parameters()), 'optim_d')
        if self.use_nce:
            self.add_optimizer('f', [p for d in self.directions for p in self.heads[d].parameters()], 'optim_f')
            self.add_optimizer('n', [p for d in self.directions for p in self.neg_gens[d].parameters()], 'optim_n')

    @property
    def g_nets(self):
        """What learns in the G step: both generators and the projection heads."""
        return ('net_g', 'net_g_b') + tuple(f'net_f{"" if d == "a" else "_b"}' for d in self.directions)

    @property
    def n_nets(self):
        return tuple(f'net_n{"" if d == "a" else "_b"}' for d in self.directions)

    # ------------------------------------------------------------------ one iteration
    def optimize_parameters(self, current_iter):
        log = OrderedDict()
        self.forward_generators()
        self.step('d', ('net_d', 'net_d_b'), self.d_losses, log)
        if self.use_nce:
            self.step('n', self.n_nets, self.n_losses, log)
        self.step(('g', 'f') if self.use_nce else 'g', self.g_nets, self.g_losses, log)
        self.step_momentum()
        log.update(self.diag)
        self.reduce_loss_dict(log)
        self.update_ema()

    def forward_generators(self):
        """G_c(x), G_h(y), the identity images G_c(y), G_h(x) when a term needs them, and every contrastive pair."""
        x, y = self.lq, self.gt
        with self.autocast():
            self.fake_c, self.fake_h = self.net_g(x).float(), self.net_g_b(y).float()
            self.idt_c = self.idt_h = None
            if 'identity' in self.losses or (self.use_nce and 'identity' in self.opt['contrastive']['clear_exemplar']):
                self.idt_c, self.idt_h = self.net_g(y).float(), self.net_g_b(x).float()
        self.diag = OrderedDict()
        self.pairs = {d: self._pairs(d) for d in self.directions}

    def _pairs(self, d):
        """The pairs of direction d: (G(x), x) and, with the identity reading, (G(y), y) — CUT's weighting."""
        copt = self.opt['contrastive']
        src, out, tgt, idt = (self.lq, self.fake_c, self.gt, self.idt_c) if d == 'a' else \
            (self.gt, self.fake_h, self.lq, self.idt_h)
        if 'identity' not in copt['clear_exemplar']:
            return [self._pair(d, src, out, 1.0)]
        w_x, w_y = (0.5, 0.5) if copt['identity_weighting'] == 'half' else (1.0, copt['exemplar_weight'])
        return [self._pair(d, src, out, w_x), self._pair(d, tgt, idt, w_y)]

    def _pair(self, d, src, out, weight):
        """Keys and condition from ``src`` (no gradient: targets; G and the heads do not change before the G step,
        so they serve both the N and the G step), queries from ``out`` (gradient to G and the heads)."""
        coords = self.sampler(src, self.opt['contrastive']['num_patches'])
        with torch.no_grad():
            feats = self.encoders[d](src)
            k = embed_patches(feats, coords, self.heads[d])
            if self.opt['contrastive']['condition_on'] == 'map':  # NEGCUT: momentum head on every location
                cond = [e.mean(1, keepdim=True) for e in self.heads_m[d]([f.flatten(2).transpose(1, 2) for f in feats])]
            else:
                cond = embed_patches(feats, coords, self.heads_m[d])
        q = embed_patches(self.encoders[d](out), coords, self.heads[d])
        return _Pair(q, k, cond, weight)

    def _gan_pairs(self):
        return ((self.net_d, self.gt, self.fake_c), (self.net_d_b, self.lq, self.fake_h))

    # ------------------------------------------------------------------ the terms of each step
    def d_losses(self):
        """(1) Discriminators: real vs generated (generated images detached)."""
        return OrderedDict(d=sum(discriminator_loss(self.losses['gan'], net_d, real, fake)
                                 for net_d, real, fake in self._gan_pairs()))

    def n_losses(self):
        """(2) Negative generators: ascent on the adversarial PatchNCE of every pair (queries and keys fixed) and on
        the diversity of the negatives generated for it; the mean over directions."""
        loss, l_n, nce_seen, div = self.losses['nce'], 0, 0, 0
        for d in self.directions:
            for p in self.pairs[d]:
                fresh = self.neg_gens[d](p.cond)
                negs = bare(self.neg_gens[d]).with_queue(fresh)
                l_n = l_n + p.weight * loss(p.q, p.k, negs, role='negative', fresh=fresh)
                with torch.no_grad():
                    nce_seen = nce_seen + p.weight * loss.nce(p.q, p.k, negs)
                    div = div + p.weight * loss.diversity(fresh)
        n_dir = len(self.directions)
        self.diag.update(l_n_nce=nce_seen / n_dir, l_n_div=div / n_dir)
        return OrderedDict(n=l_n / n_dir)

    def g_losses(self):
        """(3) Generators and heads: GAN (critics frozen), cycle, identity L1, adversarial PatchNCE against fixed
        generated negatives, and the positive-exemplar term."""
        x, y = self.lq, self.gt
        # frozen critics through their bare modules: a DDP forward whose parameters get no gradient would leave
        # DDP waiting for that reduction
        terms = OrderedDict(g_gan=sum(self.losses['gan'](bare(net_d)(fake), True, is_disc=False)
                                      for net_d, _, fake in self._gan_pairs()))
        if 'cycle' in self.losses:
            with self.autocast():
                rec_x, rec_y = self.net_g_b(self.fake_c).float(), self.net_g(self.fake_h).float()
            terms['cycle'] = self.losses['cycle'](rec_x, x) + self.losses['cycle'](rec_y, y)
        if 'identity' in self.losses:
            terms['identity'] = self.losses['identity'](self.idt_c, y) + self.losses['identity'](self.idt_h, x)
        if self.use_nce:
            terms['nce'] = self._nce_term()
        if 'positive' in self.opt['contrastive']['clear_exemplar']:
            terms['exemplar_pos'] = self._exemplar_positive()
        return terms

    def _nce_term(self):
        """The adversarial PatchNCE of every pair against freshly generated negatives (no gradient into N)."""
        l_nce, self.fresh = 0, {}
        for d in self.directions:
            fresh = []
            for i, p in enumerate(self.pairs[d]):
                with torch.no_grad():
                    fresh.append(self.neg_gens[d](p.cond))
                    negs = bare(self.neg_gens[d]).with_queue(fresh[-1])
                value = self.losses['nce'](p.q, p.k, negs, role='generator')
                l_nce = l_nce + p.weight * value
                key = 'l_nce_x' if i == 0 else 'l_nce_y'
                self.diag[key] = self.diag.get(key, 0) + value.detach() / len(self.directions)
            self.fresh[d] = [torch.cat(layer) for layer in zip(*fresh)]
        return l_nce / len(self.directions)

    def _exemplar_positive(self):
        """Pooled clear exemplar = positive, every hazy input of the batch = negative, anchor = pooled G_c(x)."""
        copt, coords = self.opt['contrastive'], self.sampler(self.lq, self.opt['contrastive']['num_patches'])
        anchor = self._pooled(self.fake_c, coords)
        with torch.no_grad():
            pos = self._pooled(self.gt, self.sampler(self.gt, copt['num_patches']))
            neg = self._pooled(self.lq, coords)
        negs = neg.unsqueeze(0).expand(anchor.shape[0], -1, -1)
        l_pos = patch_nce(anchor[:, None], pos[:, None], negs, copt['exemplar_temperature'], 'external', 'image')
        return copt['exemplar_weight'] * l_pos.mean()

    def _pooled(self, img, coords):
        embs = embed_patches(self.encoders['a'](img), coords, self.heads['a'])
        return F.normalize(torch.cat([e.mean(1) for e in embs], -1), dim=-1)

    def step_momentum(self):
        """(4) Momentum heads, (5) queue of the negatives generated in the G step."""
        for d in self.directions:
            momentum_update(self.heads_m[d], bare(self.heads[d]), self.opt['contrastive']['momentum'])
            bare(self.neg_gens[d]).enqueue(self.fresh[d])
