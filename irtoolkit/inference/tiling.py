"""Tiled inference: run a network on overlapping tiles of a large image and blend them back.

Why tiles: a 2048x2048 image through a U-Net keeps several full-resolution feature maps alive at once (GBs on a
CPU, out of memory on small GPUs); tiles bound the peak to a tile's activations plus the output buffers.

How tiles are blended (one axis; the 2-D weight is the product of the two axes): tiles of size ``tile`` start
every ``tile - overlap`` pixels, the last one flush with the image end, so neighbours overlap by at least
``overlap``. Inside an overlap of length ``ov`` a tile's weight is 0 for the ``margin`` pixels next to its inner
edge, then ramps linearly to 1 over ``ov - 2 * margin`` pixels; the two weights of a pair sum to 1. Edges on the
image border keep weight 1. So a network whose receptive field reaches at most ``margin`` pixels gives exactly the
untiled output (its tile outputs are only wrong within that reach of an inner edge, where the weight is 0), and
a network with global operations (NAFNet's channel attention pools the whole input) shows no seams.

``align``: tile starts and size are multiples of it (and the image is zero-padded at the bottom/right to a
multiple of it first, as NAFNet pads), so stride-2 down-sampling sees the same pixel grid in a tile as in the
whole image. An image no larger than one tile is passed whole: the result is the untiled output, bit for bit.
"""
import logging
import math

import torch
import torch.nn.functional as F
from tqdm import tqdm

from irtoolkit.utils.memory import keep_freed_memory

logger = logging.getLogger('irtoolkit')


def tile_starts(length, tile, overlap, align=1):
    """Start offsets covering ``[0, length)`` with tiles of ``tile`` pixels overlapping by >= ``overlap``."""
    if length <= tile:
        return [0]
    stride = max(align, (tile - overlap) // align * align)
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return starts


def axis_weights(length, tile, starts, margin, dtype=torch.float32):
    """Per-tile 1-D blending weights (len(starts), tile) for tiles at ``starts`` on an axis of ``length``."""
    n = min(tile, length)
    weights = torch.ones(len(starts), n, dtype=dtype)
    pos = torch.arange(n, dtype=torch.float64) + 0.5  # distance of each pixel centre from the tile's left edge
    for k, s in enumerate(starts):
        if k > 0:  # inner left edge: overlap with the previous tile
            ov = starts[k - 1] + n - s
            weights[k] *= ((pos - margin) / max(ov - 2 * margin, 1)).clamp(0, 1).to(dtype)
        if k < len(starts) - 1:  # inner right edge
            ov = s + n - starts[k + 1]
            weights[k] *= ((n - pos - margin) / max(ov - 2 * margin, 1)).clamp(0, 1).to(dtype)
    return weights


def _as_output(result):
    """Networks may return a tensor, a tuple/list (first item is the image) or a dict with 'output'/'out'."""
    if torch.is_tensor(result):
        return result
    if isinstance(result, (list, tuple)) and result and torch.is_tensor(result[0]):
        return result[0]
    if isinstance(result, dict):
        for key in ('output', 'out', 'result'):
            if key in result:
                return result[key]
    raise TypeError(f'network returned {type(result).__name__}; expected an image tensor')


def _net_device(net, default):
    params = next(iter(net.parameters()), None) if hasattr(net, 'parameters') else None
    return params.device if params is not None else default


@torch.inference_mode()
def tiled_forward(net, img, tile=256, overlap=32, margin=None, align=1, batch_size=1, out_device=None,
                  progress=False, device=None, exact=False):
    """Restore ``img`` (1, C, H, W) with ``net`` tile by tile; returns (1, C_out, H*s, W*s) for scale ``s``.

    Args:
        net: callable on (B, C, h, w).
        tile: tile size (rounded down to a multiple of ``align``); ``None`` or 0 runs the whole image at once.
        overlap: minimum overlap of neighbouring tiles; ``margin`` (default ``overlap // 4``) is the border of
            each inner tile edge that gets zero weight. ``overlap > 2 * margin`` is required.
        align: tile starts/sizes are multiples of this (the network's down-sampling factor, e.g. 2**levels).
        batch_size: tiles per forward pass.
        out_device: where the blended output is accumulated (default: the device of ``img``).
        device: where the network runs (default: its parameters' device). ``img`` may stay on the CPU: each
            batch of tiles goes to ``device`` only when it runs.
        exact: False: blended tiles; True: the exact schedule of :mod:`irtoolkit.inference.exact_tiling` (output
            equal to the whole-image output; ValueError for a network without one); 'auto': exact when
            :func:`~irtoolkit.inference.exact_tiling.supports_exact_tiling`, else blended tiles. ``overlap``,
            ``margin``, ``align`` and ``batch_size`` apply to blended tiles only.
    """
    if img.dim() != 4 or img.shape[0] != 1:
        raise ValueError(f'tiled_forward expects one image (1, C, H, W), got {tuple(img.shape)}')
    if exact not in (False, True, 'auto'):
        raise ValueError(f"tiled_forward: exact must be False, True or 'auto', got {exact!r}")
    if exact:
        from irtoolkit.inference.exact_tiling import exact_tiled_forward, supports_exact_tiling
        if exact is True or supports_exact_tiling(net):
            return exact_tiled_forward(net, img, tile or max(img.shape[-2:]), device=device, out_device=out_device,
                                       progress=progress)
    device = torch.device(device) if device is not None else _net_device(net, img.device)
    if device.type == 'cpu':
        keep_freed_memory()
    _, _, h, w = img.shape
    if not tile or (h <= tile and w <= tile):
        return _as_output(net(img.to(device))).to(out_device or img.device)
    margin = overlap // 4 if margin is None else margin
    tile = max(align, tile // align * align)
    if overlap <= 2 * margin or overlap >= tile:
        raise ValueError(f'need 2 * margin < overlap < tile, got margin {margin}, overlap {overlap}, tile {tile}')
    hp, wp = math.ceil(h / align) * align, math.ceil(w / align) * align
    x = F.pad(img, (0, wp - w, 0, hp - h)) if (hp, wp) != (h, w) else img
    th, tw = min(tile, hp), min(tile, wp)
    ys, xs = tile_starts(hp, th, overlap, align), tile_starts(wp, tw, overlap, align)
    wy, wx = axis_weights(hp, th, ys, margin), axis_weights(wp, tw, xs, margin)
    coords = [(i, j) for i in range(len(ys)) for j in range(len(xs))]
    blend = _Blend(hp, wp, th, tw, ys, xs, wy, wx, out_device or img.device)
    bar = tqdm(total=len(coords), unit='tile', desc='tiles', disable=not progress, leave=False)
    for b in range(0, len(coords), batch_size):
        chunk = coords[b:b + batch_size]
        batch = torch.cat([x[..., ys[i]:ys[i] + th, xs[j]:xs[j] + tw] for i, j in chunk])
        blend.add(chunk, _as_output(net(batch.to(device, non_blocking=True))))
        bar.update(len(chunk))
    bar.close()
    return blend.result()[None, :, :h * blend.scale, :w * blend.scale]


def is_out_of_memory(err):
    return isinstance(err, torch.cuda.OutOfMemoryError) or 'out of memory' in str(err).lower()


def auto_tile(net, device, align=1, channels=3, fraction=0.5, probe=128, largest=2048):
    """A tile size whose activations fit in ``fraction`` of the device's free memory: one probe forward of a
    ``probe`` px tile measures the peak bytes per pixel (CUDA). On the CPU: 512."""
    device = torch.device(device)
    if device.type != 'cuda':
        return 512
    free, _ = torch.cuda.mem_get_info(device)
    torch.cuda.reset_peak_memory_stats(device)
    start = torch.cuda.memory_allocated(device)
    with torch.inference_mode():
        net(torch.zeros(1, channels, probe, probe, device=device))
    per_pixel = max(torch.cuda.max_memory_allocated(device) - start, 1) / probe ** 2
    side = int(math.sqrt(free * fraction / per_pixel))
    return max(align, min(largest, side) // align * align)


def tiled_forward_fit(net, img, tile='auto', min_tile=64, align=1, **kwargs):
    """:func:`tiled_forward` that fits the device: ``tile='auto'`` from free memory (:func:`auto_tile`), and on an
    out-of-memory error the tile is halved and the image run again (down to ``min_tile``)."""
    device = torch.device(kwargs.get('device') or _net_device(net, img.device))
    if tile == 'auto':
        tile = auto_tile(net, device, align, img.shape[1])
    while True:
        try:
            return tiled_forward(net, img, tile, align=align, **kwargs)
        except (torch.cuda.OutOfMemoryError, RuntimeError) as err:
            floor, effective = max(min_tile, align), min(tile or max(img.shape[-2:]), max(img.shape[-2:]))
            if not is_out_of_memory(err) or effective <= floor:
                raise
            smaller = max(floor, (effective // 2) // align * align)
            if device.type == 'cuda':
                torch.cuda.empty_cache()
            logger.warning(f'out of memory with {tile or "no"} tiles on {device}; retrying with {smaller} px tiles')
            tile = smaller


class _Blend:
    """Weighted sum of output tiles on ``out_device`` (float32); the scale comes from the first output."""

    def __init__(self, hp, wp, th, tw, ys, xs, wy, wx, out_device):
        self.hp, self.wp, self.th, self.tw, self.ys, self.xs = hp, wp, th, tw, ys, xs
        self.wy, self.wx, self.device, self.acc = wy, wx, out_device, None

    def _start(self, out):
        self.scale = scale = out.shape[-1] // self.tw
        if out.shape[-2] != self.th * scale or out.shape[-1] != self.tw * scale:
            raise ValueError(f'network output {tuple(out.shape[-2:])} is not an integer multiple of the tile '
                             f'{(self.th, self.tw)}')
        self.acc = torch.zeros(out.shape[1], self.hp * scale, self.wp * scale, device=self.device)
        self.weight_sum = torch.zeros(1, self.hp * scale, self.wp * scale, device=self.device)
        self.wy_s = self.wy.repeat_interleave(scale, dim=1).to(self.device)
        self.wx_s = self.wx.repeat_interleave(scale, dim=1).to(self.device)

    def add(self, chunk, out):
        out = out.to(self.device, torch.float32)
        if self.acc is None:
            self._start(out)
        s = self.scale
        for k, (i, j) in enumerate(chunk):
            wgt = self.wy_s[i][:, None] * self.wx_s[j][None, :]
            y0, x0 = self.ys[i] * s, self.xs[j] * s
            region = (slice(None), slice(y0, y0 + self.th * s), slice(x0, x0 + self.tw * s))
            self.acc[region] += out[k] * wgt
            self.weight_sum[region] += wgt

    def result(self):
        return self.acc / self.weight_sum


def tiled_forward_whole_image_pooling(net, img, pools, **kwargs):
    """Diagnostic: ``net(img)`` and :func:`tiled_forward` with the global-pooling modules ``pools`` fed their
    whole-image outputs, so every tile sees the statistics of the full image. Returns ``(untiled, tiled)``.

    It separates the tiling error (alignment, padding, blending) from a network's own dependence on global
    statistics (NAFNet's channel attention pools the whole input). ``kwargs`` go to :func:`tiled_forward`.
    """
    whole = {}
    hooks = [p.register_forward_hook(lambda mod, inp, out: whole.__setitem__(mod, out)) for p in pools]
    try:
        with torch.inference_mode():
            full = net(img)
    finally:
        for h in hooks:
            h.remove()
    hooks = [p.register_forward_hook(lambda mod, inp, out: whole[mod].expand(inp[0].shape[0], -1, -1, -1))
             for p in pools]
    try:
        with torch.inference_mode():
            tiled = tiled_forward(net, img, **kwargs)
    finally:
        for h in hooks:
            h.remove()
    return full, tiled
