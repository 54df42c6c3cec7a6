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
  adversarial PatchNCE of every pair (queries and keys fixed, at patch locations sampled for this step: NEGCUT
  samples anew in each NCE computation) plus the diversity of their fresh negatives;
  (3) G + F step — generators and heads *descend* GAN + cycle (+ identity L1) + adversarial PatchNCE with the
  generated negatives detached; (4) momentum update of the momentum heads; (5) push the negatives to the queue.
  N is conditioned on the momentum head applied to *every* location of the source's feature map, averaged
  (NEGCUT), and its InfoNCE is taken against its K fresh negatives (+ the optional queue).

Without ``train.nce_opt`` the model is the plain CycleGAN (no heads, no negative generators, no N step): the
ablation "without the adversarial contrastive loss and negative generators".

The "unpaired clear exemplars enhance the task-relevant factor" of the abstract is open (notes §2.2); both
readings are options (``cddgan.clear_exemplar``): ``identity`` — CUT/NEGCUT's identity NCE (G_c on clear
images, G_h on hazy ones), seen by the negative generators too; ``positive`` — an image-level InfoNCE whose
positive is the pooled embedding of an unpaired clear image and whose negatives are the hazy inputs.

Data: ``lq`` = hazy, ``gt`` = clear, *unpaired* (e.g. ``UnpairedImageDataset``); validation uses paired sets.
"""
from collections import OrderedDict
from copy import deepcopy
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from irtoolkit.config.schema import NUM, Option
from irtoolkit.contrastive.encoders import build_encoder
from irtoolkit.contrastive.heads import PatchProjectionHeads, momentum_update
from irtoolkit.contrastive.samplers import build_sampler
from irtoolkit.contrastive.training import discriminator_loss, embed_patches
from irtoolkit.losses.patch_nce_loss import patch_nce
from irtoolkit.models.base_model import BaseModel
from irtoolkit.utils.dist import bare
from irtoolkit.utils.registry import MODEL_REGISTRY


def _exemplar_readings(value):
    """a list of identity and/or positive"""
    return isinstance(value, list) and all(v in ('identity', 'positive') for v in value)


CDDGAN_SCHEMA = {
    'encoder': Option(dict, None,
                      doc='features of the PatchNCE ({type: self|disc|vgg|timm, layers}); unset: generator'),
    'num_patches': Option(int, 256, doc='patches sampled per image and layer (CUT: 256)'),
    'sampler': Option(dict, {'type': 'random'}, doc='patch sampler ({type: random|nonlocal|grid, ...})'),
    'head': Option(dict, {}, doc='PatchProjectionHeads arguments (out_dim, hidden_dim, use_mlp, init_gain, init_type)'),
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
    """Options: ``cddgan`` (below, and ``docs/contrastive.md``), the networks ``network_g`` (G_c),
    ``network_g_b`` (G_h; default: G_c's options), ``network_d`` (D_c), ``network_d_b`` (D_h; default: D_c's),
    ``network_n`` (negative generators; default ``NegativeGenerator``), and ``train``: ``gan_opt`` (e.g. basicsr
    ``GANLoss`` lsgan), ``nce_opt`` (``AdversarialContrastiveLoss``; absent: plain CycleGAN), optional
    ``cycle_opt`` and ``identity_opt`` (L1), ``optim_g``, ``optim_d``, ``optim_f``, ``optim_n``.
    """

    OPTION_SCHEMA = {'cddgan': CDDGAN_SCHEMA}
    RENAMED_OPTIONS = {'contrastive': 'cddgan'}

    # ------------------------------------------------------------------ networks, losses, optimisers
    def setup_networks(self):
        self.net_g = self.build_net('network_g')

    def setup_training_networks(self):
        opt, copt = self.opt, self.opt['cddgan']
        self.net_g_b = self.build_net('network_g_b', 'net_g_b', net_opt=opt.get('network_g_b') or opt['network_g'])
        self.net_d = self.build_net('network_d', 'net_d')
        self.net_d_b = self.build_net('network_d_b', 'net_d_b', net_opt=opt.get('network_d_b') or opt['network_d'])
        self.use_nce = opt['train'].get('nce_opt') is not None
        if 'positive' in copt['clear_exemplar'] and not self.use_nce:
            raise self.option_error('cddgan.clear_exemplar', 'positive needs train.nce_opt (it uses the projection '
                                    'heads)')
        self.directions = (['a', 'b'] if copt['both_directions'] else ['a']) if self.use_nce else []
        self.sampler = self.checked(lambda: build_sampler(copt['sampler'], 'random'), 'cddgan.')
        self.encoders, self.heads, self.heads_m, self.neg_gens = {}, {}, {}, {}
        for d in self.directions:
            self._build_direction(d)

    def _build_direction(self, d):
        """Encoder, projection heads (trained), their momentum copy and the negative generator of direction d."""
        opt, copt = self.opt, self.opt['cddgan']
        sfx = '' if d == 'a' else '_b'
        gen, disc = (self.net_g, self.net_d) if d == 'a' else (self.net_g_b, self.net_d_b)
        enc = self.checked(lambda: build_encoder(copt['encoder'], gen, disc, f'{self.run.where()}cddgan.encoder'),
                           'cddgan.encoder: ')
        self.encoders[d] = enc.to(self.device)
        heads = self.checked(lambda: PatchProjectionHeads(enc.channels(), **(copt['head'] or {})), 'cddgan.head: ')
        self.heads[d] = self.add_net(f'net_f{sfx}', heads)
        # copied after wrapping: DDP has broadcast rank 0's weights, so every rank's momentum copy starts equal
        self.heads_m[d] = self.add_net(f'net_fm{sfx}', deepcopy(bare(self.heads[d])), trainable=False)
        n_opt = opt.get(f'network_n{sfx}') or opt.get('network_n') or {'type': 'NegativeGenerator'}
        self.neg_gens[d] = self.build_net(f'network_n{sfx}', f'net_n{sfx}', net_opt=n_opt,
                                          args={'dims': bare(heads).out_dims()})

    def setup_losses(self):
        losses = self.build_losses(required=('gan', ), optional=('nce', 'cycle', 'identity'))
        if 'nce' in losses and not hasattr(losses['nce'], 'diversity'):
            raise self.option_error('train.nce_opt.type', 'CDDGANModel needs AdversarialContrastiveLoss')
        return losses

    def setup_optimizers(self):
        self.add_optimizer('g', 'optim_g', ('net_g', 'net_g_b'))
        self.add_optimizer('d', 'optim_d', ('net_d', 'net_d_b'))
        if self.use_nce:
            self.add_optimizer('f', 'optim_f', tuple(f'net_f{self._sfx(d)}' for d in self.directions))
            self.add_optimizer('n', 'optim_n', tuple(f'net_n{self._sfx(d)}' for d in self.directions))

    @staticmethod
    def _sfx(d):
        return '' if d == 'a' else '_b'

    # ------------------------------------------------------------------ one iteration
    def train_iteration(self, batch, current_iter):
        fwd = self.forward_generators(batch['lq'], batch['gt'])
        self.optimize('d', self.d_losses, fwd)
        if self.use_nce:
            self.optimize('n', self.n_losses, fwd)
        self.optimize(('g', 'f') if self.use_nce else 'g', self.g_losses, fwd)
        self.step_momentum(fwd)

    def forward_generators(self, x, y):
        """The iteration's images and pairs: hazy ``x``, clear ``y``, G_c(x), G_h(y), the identity images G_c(y),
        G_h(x) when a term needs them, and every contrastive pair (``pairs[direction]``)."""
        fwd = SimpleNamespace(x=x, y=y, idt_c=None, idt_h=None, fresh={})
        with self.autocast():
            fwd.fake_c, fwd.fake_h = self.net_g(x).float(), self.net_g_b(y).float()
            if 'identity' in self.losses or (self.use_nce and 'identity' in self.opt['cddgan']['clear_exemplar']):
                fwd.idt_c, fwd.idt_h = self.net_g(y).float(), self.net_g_b(x).float()
        fwd.pairs = {d: self._pairs(d, fwd) for d in self.directions}
        return fwd

    def _pairs(self, d, fwd):
        """The pairs of direction d: (G(x), x) and, with the identity reading, (G(y), y) — CUT's weighting; each call
        samples its own patch locations."""
        copt = self.opt['cddgan']
        src, out, tgt, idt = (fwd.x, fwd.fake_c, fwd.y, fwd.idt_c) if d == 'a' else \
            (fwd.y, fwd.fake_h, fwd.x, fwd.idt_h)
        if 'identity' not in copt['clear_exemplar']:
            return [self._pair(d, src, out, 1.0)]
        w_x, w_y = (0.5, 0.5) if copt['identity_weighting'] == 'half' else (1.0, copt['exemplar_weight'])
        return [self._pair(d, src, out, w_x), self._pair(d, tgt, idt, w_y)]

    def _pair(self, d, src, out, weight):
        """Keys and condition from ``src`` (no gradient: targets), queries from ``out`` (gradient to G and the heads
        unless called under ``no_grad``), at patch locations drawn for this pair."""
        coords = self.sampler(src, self.opt['cddgan']['num_patches'])
        with torch.no_grad():
            feats = self.encoders[d](src)
            k = embed_patches(feats, coords, self.heads[d])
            if self.opt['cddgan']['condition_on'] == 'map':  # NEGCUT: momentum head on every location
                cond = [e.mean(1, keepdim=True) for e in self.heads_m[d]([f.flatten(2).transpose(1, 2) for f in feats])]
            else:
                cond = embed_patches(feats, coords, self.heads_m[d])
        q = embed_patches(self.encoders[d](out), coords, self.heads[d])
        return _Pair(q, k, cond, weight)

    def _gan_pairs(self, fwd):
        return ((self.net_d, fwd.y, fwd.fake_c), (self.net_d_b, fwd.x, fwd.fake_h))

    # ------------------------------------------------------------------ the terms of each step
    def d_losses(self, fwd):
        """(1) Discriminators: real vs generated (generated images detached)."""
        return OrderedDict(d=sum(discriminator_loss(self.losses['gan'], net_d, real, fake)
                                 for net_d, real, fake in self._gan_pairs(fwd)))

    def n_losses(self, fwd):
        """(2) Negative generators: ascent on the adversarial PatchNCE of every pair (queries and keys fixed, at patch
        locations drawn for this step) and on the diversity of the negatives generated for it; the mean over
        directions."""
        loss, l_n, nce_seen, div = self.losses['nce'], 0, 0, 0
        # the N step's own patch locations (NEGCUT samples anew for every NCE): ascended on the very patches the G
        # step then descends on, N would fit that draw of queries rather than the image. G and the heads have not
        # changed since forward_generators, so its images still give their current embeddings; q is a constant here
        with torch.no_grad():
            pairs = {d: self._pairs(d, fwd) for d in self.directions}
        for d in self.directions:
            for p in pairs[d]:
                fresh = self.neg_gens[d](p.cond)
                negs = bare(self.neg_gens[d]).with_queue(fresh)
                l_n = l_n + p.weight * loss(p.q, p.k, negs, role='negative', fresh=fresh)
                with torch.no_grad():
                    nce_seen = nce_seen + p.weight * loss.nce(p.q, p.k, negs)
                    div = div + p.weight * loss.diversity(fresh)
        n_dir = len(self.directions)
        self.record(l_n_nce=nce_seen / n_dir, l_n_div=div / n_dir)
        return OrderedDict(n=l_n / n_dir)

    def g_losses(self, fwd):
        """(3) Generators and heads: GAN (critics frozen), cycle, identity L1, adversarial PatchNCE against fixed
        generated negatives, and the positive-exemplar term."""
        x, y = fwd.x, fwd.y
        # frozen critics through their bare modules: a DDP forward whose parameters get no gradient would leave
        # DDP waiting for that reduction
        terms = OrderedDict(g_gan=sum(self.losses['gan'](bare(net_d)(fake), True, is_disc=False)
                                      for net_d, _, fake in self._gan_pairs(fwd)))
        if 'cycle' in self.losses:
            with self.autocast():
                rec_x, rec_y = self.net_g_b(fwd.fake_c).float(), self.net_g(fwd.fake_h).float()
            terms['cycle'] = self.losses['cycle'](rec_x, x) + self.losses['cycle'](rec_y, y)
        if 'identity' in self.losses:
            terms['identity'] = self.losses['identity'](fwd.idt_c, y) + self.losses['identity'](fwd.idt_h, x)
        if self.use_nce:
            terms['nce'] = self._nce_term(fwd)
        if 'positive' in self.opt['cddgan']['clear_exemplar']:
            terms['exemplar_pos'] = self._exemplar_positive(fwd)
        return terms

    def _nce_term(self, fwd):
        """The adversarial PatchNCE of every pair against freshly generated negatives (no gradient into N); the
        negatives are kept in ``fwd.fresh`` for the queue."""
        l_nce, diag = 0, OrderedDict()
        for d in self.directions:
            fresh = []
            for i, p in enumerate(fwd.pairs[d]):
                with torch.no_grad():
                    fresh.append(self.neg_gens[d](p.cond))
                    negs = bare(self.neg_gens[d]).with_queue(fresh[-1])
                value = self.losses['nce'](p.q, p.k, negs, role='generator')
                l_nce = l_nce + p.weight * value
                key = 'l_nce_x' if i == 0 else 'l_nce_y'
                diag[key] = diag.get(key, 0) + value.detach() / len(self.directions)
            fwd.fresh[d] = [torch.cat(layer) for layer in zip(*fresh)]
        self.record(**diag)
        return l_nce / len(self.directions)

    def _exemplar_positive(self, fwd):
        """Pooled clear exemplar = positive, every hazy input of the batch = negative, anchor = pooled G_c(x)."""
        copt = self.opt['cddgan']
        coords = self.sampler(fwd.x, copt['num_patches'])
        anchor = self._pooled(fwd.fake_c, coords)
        with torch.no_grad():
            pos = self._pooled(fwd.y, self.sampler(fwd.y, copt['num_patches']))
            neg = self._pooled(fwd.x, coords)
        negs = neg.unsqueeze(0).expand(anchor.shape[0], -1, -1)
        l_pos = patch_nce(anchor[:, None], pos[:, None], negs, copt['exemplar_temperature'], 'external', 'image')
        return copt['exemplar_weight'] * l_pos.mean()

    def _pooled(self, img, coords):
        embs = embed_patches(self.encoders['a'](img), coords, self.heads['a'])
        return F.normalize(torch.cat([e.mean(1) for e in embs], -1), dim=-1)

    def step_momentum(self, fwd):
        """(4) Momentum heads, (5) queue of the negatives generated in the G step."""
        for d in self.directions:
            momentum_update(self.heads_m[d], bare(self.heads[d]), self.opt['cddgan']['momentum'])
            bare(self.neg_gens[d]).enqueue(fwd.fresh[d])
