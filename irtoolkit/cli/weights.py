"""List the weight files irtoolkit's metrics and losses need, whether each is present, and where it goes.

    irtk-weights            # table of every consumer
    irtk-weights --missing  # only what is missing
    irtk-weights --json
    python tools/weights.py [--missing] [--json]    # the same command

    irtk-weights convert experiments/x/models/net_g_latest.pth net_g_latest.safetensors   # and back
    irtk-weights inspect net_g_latest.pth   # entries, tensors, and the network recognised from the contents

The folder is ``$IRTOOLKIT_WEIGHTS`` (default ``~/.cache/irtoolkit/weights``). Files keep their upstream names
(torchvision checkpoints, pyiqa's IQA-PyTorch-Weights, ``hf/<repo>/<file>`` for Hugging Face hub files); the
``source`` column says where to fetch each on a machine with internet. Nothing here downloads anything.
The rows come from :func:`irtoolkit.utils.weights.weights_report`; this module only prints them.

``convert IN OUT`` rewrites a network file as ``.pth`` or ``.safetensors`` (OUT's suffix decides): ``params`` and
``params_ema`` (or a bare state dict) with every tensor bit for bit
(:func:`irtoolkit.utils.checkpoint.convert_network_file`; the safetensors layout is in
:mod:`irtoolkit.utils.safetensors_file`). An existing OUT is kept unless ``--force``; the network options irtoolkit's
files carry (``network``) travel with them.

``inspect FILE`` reads a network file (``weights_only=True``, or safetensors) and prints its entries, the state dict
it holds (tensors, values, dtypes) and the network recognised from its contents, as ``irtk-infer --weights`` builds
it (:mod:`irtoolkit.inference.recognise`); a network that is not recognised is one line and exit status 2.
"""
import argparse
import json
import os.path as osp
import sys

from irtoolkit.utils.weights import ENV_VAR, weights_dir, weights_report  # importing the package registers the losses

NO_FILE_METRICS = ('psnr', 'psnry', 'ssim', 'ssimc', 'ms_ssim', 'cw_ssim', 'fsim', 'gmsd', 'vif', 'vsi', 'nlpd',
                   'mad', 'piqe', 'entropy', 'niqe')
PAPER_METRICS = ('psnr_rgb', 'psnr_y', 'ssim_rgb', 'ssim_y', 'calculate_psnr', 'calculate_ssim', 'calculate_niqe')


def convert(src, dst, force=False):
    """``irtk-weights convert``: exit status 0, or 2 with one line on stderr."""
    from irtoolkit.utils.checkpoint import CheckpointError, convert_network_file
    problem = None
    if osp.abspath(src) == osp.abspath(dst):
        problem = f'convert: IN and OUT are the same file ({src})'
    elif osp.exists(dst) and not force:
        problem = f'convert: {dst} exists (--force overwrites it)'
    else:
        try:
            entries = convert_network_file(src, dst)
        except CheckpointError as err:
            problem = str(err)
    if problem:
        print(f'error: {problem}', file=sys.stderr)
        return 2
    print(f'{src} -> {dst}: {", ".join(entries) or "a bare state dict"}')
    return 0


def inspect_file(path, param_key='auto'):
    """``irtk-weights inspect``: exit status 0, or 2 with one line on stderr (unreadable, or not recognised)."""
    from irtoolkit.inference.recognise import recognise_checkpoint
    from irtoolkit.utils.checkpoint import safe_load, state_dict_entry
    from irtoolkit.utils.errors import UserError
    from irtoolkit.utils.safetensors_file import is_safetensors
    try:
        ckpt = safe_load(path)
        if not isinstance(ckpt, dict):
            raise UserError(f'{path}: not a state dict (got {type(ckpt).__name__})')
        state, used = state_dict_entry(ckpt, path, param_key)
        entries = [str(k) for k, v in ckpt.items() if isinstance(v, dict)]
        tensors = [v for v in state.values() if hasattr(v, 'numel')]
        dtypes = sorted({str(t.dtype).replace('torch.', '') for t in tensors})
        fmt = 'safetensors' if is_safetensors(path) else 'torch file'
        print(f'{path}: {fmt}; {"entries " + ", ".join(entries) if entries else "a bare state dict"}; '
              f'{used or "state dict"}: {len(tensors)} tensors, {sum(t.numel() for t in tensors):,} values '
              f'({", ".join(dtypes) or "-"})')
        print(recognise_checkpoint(ckpt, path, param_key, hint="irtk-infer needs -opt recipe.yml or --net "
                                   "'{type: ..., ...}' for it").line())
    except (UserError, KeyError, ValueError) as err:
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err  # str(KeyError) adds quotes
        print(f'error: {msg}', file=sys.stderr)
        return 2
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--missing', action='store_true', help='only list missing files')
    p.add_argument('--json', action='store_true', help='machine-readable output')
    sub = p.add_subparsers(dest='command', metavar='convert|inspect', help='convert IN OUT: a network file as .pth '
                           'or .safetensors; inspect FILE: what a network file holds and its network (see below)')
    conv = sub.add_parser('convert', help='rewrite a network file as .pth or .safetensors (OUT\'s suffix decides)')
    conv.add_argument('src', metavar='IN', help='network file (.pth or .safetensors)')
    conv.add_argument('dst', metavar='OUT', help='file to write: .safetensors, else a torch file')
    conv.add_argument('--force', action='store_true', help='overwrite OUT when it exists')
    insp = sub.add_parser('inspect', help='entries, tensors and the network recognised from a network file')
    insp.add_argument('path', metavar='FILE', help='network file (.pth or .safetensors)')
    insp.add_argument('--param-key', default='auto', help='auto (params_ema, else params), params, params_ema')
    args = p.parse_args(argv)
    if args.command == 'convert':
        return convert(args.src, args.dst, args.force)
    if args.command == 'inspect':
        return inspect_file(args.path, args.param_key)
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
