"""Figures for the contrastive models' closing notes: loss curves from a training log, and the PSNR of a trained
generator's output against the PSNR of its input, on held-out pairs.

    irtk-contrastive-report curves --log experiments/<name>/train_<name>_*.log --out fig.png
    irtk-contrastive-report psnr -opt <recipe.yml> --ckpt experiments/<name>/models/net_g_latest.pth \\
        --lq datasets/demo/haze/val/lq --gt datasets/demo/haze/val/gt

(``python tools/contrastive_report.py ...`` is the same command.)

``psnr`` builds ``network_g`` of the recipe, loads ``params_ema`` when the checkpoint has it (else ``params``) with
``weights_only``, runs every LQ image (full size) and prints the mean PSNR (RGB, 0..255, no border crop, basicsr's
``calculate_psnr``) of the input and of the output against the ground truth, per image with ``--per-image``.
"""
import argparse
import glob
import os
import os.path as osp
import sys

import numpy as np

from irtoolkit.engine.run_log import parse_log


def plot_curves(log, out, title=None, smooth=1):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    curves = parse_log(log)
    if not curves:
        raise ValueError(f'{log}: no loss lines found')
    log = log if isinstance(log, str) else log[0]
    n = len(curves)
    cols = min(4, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False)
    for ax, (name, (xs, ys)) in zip(axes.flat, curves.items()):
        ys = np.asarray(ys)
        if smooth > 1 and len(ys) >= smooth:  # moving average, for readability of GAN curves
            ys = np.convolve(ys, np.ones(smooth) / smooth, mode='valid')
            xs = xs[smooth - 1:]
        ax.plot(xs, ys, lw=1.2)
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis('off')
    fig.suptitle(title or osp.basename(log), fontsize=10)
    fig.tight_layout()
    os.makedirs(osp.dirname(osp.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=80)
    print(f'wrote {out} ({n} curves: {", ".join(curves)})')
    return out


def psnr_vs_input(opt_path, ckpt, lq_dir, gt_dir, per_image=False, net_key='network_g'):
    import cv2
    import torch

    from basicsr.metrics import calculate_psnr
    from basicsr.utils import img2tensor, tensor2img
    from irtoolkit.inference.loader import load_network, network_options
    net, key = load_network(network_options(opt_path, net_key), ckpt, 'auto')
    names = sorted(osp.basename(p) for p in glob.glob(osp.join(lq_dir, '*.png')))
    if not names:
        raise FileNotFoundError(f'{lq_dir}: no PNG images')
    rows = []
    for name in names:
        gt_path = osp.join(gt_dir, name)
        if not osp.isfile(gt_path):
            raise FileNotFoundError(f'{gt_path}: missing ground truth for {name}')
        lq = cv2.imread(osp.join(lq_dir, name), cv2.IMREAD_COLOR)
        gt = cv2.imread(gt_path, cv2.IMREAD_COLOR)
        x = img2tensor(lq.astype(np.float32) / 255., bgr2rgb=True, float32=True)[None]
        with torch.no_grad():
            y = net(x)
        out = tensor2img(y)
        rows.append((name, calculate_psnr(lq, gt, 0), calculate_psnr(out, gt, 0)))
        if per_image:
            print(f'{name}: input {rows[-1][1]:.2f} dB, output {rows[-1][2]:.2f} dB')
    inp, outp = np.mean([r[1] for r in rows]), np.mean([r[2] for r in rows])
    print(f'{len(rows)} held-out pairs ({lq_dir}): PSNR input {inp:.2f} dB, output {outp:.2f} dB, '
          f'gain {outp - inp:+.2f} dB ({key} of {ckpt})')
    return inp, outp


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest='cmd', required=True)
    c = sub.add_parser('curves')
    c.add_argument('--log', required=True, nargs='+', help='training log(s); a resumed run: both, in order')
    c.add_argument('--out', required=True)
    c.add_argument('--title')
    c.add_argument('--smooth', type=int, default=1)
    s = sub.add_parser('psnr')
    s.add_argument('-opt', required=True)
    s.add_argument('--ckpt', required=True)
    s.add_argument('--lq', required=True)
    s.add_argument('--gt', required=True)
    s.add_argument('--net', default='network_g')
    s.add_argument('--per-image', action='store_true')
    args = p.parse_args(argv)
    if args.cmd == 'curves':
        plot_curves(args.log, args.out, args.title, args.smooth)
    else:
        psnr_vs_input(args.opt, args.ckpt, args.lq, args.gt, args.per_image, args.net)


if __name__ == '__main__':
    sys.exit(main())
