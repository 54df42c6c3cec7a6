"""UniRemovalStage2Model: Uni-Removal's domain adaptation (Zhang, Yan, Cai, arXiv 2307.05075; notes §4.2). Stage 1
is :class:`~irtoolkit.models.uniremoval_stage1_model.UniRemovalStage1Model`, whose student this stage starts from
(``path.pretrain_network_g``).

Unsupervised, on unpaired real degraded ``lq`` and real clean ``gt``: a PatchGAN ``net_d`` and the
:class:`ClusterGrainedContrastiveLoss` on pooled embeddings — anchors: S(real degraded) through the cluster encoder
(D's layers by default) and head (``net_cluster``); positive cluster: real clean images; negatives: real degraded
inputs. Positives and negatives are *keys* (MoCo, He et al. 2020): computed by a momentum copy of the encoder's
network and of the head (``net_d_m`` / ``net_g_m``, ``net_cluster_m``; EMA ``key_momentum`` after every step), so
the batch's keys and the queued ones (``queue_size``, in ``net_cluster``) come from one slowly moving encoder and do
not go stale as D and the head train. ``key_encoder: live`` takes the keys from the live encoder and head instead;
it refuses a queue, whose entries would then come from many older states.

``key_momentum`` m: after n steps the momentum copy still holds m^n of its initialisation (a random D and head),
so m must fit the run's length. MoCo's 0.999 (the default, and the full recipe's: 0.999^50000 ~ 0) leaves 82 % of
the demo's 200-iteration run's keys to the initial copy; the demo uses 0.98 (time constant 1 / (1 - m) = 50
iterations: 2 % left after 200, and the queue's 128 keys at batch 4 span 32 iterations, under one time constant).
A run whose keys would keep more than 10 % of the initialisation at its end logs a warning.

``consistency_opt`` (L1 to the frozen stage-1 student) is an option, off in the recipes: the paper describes the
stage as GAN + cluster-grained contrast on real images only, and the anchor to the stage-1 student is a choice of
this toolkit's earlier recipe, not the paper's.

One iteration: the discriminator step, then the student step (GAN + cluster contrast [+ consistency]), then the
momentum update of the key encoder and the queues take this batch's keys.
"""
import logging
from collections import OrderedDict
from copy import deepcopy

import torch
import torch.nn.functional as F
from torch import nn

from irtoolkit.config.schema import Option
from irtoolkit.contrastive.encoders import build_encoder
from irtoolkit.contrastive.heads import momentum_update
from irtoolkit.contrastive.queue import EmbeddingQueue
from irtoolkit.contrastive.training import discriminator_loss
from irtoolkit.models.base_model import BaseModel
from irtoolkit.utils.dist import bare
from irtoolkit.utils.registry import MODEL_REGISTRY

logger = logging.getLogger('irtoolkit')

STAGE2_SCHEMA = {
    'cluster_encoder': Option(dict, {'type': 'disc', 'layers': ['body.1']},
                              doc='features pooled into the cluster embedding (default: the discriminator)'),
    'cluster_dim': Option(int, 128, doc='cluster embedding size'),
    'queue_size': Option(int, 256, doc='stored positive and negative keys each (0: batch only)'),
    'key_encoder': Option(str, 'momentum', choices=('momentum', 'live'),
                          doc='keys from a momentum copy of the encoder and head (MoCo), or from the live ones'),
    'key_momentum': Option(float, 0.999, doc="EMA decay of the momentum key encoder (MoCo's 0.999 for long runs; "
                           'a short run needs a smaller one: key_momentum ** total_iter is what is left of the init)'),
}


class _ClusterBank(nn.Module):
    """Embedding head (pooled multi-layer features -> unit vector) and the positive/negative key queues."""

    def __init__(self, in_channels, dim, queue_size):
        super().__init__()
        self.head = nn.Sequential(nn.Linear(in_channels, dim), nn.ReLU(inplace=True), nn.Linear(dim, dim))
        self.pos_queue = EmbeddingQueue(queue_size, dim)
        self.neg_queue = EmbeddingQueue(queue_size, dim)

    def forward(self, feats):
        return embed(self.head, feats)


def embed(head, feats):
    return F.normalize(head(torch.cat([f.mean((2, 3)) for f in feats], 1)), dim=-1)


@MODEL_REGISTRY.register()
class UniRemovalStage2Model(BaseModel):
    """Options: ``uniremoval`` (below; ``docs/contrastive.md``) and ``train``: ``gan_opt``, ``cluster_opt``
    (``ClusterGrainedContrastiveLoss``), optional ``consistency_opt`` (L1 to the stage-1 student), ``optim_g``
    (student + cluster head), ``optim_d``."""

    OPTION_SCHEMA = {'uniremoval': STAGE2_SCHEMA}

    # ------------------------------------------------------------------ networks, losses, optimisers
    def setup_networks(self):
        self.net_g = self.build_net('network_g')

    def setup_training_networks(self):
        uopt = self.opt['uniremoval']
        if uopt['key_encoder'] == 'live' and uopt['queue_size']:
            raise self.option_error('uniremoval.queue_size', 'a queue needs key_encoder: momentum (queued keys of a '
                                    'live encoder come from older, different encoder states)')
        self.net_d = self.build_net('network_d', 'net_d')
        self.cluster_encoder = self._encoder(self.net_g, self.net_d)
        bank = _ClusterBank(sum(self.cluster_encoder.channels()), uopt['cluster_dim'], uopt['queue_size'])
        self.bank = self.add_net('net_cluster', bank)
        self.key_pairs = []  # (momentum copy, live module) pairs, EMA-updated after every step
        if uopt['key_encoder'] == 'momentum':
            kind = (uopt['cluster_encoder'] or {}).get('type', 'self')
            live = {'disc': self.net_d, 'self': self.net_g}.get(kind)
            copy = self.add_net(f'net_{"d" if kind == "disc" else "g"}_m', deepcopy(bare(live)), trainable=False) \
                if live is not None else None
            self.key_encoder = self._encoder(copy, copy) if copy is not None else self.cluster_encoder
            self.key_head = self.add_net('net_cluster_m', deepcopy(bare(self.bank).head), trainable=False)
            self.key_pairs = [(m, bare(n)) for m, n in ((copy, live), (self.key_head, bare(self.bank).head))
                              if m is not None]
            self._check_key_momentum(uopt['key_momentum'])
        else:
            self.key_encoder, self.key_head = self.cluster_encoder, bare(self.bank).head
        self.anchor_net = None
        if self.opt['train'].get('consistency_opt') is not None:  # the stage-1 student, frozen
            self.anchor_net = deepcopy(bare(self.net_g)).eval().requires_grad_(False)

    def _check_key_momentum(self, momentum):
        if not 0 <= momentum < 1:
            raise self.option_error('uniremoval.key_momentum', f'{momentum} is not in [0, 1)')
        left = momentum ** self.opt['train'].get('total_iter', 0)
        if left > 0.1:
            logger.warning(f'UniRemovalStage2Model: uniremoval.key_momentum {momentum} over train.total_iter '
                           f'{self.opt["train"]["total_iter"]}: the key encoder still holds {left:.0%} of its '
                           'initialisation at the end; a smaller momentum lets the keys follow the encoder')

    def _encoder(self, generator, discriminator):
        where = f'{self.run.where()}uniremoval.cluster_encoder'
        return self.checked(lambda: build_encoder(self.opt['uniremoval']['cluster_encoder'], generator, discriminator,
                                                  where), 'uniremoval.cluster_encoder: ').to(self.device)

    def setup_losses(self):
        return self.build_losses(required=('gan', 'cluster'), optional=('consistency', ))

    def setup_optimizers(self):
        self.add_optimizer('g', 'optim_g', ('net_g', 'net_cluster'))
        self.add_optimizer('d', 'optim_d', ('net_d', ))

    # ------------------------------------------------------------------ one iteration
    def train_iteration(self, batch, current_iter):
        x, clean = batch['lq'], batch['gt']
        with self.autocast():
            out = self.net_g(x).float()
        self.optimize('d', self.d_losses, clean, out)
        keys = self.keys(clean, x)
        terms = self.optimize('g', self.g_losses, x, out, keys)
        self.record(l_total=sum(terms.values()))
        self.update_keys()
        self.push_keys(keys)

    def d_losses(self, clean, out):
        """The discriminator: real clean images against the (detached) adapted outputs."""
        return OrderedDict(d=discriminator_loss(self.losses['gan'], self.net_d, clean, out))

    @torch.no_grad()
    def keys(self, clean, degraded):
        """This batch's positive (real clean) and negative (real degraded) keys, from the key encoder and head."""
        return embed(self.key_head, self.key_encoder(clean)), embed(self.key_head, self.key_encoder(degraded))

    def g_losses(self, x, out, keys):
        """The student and the cluster head, D fixed: GAN + cluster-grained contrast of the adapted outputs against
        the batch's and the queued keys (+ consistency)."""
        # the frozen critic through its bare module: a DDP forward whose parameters get no gradient would leave
        # DDP waiting for that reduction
        terms = OrderedDict(g_gan=self.losses['gan'](bare(self.net_d)(out), True, is_disc=False))
        anchors = self.bank(self.cluster_encoder(out))
        pos, neg = keys
        queues = bare(self.bank)
        terms['cluster'] = self.losses['cluster'](anchors, torch.cat((pos, queues.pos_queue.get())),
                                                  torch.cat((neg, queues.neg_queue.get())))
        if 'consistency' in self.losses:
            with torch.no_grad():
                ref = self.anchor_net(x)
            terms['consistency'] = self.losses['consistency'](out, ref)
        return terms

    def update_keys(self):
        """EMA of the key encoder's network and head towards the live ones (MoCo's momentum update)."""
        for momentum_copy, live in self.key_pairs:
            momentum_update(momentum_copy, live, self.opt['uniremoval']['key_momentum'])

    def push_keys(self, keys):
        """The queues take this batch's keys (from the momentum encoder: comparable with the stored ones)."""
        pos, neg = keys
        bare(self.bank).pos_queue.push(pos)
        bare(self.bank).neg_queue.push(neg)
