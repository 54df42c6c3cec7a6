"""Validation metrics tiled against whole images: ``irtk-test`` on the demo validation sets, once whole and once per
tiling (``--tile N`` with exact tiles, ``--tile N --tile-exact false`` blended), one Markdown table of PSNR/SSIM.

    python benchmarks/val_tiling.py -opt options/train/NAFNet/demo_NAFNet_haze.yml \
        --ckpt experiments/demo_NAFNet_haze/models/net_g_latest.pth --exact 64 128 --blended 128

The network (``network_g``, ``model_type``) comes from the training recipe ``-opt``, the weights from ``--ckpt``;
each set of ``--sets`` is ``datasets/demo/<set>/val/{lq,gt}`` (``python tools/make_demo_data.py`` writes them),
scored with the demo recipes' metrics (``calculate_psnr`` / ``calculate_ssim``, RGB, no crop). Every run goes
through :func:`irtoolkit.engine.runner.test`, the code of ``python irtoolkit/test.py``; outputs land in a temporary
folder. Also writes the numbers as JSON with ``--json``.
"""
import argparse
import json
import os
import os.path as osp
import sys
import tempfile
import time

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
METRICS = {'psnr': {'type': 'calculate_psnr', 'crop_border': 0, 'test_y_channel': False},
           'ssim': {'type': 'calculate_ssim', 'crop_border': 0, 'test_y_channel': False}}


def test_recipe(train_opt, ckpt, sets, data_root, out_root):
    """A test recipe: the training recipe's network and model on the demo validation sets."""
    datasets = {f'test_{s}': {'name': s, 'type': 'PairedImageDataset', 'io_backend': {'type': 'disk'},
                              'dataroot_gt': osp.join(data_root, s, 'val', 'gt'),
                              'dataroot_lq': osp.join(data_root, s, 'val', 'lq')} for s in sets}
    return {'name': 'val_tiling', 'model_type': train_opt['model_type'], 'num_gpu': 0, 'manual_seed': 0,
            'datasets': datasets, 'network_g': train_opt['network_g'],
            'path': {'pretrain_network_g': osp.abspath(ckpt), 'results_root': out_root},
            'val': {'save_img': False, 'metrics': METRICS}}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('-opt', required=True, help='training recipe whose network_g and model_type are tested')
    p.add_argument('--ckpt', required=True, help='network file (params, params_ema)')
    p.add_argument('--sets', nargs='+', default=['haze', 'rain', 'noise', 'blur'])
    p.add_argument('--data', default=osp.join(ROOT, 'datasets', 'demo'))
    p.add_argument('--exact', nargs='*', type=int, default=[64, 128], help='tile sizes run with exact tiles')
    p.add_argument('--blended', nargs='*', type=int, default=[128], help='tile sizes run with blended tiles')
    p.add_argument('--overlap', type=int, default=32, help='blended tiles: overlap')
    p.add_argument('--json', help='also write the numbers here')
    args = p.parse_args(argv)

    import yaml

    import irtoolkit  # noqa: F401
    from irtoolkit.config.options import load_options
    from irtoolkit.engine.runner import test

    runs = [('whole', [])] + [(f'exact {t}', ['--tile', str(t), '--tile-exact', 'true']) for t in args.exact] + \
        [(f'blended {t}/{args.overlap}', ['--tile', str(t), '--tile-exact', 'false', '--tile-overlap',
                                          str(args.overlap)]) for t in args.blended]
    train_opt = load_options(args.opt)
    results, seconds = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        path = osp.join(tmp, 'test.yml')
        with open(path, 'w') as f:
            yaml.safe_dump(test_recipe(train_opt, args.ckpt, args.sets, args.data, osp.join(tmp, 'results')), f)
        cwd = os.getcwd()
        os.chdir(tmp)  # experiments/ and results/ of the runs stay in the temporary folder
        try:
            for label, flags in runs:
                start = time.perf_counter()
                results[label] = test(['-opt', path, *flags])
                seconds[label] = time.perf_counter() - start
        finally:
            os.chdir(cwd)

    whole = results['whole']
    print(f'\n{train_opt["network_g"]["type"]} ({args.ckpt}); PSNR / SSIM per set (8-bit RGB, no crop); '
          'delta = tiled - whole\n')
    print('| set | tiling | PSNR | SSIM | delta PSNR | delta SSIM |')
    print('|---|---|---:|---:|---:|---:|')
    for s in args.sets:
        for label, _ in runs:
            r = results[label][s]
            dp, ds = r['psnr'] - whole[s]['psnr'], r['ssim'] - whole[s]['ssim']
            deltas = ['', ''] if label == 'whole' else [f'{dp:+.1e}', f'{ds:+.1e}']
            print('| ' + ' | '.join([s, label, f'{r["psnr"]:.4f}', f'{r["ssim"]:.5f}', *deltas]) + ' |')
    print('\nseconds per run (all sets): ' + ', '.join(f'{k} {v:.1f}' for k, v in seconds.items()))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump({'results': results, 'seconds': seconds, 'argv': sys.argv[1:]}, f, indent=2)
    return 0


if __name__ == '__main__':
    sys.exit(main())
