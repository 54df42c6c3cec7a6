"""Restore an image or a folder with any registered network and checkpoint, tiled for large images.

    irtk-infer -opt options/train/NAFNet/demo_NAFNet_haze.yml \\
        --ckpt experiments/demo_NAFNet_haze/models/net_g_latest.pth \\
        --input datasets/demo/haze/val/lq --output results/infer/NAFNet --tile 512 \\
        --compare --gt datasets/demo/haze/val/gt

    irtk-infer --weights experiments/demo_NAFNet_haze/models/net_g_latest.pth --input lq/ --output out/
    irtk-infer --weights Restormer_motion_deblurring.pth --input blurry/ --output out/

(``python tools/infer.py ...`` is the same command.)

The network comes from the ``network_g`` block of an options file (``-opt``; its ``plugins:`` are imported), from
``--net '{type: NAFNet, width: 32, ...}'``, or, with neither, from the checkpoint's contents
(:mod:`irtoolkit.inference.recognise`): irtoolkit's own network files carry the options that built the network;
other projects' state dicts are recognised by their key names and shapes (Restormer by irtoolkit, NAFNet, KBNet,
Uformer, SwinIR, Real-ESRGAN's RRDBNet and SRVGGNetCompact and the other archs spandrel knows); the detected arch and
arguments are printed, and a checkpoint that is not recognised ends with one line saying what to pass (exit status
2). The checkpoint (``--weights``, or its old name ``--ckpt``) may be irtoolkit's / BasicSR's / upstream
IRConStyle's (``params_ema`` is used when present, see ``--param-key``) or a bare state dict, read with
``weights_only=True`` (or a .safetensors file).
``--tile`` splits images larger than the tile into overlapping tiles blended without seams
(:mod:`irtoolkit.inference.tiling`); ``--compare`` also writes input | output | ground-truth strips.
"""
import argparse
import os
import os.path as osp
import sys
import time

from irtoolkit.training.validation_tiling import TILE_EXACT_WORDS


def compare_strip(panels, labels, gap=4):
    """Side-by-side (H, W*n) uint8 BGR strip of (C, H, W) float tensors; smaller panels are resized (bicubic)."""
    import cv2
    import numpy as np
    from irtoolkit.utils.image_io import to_uint8
    h = max(p.shape[-2] for p in panels)
    w = max(p.shape[-1] for p in panels)
    tiles = []
    for p, label in zip(panels, labels):
        arr = to_uint8(p)
        if arr.shape[2] == 1:
            arr = np.repeat(arr, 3, axis=2)
        if arr.shape[:2] != (h, w):
            arr = cv2.resize(arr, (w, h), interpolation=cv2.INTER_CUBIC)
        arr = np.ascontiguousarray(arr)
        scale = max(0.4, h / 512)
        cv2.putText(arr, label, (6, int(22 * scale) + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.6 * scale, (0, 0, 0),
                    int(3 * scale) + 1, cv2.LINE_AA)
        cv2.putText(arr, label, (6, int(22 * scale) + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.6 * scale, (255, 255, 255),
                    max(1, int(scale)), cv2.LINE_AA)
        tiles += [arr, np.full((h, gap, 3), 255, np.uint8)]
    return np.concatenate(tiles[:-1], axis=1)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--input', required=True, help='an image or a folder of images')
    p.add_argument('--output', required=True, help='folder for the restored images (same file names, .png)')
    src = p.add_mutually_exclusive_group()
    src.add_argument('-opt', '--opt', help='options YAML with a network_g block')
    src.add_argument('--net', help="network options as YAML, e.g. '{type: NAFNet, width: 16}'")
    p.add_argument('--weights', '--ckpt', dest='ckpt',
                   help='checkpoint (.pth or .safetensors); without -opt/--net its network is recognised from its '
                        'contents; without a checkpoint the network keeps its initialisation (warned)')
    p.add_argument('--param-key', default='auto', help='auto (params_ema, else params), params, params_ema')
    p.add_argument('--no-strict', action='store_true',
                   help='allow missing/unexpected checkpoint keys (-opt/--net; a recognised network loads strictly)')
    p.add_argument('--tile', type=lambda v: v if v == 'auto' else int(v), default=512,
                   help="tile size; 0 = whole image at once; auto = from the device's free memory (CUDA); on an "
                        'out-of-memory error the tile is halved and the image run again')
    p.add_argument('--tile-overlap', type=int, default=32)
    p.add_argument('--tile-exact', choices=tuple(TILE_EXACT_WORDS), default='auto',
                   help="auto: the exact tile schedule when the network has one (output equal to the whole image's, "
                        'docs/evaluation.md), else blended tiles; true: exact or an error; false: blended tiles')
    p.add_argument('--tile-batch', type=int, default=1, help='tiles per forward pass')
    p.add_argument('--tile-align', type=int, default=0,
                   help="tile grid multiple; 0 = the network's padder_size when it has one, else 1")
    p.add_argument('--device', default='auto', help='auto, cpu, cuda, cuda:1 ...')
    p.add_argument('--compare', action='store_true', help='also write input | output | gt strips to OUTPUT/compare')
    p.add_argument('--gt', help='ground-truth image or folder for --compare (matched by file stem)')
    p.add_argument('--no-progress', action='store_true')
    args = p.parse_args(argv)

    from tqdm import tqdm
    from irtoolkit.utils.image_io import images_by_stem, read_image, write_image
    from irtoolkit.inference.loader import load_network, network_options
    from irtoolkit.inference.exact_tiling import supports_exact_tiling
    from irtoolkit.inference.tiling import tiled_forward_fit
    from irtoolkit.utils.dist import pick_device
    from irtoolkit.config.options import yaml_load
    from irtoolkit.inference.recognise import recognise_file
    from irtoolkit.utils.errors import UserError

    device = pick_device(args.device)
    try:
        if args.opt or args.net:
            net_opt = network_options(args.opt) if args.opt else yaml_load(args.net)
            if not isinstance(net_opt, dict):
                raise ValueError(f'--net: expected a mapping like {{type: NAFNet, ...}}, got {args.net!r}')
            net, used_key = load_network(net_opt, args.ckpt, args.param_key, not args.no_strict, device)
            arch = net_opt['type']
        elif args.ckpt:
            found = recognise_file(args.ckpt, args.param_key)
            print(found.line())
            net, used_key, arch = found.network.to(device).eval(), found.used, found.arch
        else:
            raise UserError("no network: pass --weights X.pth (its network recognised from its contents), -opt "
                            "recipe.yml or --net '{type: ..., ...}'")
        if osp.isdir(args.input):
            inputs = images_by_stem(args.input)
        elif osp.isfile(args.input):
            inputs = {osp.splitext(osp.basename(args.input))[0]: args.input}
        else:
            raise FileNotFoundError(f'--input not found: {args.input}')
        gts = {}
        if args.gt:
            gts = images_by_stem(args.gt) if osp.isdir(args.gt) else {osp.splitext(osp.basename(args.gt))[0]: args.gt}
    except UserError as err:  # unreadable or unrecognised checkpoint, missing network: one line, exit status 2
        print(f'error: {err}', file=sys.stderr)
        return 2
    except (ValueError, KeyError, FileNotFoundError, RuntimeError) as err:
        sys.exit(f'error: {err}')
    if not args.ckpt:
        print('warning: no --weights: the network is randomly initialised', file=sys.stderr)
    align = args.tile_align or int(getattr(net, 'padder_size', 1) or 1)
    exact = TILE_EXACT_WORDS[args.tile_exact]
    if exact is True and not supports_exact_tiling(net):
        print(f'error: --tile-exact true: {arch} has no exact tile schedule (docs/evaluation.md lists the networks '
              'that have one); use --tile-exact auto or false', file=sys.stderr)
        return 2
    print(f'{arch} on {device}; checkpoint {args.ckpt or "-"} [{used_key or "state dict"}]; '
          f'tile {args.tile or "off"} exact {args.tile_exact} overlap {args.tile_overlap} align {align}; '
          f'{len(inputs)} image(s)')
    os.makedirs(args.output, exist_ok=True)
    missing_gt = []
    start = time.perf_counter()
    for stem, path in tqdm(inputs.items(), unit='img', desc='infer', disable=args.no_progress):
        img = read_image(path)[None]  # stays on the CPU: each tile goes to the device when it runs
        out = tiled_forward_fit(net, img, args.tile, align=align, overlap=args.tile_overlap, device=device,
                                batch_size=args.tile_batch, progress=not args.no_progress, exact=exact)[0].clamp(0, 1)
        write_image(osp.join(args.output, f'{stem}.png'), out)
        if args.compare:
            panels, labels = [img[0], out], ['input', arch]
            if stem in gts:
                panels.append(read_image(gts[stem]))
                labels.append('ground truth')
            elif args.gt:
                missing_gt.append(stem)
            import cv2
            os.makedirs(osp.join(args.output, 'compare'), exist_ok=True)
            cv2.imwrite(osp.join(args.output, 'compare', f'{stem}.png'), compare_strip(panels, labels))
    elapsed = time.perf_counter() - start
    print(f'wrote {len(inputs)} image(s) to {args.output} in {elapsed:.1f} s')
    if missing_gt:
        print(f'no ground truth for {len(missing_gt)} image(s): {", ".join(missing_gt[:20])}', file=sys.stderr)


if __name__ == '__main__':
    sys.exit(main())
