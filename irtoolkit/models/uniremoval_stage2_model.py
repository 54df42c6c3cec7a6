"""UniRemovalStage2Model: Uni-Removal's domain adaptation (Zhang, Yan, Cai, arXiv 2307.05075; notes §4.2). Stage 1
is :class:`~irtoolkit.models.uniremoval_stage1_model.UniRemovalStage1Model`, whose student this stage starts from
(``path.pretrain_network_g``).

Unsupervised, on unpaired real degraded ``lq`` and real clean ``gt``: a PatchGAN ``net_d`` and the
:class:`ClusterGrainedContrastiveLoss` on pooled embeddings — anchors: S(real degraded); positive cluster: real
clean images, batch + queue; negatives: real degraded inputs, batch + queue; encoder ``cluster_encoder`` (D's
layers by default), head and queues ``net_cluster`` — plus, optionally, ``consistency_opt`` against the frozen
stage-1 student so adaptation does not forget content.

One iteration: the discriminator step, then the student step (GAN + cluster contrast [+ consistency]), then the
queues take this batch's positive and negative embeddings.
"""
from collections import OrderedDict
from copy import deepcopy

import torch
import torch.nn.functional as F
from torch import nn

from irtoolkit.contrastive.encoders import build_encoder
from irtoolkit.contrastive.queue import EmbeddingQueue
from irtoolkit.contrastive.training import discriminator_loss, set_requires_grad
from irtoolkit.models.base_model import BaseModel
from irtoolkit.utils.dist import bare
from irtoolkit.utils.registry import MODEL_REGISTRY, OptionError
from irtoolkit.utils.schema import Option

STAGE2_SCHEMA = {
    'cluster_encoder': Option(dict, {'type': 'disc', 'layers': ['body.1']},
                              doc='features pooled into the cluster embedding (default: the discriminator)'),
    'cluster_dim': Option(int, 128, doc='cluster embedding size'),
    'queue_size': Option(int, 256, doc='stored positive and negative embeddings each (0: batch only)'),
}


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
class UniRemovalStage2Model(BaseModel):
    """Options: ``uniremoval`` (below; ``docs/contrastive.md``) and ``train``: ``gan_opt``, ``cluster_opt``
    (``ClusterGrainedContrastiveLoss``), optional ``consistency_opt`` (L1), ``optim_g`` (student + cluster head),
    ``optim_d``."""

    OPTION_SCHEMA = {'uniremoval': STAGE2_SCHEMA}

    # ------------------------------------------------------------------ networks, losses, optimisers
    def setup_networks(self):
        self.net_g = self.build_net('network_g')

    def setup_training_networks(self):
        uopt, where = self.opt['uniremoval'], f'{self.opt.get("opt_path", "")}: '
        self.net_d = self.build_net('network_d', 'net_d')
        self.anchor_net = deepcopy(bare(self.net_g)).eval().requires_grad_(False)  # the stage-1 student, frozen
        try:
            encoder = build_encoder(uopt['cluster_encoder'], self.net_g, self.net_d,
                                    f'{where}uniremoval.cluster_encoder')
        except ValueError as err:
            raise OptionError(str(err)) from None
        self.cluster_encoder = encoder.to(self.device)
        bank = _ClusterBank(sum(self.cluster_encoder.channels()), uopt['cluster_dim'], uopt['queue_size'])
        self.bank = self.add_net('net_cluster', bank)

    def setup_losses(self):
        return self.build_losses(required=('gan', 'cluster'), optional=('consistency', ))

    def setup_optimizers(self):
        self.add_optimizer('g', list(self.net_g.parameters()) + list(self.bank.parameters()), 'optim_g')
        self.add_optimizer('d', self.net_d.parameters(), 'optim_d')

    # ------------------------------------------------------------------ one iteration
    def optimize_parameters(self, current_iter):
        log = OrderedDict()
        with self.autocast():
            self.output = self.net_g(self.lq).float()
        self.step_d(log)
        pos, neg = self.step_g(log)
        bare(self.bank).pos_queue.push(pos)
        bare(self.bank).neg_queue.push(neg)
        self.reduce_loss_dict(log)
        self.update_ema()

    def step_d(self, log):
        """The discriminator: real clean images against the (detached) adapted outputs; then frozen."""
        set_requires_grad(self.net_d, True)
        self.zero_grad('d')
        log['l_d'] = discriminator_loss(self.losses['gan'], self.net_d, self.gt, self.output)
        self.backward_step(log['l_d'], 'd')
        set_requires_grad(self.net_d, False)

    def step_g(self, log):
        """The student and the cluster head: GAN + cluster-grained contrast (+ consistency). Returns this batch's
        positive and negative embeddings for the queues."""
        out, x, y = self.output, self.lq, self.gt
        self.zero_grad('g')
        total = self.losses['gan'](bare(self.net_d)(out), True, is_disc=False)  # frozen: no DDP reduction to wait
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
        log['l_total'] = total
        self.backward_step(total, 'g')
        return pos, neg
