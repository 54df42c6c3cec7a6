"""Exact tiled inference: the output of ``net(img)`` (to float rounding, measured <= 1e-5 in
``tests/inference/test_exact_tiling.py``) computed tile by tile, for networks with global operations.

Why blended tiles are not enough: NAFNet's simplified channel attention averages every feature map over the whole
input, Restormer's transposed attention L2-normalises q and k over all pixels and sums q k^T over all pixels, and
ConStyle computes one latent per image by global pooling. A tile sees other statistics than the whole image, so
blended tiles change the output (docs/evaluation.md measures 0.01-0.04 on average at 128 px tiles).

The schedule (block level; no recomputation beyond 1-4 px halos):

* Full-size feature maps exist only between stages: at each block boundary, the U-Net skips, the ConStyle maps
  and, inside a block with a global statistic, one intermediate map (NAFBlock: the gated map the attention scales;
  RestormerBlock: v). Everything inside a stage is computed tile by tile.
* A stage is a *sweep*: the output map is cut into core tiles; each core is computed from the input region it
  depends on, the core widened by the stage's local reach (its *halo*: one pixel per 3x3 conv at that resolution)
  and clipped to the image. The stage's own zero padding then acts at the image borders exactly as in the whole
  image, and values spoilt by the cut at inner edges stay inside the halo, which is dropped.
* A block with a global statistic is two sweeps. NAFBlock: sweep 1 (halo 1) computes the gated map
  ``x = SG(dwconv(conv1(LN(inp))))``, stores it and sums it over each core; the mean over all pixels gives the
  channel attention ``s``; sweep 2 (pointwise, halo 0) applies ``conv3(x * s)``, the residual and the FFN.
  RestormerBlock: sweep 1 (halo 1) computes q, k, v, stores v and accumulates per channel sum(q^2), sum(k^2) and
  per head sum over pixels of q k^T; the attention matrix follows exactly (F.normalize's eps 1e-12 included);
  sweep 2 (pointwise) applies it with ``project_out`` folded into one 1x1 conv, plus the residual; sweep 3
  (halo 1) is the FFN. KBBlock_s: its attention pools LN(inp), a pointwise function: sweep 1 only sums it.
  InstanceNorm2d (NLCLResGenerator): the conv before it sums its output and its square per channel; the next
  sweep normalises with the whole map's mean and variance.
* ConStyle's latent: the prior encoder (3x3 convs, stride-2 convs, LeakyReLU, global mean pooling, then an MLP with
  BatchNorm in eval mode) is swept the same way; its maps at 1/2, 1/4, 1/8 are kept (the U-Net consumes them) and
  the pooled sum gives the exact latent.
* The whole image is padded first as the network pads it (NAFNet/KBNet: zeros to ``padder_size``; Restormer and
  ConStyle: reflection to a multiple of 8), so every tile grid lies on the network's down-sampling grid.

Memory: block internals are bounded by the tile: every tile of every level holds about as many activations as a
``tile`` x ``tile`` tile of the first full-resolution map (full-width strips of that area when they are at least 32
rows high, else squares; :class:`Schedule`). Kept full-size: the padded input and the output, 2-3 maps of the
current level (block input, one intermediate, block output) and the U-Net skips; docs/performance.md has the
measured peaks. Maps are channels-last (measured faster on the CPU, docs/performance.md); sums over tiles are
accumulated in float64.

Statistics need the whole map before any output exists, so sweeps run in network order; each full-size map is
written once and read by the next sweep.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from irtoolkit.archs.arch_util import crop_to, pad_to_multiple
from irtoolkit.inference import tiling
from irtoolkit.utils.memory import keep_freed_memory

# modules without spatial reach (elementwise), for the halo of simple conv stages
_POINTWISE = (nn.ReLU, nn.LeakyReLU, nn.PReLU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Identity, nn.Dropout)
_NORMALIZE_EPS = 1e-12  # F.normalize's default, used by Restormer's MDTA


def _unwrap(net):
    """The network inside DataParallel / DistributedDataParallel wrappers."""
    while isinstance(getattr(net, 'module', None), nn.Module):
        net = net.module
    return net


def conv_halo(module):
    """Pixels of context a stack of stride-1 convolutions and elementwise layers needs on each side, or None when
    ``module`` holds anything else (then it is not a simple local stage)."""
    if isinstance(module, nn.Conv2d):
        if module.stride != (1, 1) or module.padding_mode != 'zeros':
            return None
        (kh, kw), (dh, dw) = module.kernel_size, module.dilation
        return max(kh // 2 * dh, kw // 2 * dw)
    if isinstance(module, _POINTWISE):
        return 0
    children = list(module.children())
    if not children or type(module).forward not in (nn.Sequential.forward, _patch_embed_forward()):
        return None
    halos = [conv_halo(c) for c in children]
    return None if None in halos else sum(halos)


def _patch_embed_forward():
    from irtoolkit.archs.restormer_arch import OverlapPatchEmbed
    return OverlapPatchEmbed.forward


def pixel_rows(t):
    """(1, C, h, w) -> (h*w, C): a view when ``t`` is channels-last contiguous."""
    return t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])


def core_pixel_sum(fn, t, core):
    """``fn`` of the (pixels, C) rows of ``t``'s core, for ``fn`` additive over rows (sums, Gram matrices).

    Computed as fn(whole region) - fn(the halo ring): reductions over a cropped view take a strided path ~10x
    slower than over the contiguous region (measured: 224 vs 23 ms for a 512^2 x 32 tile)."""
    ys, xs = core
    h, w = t.shape[-2:]
    if (ys.start, ys.stop, xs.start, xs.stop) == (0, h, 0, w):
        return fn(pixel_rows(t))
    ring = [t[..., :ys.start, :], t[..., ys.stop:, :], t[..., ys, :xs.start], t[..., ys, xs.stop:]]
    ring = torch.cat([pixel_rows(r) for r in ring if r.numel()])
    return fn(pixel_rows(t)) - fn(ring)


# ---------------------------------------------------------------------------------------------------------- blocks
def _block_kind(block):
    from irtoolkit.archs.kbnet_arch import KBBlock_s
    from irtoolkit.archs.nafnet_arch import NAFBlock
    from irtoolkit.archs.res_conv_block_arch import ResConvBlock
    from irtoolkit.archs.restormer_arch import RestormerBlock
    kinds = {NAFBlock: 'naf', RestormerBlock: 'restormer', KBBlock_s: 'kb', ResConvBlock: 'local'}
    kind = kinds.get(type(block))
    if kind == 'naf' and block.training and not isinstance(block.dropout1, nn.Identity):
        return None  # dropout in training mode is random: no exact answer to compare with
    return kind


def _blocks_supported(stages):
    return all(_block_kind(b) is not None for stage in stages for b in stage)


class Schedule:
    """Runs sweeps over full-size maps held on ``store`` (the image's device), computing tiles on ``device``.

    Every tile holds about as many activations as a ``tile`` x ``tile`` core of a full-resolution map of
    ``ref_channels`` channels: a map of C channels and width W is cut into full-width strips of
    ``tile**2 * ref_channels / (C * W)`` rows when that is at least ``min_strip`` (a channels-last strip is one
    contiguous block: no copy in, one memcpy out, and halos only above and below), else into square cores of side
    ``tile * sqrt(ref_channels / C)`` (even, >= 16).
    """

    min_strip = 32  # rows; thinner strips (very wide images) lose more to their halos than square tiles

    def __init__(self, tile, device, store, ref_channels, dtype, progress=False, channels_last=True):
        self.budget = tile * tile * ref_channels
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.device, self.store, self.dtype = device, store, dtype
        self.bar = tqdm(unit='pass', desc='exact tiles', disable=not progress, leave=False)

    def step(self, channels):
        return max(16, int(math.sqrt(self.budget / max(channels, 1))) // 2 * 2)

    def sweep(self, fn, src, out_channels, ratio=1, halo=0, others=(), out=None):
        """Compute a full-size map from ``src`` (1, C, H, W) tile by tile.

        ``fn(src_tile, *other_tiles, core=(ys, xs))`` maps an input region to the output region ``ratio`` times its
        size (ratio 1, 2 or 0.5; for 0.5 the region starts on even pixels and an odd end rounds up, as a padded
        stride-2 conv or PixelUnshuffle does) and returns it, or None for a statistics-only sweep; ``core`` are
        the slices of that output region that the tile owns. ``others`` are full-size maps at the output's
        resolution, cut to the same output region. Returns ``out`` (allocated when None; it may be ``src``'s
        storage only for a pointwise sweep, ``halo`` 0 and ``ratio`` 1).
        """
        _, c, h, w = src.shape
        if ratio == 1:
            ho, wo = h, w
        elif ratio == 2:
            ho, wo = 2 * h, 2 * w
        elif ratio == 0.5:
            ho, wo, halo = -(-h // 2), -(-w // 2), halo + halo % 2
        else:
            raise ValueError(f'sweep ratio must be 1, 2 or 0.5, got {ratio}')
        if out is None and out_channels:
            out = torch.empty(1, out_channels, ho, wo, device=self.store, dtype=src.dtype,
                              memory_format=self.memory_format)
        ystep = xstep = self.step(max(c, out_channels or 0))
        rows = self.budget // (max(c, out_channels or 0) * wo) // 2 * 2
        if rows >= self.min_strip:  # full-width strips: channels-last views of them are contiguous (no copies)
            ystep, xstep = rows, wo

        def region(o0, o1, n):  # input region for output core [o0, o1) on an axis of input length n
            if ratio == 1:
                return max(0, o0 - halo), min(n, o1 + halo)
            if ratio == 2:
                return max(0, o0 // 2 - halo), min(n, -(-o1 // 2) + halo)
            return max(0, 2 * o0 - halo), min(n, 2 * o1 + halo)

        def scaled(r0, r1):
            return (r0 * 2, r1 * 2) if ratio == 2 else (r0, r1) if ratio == 1 else (r0 // 2, -(-r1 // 2))

        for y0 in range(0, ho, ystep):
            y1 = min(y0 + ystep, ho)
            ry0, ry1 = region(y0, y1, h)
            oy0, oy1 = scaled(ry0, ry1)
            for x0 in range(0, wo, xstep):
                x1 = min(x0 + xstep, wo)
                rx0, rx1 = region(x0, x1, w)
                ox0, ox1 = scaled(rx0, rx1)
                tiles = [src[..., ry0:ry1, rx0:rx1]] + [o[..., oy0:oy1, ox0:ox1] for o in others]
                # one copy per tile into the schedule's layout: a strided view would make the layers change
                # layouts (LayerNorm2d returns NCHW for a non-channels-last input)
                tiles = [t.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
                         for t in tiles]
                core = (slice(y0 - oy0, y1 - oy0), slice(x0 - ox0, x1 - ox0))
                res = fn(*tiles, core=core)
                if out is not None:
                    out[..., y0:y1, x0:x1] = res[(..., ) + core]
        self.bar.update(1)
        return out

    def local(self, module, src, out_channels, halo, ratio=1, others=(), combine=None):
        """A sweep of a module without global operations; ``combine(result, *other_tiles)`` joins the others."""
        if combine is None:
            return self.sweep(lambda t, core: module(t), src, out_channels, ratio, halo)
        return self.sweep(lambda t, *o, core: combine(module(t), *o), src, out_channels, ratio, halo, others)

    # ------------------------------------------------------------------ blocks
    def blocks(self, stage, x):
        for block in stage:
            x = getattr(self, f'{_block_kind(block)}_block')(block, x)
        return x

    def _sum(self, acc, t, core):
        """acc (float64, C) += sum of t's core over pixels (see :func:`core_pixel_sum`)."""
        part = core_pixel_sum(lambda m: m.sum(0), t, core).double()
        return part if acc is None else acc + part

    def naf_block(self, blk, inp):
        """NAFBlock (irtoolkit.archs.nafnet_arch): two sweeps; the gated map is kept full-size."""
        acc = [None]

        def gated(t, core):
            x = blk.sg(blk.conv2(blk.conv1(blk.norm1(t))))
            acc[0] = self._sum(acc[0], x, core)
            return x

        gate = self.sweep(gated, inp, blk.conv3.in_channels, halo=1)
        mean = (acc[0] / (inp.shape[2] * inp.shape[3])).to(self.dtype)
        scale = blk.sca[1](mean[None, :, None, None]).flatten()  # (C,) the channel attention
        # conv3(x * s) * beta as one 1x1 conv: columns scaled by s, rows by beta
        beta = blk.beta.flatten()
        weight = blk.conv3.weight * scale[None, :, None, None] * beta[:, None, None, None]
        bias = blk.conv3.bias * beta if blk.conv3.bias is not None else None

        def finish(x, t, core):
            y = t + F.conv2d(x, weight, bias)
            return y + blk.conv5(blk.sg(blk.conv4(blk.norm2(y)))) * blk.gamma

        reuse = gate if gate.shape[1] == inp.shape[1] else None  # pointwise: write over the gated map
        return self.sweep(finish, gate, inp.shape[1], others=(inp, ), out=reuse)

    def restormer_block(self, blk, inp):
        """RestormerBlock (irtoolkit.archs.restormer_arch): statistics + v (halo 1), attention (pointwise), FFN."""
        attn = blk.attn
        heads, c = attn.num_heads, inp.shape[1]
        ch = c // heads
        acc = {}

        def stats(rows):  # (pixels, 3C) rows of q, k, v -> [sum q^2 (C), sum k^2 (C), per head sum q k^T]
            q, k = rows[:, :c], rows[:, c:2 * c]
            gram = [q[:, i * ch:(i + 1) * ch].T @ k[:, i * ch:(i + 1) * ch] for i in range(heads)]
            return torch.cat([(q * q).sum(0), (k * k).sum(0), torch.stack(gram).flatten()]).double()

        def qkv(t, core):
            z = attn.qkv_dwconv(attn.qkv(blk.norm1(t)))
            part = core_pixel_sum(stats, z, core)
            acc['all'] = part if 'all' not in acc else acc['all'] + part
            return z[:, 2 * c:]

        v = self.sweep(qkv, inp, c, halo=1)
        qq, kk, qk = acc['all'].split([c, c, c * ch])
        norm_q = qq.sqrt().clamp_min(_NORMALIZE_EPS).view(heads, ch)
        norm_k = kk.sqrt().clamp_min(_NORMALIZE_EPS).view(heads, ch)
        gram = (qk.view(heads, ch, ch) / (norm_q[:, :, None] * norm_k[:, None, :])).to(self.dtype)
        probs = (gram * attn.temperature).softmax(dim=-1)  # (heads, ch, ch)
        # project_out(attn @ v) as one 1x1 conv: project_out's weight times the block-diagonal attention
        weight = attn.project_out.weight.flatten(1) @ torch.block_diag(*probs)
        bias = attn.project_out.bias

        def attend(vt, t, core):
            return t + F.conv2d(vt, weight[:, :, None, None], bias)

        y = self.sweep(attend, v, c, others=(inp, ), out=v)
        return self.sweep(lambda t, core: t + blk.ffn(blk.norm2(t)), y, c, halo=1)

    def kb_block(self, blk, inp):
        """KBBlock_s (irtoolkit.archs.kbnet_arch): its attention pools LN(inp); then the block with reach 2."""
        from irtoolkit.archs.kbnet_arch import kernel_basis_attention
        acc = [None]

        def pooled(t, core):
            acc[0] = self._sum(acc[0], blk.norm1(t), core)

        self.sweep(pooled, inp, None)
        mean = (acc[0] / (inp.shape[2] * inp.shape[3])).to(self.dtype)
        sca = blk.sca[1](mean[None, :, None, None])

        def block(t, core):  # KBBlock_s.forward with the pooled attention given
            x = blk.norm1(t)
            x1 = blk.conv11(x)
            att = blk.conv2(x) * blk.attgamma + blk.conv211(x)
            uf = blk.conv21(blk.conv1(x))
            x = kernel_basis_attention(uf, att, blk.k, blk.g, blk.b, blk.w) * blk.ga1 + uf
            y = t + blk.conv3(x * x1 * sca) * blk.beta
            return y + blk.conv5(blk.sg(blk.conv4(blk.norm2(y)))) * blk.gamma

        # reach 2: the 5x5 (or 3x3) branch conv11; conv21's 3x3 then the 3x3 kernel basis attention on its output
        return self.sweep(block, inp, inp.shape[1], halo=2)

    def instance_stats(self, acc, t, core):
        """Accumulate per-channel sums of t's core and of its squares, shifted by the first tile's mean (so that
        E[x^2] - E[x]^2 does not cancel when the mean is large against the spread)."""
        if 'shift' not in acc:
            acc['shift'] = pixel_rows(t[(..., ) + core]).mean(0).detach()
        shift = acc['shift']
        part = core_pixel_sum(lambda m: torch.cat([(m - shift).sum(0), ((m - shift)**2).sum(0)]), t, core).double()
        acc['sums'] = part if 'sums' not in acc else acc['sums'] + part

    def instance_norm(self, norm, acc, pixels):
        """The function InstanceNorm2d ``norm`` (no affine, no running statistics) computes with the statistics of
        the whole map: x -> (x - mean) / sqrt(var + eps), var biased."""
        c = acc['shift'].numel()
        s1, s2 = acc['sums'][:c] / pixels, acc['sums'][c:] / pixels
        mean = (acc['shift'].double() + s1).to(self.dtype)[None, :, None, None]
        inv = (s2 - s1 * s1).add(norm.eps).rsqrt().to(self.dtype)[None, :, None, None]
        return lambda x: (x - mean) * inv

    def local_block(self, blk, inp):
        """A block without global operations (ResConvBlock: two 3x3 convs)."""
        return self.sweep(lambda t, core: blk(t), inp, inp.shape[1], halo=2)


# ---------------------------------------------------------------------------------------------------- networks
def _unet(net, s, img):
    """NAFNet / KBNet (irtoolkit.archs.arch_util.unet_forward)."""
    x, size = pad_to_multiple(img, net.padder_size)
    f = s.local(net.intro, x, net.intro.out_channels, conv_halo(net.intro))
    skips = []
    for encoder, down in zip(net.encoders, net.downs):
        f = s.blocks(encoder, f)
        skips.append(f)
        f = s.local(down, f, down.out_channels, 0, ratio=0.5)
    f = s.blocks(net.middle_blks, f)
    for decoder, up in zip(net.decoders, net.ups):
        skip = skips.pop()
        f = s.local(up, f, skip.shape[1], 0, ratio=2, others=(skip, ), combine=torch.add)
        del skip
        f = s.blocks(decoder, f)
    out = s.local(net.ending, f, net.ending.out_channels, conv_halo(net.ending), others=(x, ), combine=torch.add)
    return crop_to(out, size)


def _unet_supported(net):
    return (conv_halo(net.intro) is not None and conv_halo(net.ending) is not None
            and all(d.kernel_size == d.stride == (2, 2) and d.padding == (0, 0) for d in net.downs)
            and _blocks_supported(list(net.encoders) + [net.middle_blks] + list(net.decoders)))


def _restormer(net, s, img):
    """Restormer (irtoolkit.archs.restormer_arch)."""
    inp, size = pad_to_multiple(img, 8, mode='reflect')
    dim = net.patch_embed.proj.out_channels
    e1 = s.blocks(net.encoder_level1, s.local(net.patch_embed, inp, dim, 1))
    e2 = s.blocks(net.encoder_level2, s.local(net.down1_2, e1, 2 * dim, 2, ratio=0.5))
    e3 = s.blocks(net.encoder_level3, s.local(net.down2_3, e2, 4 * dim, 2, ratio=0.5))
    x = s.blocks(net.latent, s.local(net.down3_4, e3, 8 * dim, 2, ratio=0.5))

    def up_cat(up, reduce):
        return lambda t, skip, core: (reduce or nn.Identity())(torch.cat([up(t), skip], 1))

    x = s.blocks(net.decoder_level3, s.sweep(up_cat(net.up4_3, net.reduce_chan_level3), x, 4 * dim, 2, 1, (e3, )))
    del e3
    x = s.blocks(net.decoder_level2, s.sweep(up_cat(net.up3_2, net.reduce_chan_level2), x, 2 * dim, 2, 1, (e2, )))
    del e2
    x = s.blocks(net.decoder_level1, s.sweep(up_cat(net.up2_1, None), x, 2 * dim, 2, 1, (e1, )))
    del e1
    x = s.blocks(net.refinement, x)
    out_ch = net.output.out_channels
    if net.dual_pixel_task:  # output(x + skip_conv(patch_embed(inp))): the embedding recomputed per tile
        out = s.sweep(lambda t, i, core: net.output(t + net.skip_conv(net.patch_embed(i))), x, out_ch, 1, 2, (inp, ))
    else:
        out = s.local(net.output, x, out_ch, 1, others=(inp, ), combine=torch.add)
    return crop_to(out, size)


def _encode(enc, s, x):
    """ConStyle's query encoder (irtoolkit.archs.constyle_arch.ConStyleEncoder): (latent (1, 128), [fea1..3])."""
    feas, f = [], x
    for stage in (enc.stage1, enc.stage2, enc.stage3):
        f = s.local(stage, f, stage[-1][0].out_channels, _encoder_halo(stage), ratio=0.5)
        feas.append(f)
    acc = [None]

    def pooled(t, core):
        acc[0] = s._sum(acc[0], enc.stage4(t), core)

    s.sweep(pooled, f, None, ratio=0.5, halo=_encoder_halo(enc.stage4))
    n = -(-f.shape[2] // 2) * -(-f.shape[3] // 2)
    latent = enc.mlp2(enc.mlp1((acc[0] / n).to(s.dtype)[None]))
    return latent, feas


def _encoder_halo(stage):
    """Input pixels of context for a ConStyle stage: 3x3 convs, the last one with stride 2 (one more pixel left)."""
    return len(stage) + 1


def _encoder_supported(enc):
    for stage in (enc.stage1, enc.stage2, enc.stage3, enc.stage4):
        convs = [layer[0] for layer in stage]
        if any(c.kernel_size != (3, 3) or c.padding != (1, 1) for c in convs):
            return False
        if any(c.stride != (1, 1) for c in convs[:-1]) or convs[-1].stride != (2, 2):
            return False
    return isinstance(enc.pool, nn.AdaptiveAvgPool2d) and enc.pool.output_size in (1, (1, 1))


def _constyle_unet(net, s, img):
    """ConStyleUNet and its subclasses (ConStyleNAFNet, ConStyleRestormer, ConStyleKBNet)."""
    x, size = net.pad_input(img)
    latent, feas = _encode(net.ConStyle.encoder_q, s, x)
    q = net.mlp(latent)[:, :, None, None]
    dim = net.DC1.down[0].in_channels
    projections = (net.AffineTransform0, net.AffineTransform1, net.AffineTransform2)

    def dc(down, projection):  # DC (3x3 conv + PixelUnshuffle) concatenating the projected prior map
        return lambda t, fea, core: down(t, projection(fea))

    l1 = s.blocks(net.Process_Module_l1, s.local(net.Preprocess_Module, x, dim, conv_halo(net.Preprocess_Module)))
    l2 = s.blocks(net.Process_Module_l2, s.sweep(dc(net.DC1, projections[0]), l1, 2 * dim, 0.5, 2, (feas[0], )))
    l3 = s.blocks(net.Process_Module_l3, s.sweep(dc(net.DC2, projections[1]), l2, 3 * dim, 0.5, 2, (feas[1], )))
    b = s.blocks(net.Process_Module_bottom, s.sweep(dc(net.DC3, projections[2]), l3, 4 * dim, 0.5, 2, (feas[2], )))
    del feas

    def fused_uc3(t, skip, core):  # local_fusion (pointwise) then UC3
        return net.UC3(net.local_fusion(torch.cat([t, t * q], 1)), skip)

    y = s.blocks(net.Process_Module_r3, s.sweep(fused_uc3, b, 4 * dim, 2, 1, (l3, )))
    del b, l3
    y = s.blocks(net.Process_Module_r2, s.sweep(lambda t, k, core: net.UC2(t, k), y, 3 * dim, 2, 1, (l2, )))
    del l2
    y = s.blocks(net.Process_Module_r1, s.sweep(lambda t, k, core: net.UC1(t, k), y, 2 * dim, 2, 1, (l1, )))
    del l1
    refine, last = net.Finetune_Module[:-1], net.Finetune_Module[-1]
    y = s.blocks(refine, y)
    out = s.local(last, y, last.out_channels, conv_halo(last), others=(x, ), combine=torch.add)
    return crop_to(out, size)


def _constyle_supported(net):
    from irtoolkit.archs.constyle_unet_arch import ConStyleNet, ConStyleUNet
    cls = type(net)
    if cls.restore is not ConStyleUNet.restore or cls.forward is not ConStyleNet.forward:
        return False
    last = net.Finetune_Module[-1]
    stages = [getattr(net, f'Process_Module_{k}') for k in ('l1', 'l2', 'l3', 'bottom', 'r3', 'r2', 'r1')]
    return (conv_halo(net.Preprocess_Module) is not None and isinstance(last, nn.Conv2d)
            and conv_halo(last) is not None and _encoder_supported(net.ConStyle.encoder_q)
            and _blocks_supported(stages + [net.Finetune_Module[:-1]]))


def _nlcl(net, s, img):
    """NLCLResGenerator (irtoolkit.archs.nlcl_generator_arch): each InstanceNorm takes the whole map's mean and
    variance from a statistics pass over the conv output it follows."""
    pixels = img.shape[2] * img.shape[3]

    def conv_then_stats(conv, before=None):  # conv(before(t)), its statistics summed over the cores
        acc = {}

        def fn(t, core):
            y = conv(before(t) if before is not None else t)
            s.instance_stats(acc, y, core)
            return y
        return fn, acc

    f = s.local(net.conv_first, img, net.conv_first.out_channels, 1)
    for block in net.blocks:
        conv1, norm1, relu, conv2, norm2 = block.body
        fn, acc1 = conv_then_stats(conv1)
        a = s.sweep(fn, f, conv1.out_channels, halo=1)
        in1 = s.instance_norm(norm1, acc1, pixels)
        fn, acc2 = conv_then_stats(conv2, lambda t: relu(in1(t)))
        b = s.sweep(fn, a, conv2.out_channels, halo=1)
        in2 = s.instance_norm(norm2, acc2, pixels)
        f = s.sweep(lambda t, skip, core: skip + in2(t), b, b.shape[1], others=(f, ), out=b)
    conv1, norm, relu, conv2 = net.fuse
    fn, acc = conv_then_stats(conv1)
    a = s.sweep(fn, f, conv1.out_channels, halo=1)
    in1 = s.instance_norm(norm, acc, pixels)
    if net.global_residual:
        return s.sweep(lambda t, x, core: net.conv_last(conv2(relu(in1(t)))) + x, a, net.conv_last.out_channels,
                       halo=2, others=(img, ))
    return s.sweep(lambda t, core: net.conv_last(conv2(relu(in1(t)))), a, net.conv_last.out_channels, halo=2)


def _nlcl_supported(net):
    def plain_norm(m):
        return isinstance(m, nn.InstanceNorm2d) and not m.affine and not m.track_running_stats

    def conv3(m):
        return isinstance(m, nn.Conv2d) and conv_halo(m) == 1

    blocks_ok = all(len(b.body) == 5 and conv3(b.body[0]) and plain_norm(b.body[1]) and conv3(b.body[3])
                    and plain_norm(b.body[4]) for b in net.blocks)
    return (blocks_ok and conv3(net.conv_first) and conv3(net.conv_last) and len(net.fuse) == 4
            and conv3(net.fuse[0]) and plain_norm(net.fuse[1]) and conv3(net.fuse[3]))


def _schedule_of(net):
    """(the network's schedule function, the channels of its first full-resolution map), or None."""
    from irtoolkit.archs.constyle_unet_arch import ConStyleUNet
    from irtoolkit.archs.kbnet_arch import KBNet
    from irtoolkit.archs.nafnet_arch import NAFNet
    from irtoolkit.archs.nlcl_generator_arch import NLCLResGenerator
    from irtoolkit.archs.restormer_arch import Restormer
    if type(net) in (NAFNet, KBNet) and type(net).forward in (NAFNet.forward, KBNet.forward):
        return (_unet, net.intro.out_channels) if _unet_supported(net) else None
    if type(net) is Restormer:
        return (_restormer, net.patch_embed.proj.out_channels) if _blocks_supported(
            [net.encoder_level1, net.encoder_level2, net.encoder_level3, net.latent, net.decoder_level3,
             net.decoder_level2, net.decoder_level1, net.refinement]) else None
    if isinstance(net, ConStyleUNet):
        return (_constyle_unet, net.DC1.down[0].in_channels) if _constyle_supported(net) else None
    if type(net) is NLCLResGenerator:
        return (_nlcl, net.conv_first.out_channels) if _nlcl_supported(net) else None
    return None


def supports_exact_tiling(net):
    """True when :func:`exact_tiled_forward` has a schedule for ``net``: NAFNet, KBNet, Restormer and the ConStyle
    U-Nets (ConStyleNAFNet, ConStyleRestormer, ConStyleKBNet, ConStyleUNet) whose blocks are NAFBlock,
    RestormerBlock, KBBlock_s or ResConvBlock, and NLCLResGenerator (instance normalisation). DataParallel-style
    wrappers are looked through."""
    return _schedule_of(_unwrap(net)) is not None


@torch.inference_mode()
def exact_tiled_forward(net, img, tile=512, device=None, out_device=None, progress=False):
    """``net(img)`` computed tile by tile with the block-level schedule of this module.

    Args:
        net: a supported network (:func:`supports_exact_tiling`; ValueError otherwise), in eval mode.
        img: (1, C, H, W), any H, W. The full-size feature maps stay on ``img``'s device: keep ``img`` on the CPU
            to bound GPU memory by the tile.
        tile: core tile side at full resolution (>= 16); lower resolutions use tiles with as many activations.
            An image no larger than one tile runs whole (bit for bit ``net(img)``).
        device: where tiles are computed (default: the network's parameters' device).
        out_device: where the output goes (default: ``img``'s device).
        progress: a tqdm bar counting sweeps.

    Returns (1, C_out, H, W) on ``out_device``, equal to ``net(img)`` within float rounding.
    """
    if img.dim() != 4 or img.shape[0] != 1:
        raise ValueError(f'exact_tiled_forward expects one image (1, C, H, W), got {tuple(img.shape)}')
    inner = _unwrap(net)
    plan = _schedule_of(inner)
    if plan is None:
        raise ValueError(f'exact tiling has no schedule for {type(inner).__name__} (supported: NAFNet, KBNet, '
                         'Restormer, ConStyle U-Nets with NAFBlock/RestormerBlock/KBBlock_s/ResConvBlock)')
    device = torch.device(device) if device is not None else tiling._net_device(inner, img.device)
    out_device = out_device or img.device
    if device.type == 'cpu':
        keep_freed_memory()
    if not tile or (img.shape[2] <= tile and img.shape[3] <= tile):
        return tiling._as_output(net(img.to(device))).to(out_device)
    if tile < 16:
        raise ValueError(f'exact_tiled_forward: tile must be >= 16, got {tile}')
    dtype = next(inner.parameters()).dtype
    schedule, ref_channels = plan
    s = Schedule(int(tile), device, img.device, ref_channels, dtype, progress)
    try:
        out = schedule(inner, s, img.to(dtype))
    finally:
        s.bar.close()
    return out.to(out_device)
