"""UniRemovalStage1Model: Uni-Removal's knowledge transfer (Zhang, Yan, Cai, "Uni-Removal: A Semi-Supervised
Framework for Simultaneously Addressing Multiple Degradations in Real-World Images", arXiv 2307.05075). No code is
released; the design follows the notes' reading (§4.2, after TKL&MR, CVPR 2022). Stage 2 is
:class:`~irtoolkit.models.uniremoval_stage2_model.UniRemovalStage2Model`.

Supervised, on synthetic pairs with a degradation ``label``: frozen degradation-specific teachers (any registered
arch, loaded from checkpoints; eval mode, no gradients) teach the student ``net_g``::

    L1 = distill(S(x), T_y(x)) [+ pixel(S(x), gt)] + MultiGrainedContrastiveLoss
         + recon_weight * sum_l |IP_y^l(P_y^l(f_T^l)) - f_T^l|_1

Feature grain: student features at ``student_layers`` and the sample's teacher's features at ``teacher_layers``
are projected into a common space by TKL&MR's projectors (``net_proj``: one per student layer and one per teacher
and layer, sized at construction: conv3x3 -> ReLU -> conv3x3, bias-free, kaiming-normal; ``projector: pointwise``
keeps this toolkit's earlier 1x1 convolutions with bias and torch's default init, whose biases dominate at init and
map every patch to nearly one vector, so that the feature-grain InfoNCE sat at chance: docs/contrastive.md) and
compared at the same random patches. As in TKL&MR, the projectors
learn a *shared* space: the positive term pulls the student's and the sample's teacher's projections towards each
other (gradient into both projectors), TKL&MR's inverse projectors keep the teacher projections informative, and
the negatives — the other patches and, with ``feature_negatives: other_teachers``, the other teachers' projections
at the same patches — are constants: no teacher projector is ever pushed away.

Image grain: ``image_encoder`` maps the output (anchor), the target (``image_positive``: gt or teacher output) and
the degraded inputs (negatives) to features — ``type: teacher`` uses the sample's own frozen teacher (offline, no
VGG needed), or ``vgg`` / ``timm`` / ``self``. Every negative is encoded by the anchor's encoder: with
``batch_negatives`` (TKL&MR's HCR) sample b's negatives are every input of the batch seen by *its* teacher.
"""
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from irtoolkit.config.schema import NUM, Option
from irtoolkit.contrastive.encoders import build_encoder
from irtoolkit.contrastive.feature_tap import FeatureTap
from irtoolkit.contrastive.heads import FeatureProjector
from irtoolkit.contrastive.samplers import RandomPatchSampler, gather
from irtoolkit.models.base_model import BaseModel
from irtoolkit.utils.registry import MODEL_REGISTRY


def _teacher_list(value):
    """a non-empty list of {label, network, checkpoint[, strict, param_key]}"""
    return (isinstance(value, list) and len(value) > 0
            and all(isinstance(t, dict) and {'label', 'network', 'checkpoint'} <= set(t) for t in value))


STAGE1_SCHEMA = {
    'teachers': Option(_teacher_list, doc='one frozen teacher per degradation label, loaded from its checkpoint'),
    'label_key': Option(str, None, doc='batch key of the degradation label; unset: deg_type, else label'),
    'student_layers': Option(list, ['intro'], doc='student modules whose features are contrasted'),
    'teacher_layers': Option(list, None, doc="teacher modules paired with student_layers; unset: the student's names"),
    'proj_channels': Option(int, 64, doc='channels of the common projection space'),
    'projector': Option(str, 'tklmr', choices=('tklmr', 'pointwise'),
                        doc="TKL&MR's 3x3 bias-free kaiming projectors, or the earlier 1x1 ones with bias"),
    'num_patches': Option(int, 64, doc='feature-grain patches per image'),
    'feature_negatives': Option(str, 'other_teachers', choices=('other_teachers', 'none'),
                                doc="feature-grain negatives: the other teachers' projections, or none"),
    'image_encoder': Option(dict, None, doc="image-grain features ({type: teacher|vgg|timm|self}); unset: the sample's "
                            'teacher at teacher_layers'),
    'image_positive': Option(str, 'gt', choices=('gt', 'teacher'), doc='image-grain positive'),
    'batch_negatives': Option(bool, True, doc="every degraded input of the batch is a negative (TKL&MR's HCR)"),
    'recon_weight': Option(NUM, 0.05, doc="weight of the inverse projectors' reconstruction"),
}


class TKLProjector(nn.Sequential):
    """A feature map into (or, as an inverse projector, out of) the common space, as TKL&MR's ``StudentProjector`` /
    ``TeacherProjectors`` (Chen et al., CVPR 2022, ``models/projector.py``): conv3x3 -> ReLU -> conv3x3, no biases,
    kaiming-normal weights (fan-in, ReLU gain: their ``init_weights``). Without biases the projection of a patch is
    carried by its features, not by a constant shared by every patch. (B, C_in, H, W) -> (B, C_out, H, W)."""

    def __init__(self, in_channels, out_channels):
        super().__init__(nn.Conv2d(in_channels, out_channels, 3, 1, 1, bias=False), nn.ReLU(inplace=True),
                         nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False))
        for m in self:
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode='fan_in', nonlinearity='relu')


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


@MODEL_REGISTRY.register()
class UniRemovalStage1Model(BaseModel):
    """Options: ``uniremoval`` (below; ``docs/contrastive.md``) and ``train``: ``distill_opt`` (L1), optional
    ``pixel_opt``, ``mgcl_opt`` (``MultiGrainedContrastiveLoss``; absent: no projectors, the ablation without the
    multi-grained loss), ``optim_g`` (student + projectors)."""

    OPTION_SCHEMA = {'uniremoval': STAGE1_SCHEMA}

    # ------------------------------------------------------------------ networks, losses, optimisers
    def setup_networks(self):
        self.net_g = self.build_net('network_g')

    def setup_training_networks(self):
        uopt = self.opt['uniremoval']
        if not uopt.get('teachers'):
            raise self.option_error('uniremoval.teachers', 'missing (a list of {label, network, checkpoint})')
        self.teachers = [self.build_net(f'uniremoval.teachers[{i}]', f'net_teacher{i}', trainable=False, save=False,
                                        net_opt=t['network'], checkpoint={
                                            'path': t['checkpoint'], 'key': f'uniremoval.teachers[{i}].checkpoint',
                                            'strict': t.get('strict', True), 'param_key': t.get('param_key', 'params')})
                         for i, t in enumerate(uopt['teachers'])]
        self.labels = [t['label'] for t in uopt['teachers']]
        s_layers, t_layers = uopt['student_layers'], uopt['teacher_layers'] or uopt['student_layers']
        if len(s_layers) != len(t_layers):
            raise self.option_error('uniremoval.teacher_layers', f'{len(t_layers)} layers for {len(s_layers)} '
                                    'student_layers')
        self.s_tap, self.t_taps = self.checked(lambda: (
            FeatureTap(self.net_g, s_layers, stop_after_last=False),
            [FeatureTap(t, t_layers, stop_after_last=False) for t in self.teachers]),
            'uniremoval.student_layers/teacher_layers: ')
        self.use_mgcl = self.opt['train'].get('mgcl_opt') is not None
        if self.use_mgcl:  # without it (the ablation), no projectors and no image encoder
            self.proj = self.add_net('net_proj', self._projectors(uopt['proj_channels']))
            self.sampler = RandomPatchSampler(uopt['num_patches'])
            self._build_image_encoder(uopt['image_encoder'] or {'type': 'teacher', 'layers': t_layers}, t_layers)

    def _projectors(self, channels):
        """Student, teacher and inverse projectors (``uniremoval.projector``), sized by a dry run of the student and
        the teachers."""
        probe = torch.zeros(1, 3, 64, 64, device=self.device)
        s_ch = self.s_tap.channels(probe)
        t_chs = [tap.channels(probe) for tap in self.t_taps]
        proj = TKLProjector if self.opt['uniremoval']['projector'] == 'tklmr' else FeatureProjector
        return _Projectors({
            'student': nn.ModuleList(proj(c, channels) for c in s_ch),
            'teachers': nn.ModuleList(nn.ModuleList(proj(c, channels) for c in ch) for ch in t_chs),
            'inverse': nn.ModuleList(nn.ModuleList(proj(channels, c) for c in ch) for ch in t_chs)})

    def _build_image_encoder(self, enc_opt, t_layers):
        self.img_taps, self.img_encoder = None, None
        if enc_opt.get('type') == 'teacher':
            self.img_taps = self.checked(lambda: [FeatureTap(t, enc_opt.get('layers') or t_layers)
                                                  for t in self.teachers], 'uniremoval.image_encoder: ')
        else:
            where = f'{self.run.where()}uniremoval.image_encoder'
            self.img_encoder = self.checked(lambda: build_encoder(enc_opt, self.net_g, None, where),
                                            'uniremoval.image_encoder: ').to(self.device)

    def setup_losses(self):
        return self.build_losses(optional=('distill', 'pixel', 'mgcl'))

    def setup_optimizers(self):
        self.add_optimizer('g', 'optim_g', ('net_g', 'net_proj') if self.use_mgcl else ('net_g', ))

    # ------------------------------------------------------------------ data
    def batch_labels(self, batch):
        """The teacher index of every sample, from the batch's degradation label (``uniremoval.label_key``, else
        ``deg_type`` or ``label``)."""
        label_key = self.opt['uniremoval']['label_key']
        keys = [label_key] if label_key else ['deg_type', 'label']
        labels = next((batch[k] for k in keys if k in batch), None)
        if labels is None:
            raise KeyError(f'UniRemovalStage1Model: the batch has no {" or ".join(keys)} (degradation label); '
                           'use MultiDegradationDataset or set uniremoval.label_key')
        return self._label_index(labels)

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
                raise ValueError(f'UniRemovalStage1Model: batch label {lab!r} has no teacher (teachers: {self.labels})')
        return torch.tensor(idx, device=self.device)

    @staticmethod
    def _select(stacked, idx):
        """stacked (T, B, ...) -> (B, ...) taking teacher idx[b] for sample b."""
        return stacked[idx, torch.arange(stacked.shape[1], device=stacked.device)]

    # ------------------------------------------------------------------ one iteration
    def train_iteration(self, batch, current_iter):
        fwd = self.forward(batch['lq'], self.batch_labels(batch))
        terms = self.optimize('g', self.g_losses, fwd, batch['gt'])
        self.record(l_total=sum(terms.values()))

    def forward(self, lq, idx):
        """The frozen teachers' features and outputs (sample b's teacher ``idx[b]``'s output picked) and the
        student's, as a dict: ``lq``, ``idx``, ``t_feats`` [teacher][layer], ``t_out``, ``s_feats``, ``output``."""
        with torch.no_grad():
            t_feats, t_outs = [], []
            for tap in self.t_taps:
                t_feats.append(tap(lq))
                t_outs.append(tap.output)
            t_out = self._select(torch.stack(t_outs), idx)
        with self.autocast():
            s_feats = self.s_tap(lq)
            output = self.s_tap.output.float()
        return dict(lq=lq, idx=idx, t_feats=t_feats, t_out=t_out, s_feats=s_feats, output=output)

    def g_losses(self, fwd, gt):
        """Student and projectors: distillation towards the sample's teacher, pixel loss against gt, the two grains
        of the multi-grained contrast and the inverse projectors' reconstruction."""
        terms = OrderedDict()
        if 'distill' in self.losses:
            terms['distill'] = self.losses['distill'](fwd['output'], fwd['t_out'])
        if 'pixel' in self.losses:
            terms['pixel'] = self.losses['pixel'](fwd['output'], gt)
        if self.use_mgcl:
            terms.update(self._contrastive_terms(fwd, gt))
        return terms

    def _contrastive_terms(self, fwd, gt):
        """The two grains of the multi-grained contrast (weighted; raw values logged) and the inverse projectors'
        reconstruction."""
        terms, uopt, loss, idx = OrderedDict(), self.opt['uniremoval'], self.losses['mgcl'], fwd['idx']
        s_proj, t_proj, l_rec = self.proj([f.float() for f in fwd['s_feats']], fwd['t_feats'])
        anchors, positives, negatives = self._feature_grain(fwd['lq'], idx, s_proj, t_proj)
        a_img = self._image_feats(fwd['output'], idx)
        with torch.no_grad():
            p_img = self._image_feats(gt if uopt['image_positive'] == 'gt' else fwd['t_out'], idx)
            n_img = self._image_negatives(fwd['lq'], idx)
        _, raw = loss({'feat': anchors, 'img': a_img}, {'feat': positives, 'img': p_img},
                      {'feat': negatives, 'img': n_img})
        for grain, value in raw.items():  # the weighted grains enter the total; raw values are logged too
            terms[f'mgcl_{grain}'] = loss.loss_weight * getattr(loss, f'{grain}_weight') * value
            self.record(**{f'l_mgcl_{grain}_raw': value})
        if uopt['recon_weight']:
            terms['proj_recon'] = uopt['recon_weight'] * l_rec / len(fwd['s_feats'])
        return terms

    def _feature_grain(self, lq, idx, s_proj, t_proj):
        """Per layer: student patches (anchors), the sample's teacher's patches (positives, with gradient: the pull
        into the shared space) and, with ``feature_negatives: other_teachers``, every other teacher's patches
        (negatives, constants), all unit-norm."""
        coords = self.sampler(lq)
        n_teach, batch = len(self.teachers), len(idx)
        anchors, positives, negatives = [], [], []
        for layer in range(len(s_proj)):
            anchors.append(F.normalize(gather(s_proj[layer], coords), dim=-1))
            emb_t = torch.stack([F.normalize(gather(t_proj[t][layer], coords), dim=-1)
                                 for t in range(n_teach)])  # (T, B, P, D)
            positives.append(self._select(emb_t, idx))
            if self.opt['uniremoval']['feature_negatives'] == 'other_teachers' and n_teach > 1:
                others = torch.ones(n_teach, batch, dtype=torch.bool, device=self.device)
                others[idx, torch.arange(batch, device=self.device)] = False
                # (B, (T-1)*P, D): for each sample, the patches of every other teacher
                negatives.append(emb_t.detach().permute(1, 0, 2, 3)[others.t()].reshape(batch, -1, emb_t.shape[-1]))
            else:
                negatives.append(None)
        return anchors, positives, negatives

    def _image_feats(self, img, idx):
        """Features of ``img`` (B, 3, H, W) per layer, sample b encoded by the image encoder or its own teacher."""
        if self.img_encoder is not None:
            return self.img_encoder(img)
        per_teacher = [tap(img) for tap in self.img_taps]  # frozen teachers: gradients reach img only
        return [self._select(torch.stack([f[layer] for f in per_teacher]), idx) for layer in range(len(per_teacher[0]))]

    def _image_negatives(self, x, idx):
        """The degraded inputs as negatives, encoded by each anchor's own encoder: sample b's own input, or with
        ``batch_negatives`` every input of the batch, (B, M, C, H, W) per layer — with ``type: teacher`` row b holds
        teacher y_b's encodings of all inputs (TKL&MR's HCR, one encoder per anchor)."""
        batch = x.shape[0]
        if not self.opt['uniremoval']['batch_negatives'] or batch == 1:
            return self._image_feats(x, idx)
        if self.img_encoder is not None:
            return [f.unsqueeze(0).expand(batch, *f.shape) for f in self.img_encoder(x)]
        per_teacher = [tap(x) for tap in self.img_taps]  # [teacher][layer] (B, C, H, W)
        return [torch.stack([f[layer] for f in per_teacher])[idx] for layer in range(len(per_teacher[0]))]
