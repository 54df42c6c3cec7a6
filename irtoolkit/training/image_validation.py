"""ImageValidation: what every model inherits to be validated and tested on image pairs.

``test`` runs the inference network (the EMA copy when there is one) in eval mode on the fed batch's ``lq``;
``validation`` scores every image with the options' metrics on the un-padded output, keeps the best value of each
metric and logs it (rank 0 only); with ``val.tile`` the network runs tile by tile
(:mod:`irtoolkit.training.validation_tiling`: exact tiles give the whole-image metrics on images larger than
memory); with ``val.save_best`` an improvement of the tracked metric saves the networks as ``*_best``
(:meth:`ImageValidation.track_best`). A model whose validation is not about restored images (e.g. a
prior trained alone) overrides ``validation`` and still uses :meth:`log_validation`.
"""
import logging
import os
import os.path as osp
from collections import OrderedDict

import torch
from basicsr.utils import imwrite, tensor2img
from tqdm import tqdm

from irtoolkit.metrics.calculate import MetricSet
from irtoolkit.training.validation_tiling import TILE_OPTION, tile_settings
from irtoolkit.utils.dist import bare, get_dist_info

__all__ = ['ImageValidation']


class ImageValidation:
    """Mixin of :class:`~irtoolkit.models.base_model.BaseModel` (uses its ``opt``, ``run``, ``batch`` (set by
    ``feed_data``), ``rank``, ``inference_net`` and ``best_metric_results``).

    Distributed, every rank scores its shard of the validation set (the runner gives each rank a sharded loader
    when ``sharded_validation`` is true) and the per-image scores are gathered: every rank returns the numbers one
    process would give."""

    sharded_validation = True
    OPTION_SCHEMA = {'val': {'tile': TILE_OPTION}}
    val_tile = None  # TileSettings of val.tile (setup_validation_tiling); None: whole images

    def setup_validation_tiling(self):
        """Resolve ``val.tile`` once the networks exist: a setting ``net_g`` cannot run with (``exact: true`` without
        an exact schedule, blended tiles no larger than their overlap) is a one-line option error now, not at the
        first validation."""
        self.val_tile = tile_settings(self.opt['val'].get('tile'), self.run.where())
        if self.val_tile is not None and 'net_g' in self.networks:
            forward = self.network_forward(bare(self.networks['net_g']))
            self.val_tile.check(forward, self.run.where())
            logging.getLogger('irtoolkit').info(self.val_tile.describe(forward))

    def network_forward(self, net):
        """The callable :meth:`test` applies to ``lq`` (B, C, H, W), tiled or not: ``net`` itself (a ConStyle network
        computes its latent from ``lq`` inside). A model whose test feeds more than ``lq`` returns a callable of
        ``lq`` here; exact tiling needs the network itself, so such a callable gets blended tiles."""
        return net

    @torch.no_grad()
    def test(self):
        net = self.inference_net('net_g')
        was_training = net.training
        net.eval()
        forward = self.network_forward(net)
        if self.val_tile is None:
            self.output = forward(self.batch['lq'])
        else:
            self.output = self.val_tile.restore(forward, self.batch['lq'])
        net.train(was_training)

    def get_current_visuals(self):
        """``lq``, ``result`` (and ``gt``) on the CPU, (B, C, H, W) contiguous: a training model's batches and
        outputs are channels-last on the CPU by default (``train.channels_last``), metrics and image writers expect
        NCHW."""
        out = OrderedDict(lq=self.batch['lq'].detach().cpu().contiguous(),
                          result=self.output.detach().cpu().contiguous())
        if self.batch.get('gt') is not None:
            out['gt'] = self.batch['gt'].detach().cpu().contiguous()
        return out

    def validation(self, dataloader, current_iter, tb_logger=None, save_img=False, logger=None):
        """Run the inference network over ``dataloader`` (this rank's shard); metrics on the un-padded output,
        gathered over ranks; rank 0 logs them."""
        val_opt = self.opt['val']
        dataset_name = dataloader.dataset.opt.get('name', 'val')
        metrics = MetricSet(val_opt.get('metrics'), device=self.device)
        pbar = tqdm(total=len(dataloader), unit='image', desc=f'val {dataset_name}', disable=not val_opt.get('pbar'))
        for idx, data in enumerate(dataloader):
            self.feed_data(data)
            self.test()
            visuals = self.get_current_visuals()
            name = osp.splitext(osp.basename(_first(data.get('lq_path'), f'{idx:04d}')))[0]
            if len(metrics):
                metrics.update(visuals['result'][:1].float(), visuals['gt'][:1].float() if 'gt' in visuals else None,
                               name)
            if save_img and idx < val_opt.get('max_save_images', 10 ** 9):
                self.save_visual(visuals['result'], dataset_name, name, current_iter)
            pbar.update(1)
        pbar.close()
        metrics.per_image = gather_rows(metrics.per_image)
        results = metrics.results()
        self.log_validation(dataset_name, results, metrics, current_iter, tb_logger, logger if self.rank == 0 else None)
        return results

    def save_visual(self, image, dataset_name, name, current_iter):
        vis_root = self.run.paths['visualization']
        if self.is_train:
            path = osp.join(vis_root, dataset_name, f'{name}_{current_iter}.png')
        else:
            suffix = self.opt['val'].get('suffix')
            path = osp.join(vis_root, dataset_name, f'{name}_{suffix or self.opt["name"]}.png')
        os.makedirs(osp.dirname(path), exist_ok=True)
        imwrite(tensor2img(image[:1].float()), path)

    def log_validation(self, dataset_name, results, metrics, current_iter, tb_logger, logger, count=None):
        """Track the best value of each metric, log them and write them to TensorBoard.

        ``metrics`` answers ``lower_is_better(name)`` (a MetricSet) or is None (higher is better for all).
        """
        best = self.best_metric_results.setdefault(dataset_name, {})
        count = count if count is not None else f'{len(metrics.per_image)} images'
        lines = [f'Validation {dataset_name} ({count})']
        for m, v in results.items():
            lower = metrics is not None and metrics.lower_is_better(m)
            prev = best.get(m)
            if prev is None or (v < prev[0] if lower else v > prev[0]):
                best[m] = (v, current_iter)
            lines.append(f'\t # {m}: {v:.4f}\tBest: {best[m][0]:.4f} @ {best[m][1]} iter')
            if tb_logger is not None:
                tb_logger.add_scalar(f'metrics/{dataset_name}/{m}', v, current_iter)
        saved = self.track_best(dataset_name, results, metrics, current_iter)
        if saved:
            lines.append(saved)
        if logger is not None:
            logger.info('\n'.join(lines))

    def track_best(self, dataset_name, results, metrics, current_iter):
        """``val.save_best`` (:class:`~irtoolkit.training.best_checkpoint.BestCheckpoint`, the model's
        ``best_checkpoint``): when ``results`` of the tracked set beat the best so far, every saved network as
        ``models/<net>_best.*`` (``save('best')``), then ``best.json``; rank 0 writes, training only. Returns the
        log line, or None."""
        tracker = getattr(self, 'best_checkpoint', None)
        if tracker is None or not self.is_train:
            return None
        if not tracker.offer(dataset_name, results, lambda m: metrics is not None and metrics.lower_is_better(m),
                             current_iter):
            return None
        self.save('best')
        if self.rank == 0:
            tracker.write()
        return f'\t new best {tracker.metric} {tracker.value:.4f} @ {current_iter} iter: saved *_best, best.json'


def gather_rows(rows):
    """Every rank's ``(name, scores)`` rows, in one order on every rank (by name): a no-op in one process."""
    _, world = get_dist_info()
    if world == 1:
        return rows
    parts = [None] * world
    torch.distributed.all_gather_object(parts, rows)
    return sorted((row for part in parts for row in part), key=lambda r: r[0])


def _first(value, default):
    if isinstance(value, (list, tuple)):
        return value[0] if value else default
    return value if value is not None else default
