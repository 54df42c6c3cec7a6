"""Experiment tracking with Weights & Biases (``logger.wandb``; the optional ``wandb`` package).

``logger.wandb: {project, entity, name, resume_id, mode, tags}`` (``--describe BaseModel``) logs, on rank 0, the
training scalars (at ``print_freq``, as TensorBoard gets them), the validation metrics and one sample image per
validation set (input | output | ground truth). The run id is kept in ``experiments/<name>/wandb_id``, so
``--auto_resume`` continues the same W&B run; ``resume_id`` names the run to continue explicitly. ``mode: offline``
(or ``WANDB_MODE=offline``) writes the run under ``experiments/<name>/wandb`` without network, for ``wandb sync``
later. TensorBoard stays the default.
"""
import os.path as osp
import secrets
import string

import torch
import torch.nn.functional as F

from irtoolkit.utils.errors import OptionError

__all__ = ['WandbTracker', 'build_tracker', 'sample_strip']


class WandbTracker:
    """Scalars, metrics and images of one run into one W&B run (rank 0 only)."""

    def __init__(self, opt, run, resumed):
        try:
            import wandb
        except ImportError:
            raise OptionError(f'{run.where("logger.wandb")}the wandb package is not installed '
                              "(pip install 'irtoolkit[wandb]')") from None
        self.wandb, wopt = wandb, opt['logger']['wandb']
        exp = run.paths['experiments_root']
        id_file = osp.join(exp, 'wandb_id')
        run_id = wopt.get('resume_id') or (open(id_file).read().strip() if resumed and osp.isfile(id_file) else None)
        # secrets, not the seeded streams: a new id must not shift the training's random draws
        run_id = run_id or ''.join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
        self.run = wandb.init(project=wopt['project'], entity=wopt.get('entity'), name=wopt.get('name') or opt['name'],
                              id=run_id, resume='allow', dir=exp, mode=wopt.get('mode'), tags=wopt.get('tags'),
                              config={k: v for k, v in opt.items() if k != 'path'})
        with open(id_file, 'w') as f:
            f.write(run_id)

    def log(self, values, step):
        self.run.log(dict(values), step=step)

    def log_images(self, images, step):
        """``{name: (C, H, W) tensor in [0, 1]}`` as W&B images."""
        as_u8 = {k: (v.float().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
                 for k, v in images.items()}
        self.run.log({k: self.wandb.Image(v) for k, v in as_u8.items()}, step=step)  # float arrays: read as 0..255

    def finish(self):
        self.run.finish()


def build_tracker(opt, run, resumed):
    """A :class:`WandbTracker` when ``logger.wandb.project`` is set (rank 0), else None."""
    wopt = opt['logger'].get('wandb') or {}
    if not wopt.get('project') or run.rank != 0:
        return None
    return WandbTracker(opt, run, resumed)


@torch.no_grad()
def sample_strip(model, loader):
    """Input | output | ground truth of the first validation image, side by side (input resized to the output)."""
    if not hasattr(model, 'get_current_visuals'):
        return None
    model.feed_data(next(iter(loader)))
    model.test()
    vis = model.get_current_visuals()
    out = vis['result'][:1].float()
    parts = [F.interpolate(vis['lq'][:1].float(), size=out.shape[-2:], mode='nearest'), out]
    if 'gt' in vis and vis['gt'].shape[-2:] == out.shape[-2:]:
        parts.append(vis['gt'][:1].float())
    return torch.cat(parts, -1)[0]
