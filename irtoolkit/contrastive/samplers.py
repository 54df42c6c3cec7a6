"""Patch samplers: where to take contrastive patches, as normalised (y, x) coordinates per image.

A sampler looks at a *guide* tensor (B, C, H, W) (an image or a feature map) and returns ``coords`` of shape
(B, P, 2) with values in [0, 1): the centre of each chosen cell divided by the guide's size. :func:`gather`
maps the same coordinates onto any feature map (B, C_l, H_l, W_l) by ``floor(y * H_l)``, so one set of
locations serves every layer of a strided encoder and any crop size (notes §3.7, §6.3).

* :class:`RandomPatchSampler` (CUT): P distinct random cells, drawn independently per image (CUT draws one
  set for the whole batch; ``per_image=False`` reproduces that).
* :class:`NonLocalPatchSampler` (NLCL, Ye et al. CVPR 2022): around a random centre, the P patches most
  similar to the centre patch inside a search window (the centre patch itself first). Vectorised with
  ``F.unfold``; any batch size and crop size (the official release only works with batch 1 and 256 px).
* :class:`GridPatchSampler`: a regular grid (every cell with ``stride=1``), for dense use.
"""
import torch
import torch.nn.functional as F

__all__ = ['gather', 'RandomPatchSampler', 'NonLocalPatchSampler', 'GridPatchSampler', 'build_sampler']


def _cell_coords(iy, ix, h, w):
    """Integer cells -> normalised centres, stacked as (..., 2)."""
    return torch.stack(((iy.float() + 0.5) / h, (ix.float() + 0.5) / w), -1)


def gather(feat, coords):
    """Features at ``coords``: (B, C, H, W), (B, P, 2) in [0, 1) -> (B, P, C)."""
    if feat.dim() != 4 or coords.dim() != 3 or coords.shape[-1] != 2 or coords.shape[0] != feat.shape[0]:
        raise ValueError(f'gather: expected feat (B,C,H,W) and coords (B,P,2); got {tuple(feat.shape)} and '
                         f'{tuple(coords.shape)}')
    b, c, h, w = feat.shape
    iy = (coords[..., 0] * h).long().clamp_(0, h - 1)
    ix = (coords[..., 1] * w).long().clamp_(0, w - 1)
    idx = (iy * w + ix).unsqueeze(-1).expand(-1, -1, c)  # (B, P, C)
    return feat.flatten(2).transpose(1, 2).gather(1, idx)


class RandomPatchSampler:
    """``num_patches`` distinct random cells of the guide grid (all cells when there are fewer).

    Args:
        num_patches: P.
        per_image: independent draws per image (default) or one draw shared by the batch (CUT).
    """

    def __init__(self, num_patches=256, per_image=True):
        self.num_patches = int(num_patches)
        self.per_image = per_image

    def __call__(self, guide, num_patches=None, generator=None):
        b, _, h, w = guide.shape
        p = min(num_patches or self.num_patches, h * w)
        rows = b if self.per_image else 1
        scores = torch.rand(rows, h * w, device=guide.device, generator=generator)
        idx = scores.topk(p, dim=1).indices  # distinct cells without a Python loop
        coords = _cell_coords(idx // w, idx % w, h, w)
        return coords.expand(b, -1, -1) if rows == 1 else coords


class GridPatchSampler:
    """Cells of a regular grid with step ``stride`` (``stride=1``: every cell, i.e. dense sampling)."""

    def __init__(self, stride=1):
        self.stride = int(stride)

    def __call__(self, guide, num_patches=None, generator=None):
        b, _, h, w = guide.shape
        iy, ix = torch.meshgrid(torch.arange(0, h, self.stride, device=guide.device),
                                torch.arange(0, w, self.stride, device=guide.device), indexing='ij')
        coords = _cell_coords(iy.flatten(), ix.flatten(), h, w)
        if num_patches and num_patches < coords.shape[0]:  # an even subset of the grid
            keep = torch.linspace(0, coords.shape[0] - 1, num_patches, device=guide.device).round().long()
            coords = coords[keep]
        return coords.unsqueeze(0).expand(b, -1, -1)


class NonLocalPatchSampler:
    """Top-k self-similar patches around a random centre (NLCL's non-local sampling), per image.

    For every image a centre cell is drawn (or given); inside the ``search_size`` x ``search_size`` window of
    patch positions around it, each ``patch_size`` x ``patch_size`` patch of the guide is compared with the
    centre patch (squared L2 of the flattened patch, or 1 - cosine) and the ``num_patches`` closest are kept,
    nearest first, so the first coordinate is the centre itself. Coordinates are patch centres.

    Args:
        num_patches: P (at most the number of positions in the window).
        patch_size: side of the compared patches (NLCL: 16); clipped to the guide size.
        search_size: side of the window of candidate patch positions (NLCL: 40); clipped to the guide.
        stride: step between candidate positions.
        metric: ``'l2'`` (NLCL) or ``'cosine'``.

    Shapes: guide (B, C, H, W) -> coords (B, P, 2). The guide is detached: sampling is not differentiable.
    """

    def __init__(self, num_patches=256, patch_size=16, search_size=40, stride=1, metric='l2'):
        if metric not in ('l2', 'cosine'):
            raise ValueError(f'NonLocalPatchSampler: metric must be l2 or cosine, got {metric!r}')
        self.num_patches, self.patch_size = int(num_patches), int(patch_size)
        self.search_size, self.stride, self.metric = int(search_size), int(stride), metric

    def window(self, h, w):
        """Effective (patch, search) sizes for a guide of size h x w."""
        p = min(self.patch_size, h, w)
        s = min(self.search_size, h - p + 1, w - p + 1)
        return p, s

    def __call__(self, guide, num_patches=None, generator=None, centres=None):
        """``centres``: optional (B, 2) integer top-left positions of the centre patch (tests, reproducibility)."""
        guide = guide.detach()
        b, c, h, w = guide.shape
        p, s = self.window(h, w)
        dev = guide.device
        if centres is None:  # random centre patch (top-left corner), anywhere a patch fits
            cy = (torch.rand(b, device=dev, generator=generator) * (h - p + 1)).long()
            cx = (torch.rand(b, device=dev, generator=generator) * (w - p + 1)).long()
        else:
            cy, cx = centres[:, 0].long().to(dev), centres[:, 1].long().to(dev)
        # window of patch positions around the centre, shifted to stay inside the image
        wy = (cy - s // 2).clamp(0, h - p + 1 - s)
        wx = (cx - s // 2).clamp(0, w - p + 1 - s)
        span = s + p - 1
        rows = wy[:, None] + torch.arange(span, device=dev)  # (B, span)
        cols = wx[:, None] + torch.arange(span, device=dev)
        bidx = torch.arange(b, device=dev)[:, None, None]
        region = guide.permute(0, 2, 3, 1)[bidx, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
        patches = F.unfold(region, p, stride=self.stride)  # (B, C*p*p, L)
        n_side = (s - 1) // self.stride + 1
        centre = guide.permute(0, 2, 3, 1)[bidx, (cy[:, None] + torch.arange(p, device=dev))[:, :, None],
                                           (cx[:, None] + torch.arange(p, device=dev))[:, None, :]]
        centre = centre.permute(0, 3, 1, 2).flatten(1)  # (B, C*p*p), same ordering as unfold
        if self.metric == 'l2':
            dist = (patches - centre[:, :, None]).pow(2).sum(1)
        else:
            dist = 1 - F.cosine_similarity(patches, centre[:, :, None], dim=1)
        k = min(num_patches or self.num_patches, dist.shape[1])
        # the centre is always in the window (distance 0): make it first even when other patches tie with it
        cpos = ((cy - wy) // self.stride) * n_side + (cx - wx) // self.stride
        on_grid = ((cy - wy) % self.stride == 0) & ((cx - wx) % self.stride == 0)
        dist = dist.scatter(1, cpos[:, None], torch.where(on_grid, -1.0, dist.gather(1, cpos[:, None])[:, 0])[:, None])
        idx = dist.topk(k, dim=1, largest=False).indices  # (B, k)
        py = wy[:, None] + (idx // n_side) * self.stride + p // 2  # patch centre cell
        px = wx[:, None] + (idx % n_side) * self.stride + p // 2
        return _cell_coords(py, px, h, w)


def build_sampler(opt, default='random'):
    """A sampler from options: ``{type: random|nonlocal|grid, ...}`` (class names also accepted)."""
    opt = dict(opt or {})
    kind = str(opt.pop('type', default)).lower()
    classes = {'random': RandomPatchSampler, 'randompatchsampler': RandomPatchSampler,
               'nonlocal': NonLocalPatchSampler, 'nonlocalpatchsampler': NonLocalPatchSampler,
               'grid': GridPatchSampler, 'gridpatchsampler': GridPatchSampler}
    if kind not in classes:
        raise ValueError(f'sampler.type: unknown sampler {kind!r}; use random, nonlocal or grid')
    try:
        return classes[kind](**opt)
    except TypeError as err:
        raise ValueError(f'sampler ({kind}): {err}') from None
