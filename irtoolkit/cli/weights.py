"""List the weight files irtoolkit's metrics and losses need, whether each is present, and where it goes.

    irtk-weights            # table of every consumer
    irtk-weights --missing  # only what is missing
    irtk-weights --json
    python tools/weights.py [--missing] [--json]    # the same command

The folder is ``$IRTOOLKIT_WEIGHTS`` (default ``~/.cache/irtoolkit/weights``). Files keep their upstream names
(torchvision checkpoints, pyiqa's IQA-PyTorch-Weights, ``hf/<repo>/<file>`` for Hugging Face hub files); the
``source`` column says where to fetch each on a machine with internet. Nothing here downloads anything.
The rows come from :func:`irtoolkit.utils.weights.weights_report`; this module only prints them.
"""
import argparse
import json
import os.path as osp
import sys

from irtoolkit.utils.weights import ENV_VAR, weights_dir, weights_report  # importing the package registers the losses

NO_FILE_METRICS = ('psnr', 'psnry', 'ssim', 'ssimc', 'ms_ssim', 'cw_ssim', 'fsim', 'gmsd', 'vif', 'vsi', 'nlpd',
                   'mad', 'piqe', 'entropy', 'niqe')
PAPER_METRICS = ('psnr_rgb', 'psnr_y', 'ssim_rgb', 'ssim_y', 'calculate_psnr', 'calculate_ssim', 'calculate_niqe')


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--missing', action='store_true', help='only list missing files')
    p.add_argument('--json', action='store_true', help='machine-readable output')
    args = p.parse_args(argv)
    all_rows = weights_report()
    table = [r for r in all_rows if not r['present']] if args.missing else all_rows
    if args.json:
        print(json.dumps({'weights_dir': weights_dir(), 'files': table}, indent=1))
        return
    folder = weights_dir()
    print(f'weights folder: {folder}  (${ENV_VAR}; {"exists" if osp.isdir(folder) else "does not exist yet"})')
    print('files keep their upstream names; hf/<repo>/<file> for Hugging Face hub files. Nothing is downloaded.\n')
    width = max(len(r['consumer']) for r in table) if table else 10
    fwidth = max((len(r['file'] or '-') for r in table), default=10)
    print(f'{"consumer":<{width}}  {"file":<{fwidth}}  status   source')
    for r in table:
        status = 'ok' if r['present'] else 'missing'
        if r['file'] is None:
            print(f'{r["consumer"]:<{width}}  {"-":<{fwidth}}  ok       {r["note"]}')
            continue
        extra = f'  ({r["note"]})' if r['note'] else ''
        print(f'{r["consumer"]:<{width}}  {r["file"]:<{fwidth}}  {status:<7}  {r["source"]}{extra}')
    missing = sorted({r['file'] for r in all_rows if not r['present']})
    print(f'\n{len(missing)} file(s) missing; put them in {folder}')
    print(f'no file needed: pyiqa {", ".join(NO_FILE_METRICS)}; irtoolkit/basicsr {", ".join(PAPER_METRICS)}')


if __name__ == '__main__':
    sys.exit(main())
