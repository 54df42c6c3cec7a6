"""ConStylePretrainModel: ConStyle v2's first stage, the prior trained alone (Fan et al., arXiv 2406.18242).

``network_g`` is a ``ConStyle`` (``Train: true``; ``num_classes`` > 0 adds v2's classification head). Each step
embeds the degraded image with the query encoder and the clean image with the momentum key encoder and minimises

    InfoNCE + Content + Style                  (train.infonce_opt, content_opt, style_opt, as in ConStyleModel)
    + CE(head(query), label)                   (train.cls_opt, iterations <= constyle.cls_iter; upstream: 50,000)
    + KL(softmax(head_k(clean)) || softmax(head_q(degraded)))   (train.kl_opt, iterations <= constyle.kl_iter;
                                                                 upstream: every iteration)

The two class-head terms need a head; they reach only the query encoder's conv stages and head (the MLP latents
feed InfoNCE, Content and Style), never the key encoder, which follows by momentum.

Labels of the head (``constyle.cls_labels``): ``dataset`` reads the batch's ``label`` (``LabeledImageDataset``: class
folders such as ImageNet's, or a label file next to a folder or an LMDB; ``MultiDegradationDataset``: the set);
``degradation`` uses the index of the degradation drawn by ``constyle.degradations``; ``auto`` (default) is
``degradation`` when ``constyle.degradations`` is given, else ``dataset``.

Data: unlike upstream v2 (independent random crops for LQ and GT, so the positive was a different crop), the
degraded image is always the same crop as the clean one (pixel-aligned):
    * ``constyle.degradations: {name: [degradation specs], ...}`` degrades the clean ``gt`` batch on the fly, one
      named degradation per sample drawn uniformly (specs are those of
      ``irtoolkit.data.degradations.build_degradation``: haze, rain, gaussian_noise, motion_blur, jpeg,
      realesrgan ...);
    * without it, the batch's own ``lq`` (paired datasets, or a dataset with ``degradations``) is used.
Validation on pairs: ``retrieval_top1`` (the share of degraded images whose nearest clean embedding is their own
clean image, cosine, within the validation set), ``cos_pos`` (mean cosine of matching pairs) and, with a head and
labels, ``cls_acc``. Logged in training: ``l_cls``, ``acc_cls`` (top-1 of the batch), ``l_kl``.
"""
import logging
from collections import OrderedDict

import numpy as np
import torch
import torch.nn.functional as F

from irtoolkit.config.schema import Option
from irtoolkit.data.degradations import build_degradation
from irtoolkit.models.base_model import BaseModel
from irtoolkit.models.constyle_model import build_constyle_losses, constyle_loss_terms
from irtoolkit.utils.dist import bare
from irtoolkit.utils.registry import MODEL_REGISTRY

logger = logging.getLogger('irtoolkit')


@MODEL_REGISTRY.register()
class ConStylePretrainModel(BaseModel):
    sharded_validation = False  # retrieval within the whole validation set: rank 0 scores it all
    OPTION_SCHEMA = {'constyle': {
        'degradations': Option(dict, None,
                               doc='{name: [degradation specs]}: degrade gt on the fly, the index is the label'),
        'cls_iter': Option(int, None, doc='last iteration of the classification loss; unset: every iteration'),
        'kl_iter': Option(int, None, doc='last iteration of the KL distillation loss; unset: every iteration'),
        'cls_labels': Option(str, 'auto', choices=('auto', 'dataset', 'degradation'),
                             doc="labels of the class head: the batch's label, the on-the-fly degradation's index, "
                                 'or auto (degradation with constyle.degradations, else dataset)'),
    }}
    RENAMED_OPTIONS = {f'train.{k}': f'constyle.{k}' for k in ('degradations', 'cls_iter', 'kl_iter', 'cls_labels')}

    # ------------------------------------------------------------------ networks and losses
    def setup_networks(self):
        self.net_g = self.build_net('network_g')
        net = bare(self.net_g)
        if not (hasattr(net, 'train_forward') and hasattr(net, 'encoder_q')):
            raise self.option_error('network_g.type', f'ConStylePretrainModel trains a ConStyle network, got '
                                    f'{type(net).__name__}')

    def setup_training_networks(self):
        if not bare(self.net_g).Train:
            raise self.option_error('network_g.Train', 'must be true to pre-train ConStyle')
        copt = self.opt['constyle']
        self.degradations = [(name, build_degradation(s, f'constyle.degradations.{name}'))
                             for name, s in (copt['degradations'] or {}).items()]
        source = copt['cls_labels']
        if source == 'degradation' and not self.degradations:
            raise self.option_error('constyle.cls_labels', 'degradation needs constyle.degradations')
        self.labels_from_degradation = source == 'degradation' or (source == 'auto' and bool(self.degradations))

    def setup_losses(self):
        losses = build_constyle_losses(self)
        for name in ('cls', 'kl'):
            if self.opt['train'].get(f'{name}_opt') and bare(self.net_g).encoder_q.classifier is None:
                raise self.option_error(f'train.{name}_opt', 'needs network_g.num_classes > 0 (the class head)')
        losses.update(self.build_losses(optional=('cls', 'kl')))
        if not losses:
            raise self.option_error('train', 'no loss (infonce_opt, content_opt, style_opt, cls_opt, kl_opt)')
        return losses

    # ------------------------------------------------------------------ data
    def degrade(self, gt):
        """Degrade each clean (C, H, W) crop in place of its own pixels; returns (lq, labels)."""
        # drawn from numpy's global stream, which the runner seeds and checkpoints (exact resume)
        rng = np.random.default_rng(np.random.randint(2 ** 31))
        labels = rng.integers(len(self.degradations), size=gt.shape[0])
        out = []
        for img, lab in zip(gt.permute(0, 2, 3, 1).cpu().numpy(), labels):
            out.append(self.degradations[lab][1](np.ascontiguousarray(img, dtype=np.float32), rng))
        lq = torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous().to(gt.dtype)
        return lq, torch.from_numpy(labels).long()

    def training_pair(self, batch):
        """(lq, gt, label) of a training batch: degraded on the fly with ``constyle.degradations`` (here, not when
        the batch is fed: validation pairs stay as read), else the batch's own ``lq``."""
        gt, label = batch['gt'], batch.get('label')
        label = label.long() if label is not None else None
        if self.degradations:
            lq, deg_label = (t.to(self.device) for t in self.degrade(gt.cpu()))
            return lq, gt, deg_label if self.labels_from_degradation else label
        if 'lq' not in batch:
            raise KeyError('ConStylePretrainModel: the batch has no "lq"; give constyle.degradations or paired data')
        return batch['lq'], gt, label

    # ------------------------------------------------------------------ training
    def train_iteration(self, batch, current_iter):
        lq, gt, label = self.training_pair(batch)
        terms = self.optimize('g', self.g_losses, lq, gt, label, current_iter)
        self.record(l_total=sum(terms.values()))

    def g_losses(self, lq, gt, label, current_iter):
        """InfoNCE, content and style of the prior, and the class-head terms while they are active."""
        with self.autocast():
            out = self.net_g(lq, gt)  # through forward, so DDP sees it
        terms = constyle_loss_terms(self.losses, out, self.record)
        if self.term_active('cls', current_iter):
            if label is None:
                raise KeyError('ConStylePretrainModel: train.cls_opt needs labels: the batch has no "label" '
                               '(use a labelled dataset or constyle.degradations)')
            logits = out['logits_q'].float()
            terms['cls'] = self.losses['cls'](logits, label)
            with torch.no_grad():
                self.record(acc_cls=(logits.argmax(1) == label).float().mean())
        if self.term_active('kl', current_iter):
            terms['kl'] = self.losses['kl'](out['logits_q'].float(), out['logits_k'].float())
        return terms

    def term_active(self, name, current_iter):
        """Whether the class-head term ``name`` (cls, kl) is configured and ``current_iter <= constyle.<name>_iter``."""
        last = self.opt['constyle'][f'{name}_iter']
        return name in self.losses and (last is None or current_iter <= last)

    # ------------------------------------------------------------------ validation
    @torch.no_grad()
    def validation(self, dataloader, current_iter, tb_logger=None, save_img=False, logger=None):
        if self.rank != 0:
            return {}
        net = self.inference_net('net_g')
        was_training = net.training
        net.eval()
        zq, zk, logits, labels = [], [], [], []
        try:
            for data in dataloader:
                self.feed_data(data)
                q, _, lg = net.encoder_q(self.batch['lq'])
                k = (net.encoder_k if net.Train else net.encoder_q)(self.batch['gt'])[0][1]
                zq.append(F.normalize(q[1].float(), dim=1))
                zk.append(F.normalize(k.float(), dim=1))
                if lg is not None and self.batch.get('label') is not None:
                    logits.append(lg)
                    labels.append(self.batch['label'].long())
        finally:
            net.train(was_training)
        zq, zk = torch.cat(zq), torch.cat(zk)
        sim = zq @ zk.t()
        target = torch.arange(len(zq), device=sim.device)
        results = OrderedDict(retrieval_top1=float((sim.argmax(1) == target).float().mean()),
                              cos_pos=float(sim.diag().mean()))
        if logits:
            results['cls_acc'] = float((torch.cat(logits).argmax(1) == torch.cat(labels)).float().mean())
        self.log_validation(dataloader.dataset.opt.get('name', 'val'), results, None, current_iter, tb_logger, logger,
                            count=f'{len(zq)} pairs')
        return results
