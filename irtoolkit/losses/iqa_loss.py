"""Any pyiqa metric as a training loss: ``{type: IQALoss, metric: dists}`` (``lpips``, ``ssim``, ``ms_ssim``, ...).

pyiqa: Chen, Mo, "IQA-PyTorch: PyTorch Toolbox for Image Quality Assessment", 2022,
https://github.com/chaofengc/IQA-PyTorch; each metric is defined by its own paper (pyiqa's model card lists them;
e.g. DISTS: Ding et al., TPAMI 2020; LPIPS: Zhang et al., CVPR 2018). The metric is built by
``pyiqa.create_metric(metric, as_loss=True)`` through :func:`irtoolkit.utils.pyiqa_offline.build_pyiqa_metric`, the
same offline loader the evaluation uses: its weights come from the irtoolkit weights folder, and a missing file
raises ``MissingWeightsError`` naming the file and the folder to put it in (``irtk-weights`` lists every metric's
files). Nothing is downloaded.

Direction (pyiqa's ``lower_better`` flag of the metric):

    loss = loss_weight * score            lower-is-better metrics (lpips, dists, gmsd, pieapp, niqe, ...)
    loss = loss_weight * (1 - score)      higher-is-better metrics (ssim, ms_ssim, fsim, vif, psnr, musiq, ...)

``1 - score`` is 0 at a perfect match for the similarity indices bounded by 1 (SSIM, MS-SSIM, FSIM, ...); for other
ranges (PSNR in dB, MUSIQ's 0..100) it only shifts the logged value: the gradient is always that of ``-score``.
Full-reference metrics compare ``pred`` with ``target``; no-reference ones score ``pred`` alone (``target`` is
ignored). pyiqa's input-range check is off in loss mode, so unclamped network outputs pass. The metric network is
frozen and stays in eval mode. A metric that does not back-propagate (no gradient reaches ``pred``) is refused at
the first call, naming it.

Shapes: pred, target (B, C, H, W) RGB in [0, 1]; returns a scalar (``reduction: none``: per image, (B,)).
"""
import difflib

from torch import nn

from irtoolkit.utils.errors import OptionError, UserError
from irtoolkit.utils.pyiqa_offline import build_pyiqa_metric
from irtoolkit.utils.registry import LOSS_REGISTRY


@LOSS_REGISTRY.register()
class IQALoss(nn.Module):
    """A pyiqa metric as a loss, oriented so that lower is better (see the module docstring).

    Args:
        metric: pyiqa metric name (``pyiqa.list_models()``).
        loss_weight: multiplier.
        reduction: ``mean`` over the batch or ``none`` (per image).
        metric_opts: options of the metric passed to pyiqa (e.g. ``{test_y_channel: false}`` for ``ssim``).
    """

    def __init__(self, metric, loss_weight=1.0, reduction='mean', metric_opts=None):
        super().__init__()
        if reduction not in ('mean', 'none'):
            raise OptionError(f'IQALoss: reduction must be mean or none, got {reduction!r}')
        if not isinstance(metric, str):
            raise OptionError(f'IQALoss: metric must be a pyiqa metric name, got {metric!r}')
        try:
            self.metric = build_pyiqa_metric(metric, 'cpu', purpose=f'loss IQALoss ({metric})', as_loss=True,
                                             loss_reduction='none', **dict(metric_opts or {}))
        except KeyError:
            import pyiqa
            close = difflib.get_close_matches(metric, pyiqa.list_models(), n=5, cutoff=0.5)
            hint = f'closest: {", ".join(close)}' if close else 'see pyiqa.list_models()'
            raise OptionError(f'IQALoss: unknown pyiqa metric {metric!r}; {hint}') from None
        self.metric.requires_grad_(False)
        self.name = metric
        self.lower_better = bool(self.metric.lower_better)
        self.full_reference = self.metric.metric_mode == 'FR'
        self.loss_weight, self.reduction = loss_weight, reduction

    def train(self, mode=True):  # the metric network stays frozen in eval mode whatever the model does
        super().train(mode)
        self.metric.eval()
        return self

    def forward(self, pred, target):
        score = self.metric(pred, target.detach()) if self.full_reference else self.metric(pred)
        if pred.requires_grad and not score.requires_grad:
            raise UserError(f'IQALoss: pyiqa metric {self.name} gives no gradient to the prediction (it is not '
                            'differentiable); use it for evaluation only')
        score = score.reshape(pred.shape[0], -1).mean(dim=1).to(pred.dtype)
        loss = score if self.lower_better else 1 - score
        return self.loss_weight * (loss.mean() if self.reduction == 'mean' else loss)
