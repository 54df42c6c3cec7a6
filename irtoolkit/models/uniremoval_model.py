"""UniRemovalModel: one student for several degradations, in two stages (Zhang, Yan, Cai, "Uni-Removal: A
Semi-Supervised Framework for Simultaneously Addressing Multiple Degradations in Real-World Images", arXiv
2307.05075). No code is released; the design follows the notes' reading (§4.2, after TKL&MR, CVPR 2022).

``uniremoval.stage: 1`` — knowledge transfer (supervised, synthetic pairs with a degradation ``label``):
frozen degradation-specific teachers (any registered arch, loaded from checkpoints; eval mode, no gradients)
teach the student ``net_g``::

    L1 = distill(S(x), T_y(x)) [+ pixel(S(x), gt)] + MultiGrainedContrastiveLoss
         + recon_weight * sum_l |IP_y^l(P_y^l(f_T^l)) - f_T^l|_1

Feature grain: student features at ``student_layers`` and the sample's teacher's features at ``teacher_layers``
are projected into a common space by 1x1-conv projectors (``net_proj``: one per student layer and one per
teacher and layer, sized at construction) and compared at the same random patches; the other teachers'
projected features are extra negatives (``feature_negatives: other_teachers``) — TKL&MR's inverse projectors
keep the teacher projections informative. Image grain: ``image_encoder`` maps the output (anchor), the target
(``image_positive``: gt or teacher output) and the degraded inputs (negatives; every input of the batch with
``batch_negatives``, as TKL&MR's HCR) to features — ``type: teacher`` uses the sample's own frozen teacher
(offline, no VGG needed), or ``vgg`` / ``timm`` / ``self``.

``uniremoval.stage: 2`` — domain adaptation (unsupervised, unpaired real degraded ``lq`` and real clean ``gt``):
a PatchGAN ``net_d``, the :class:`ClusterGrainedContrastiveLoss` on pooled embeddings (anchors: S(real degraded);
positive cluster: real clean images, batch + queue; negatives: real degraded inputs, batch + queue; encoder
``cluster_encoder``, D's layers by default, head ``net_cluster``), and ``consistency_opt`` against the frozen
stage-1 student (``path.pretrain_network_g``) so adaptation does not forget content.
"""
from collections import OrderedDict
from copy import deepcopy

import torch
import torch.nn.functional as F
from torch import nn

from irtoolkit.contrastive.encoders import build_encoder
from irtoolkit.contrastive.feature_tap import FeatureTap
from irtoolkit.contrastive.heads import FeatureProjector
from irtoolkit.contrastive.queue import EmbeddingQueue
from irtoolkit.contrastive.samplers import RandomPatchSampler, gather
from irtoolkit.contrastive.training import ddp_wrap, discriminator_loss, set_requires_grad
from irtoolkit.models.base_model import bare
from irtoolkit.models.restoration_model import RestorationModel
from irtoolkit.utils.registry import MODEL_REGISTRY, OptionError, build_loss, build_network

_SCHEMA = {
    'stage': int, 'teachers': list, 'label_key': str, 'student_layers': list, 'teacher_layers': list,
    'proj_channels': int, 'num_patches': int, 'feature_negatives': str, 'image_encoder': dict,
    'image_positive': str, 'batch_negatives': bool, 'recon_weight': float, 'cluster_encoder': dict,
    'cluster_dim': int, 'queue_size': int,
}


class _Projectors(nn.ModuleDict):
    """Per-layer projectors ``student`` [layer], ``teachers`` [teacher][layer] and ``inverse`` [teacher][layer]
    (state-dict keys as a plain ``nn.ModuleDict``), applied in one ``forward`` so that a DDP wrapper sees every
    use and synchronises their gradients."""

    def forward(self, s_feats, t_feats):
        """s_feats: student features per layer; t_feats: [teacher][layer] features. Returns student projections
        [layer], teacher projections [teacher][layer] and the inverse projections' L1 reconstruction error."""
        s_proj = [self['student'][i](f) for i, f in enumerate(s_feats)]
        t_proj = [[self['teachers'][t][i](f) for i, f in enumerate(fs)] for t, fs in enumerate(t_feats)]
        l_rec = 0
        for t, fs in enumerate(t_feats):  # the inverse keeps every teacher's common-space code informative
            for i, f in enumerate(fs):
                l_rec = l_rec + (self['inverse'][t][i](t_proj[t][i]) - f).abs().mean()
        return s_proj, t_proj, l_rec


class _ClusterBank(nn.Module):
    """Embedding head (pooled multi-layer features -> unit vector) and the positive/negative queues."""

    def __init__(self, in_channels, dim, queue_size):
        super().__init__()
        self.head = nn.Sequential(nn.Linear(in_channels, dim), nn.ReLU(inplace=True), nn.Linear(dim, dim))
        self.pos_queue = EmbeddingQueue(queue_size, dim)
        self.neg_queue = EmbeddingQueue(queue_size, dim)

    def forward(self, feats):
        return F.normalize(self.head(torch.cat([f.mean((2, 3)) for f in feats], 1)), dim=-1)


@MODEL_REGISTRY.register()
class UniRemovalModel(RestorationModel):
    """Options: ``uniremoval`` (stage, teachers, layers, encoders; see ``docs/contrastive.md``) and ``train``:
    stage 1 ``distill_opt`` (L1), optional ``pixel_opt``, ``mgcl_opt`` (``MultiGrainedContrastiveLoss``),
    ``optim_g`` (student + projectors); stage 2 ``gan_opt``, ``cluster_opt`` (``ClusterGrainedContrastiveLoss``),
    optional ``consistency_opt`` (L1), ``optim_g`` (student + cluster head), ``optim_d``."""

    OPTION_SCHEMA = {'uniremoval': _SCHEMA}

    def init_training_settings(self):
        self.where = f'{self.opt.get("opt_path", "")}: '
        self.uopt = self.opt.get('uniremoval') or {}
        self.stage = self.uopt.get('stage', 1)
        self.label_key = self.uopt.get('label_key')  # default: deg_type (names), else label
        self.net_g.train()
        self.setup_ema('net_g')
        if self.stage == 1:
            self._init_stage1()
        elif self.stage == 2:
            self._init_stage2()
        else:
            raise OptionError(f'{self.where}uniremoval.stage: expected 1 or 2, got {self.stage!r}')
        self.setup_schedulers()

    # ------------------------------------------------------------------ stage 1
    def _init_stage1(self):
        where, uopt, train_opt = self.where, self.uopt, self.opt['train']
        teachers = uopt.get('teachers')
        if not teachers:
            raise OptionError(f'{where}uniremoval.teachers: missing (a list of {{label, network, checkpoint}})')
        self.teachers, self.labels = [], []
        for i, t in enumerate(teachers):
            key = f'uniremoval.teachers[{i}]'
            if not isinstance(t, dict) or not {'label', 'network', 'checkpoint'} <= set(t):
                raise OptionError(f'{where}{key}: expected a mapping with label, network and checkpoint')
            net = build_network(t['network'], f'{key}.network').to(self.device)
            try:
                self.load_network(net, t['checkpoint'], t.get('strict', True), t.get('param_key', 'params'))
            except (OSError, KeyError, RuntimeError) as err:
                raise OptionError(f'{where}{key}.checkpoint: cannot load {t["checkpoint"]}: '
                                  f'{str(err).splitlines()[0]}') from None
            self.teachers.append(net.eval().requires_grad_(False))
            self.labels.append(t['label'])
        s_layers = uopt.get('student_layers') or ['intro']
        t_layers = uopt.get('teacher_layers') or s_layers
        if len(s_layers) != len(t_layers):
            raise OptionError(f'{where}uniremoval.teacher_layers: {len(t_layers)} layers for {len(s_layers)} '
                              'student_layers')
        try:
            self.s_tap = FeatureTap(self.net_g, s_layers, stop_after_last=False)
            self.t_taps = [FeatureTap(t, t_layers, stop_after_last=False) for t in self.teachers]
        except ValueError as err:
            raise OptionError(f'{where}uniremoval.student_layers/teacher_layers: {err}') from None
        s_ch = self.s_tap.channels(self._probe())
        t_chs = [tap.channels(self._probe()) for tap in self.t_taps]
        pc = int(uopt.get('proj_channels', 64))
        self.proj = _Projectors({
            'student': nn.ModuleList(FeatureProjector(c, pc) for c in s_ch),
            'teachers': nn.ModuleList(nn.ModuleList(FeatureProjector(c, pc) for c in ch) for ch in t_chs),
            'inverse': nn.ModuleList(nn.ModuleList(FeatureProjector(pc, c) for c in ch) for ch in t_chs)})
        self.proj = self.networks['net_proj'] = ddp_wrap(self.proj.to(self.device), self.opt, self.device)
        self.sampler = RandomPatchSampler(int(uopt.get('num_patches', 64)))
        self.feature_negatives = uopt.get('feature_negatives', 'other_teachers')
        if self.feature_negatives not in ('other_teachers', 'none'):
            raise OptionError(f'{where}uniremoval.feature_negatives: expected other_teachers or none')
        self.image_positive = uopt.get('image_positive', 'gt')
        if self.image_positive not in ('gt', 'teacher'):
            raise OptionError(f'{where}uniremoval.image_positive: expected gt or teacher')
        self.batch_negatives = bool(uopt.get('batch_negatives', True))
        self.recon_weight = float(uopt.get('recon_weight', 0.05))
        enc_opt = dict(uopt.get('image_encoder') or {'type': 'teacher', 'layers': t_layers})
        if enc_opt.get('type') == 'teacher':
            try:
                self.img_taps = [FeatureTap(t, enc_opt.get('layers') or t_layers) for t in self.teachers]
            except ValueError as err:
                raise OptionError(f'{where}uniremoval.image_encoder.layers: {err}') from None
            self.img_encoder = None
        else:
            try:
                self.img_encoder = build_encoder(enc_opt, self.net_g, None, f'{where}uniremoval.image_encoder')
            except ValueError as err:
                raise OptionError(str(err)) from None
            self.img_encoder = self.img_encoder.to(self.device)
        self.losses = OrderedDict()
        for key in ('distill_opt', 'pixel_opt', 'mgcl_opt'):
            if key in train_opt:
                self.losses[key[:-4]] = build_loss(train_opt[key], f'train.{key}').to(self.device)
        if 'mgcl' not in self.losses:
            raise OptionError(f'{where}train.mgcl_opt: missing (e.g. {{type: MultiGrainedContrastiveLoss}})')
        self.add_optimizer('g', list(self.net_g.parameters()) + list(self.proj.parameters()), 'optim_g')

    def _probe(self):
        return torch.zeros(1, 3, 64, 64, device=self.device)

    def _label_index(self, labels):
        idx = []
        for lab in labels:
            lab = lab.item() if torch.is_tensor(lab) else lab
            if lab in self.labels:
                idx.append(self.labels.index(lab))
            elif isinstance(lab, int) and not any(isinstance(v, int) for v in self.labels) and 0 <= lab < len(
                    self.labels):
                idx.append(lab)  # integer labels index the teachers list
            else:
                raise ValueError(f'UniRemovalModel: batch label {lab!r} has no teacher (teachers: {self.labels})')
        return torch.tensor(idx, device=self.device)

    def feed_data(self, data):
        super().feed_data(data)
        keys = [self.label_key] if self.label_key else ['deg_type', 'label']
        self.label = next((data[k] for k in keys if k in data), None)  # validation batches have none

    @staticmethod
    def _select(stacked, idx):
        """stacked (T, B, ...) -> (B, ...) taking teacher idx[b] for sample b."""
        return stacked[idx, torch.arange(stacked.shape[1], device=stacked.device)]

    def _image_feats(self, img, idx):
        if self.img_encoder is not None:
            return self.img_encoder(img)
        per_teacher = [tap(img) for tap in self.img_taps]  # frozen teachers: gradients reach img only
        return [self._select(torch.stack([f[layer] for f in per_teacher]), idx) for layer in range(len(per_teacher[0]))]

    def _stage1_step(self, log):
        x, gt = self.lq, self.gt
        if self.label is None:
            keys = [self.label_key] if self.label_key else ['deg_type', 'label']
            raise KeyError(f'UniRemovalModel stage 1: the batch has no {" or ".join(keys)} (degradation label); '
                           'use MultiDegradationDataset or set uniremoval.label_key')
        idx = self._label_index(self.label)
        with torch.no_grad():
            t_feats, t_outs = [], []
            for tap in self.t_taps:
                t_feats.append(tap(x))
                t_outs.append(tap.output)
            t_out = self._select(torch.stack(t_outs), idx)
        with self.autocast():
            s_feats = self.s_tap(x)
            out = self.s_tap.output.float()
        self.output = out
        total = 0
        if 'distill' in self.losses:
            log['l_distill'] = self.losses['distill'](out, t_out)
            total = total + log['l_distill']
        if 'pixel' in self.losses:
            log['l_pixel'] = self.losses['pixel'](out, gt)
            total = total + log['l_pixel']
        coords = self.sampler(x)
        anchors, positives, negatives = [], [], []
        n_teach = len(self.teachers)
        s_proj, t_proj, l_rec = self.proj([f.float() for f in s_feats], t_feats)
        for layer in range(len(s_feats)):
            a = F.normalize(gather(s_proj[layer], coords), dim=-1)
            proj_t = [t_proj[t][layer] for t in range(n_teach)]
            emb_t = torch.stack([F.normalize(gather(p, coords), dim=-1) for p in proj_t])  # (T, B, P, D)
            positives.append(self._select(emb_t, idx))
            if self.feature_negatives == 'other_teachers' and n_teach > 1:
                others = torch.ones(n_teach, len(idx), dtype=torch.bool, device=self.device)
                others[idx, torch.arange(len(idx), device=self.device)] = False
                # (B, (T-1)*P, D): for each sample, the patches of every other teacher
                neg = emb_t.permute(1, 0, 2, 3)[others.t()].reshape(len(idx), -1, emb_t.shape[-1])
                negatives.append(neg)
            else:
                negatives.append(None)
            anchors.append(a)
        img_pos = gt if self.image_positive == 'gt' else t_out
        a_img = self._image_feats(out, idx)
        with torch.no_grad():
            p_img = self._image_feats(img_pos, idx)
            n_img = self._image_feats(x, idx)
            if self.batch_negatives and x.shape[0] > 1:  # every degraded input of the batch (HCR)
                n_img = [torch.stack([f.roll(s, 0) for s in range(x.shape[0])], 1) for f in n_img]
        l_mg, terms = self.losses['mgcl']({'feat': anchors, 'img': a_img}, {'feat': positives, 'img': p_img},
                                          {'feat': negatives, 'img': n_img})
        log['l_mgcl'] = l_mg
        log.update({f'l_mgcl_{k}': v for k, v in terms.items()})
        total = total + l_mg
        if self.recon_weight:
            log['l_proj_recon'] = self.recon_weight * l_rec / len(s_feats)
            total = total + log['l_proj_recon']
        return total

    # ------------------------------------------------------------------ stage 2
    def _init_stage2(self):
        where, uopt, train_opt = self.where, self.uopt, self.opt['train']
        self.net_d = self.build_net('network_d', 'net_d')
        self.anchor_net = deepcopy(bare(self.net_g)).eval().requires_grad_(False)  # the stage-1 student, frozen
        try:
            self.cluster_encoder = build_encoder(uopt.get('cluster_encoder') or {'type': 'disc', 'layers': ['body.1']},
                                                 self.net_g, self.net_d, f'{where}uniremoval.cluster_encoder')
        except ValueError as err:
            raise OptionError(str(err)) from None
        self.cluster_encoder = self.cluster_encoder.to(self.device)
        chans = sum(self.cluster_encoder.channels())
        self.bank = _ClusterBank(chans, int(uopt.get('cluster_dim', 128)), int(uopt.get('queue_size', 256)))
        self.bank = self.networks['net_cluster'] = ddp_wrap(self.bank.to(self.device), self.opt, self.device)
        self.losses = OrderedDict()
        for key in ('gan_opt', 'cluster_opt', 'consistency_opt'):
            if key in train_opt:
                self.losses[key[:-4]] = build_loss(train_opt[key], f'train.{key}').to(self.device)
        for key in ('gan_opt', 'cluster_opt'):
            if key not in train_opt:
                raise OptionError(f'{where}train.{key}: missing (needed by UniRemovalModel stage 2)')
        self.add_optimizer('g', list(self.net_g.parameters()) + list(self.bank.parameters()), 'optim_g')
        self.add_optimizer('d', self.net_d.parameters(), 'optim_d')

    def _stage2_step(self, log):
        x, y = self.lq, self.gt
        with self.autocast():
            out = self.net_g(x).float()
        self.output = out
        gan = self.losses['gan']
        set_requires_grad(self.net_d, True)
        self.optimizers['d'].zero_grad(set_to_none=True)
        l_d = discriminator_loss(gan, self.net_d, y, out)
        self.backward_step(l_d, 'd')
        log['l_d'] = l_d
        set_requires_grad(self.net_d, False)
        total = gan(bare(self.net_d)(out), True, is_disc=False)  # frozen: no DDP reduction to wait for
        log['l_g_gan'] = total
        anchors = self.bank(self.cluster_encoder(out))
        with torch.no_grad():
            pos = self.bank(self.cluster_encoder(y))
            neg = self.bank(self.cluster_encoder(x))
            pos_all = torch.cat((pos, bare(self.bank).pos_queue.get()))
            neg_all = torch.cat((neg, bare(self.bank).neg_queue.get()))
        log['l_cluster'] = self.losses['cluster'](anchors, pos_all, neg_all)
        total = total + log['l_cluster']
        if 'consistency' in self.losses:
            with torch.no_grad():
                ref = self.anchor_net(x)
            log['l_consistency'] = self.losses['consistency'](out, ref)
            total = total + log['l_consistency']
        self._stage2_queues = (pos, neg)
        return total

    # ------------------------------------------------------------------ one iteration
    def optimize_parameters(self, current_iter):
        log = OrderedDict()
        if self.stage == 1:
            self.optimizers['g'].zero_grad(set_to_none=True)
            total = self._stage1_step(log)
        else:
            total = self._stage2_step(log)
            self.optimizers['g'].zero_grad(set_to_none=True)
        self.backward_step(total, 'g')
        log['l_total'] = total
        if self.stage == 2:
            bare(self.bank).pos_queue.push(self._stage2_queues[0])
            bare(self.bank).neg_queue.push(self._stage2_queues[1])
        self.reduce_loss_dict(log)
        self.update_ema()
