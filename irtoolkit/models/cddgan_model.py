"""CDDGANModel: unpaired dehazing with adversarial contrastive disentanglement (Chen et al., "Unpaired Deep Image
Dehazing Using Contrastive Disentanglement Learning", ECCV 2022). No code is released; the training loop follows
the notes' reconstruction (§2, NEGCUT-style negatives inside a CycleGAN frame):

* networks: ``net_g`` G_c hazy -> clear (validated/tested), ``net_g_b`` G_h clear -> hazy, ``net_d`` D_c (clear),
  ``net_d_b`` D_h (hazy), per direction projection heads ``net_f``/``net_f_b`` with momentum copies
  ``net_fm``/``net_fm_b``, and negative generators ``net_n``/``net_n_b`` (:class:`NegativeGenerator`);
* one optimiser per group: ``optim_g`` (both generators), ``optim_d`` (both discriminators), ``optim_f`` (heads),
  ``optim_n`` (negative generators), each with its own options;
* per iteration: (1) D step (GAN loss on real vs generated); (2) N step — the negative generators *ascend* the
  adversarial PatchNCE plus a diversity term, with queries and keys detached, nothing else changes;
  (3) G + F step — generators and heads *descend* GAN + cycle (+ identity) + adversarial PatchNCE with the
  generated negatives detached; (4) momentum update of the momentum heads; (5) push the negatives to the queue.

The "unpaired clear exemplars enhance the task-relevant factor" of the abstract is open (notes §2.2); both
readings are options (``contrastive.clear_exemplar``): ``identity`` — the NCE identity term NCE(G_c(y), y) on
clear images (CUT); ``positive`` — an image-level InfoNCE whose positive is the pooled embedding of an unpaired
clear image and whose negatives are the hazy inputs (UCL-Dehaze-like).

Data: ``lq`` = hazy, ``gt`` = clear, *unpaired* (e.g. ``UnpairedImageDataset``); validation uses paired sets.
"""
from collections import OrderedDict
from copy import deepcopy

import torch
import torch.nn.functional as F

from irtoolkit.contrastive.encoders import build_encoder
from irtoolkit.contrastive.heads import PatchProjectionHeads, momentum_update
from irtoolkit.contrastive.samplers import build_sampler
from irtoolkit.contrastive.training import discriminator_loss, embed_patches, set_requires_grad
from irtoolkit.losses.patch_nce_loss import patch_nce
from irtoolkit.models.base_model import BaseModel
from irtoolkit.utils.dist import bare
from irtoolkit.utils.registry import MODEL_REGISTRY, OptionError
from irtoolkit.utils.schema import NUM, Option


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
                             doc='readings of the clear exemplars: identity (CUT NCE on G_c(y)), positive (pooled)'),
    'exemplar_weight': Option(NUM, 1.0, doc='weight of the exemplar terms'),
    'exemplar_temperature': Option(NUM, 0.07, doc='temperature of the pooled exemplar InfoNCE'),
}


@MODEL_REGISTRY.register()
class CDDGANModel(BaseModel):
    """Options: ``contrastive`` (below, and ``docs/contrastive.md``), the networks ``network_g`` (G_c),
    ``network_g_b`` (G_h; default: G_c's options), ``network_d`` (D_c), ``network_d_b`` (D_h; default: D_c's),
    ``network_n`` (negative generators; default ``NegativeGenerator``), and ``train``: ``gan_opt`` (e.g. basicsr
    ``GANLoss`` lsgan), ``nce_opt`` (``AdversarialContrastiveLoss``), optional ``cycle_opt`` and ``identity_opt``
    (L1), ``optim_g``, ``optim_d``, ``optim_f``, ``optim_n``.
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
        self.directions = ['a', 'b'] if copt['both_directions'] else ['a']
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
        losses = self.build_losses(required=('gan', 'nce'), optional=('cycle', 'identity'))
        if not hasattr(losses['nce'], 'diversity'):
            raise OptionError(f'{self.opt.get("opt_path", "")}: train.nce_opt.type: CDDGANModel needs '
                              'AdversarialContrastiveLoss')
        return losses

    def setup_optimizers(self):
        self.add_optimizer('g', list(self.net_g.parameters()) + list(self.net_g_b.parameters()), 'optim_g')
        self.add_optimizer('d', list(self.net_d.parameters()) + list(self.net_d_b.parameters()), 'optim_d')
        self.add_optimizer('f', [p for d in self.directions for p in self.heads[d].parameters()], 'optim_f')
        self.add_optimizer('n', [p for d in self.directions for p in self.neg_gens[d].parameters()], 'optim_n')

    # ------------------------------------------------------------------ pieces
    def _src_dst(self, d):
        """(source images, generated images, reverse-generated-from-other-side) for direction d."""
        return (self.lq, self.fake_c) if d == 'a' else (self.gt, self.fake_h)

    def _keys(self, d, src, coords):
        """Keys and momentum keys of ``src`` (no gradient: keys are targets). G does not change between the N
        step and the G step, so they are computed once per iteration."""
        with torch.no_grad():
            feats_src = self.encoders[d](src)
            return embed_patches(feats_src, coords, self.heads[d]), embed_patches(feats_src, coords, self.heads_m[d])

    def _queries(self, d, out, coords, with_grad):
        with torch.set_grad_enabled(with_grad):
            return embed_patches(self.encoders[d](out), coords, self.heads[d])

    def _negatives(self, d, k_m):
        neg = self.neg_gens[d](k_m)
        return bare(self.neg_gens[d]).with_queue(neg), neg

    def _coords(self, src):
        return self.sampler(src, self.opt['contrastive']['num_patches'])

    def _pooled(self, d, img, coords, with_grad=True):
        with torch.set_grad_enabled(with_grad):
            embs = embed_patches(self.encoders[d](img), coords, self.heads[d])
            return F.normalize(torch.cat([e.mean(1) for e in embs], -1), dim=-1)

    # ------------------------------------------------------------------ one iteration, phase by phase
    def forward_generators(self):
        """G_c(x) and G_h(y), the sampled locations and the (fixed) keys of this iteration."""
        with self.autocast():
            self.fake_c = self.net_g(self.lq).float()
            self.fake_h = self.net_g_b(self.gt).float()
        self.coords = {d: self._coords(self._src_dst(d)[0]) for d in self.directions}
        self.keys = {d: self._keys(d, self._src_dst(d)[0], self.coords[d]) for d in self.directions}

    def _gan_pairs(self):
        return ((self.net_d, self.gt, self.fake_c), (self.net_d_b, self.lq, self.fake_h))

    def step_d(self, log):
        """(1) Discriminators: real vs generated (generated images detached)."""
        set_requires_grad([self.net_d, self.net_d_b], True)
        self.zero_grad('d')
        l_d = 0
        for net_d, real, fake in self._gan_pairs():
            l_d = l_d + discriminator_loss(self.losses['gan'], net_d, real, fake)
        self.backward_step(l_d, 'd')
        log['l_d'] = l_d.detach()
        set_requires_grad([self.net_d, self.net_d_b], False)

    def step_n(self, log):
        """(2) Negative generators: ascent on the adversarial PatchNCE (+ diversity); nothing else changes."""
        set_requires_grad(list(self.neg_gens.values()), True)
        frozen = [self.net_g, self.net_g_b] + list(self.heads.values())
        set_requires_grad(frozen, False)
        self.zero_grad('n')
        l_n, nce_seen, div = 0, 0, 0
        for d in self.directions:
            q = self._queries(d, self._src_dst(d)[1].detach(), self.coords[d], with_grad=False)
            k, k_m = self.keys[d]
            negs, _ = self._negatives(d, k_m)
            l_n = l_n + self.losses['nce'](q, k, negs, role='negative')
            nce_seen = nce_seen + self.losses['nce'].nce(q, k, negs).detach()
            div = div + self.losses['nce'].diversity(negs).detach()
        self.backward_step(l_n, 'n')
        n_dir = len(self.directions)
        log.update(l_n=l_n.detach(), l_n_nce=nce_seen / n_dir, l_n_div=div / n_dir)
        set_requires_grad(list(self.neg_gens.values()), False)
        set_requires_grad(frozen, True)

    def step_g(self, log):
        """(3) Generators and heads: descent on GAN + cycle (+ identity) + adversarial PatchNCE (negatives fixed)
        (+ the clear-exemplar terms). Returns the fresh negatives of this step (for the queue)."""
        set_requires_grad(list(self.neg_gens.values()), False)
        self.zero_grad('g', 'f')
        total, idt_c = self._image_terms(log)
        l_nce, fresh_negs = self._nce_term()
        log['l_nce'] = l_nce.detach()
        total = total + l_nce + self._exemplar_terms(log, idt_c)
        self.backward_step(total, ['g', 'f'])
        log['l_g_total'] = total.detach()
        return fresh_negs

    def _image_terms(self, log):
        """GAN (critics frozen), cycle and identity terms; also returns G_c(y) when a term needs it."""
        x, y, copt = self.lq, self.gt, self.opt['contrastive']
        # frozen critics through their bare modules: a DDP forward whose parameters get no gradient would leave
        # DDP waiting for that reduction
        total = sum(self.losses['gan'](bare(net_d)(fake), True, is_disc=False) for net_d, _, fake in self._gan_pairs())
        log['l_g_gan'] = total.detach()
        if 'cycle' in self.losses:
            with self.autocast():
                rec_x, rec_y = self.net_g_b(self.fake_c), self.net_g(self.fake_h)
            l_cyc = self.losses['cycle'](rec_x.float(), x) + self.losses['cycle'](rec_y.float(), y)
            total = total + l_cyc
            log['l_cycle'] = l_cyc.detach()
        idt_c = None
        if 'identity' in self.losses or 'identity' in copt['clear_exemplar']:
            with self.autocast():
                idt_c = self.net_g(y).float()
        if 'identity' in self.losses:
            with self.autocast():
                idt_h = self.net_g_b(x).float()
            l_idt = self.losses['identity'](idt_c, y) + self.losses['identity'](idt_h, x)
            total = total + l_idt
            log['l_identity'] = l_idt.detach()
        return total, idt_c

    def _nce_term(self):
        """The adversarial PatchNCE of every direction against the (fixed) generated negatives."""
        l_nce, fresh_negs = 0, {}
        for d in self.directions:
            q = self._queries(d, self._src_dst(d)[1], self.coords[d], with_grad=True)
            k, k_m = self.keys[d]  # G and the heads have not changed since the keys were taken
            with torch.no_grad():
                negs, fresh_negs[d] = self._negatives(d, k_m)
            l_nce = l_nce + self.losses['nce'](q, k, negs, role='generator')
        return l_nce / len(self.directions), fresh_negs

    def _exemplar_terms(self, log, idt_c):
        """The clear exemplars' terms (``contrastive.clear_exemplar``), weighted by ``exemplar_weight``."""
        x, y, copt = self.lq, self.gt, self.opt['contrastive']
        total = 0
        if 'identity' in copt['clear_exemplar']:  # NCE(G_c(y), y): clear exemplars keep their content (CUT)
            c_y = self._coords(y)
            k, k_m = self._keys('a', y, c_y)
            q = self._queries('a', idt_c, c_y, with_grad=True)
            with torch.no_grad():
                negs, _ = self._negatives('a', k_m)
            l_ex = copt['exemplar_weight'] * self.losses['nce'](q, k, negs, role='generator')
            total = total + l_ex
            log['l_exemplar_idt'] = l_ex.detach()
        if 'positive' in copt['clear_exemplar']:  # pooled clear exemplar = positive, hazy inputs = negatives
            c_x = self.coords['a']
            anchor = self._pooled('a', self.fake_c, c_x)
            with torch.no_grad():
                pos = self._pooled('a', y, self._coords(y), with_grad=False)
                neg = self._pooled('a', x, c_x, with_grad=False)
            negs = neg.unsqueeze(0).expand(anchor.shape[0], -1, -1)  # every hazy input is every anchor's negative
            l_pos = patch_nce(anchor[:, None], pos[:, None], negs, copt['exemplar_temperature'], 'external', 'image')
            l_pos = copt['exemplar_weight'] * l_pos.mean()
            total = total + l_pos
            log['l_exemplar_pos'] = l_pos.detach()
        return total

    def step_momentum(self, fresh_negs):
        """(4) Momentum heads, (5) queue of generated negatives."""
        for d in self.directions:
            momentum_update(self.heads_m[d], bare(self.heads[d]), self.opt['contrastive']['momentum'])
            if d in fresh_negs:
                bare(self.neg_gens[d]).enqueue(fresh_negs[d])

    def optimize_parameters(self, current_iter):
        log = OrderedDict()
        self.forward_generators()
        self.step_d(log)
        self.step_n(log)
        fresh = self.step_g(log)
        self.step_momentum(fresh)
        self.reduce_loss_dict(log)
        self.update_ema()
