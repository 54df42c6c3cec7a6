"""ConStyleUNet: the "general restoration network" of IRConStyle (Fan et al., arXiv 2402.15784), with its
processing block chosen in the options.

A 3-level U-Net whose widths grow as dim, 2dim, 3dim, 4dim (not doubling). The ConStyle prior enters at three
places: the query encoder's maps at 1/2, 1/4 and 1/8 resolution are concatenated after each down-sampling
(``AffineTransform*`` then ``DC*``), and the latent code multiplies the bottleneck features channel-wise
(``local_fusion(cat[b, b * mlp(latent)])``). Module names are upstream's, so ``ConStyleNAFNet`` and
``ConStyleRestormer`` (subclasses) load upstream checkpoints.

Calls:
    ``net(lq)`` -> restored (B, C, H, W), any H, W (reflect-padded to a multiple of 8 inside, cropped back).
    ``net(lq, gt)`` -> :meth:`forward_train`'s dict (training outputs of ConStyle plus ``output``). Going through
    ``forward`` keeps this valid when the network is wrapped in DistributedDataParallel.
    ``net.restore(inp, latent, feas)`` -> upstream's ``forward(inp_img, q, feas)`` (no padding).

Blocks: ``block`` names any registered module whose first constructor argument is the channel count and that maps
(B, C, H, W) to the same shape (``NAFBlock``, ``RestormerBlock``, ``ResConvBlock`` or a plugin's).
``block_opt`` gives common keyword arguments, ``block_level_opt`` per-stage ones as 7-entry lists in the order
l1, l2, l3, bottom, r3, r2, r1 (e.g. ``{num_heads: [1, 2, 4, 8, 4, 2, 1]}``); refinement blocks use r1's.
"""
import inspect
import logging

import torch
from torch import nn

from irtoolkit.archs.arch_util import crop_to, pad_to_multiple
from irtoolkit.archs.constyle_arch import ConStyle
from irtoolkit.utils.registry import ARCH_REGISTRY, check_kwargs, get_from_registry
from irtoolkit.utils.errors import OptionError

STAGES = ('l1', 'l2', 'l3', 'bottom', 'r3', 'r2', 'r1')
KEY_ENCODER_KEYS = ('ConStyle.queue', 'ConStyle.queue_ptr')  # plus everything under ConStyle.encoder_k.
logger = logging.getLogger('irtoolkit')


class DC(nn.Module):
    """Down-sample and concatenate: conv3x3 (n -> n/4), PixelUnshuffle(2), concat the prior map. Keys ``down.0``."""

    def __init__(self, n_feat):
        super().__init__()
        self.down = nn.Sequential(nn.Conv2d(n_feat, n_feat // 4, 3, padding=1, bias=False), nn.PixelUnshuffle(2))

    def forward(self, x, fea):
        return torch.cat([self.down(x), fea], 1)


class UC(nn.Module):
    """Up-sample and concatenate: conv3x3 (n -> 4n), PixelShuffle(2), concat the skip, 1x1 conv. Keys ``up.0``,
    ``down``."""

    def __init__(self, n_feat, down_in, down_out):
        super().__init__()
        self.up = nn.Sequential(nn.Conv2d(n_feat, n_feat * 4, 3, padding=1, bias=False), nn.PixelShuffle(2))
        self.down = nn.Conv2d(down_in, down_out, 1, bias=False)

    def forward(self, x, skip):
        return self.down(torch.cat([self.up(x), skip], 1))


class AffineTransform(nn.Sequential):
    """1x1 conv (no bias) into ``dim`` channels + LeakyReLU(0.1) (NAFNet file) or PReLU (Restormer file)."""

    def __init__(self, cin, dim, act):
        act_layer = nn.PReLU(dim) if act == 'prelu' else nn.LeakyReLU(0.1, inplace=True)
        super().__init__(nn.Conv2d(cin, dim, 1, bias=False), act_layer)


class ConStyleNet(nn.Module):
    """What every ConStyle network shares: the calls and the checkpoint loader.

    A subclass builds ``self.ConStyle`` (a :class:`~irtoolkit.archs.constyle_arch.ConStyle`) and defines
    ``restore(inp, latent, feas)`` for inputs whose H and W are multiples of ``pad_multiple``; ``pad_input`` may be
    overridden when a backbone needs another padding.

    Calls: ``net(lq)`` -> (B, C, H, W) for any H, W (padded inside, cropped back); ``net(lq, gt)`` ->
    :meth:`forward_train`'s dict.
    """

    pad_multiple = 8  # three PixelUnshuffles and the prior's stride-8 map

    def pad_input(self, x):
        return pad_to_multiple(x, self.pad_multiple, mode='reflect')

    def restore(self, inp, latent, feas):
        raise NotImplementedError

    def forward(self, lq, gt=None):
        if gt is not None:
            return self.forward_train(lq, gt)
        x, size = self.pad_input(lq)
        latent, feas = self.ConStyle.encode(x)
        return crop_to(self.restore(x, latent, feas), size)

    def forward_train(self, lq, gt):
        """Training step: ConStyle's :meth:`~irtoolkit.archs.constyle_arch.ConStyle.train_forward` on (lq, gt)
        (momentum update and enqueue included) plus ``output``, the restored (B, C, H, W) image."""
        if lq.shape != gt.shape:
            raise ValueError(f"{type(self).__name__}.forward_train: lq {tuple(lq.shape)} and gt {tuple(gt.shape)} "
                             "differ")
        x, size = self.pad_input(lq)
        g, _ = self.pad_input(gt)
        out = self.ConStyle.train_forward(x, g)
        out['output'] = crop_to(self.restore(x, out['q'][1], out['feas']), size)
        return out

    def load_checkpoint_state(self, state, strict=True):
        """Load a state dict (upstream or ours). A ``Train=False`` build skips exactly the key encoder and the queue
        (``ConStyle.encoder_k.*``, ``ConStyle.queue``, ``ConStyle.queue_ptr``); everything else is strict."""
        own = self.state_dict()
        if not self.ConStyle.Train:
            skipped = [k for k in state if k.startswith('ConStyle.encoder_k.') or k in KEY_ENCODER_KEYS]
            if skipped:
                logger.info(f'{type(self).__name__} (Train=False): skipping {len(skipped)} key-encoder/queue entries')
            state = {k: v for k, v in state.items() if k not in set(skipped)}
        if 'ConStyle.queue' in state and 'ConStyle.queue' in own and state['ConStyle.queue'].shape != own[
                'ConStyle.queue'].shape:
            raise ValueError(f'{type(self).__name__}: checkpoint queue is {tuple(state["ConStyle.queue"].shape)}, '
                             f'network queue {tuple(own["ConStyle.queue"].shape)}; set constyle_opt.K to match')
        return self.load_state_dict(state, strict=strict)


@ARCH_REGISTRY.register()
class ConStyleUNet(ConStyleNet):
    """The general ConStyle restoration network.

    Args:
        inp_channels / out_channels: image channels (the output adds the input, so they must match).
        dim: base width (a multiple of 4); stage widths dim, 2dim, 3dim, 4dim at H, H/2, H/4, H/8.
        left_blk_num / bottom_blk_num / right_blk_num: blocks per stage ([l1, l2, l3], bottom, [r1, r2, r3]).
        block, block_opt, block_level_opt: the processing block (see the module docstring).
        num_refinement_blocks: blocks at 2*dim before the last conv (Restormer uses 4).
        affine_act: 'lrelu' or 'prelu' for the prior-map projections.
        bias: bias of ``local_fusion`` and of the last conv.
        Train: build ConStyle's key encoder and queue (needed to train; inference builds may use False).
        constyle_opt: other ConStyle arguments (K, m, T, enqueue, num_classes).
    """

    def __init__(self, inp_channels=3, out_channels=3, dim=48, left_blk_num=(2, 2, 2), bottom_blk_num=2,
                 right_blk_num=(2, 2, 2), block='NAFBlock', block_opt=None, block_level_opt=None,
                 num_refinement_blocks=0, affine_act='lrelu', bias=False, Train=True, constyle_opt=None):
        super().__init__()
        if dim % 4:
            raise ValueError(f'{type(self).__name__}: dim must be a multiple of 4 (PixelUnshuffle of dim/4), got {dim}')
        if len(left_blk_num) != 3 or len(right_blk_num) != 3:
            raise ValueError(f'{type(self).__name__}: left_blk_num and right_blk_num need 3 entries')
        if inp_channels != out_channels:
            raise ValueError(f'{type(self).__name__}: the global residual needs inp_channels == out_channels')
        if affine_act not in ('lrelu', 'prelu'):
            raise ValueError(f'{type(self).__name__}: affine_act must be "lrelu" or "prelu", got {affine_act!r}')
        self._block_spec = (block, dict(block_opt or {}), dict(block_level_opt or {}))
        for k, vals in self._block_spec[2].items():
            if not isinstance(vals, (list, tuple)) or len(vals) != len(STAGES):
                raise OptionError(f'block_level_opt.{k}: expected a list of {len(STAGES)} values ({", ".join(STAGES)})')
        counts = dict(l1=left_blk_num[0], l2=left_blk_num[1], l3=left_blk_num[2], bottom=bottom_blk_num,
                      r3=right_blk_num[2], r2=right_blk_num[1], r1=right_blk_num[0])
        widths = dict(l1=dim, l2=dim * 2, l3=dim * 3, bottom=dim * 4, r3=dim * 4, r2=dim * 3, r1=dim * 2)

        self.ConStyle = ConStyle(Train=Train, in_channels=inp_channels, **(constyle_opt or {}))
        self.Preprocess_Module = self._make_preprocess(inp_channels, dim)
        self.Process_Module_l1 = self._stage('l1', widths, counts)
        self.DC1 = DC(dim)
        self.Process_Module_l2 = self._stage('l2', widths, counts)
        self.DC2 = DC(dim * 2)
        self.Process_Module_l3 = self._stage('l3', widths, counts)
        self.DC3 = DC(dim * 3)
        self.Process_Module_bottom = self._stage('bottom', widths, counts)
        self.local_fusion = nn.Conv2d(dim * 8, dim * 3, 1, bias=bias)
        self.UC3 = UC(dim * 3, dim * 6, dim * 4)
        self.Process_Module_r3 = self._stage('r3', widths, counts)
        self.UC2 = UC(dim * 4, dim * 6, dim * 3)
        self.Process_Module_r2 = self._stage('r2', widths, counts)
        self.UC1 = UC(dim * 3, dim * 4, dim * 2)
        self.Process_Module_r1 = self._stage('r1', widths, counts)
        refine = [self._make_block('r1', dim * 2) for _ in range(num_refinement_blocks)]
        self.Finetune_Module = nn.Sequential(*refine, nn.Conv2d(dim * 2, out_channels, 3, padding=1, bias=bias))
        self.mlp = nn.Sequential(nn.Linear(128, dim * 4))
        self.AffineTransform2 = AffineTransform(128, dim, affine_act)
        self.AffineTransform1 = AffineTransform(64, dim, affine_act)
        self.AffineTransform0 = AffineTransform(32, dim, affine_act)

    # ------------------------------------------------------------------ construction hooks
    def _make_preprocess(self, inp_channels, dim):
        return nn.Sequential(nn.Conv2d(inp_channels, dim, 3, padding=1, bias=False))

    def _make_block(self, stage, channels):
        name, common, per_stage = self._block_spec
        cls = get_from_registry(ARCH_REGISTRY, name, 'block')
        kwargs = dict(common)
        kwargs.update({k: v[STAGES.index(stage)] for k, v in per_stage.items()})
        params = [n for n in inspect.signature(cls.__init__).parameters if n != 'self']
        if not params:
            raise OptionError(f'block: {cls.__name__} takes no channel argument')
        check_kwargs(cls.__init__, {params[0]: channels, **kwargs}, 'block_opt', cls.__name__)
        return cls(channels, **kwargs)

    def _stage(self, stage, widths, counts):
        return nn.Sequential(*[self._make_block(stage, widths[stage]) for _ in range(counts[stage])])

    # ------------------------------------------------------------------ forward
    def restore(self, inp, latent, feas):
        """Upstream's ``forward(inp_img, q, feas)``: ``inp`` (B, C, H, W) with H, W multiples of 8."""
        q = self.mlp(latent)[:, :, None, None]
        fea2 = self.AffineTransform2(feas[2])
        fea1 = self.AffineTransform1(feas[1])
        fea0 = self.AffineTransform0(feas[0])
        l1 = self.Process_Module_l1(self.Preprocess_Module(inp))
        l2 = self.Process_Module_l2(self.DC1(l1, fea0))
        l3 = self.Process_Module_l3(self.DC2(l2, fea1))
        b = self.Process_Module_bottom(self.DC3(l3, fea2))
        b = self.local_fusion(torch.cat([b, b * q], 1))
        x = self.Process_Module_r3(self.UC3(b, l3))
        x = self.Process_Module_r2(self.UC2(x, l2))
        x = self.Process_Module_r1(self.UC1(x, l1))
        return self.Finetune_Module(x) + inp
