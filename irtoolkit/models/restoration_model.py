"""RestorationModel: supervised image restoration (LQ -> GT) with pixel/perceptual losses, EMA and validation."""
import os
import os.path as osp
from collections import OrderedDict

import torch
from basicsr.utils import imwrite, tensor2img
from tqdm import tqdm

from irtoolkit.metrics.calculate import MetricSet
from irtoolkit.models.base_model import BaseModel
from irtoolkit.utils.registry import MODEL_REGISTRY, build_loss


@MODEL_REGISTRY.register()
class RestorationModel(BaseModel):
    """One network ``network_g`` trained on pairs; losses from ``train.<name>_opt`` summed with their weights.

    Options: ``train.pixel_opt`` (e.g. ``{type: L1Loss, loss_weight: 1.0}``), optional ``train.perceptual_opt``
    and any other ``train.*_opt`` naming a registered loss called as ``loss(output, gt)``. Logged as ``l_<name>``.
    """

    def __init__(self, opt):
        super().__init__(opt)
        self.net_g = self.build_net('network_g')
        if self.is_train:
            self.init_training_settings()

    def init_training_settings(self):
        self.net_g.train()
        self.setup_ema('net_g')
        self.losses = self.build_losses()
        self.add_optimizer('g', self.net_g.parameters(), 'optim_g')
        self.setup_schedulers()

    def build_losses(self, skip=()):
        train_opt = self.opt['train']
        losses = OrderedDict()
        for key in sorted(k for k in train_opt if k.endswith('_opt') and k not in skip):
            losses[key[:-4]] = build_loss(train_opt[key], f'train.{key}').to(self.device)
        if not losses:
            raise ValueError(f'{self.opt.get("opt_path", "")}: train: no loss given (e.g. pixel_opt: {{type: L1Loss}})')
        return losses

    def feed_data(self, data):
        self.lq = data['lq'].to(self.device, non_blocking=True)
        self.gt = data['gt'].to(self.device, non_blocking=True) if 'gt' in data else None

    def compute_losses(self, output, gt):
        loss_dict = OrderedDict()
        total = 0
        for name, loss_fn in self.losses.items():
            value = loss_fn(output, gt)
            if isinstance(value, tuple):  # basicsr's PerceptualLoss returns (percep, style)
                for sub, v in zip(('', '_style'), value):
                    if v is not None:
                        loss_dict[f'l_{name}{sub}'] = v
                        total = total + v
            else:
                loss_dict[f'l_{name}'] = value
                total = total + value
        return total, loss_dict

    def optimize_parameters(self, current_iter):
        self.optimizers['g'].zero_grad(set_to_none=True)
        with self.autocast():
            self.output = self.net_g(self.lq)
        total, loss_dict = self.compute_losses(self.output.float(), self.gt)
        self.backward_step(total, 'g')
        self.reduce_loss_dict(loss_dict)
        self.update_ema()

    @torch.no_grad()
    def test(self):
        net = self.inference_net('net_g')
        was_training = net.training
        net.eval()
        self.output = net(self.lq)
        net.train(was_training)

    def get_current_visuals(self):
        out = OrderedDict(lq=self.lq.detach().cpu(), result=self.output.detach().cpu())
        if self.gt is not None:
            out['gt'] = self.gt.detach().cpu()
        return out

    def validation(self, dataloader, current_iter, tb_logger=None, save_img=False, logger=None):
        """Run the inference network over ``dataloader``; metrics on the un-padded output; rank 0 only."""
        if self.rank != 0:
            return {}
        val_opt = self.opt.get('val') or {}
        dataset_name = dataloader.dataset.opt.get('name', 'val')
        metrics = MetricSet(val_opt.get('metrics'), device=self.device)
        show = val_opt.get('pbar', False)
        pbar = tqdm(total=len(dataloader), unit='image', desc=f'val {dataset_name}', disable=not show)
        for idx, data in enumerate(dataloader):
            self.feed_data(data)
            self.test()
            visuals = self.get_current_visuals()
            name = osp.splitext(osp.basename(_first(data.get('lq_path'), f'{idx:04d}')))[0]
            if len(metrics) and 'gt' in visuals:
                metrics.update(visuals['result'][:1].float(), visuals['gt'][:1].float(), name)
            elif len(metrics):
                metrics.update(visuals['result'][:1].float(), None, name)
            if save_img and idx < val_opt.get('max_save_images', 10 ** 9):
                self.save_visual(visuals['result'], dataset_name, name, current_iter)
            pbar.update(1)
        pbar.close()
        results = metrics.results()
        self.log_validation(dataset_name, results, metrics, current_iter, tb_logger, logger)
        return results

    def save_visual(self, image, dataset_name, name, current_iter):
        vis_root = self.opt['path']['visualization']
        if self.is_train:
            path = osp.join(vis_root, dataset_name, f'{name}_{current_iter}.png')
        else:
            suffix = (self.opt.get('val') or {}).get('suffix')
            path = osp.join(vis_root, dataset_name, f'{name}_{suffix or self.opt["name"]}.png')
        os.makedirs(osp.dirname(path), exist_ok=True)
        imwrite(tensor2img(image[:1].float()), path)


def _first(value, default):
    if isinstance(value, (list, tuple)):
        return value[0] if value else default
    return value if value is not None else default
