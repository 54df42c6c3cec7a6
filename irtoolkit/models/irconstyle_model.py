"""IRConStyleModel: ConStyle v2's second stage (Fan et al., arXiv 2406.18242).

A ConStyle prior pre-trained on its own (``ConStylePretrainModel``, or any checkpoint holding ConStyle weights) is
loaded into ``net_g.ConStyle``, frozen (no gradients), and only the backbone trains with the image losses
(``train.pixel_opt`` ...). The frozen prior's BatchNorm follows ``constyle.frozen_bn`` (``eval``: stored statistics,
as in testing; ``train``: upstream's batch statistics, see ``ConStyleModel``). Options:

    path.pretrain_constyle: path        # a ConStyle checkpoint (keys encoder_q.*) or a whole ConStyle<X> one
    path.param_key_constyle: params_ema # default: params_ema when present, else params
    path.strict_load_constyle: true     # after the documented drops below, every key must match

Drops, each logged: the v2 classification head (``*.classifier.*``) when the network has none; the key encoder
and the queue when the network is built with ``Train: false``. A checkpoint without a key encoder loaded into a
``Train: true`` network fills ``encoder_k`` from ``encoder_q`` (it is never used once frozen).
"""
import logging

from irtoolkit.models.constyle_model import CONSTYLE_LOSS_KEYS, ConStyleModel
from irtoolkit.utils.checkpoint import read_state_dict
from irtoolkit.utils.dist import bare
from irtoolkit.utils.registry import MODEL_REGISTRY
from irtoolkit.config.schema import Option

logger = logging.getLogger('irtoolkit')


def constyle_state_from_checkpoint(path, param_key=None):
    """The ConStyle entries of a checkpoint, without any ``module.`` / ``ConStyle.`` prefix."""
    state, _ = read_state_dict(path, param_key or 'auto')
    if any(k.startswith('ConStyle.') for k in state):
        state = {k[len('ConStyle.'):]: v for k, v in state.items() if k.startswith('ConStyle.')}
    if not any(k.startswith('encoder_q.') for k in state):
        raise KeyError(f'{path}: no ConStyle weights (no encoder_q.* or ConStyle.encoder_q.* keys)')
    return state


def load_constyle(constyle, path, param_key=None, strict=True):
    """Load ``path`` into a :class:`~irtoolkit.archs.constyle_arch.ConStyle` module; returns the dropped keys."""
    state = constyle_state_from_checkpoint(path, param_key)
    own = constyle.state_dict()
    dropped = [k for k in state if '.classifier.' in k and k not in own]
    if not constyle.Train:
        dropped += [k for k in state if k.startswith('encoder_k.') or k in ('queue', 'queue_ptr')]
    state = {k: v for k, v in state.items() if k not in set(dropped)}
    if constyle.Train and not any(k.startswith('encoder_k.') for k in state):
        state.update({'encoder_k.' + k[len('encoder_q.'):]: v for k, v in state.items() if k.startswith('encoder_q.')})
        for k in ('queue', 'queue_ptr'):
            state.setdefault(k, own[k])
        logger.info(f'{path}: no key encoder in the checkpoint; encoder_k copied from encoder_q')
    if 'queue' in state and state['queue'].shape != own['queue'].shape:
        logger.info(f'{path}: queue {tuple(state["queue"].shape)} != network queue {tuple(own["queue"].shape)}; '
                    'the network keeps its own queue (unused once frozen)')
        state['queue'], state['queue_ptr'] = own['queue'], own['queue_ptr']
    if dropped:
        logger.info(f'{path}: dropped {len(dropped)} ConStyle entries not in this network '
                    f'(e.g. {dropped[0]})')
    constyle.load_state_dict(state, strict=strict)
    return dropped


@MODEL_REGISTRY.register()
class IRConStyleModel(ConStyleModel):
    """ConStyle v2's second stage: a pre-trained ConStyle prior loaded (``path.pretrain_constyle``) and frozen; only
    the backbone trains, with the image losses."""

    OPTION_SCHEMA = {  # and ConStyleModel's keys (constyle.frozen_bn ...), inherited
        'path': {'pretrain_constyle': Option(str, doc='ConStyle checkpoint (encoder_q.* keys) or a whole ConStyle<X>'),
                 'param_key_constyle': Option(str, doc='checkpoint entry; unset: params_ema when present, else params'),
                 'strict_load_constyle': Option(bool, True, doc='after the documented drops, every key must match')},
    }
    uses_constyle_losses = False

    def setup_networks(self):
        super().setup_networks()
        path_opt = self.opt['path']
        if path_opt.get('pretrain_constyle'):
            if not hasattr(bare(self.net_g), 'ConStyle'):
                raise self.option_error('network_g', f'{type(bare(self.net_g)).__name__} has no ConStyle to load '
                                        'path.pretrain_constyle into')
            load_constyle(bare(self.net_g).ConStyle, path_opt['pretrain_constyle'], path_opt.get('param_key_constyle'),
                          path_opt.get('strict_load_constyle', True))
            logger.info(f'Loaded the ConStyle prior from {path_opt["pretrain_constyle"]}')

    def setup_training_networks(self):
        super().setup_training_networks()
        path_opt = self.opt['path']
        if not path_opt.get('pretrain_constyle') and not path_opt.get('pretrain_network_g'):
            logger.warning('IRConStyleModel: no path.pretrain_constyle: the frozen prior keeps its random weights')
        ignored = [k for k in CONSTYLE_LOSS_KEYS if k in self.opt['train']]
        if ignored:
            logger.info(f'IRConStyleModel: the prior is frozen; ignoring train.{", train.".join(ignored)}')
        self.constyle_iter = -1
        bare(self.net_g).ConStyle.freeze(self.opt['constyle']['frozen_bn'])  # before the EMA copy and the optimiser

    def init_training_settings(self):
        super().init_training_settings()
        self.freeze_constyle(0)  # flags, EMA copy, and a DDP wrapper without the prior's parameters
