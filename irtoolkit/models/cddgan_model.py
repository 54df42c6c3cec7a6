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
from irtoolkit.contrastive.training import ddp_wrap, discriminator_loss, embed_patches, set_requires_grad
from irtoolkit.losses.patch_nce_loss import patch_nce
from irtoolkit.models.base_model import bare
from irtoolkit.models.restoration_model import RestorationModel
from irtoolkit.utils.registry import MODEL_REGISTRY, OptionError, build_loss

_CONTRASTIVE_SCHEMA = {
    'encoder': dict, 'num_patches': int, 'sampler': dict, 'head': dict, 'momentum': float,
    'both_directions': bool, 'clear_exemplar': list, 'exemplar_weight': float, 'exemplar_temperature': float,
}


@MODEL_REGISTRY.register()
class CDDGANModel(RestorationModel):
    """Options (besides the networks): ``contrastive`` (see ``docs/contrastive.md``) and ``train``:
    ``gan_opt`` (e.g. basicsr ``GANLoss`` lsgan), ``cycle_opt`` (L1), optional ``identity_opt`` (L1),
    ``nce_opt`` (``AdversarialContrastiveLoss``), ``optim_g``, ``optim_d``, ``optim_f``, ``optim_n``.
    """

    OPTION_SCHEMA = {'contrastive': _CONTRASTIVE_SCHEMA}

    def init_training_settings(self):
        opt, train_opt = self.opt, self.opt['train']
        where = f'{opt.get("opt_path", "")}: '
        copt = opt.get('contrastive') or {}
        if 'network_g_b' not in opt:  # the reverse generator defaults to the forward one's architecture
            opt['network_g_b'] = deepcopy(opt['network_g'])
        if 'network_d_b' not in opt and 'network_d' in opt:
            opt['network_d_b'] = deepcopy(opt['network_d'])
        self.net_g.train()
        self.setup_ema('net_g')
        self.net_g_b = self.build_net('network_g_b', 'net_g_b')
        self.net_d = self.build_net('network_d', 'net_d')
        self.net_d_b = self.build_net('network_d_b', 'net_d_b')
        self.directions = ['a', 'b'] if copt.get('both_directions', True) else ['a']
        self.exemplar = list(copt.get('clear_exemplar', ['identity']))
        bad = [e for e in self.exemplar if e not in ('identity', 'positive')]
        if bad:
            raise OptionError(f'{where}contrastive.clear_exemplar: unknown {bad}; use identity and/or positive')
        self.exemplar_weight = float(copt.get('exemplar_weight', 1.0))
        self.exemplar_tau = float(copt.get('exemplar_temperature', 0.07))
        self.num_patches = int(copt.get('num_patches', 256))
        self.momentum = float(copt.get('momentum', 0.9))
        try:
            self.sampler = build_sampler(copt.get('sampler'), 'random')
        except ValueError as err:
            raise OptionError(f'{where}contrastive.{err}') from None
        gens = {'a': self.net_g, 'b': self.net_g_b}
        discs = {'a': self.net_d, 'b': self.net_d_b}
        self.encoders, self.heads, self.heads_m, self.neg_gens = {}, {}, {}, {}
        head_opt = dict(copt.get('head') or {})
        for d in self.directions:
            sfx = '' if d == 'a' else '_b'
            try:
                enc = build_encoder(copt.get('encoder'), gens[d], discs[d], f'{where}contrastive.encoder')
            except ValueError as err:
                raise OptionError(str(err)) from None
            self.encoders[d] = enc.to(self.device)
            chans = enc.channels()
            try:
                heads = PatchProjectionHeads(chans, **head_opt).to(self.device)
            except TypeError as err:
                raise OptionError(f'{where}contrastive.head: {err}') from None
            self.heads[d] = self.networks[f'net_f{sfx}'] = ddp_wrap(heads, opt, self.device)
            # copied after wrapping: DDP has broadcast rank 0's weights, so every rank's momentum copy starts equal
            self.heads_m[d] = self.networks[f'net_fm{sfx}'] = deepcopy(heads).requires_grad_(False)
            n_opt = opt.setdefault(f'network_n{sfx}', deepcopy(opt.get('network_n') or {'type': 'NegativeGenerator'}))
            n_opt['dims'] = heads.out_dims()
            self.neg_gens[d] = self.build_net(f'network_n{sfx}', f'net_n{sfx}')
        self.gan_loss = build_loss(train_opt['gan_opt'], 'train.gan_opt').to(self.device) \
            if 'gan_opt' in train_opt else None
        if self.gan_loss is None:
            raise OptionError(f'{where}train.gan_opt: missing (e.g. {{type: GANLoss, gan_type: lsgan}})')
        self.cycle_loss = build_loss(train_opt['cycle_opt'], 'train.cycle_opt') if 'cycle_opt' in train_opt else None
        self.idt_loss = build_loss(train_opt['identity_opt'], 'train.identity_opt') \
            if 'identity_opt' in train_opt else None
        if 'nce_opt' not in train_opt:
            raise OptionError(f'{where}train.nce_opt: missing (e.g. {{type: AdversarialContrastiveLoss}})')
        self.nce_loss = build_loss(train_opt['nce_opt'], 'train.nce_opt')
        if not hasattr(self.nce_loss, 'diversity'):
            raise OptionError(f'{where}train.nce_opt.type: CDDGANModel needs AdversarialContrastiveLoss')
        self.add_optimizer('g', list(self.net_g.parameters()) + list(self.net_g_b.parameters()), 'optim_g')
        self.add_optimizer('d', list(self.net_d.parameters()) + list(self.net_d_b.parameters()), 'optim_d')
        self.add_optimizer('f', [p for d in self.directions for p in self.heads[d].parameters()], 'optim_f')
        self.add_optimizer('n', [p for d in self.directions for p in self.neg_gens[d].parameters()], 'optim_n')
        self.setup_schedulers()

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
        return self.sampler(src, self.num_patches)

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
        self.optimizers['d'].zero_grad(set_to_none=True)
        l_d = 0
        for net_d, real, fake in self._gan_pairs():
            l_d = l_d + discriminator_loss(self.gan_loss, net_d, real, fake)
        self.backward_step(l_d, 'd')
        log['l_d'] = l_d.detach()
        set_requires_grad([self.net_d, self.net_d_b], False)

    def step_n(self, log):
        """(2) Negative generators: ascent on the adversarial PatchNCE (+ diversity); nothing else changes."""
        set_requires_grad(list(self.neg_gens.values()), True)
        frozen = [self.net_g, self.net_g_b] + list(self.heads.values())
        set_requires_grad(frozen, False)
        self.optimizers['n'].zero_grad(set_to_none=True)
        l_n, nce_seen, div = 0, 0, 0
        for d in self.directions:
            q = self._queries(d, self._src_dst(d)[1].detach(), self.coords[d], with_grad=False)
            k, k_m = self.keys[d]
            negs, _ = self._negatives(d, k_m)
            l_n = l_n + self.nce_loss(q, k, negs, role='negative')
            nce_seen = nce_seen + self.nce_loss.nce(q, k, negs).detach()
            div = div + self.nce_loss.diversity(negs).detach()
        self.backward_step(l_n, 'n')
        n_dir = len(self.directions)
        log.update(l_n=l_n.detach(), l_n_nce=nce_seen / n_dir, l_n_div=div / n_dir)
        set_requires_grad(list(self.neg_gens.values()), False)
        set_requires_grad(frozen, True)

    def step_g(self, log):
        """(3) Generators and heads: descent on GAN + cycle (+ identity) + adversarial PatchNCE (negatives fixed).
        Returns the fresh negatives of this step (for the queue)."""
        x, y = self.lq, self.gt
        set_requires_grad(list(self.neg_gens.values()), False)
        self.optimizers['g'].zero_grad(set_to_none=True)
        self.optimizers['f'].zero_grad(set_to_none=True)
        # frozen critics through their bare modules: a DDP forward whose parameters get no gradient would leave
        # DDP waiting for that reduction
        total = sum(self.gan_loss(bare(net_d)(fake), True, is_disc=False) for net_d, _, fake in self._gan_pairs())
        log['l_g_gan'] = total.detach()
        if self.cycle_loss is not None:
            with self.autocast():
                rec_x, rec_y = self.net_g_b(self.fake_c), self.net_g(self.fake_h)
            l_cyc = self.cycle_loss(rec_x.float(), x) + self.cycle_loss(rec_y.float(), y)
            total = total + l_cyc
            log['l_cycle'] = l_cyc.detach()
        idt_c = None
        if self.idt_loss is not None or 'identity' in self.exemplar:
            with self.autocast():
                idt_c = self.net_g(y).float()
        if self.idt_loss is not None:
            with self.autocast():
                idt_h = self.net_g_b(x).float()
            l_idt = self.idt_loss(idt_c, y) + self.idt_loss(idt_h, x)
            total = total + l_idt
            log['l_identity'] = l_idt.detach()
        l_nce, fresh_negs = 0, {}
        for d in self.directions:
            q = self._queries(d, self._src_dst(d)[1], self.coords[d], with_grad=True)
            k, k_m = self.keys[d]  # G and the heads have not changed since the keys were taken
            with torch.no_grad():
                negs, fresh_negs[d] = self._negatives(d, k_m)
            l_nce = l_nce + self.nce_loss(q, k, negs, role='generator')
        l_nce = l_nce / len(self.directions)
        total = total + l_nce
        log['l_nce'] = l_nce.detach()
        if 'identity' in self.exemplar:  # NCE(G_c(y), y): clear exemplars keep their content (CUT's identity)
            c_y = self._coords(y)
            k, k_m = self._keys('a', y, c_y)
            q = self._queries('a', idt_c, c_y, with_grad=True)
            with torch.no_grad():
                negs, _ = self._negatives('a', k_m)
            l_ex = self.exemplar_weight * self.nce_loss(q, k, negs, role='generator')
            total = total + l_ex
            log['l_exemplar_idt'] = l_ex.detach()
        if 'positive' in self.exemplar:  # pooled clear exemplar = positive, hazy inputs = negatives
            c_x = self.coords['a']
            anchor = self._pooled('a', self.fake_c, c_x)
            with torch.no_grad():
                pos = self._pooled('a', y, self._coords(y), with_grad=False)
                neg = self._pooled('a', x, c_x, with_grad=False)
            negs = neg.unsqueeze(0).expand(anchor.shape[0], -1, -1)  # every hazy input is every anchor's negative
            l_pos = patch_nce(anchor[:, None], pos[:, None], negs, self.exemplar_tau, 'external', 'image').mean()
            l_pos = self.exemplar_weight * l_pos
            total = total + l_pos
            log['l_exemplar_pos'] = l_pos.detach()
        self.backward_step(total, ['g', 'f'])
        log['l_g_total'] = total.detach()
        return fresh_negs

    def step_momentum(self, fresh_negs):
        """(4) Momentum heads, (5) queue of generated negatives."""
        for d in self.directions:
            momentum_update(self.heads_m[d], bare(self.heads[d]), self.momentum)
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
