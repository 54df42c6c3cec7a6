"""Score folders of restored images: full-reference and no-reference metrics, several methods side by side.

    irtk-evaluate --gt datasets/demo/noise/val/gt \\
        --method input=datasets/demo/noise/val/lq --method NAFNet=results/NAFNet/visualization/val \\
        --metrics psnr_y ssim_y psnr ssim niqe --crop-border 0 --out results/demo/eval

(``python tools/evaluate.py ...`` is the same command.)

Metric names: irtoolkit's paper-protocol ``psnr_rgb psnr_y ssim_rgb ssim_y`` (BasicSR's numbers), basicsr's
registered ``calculate_*`` functions, or any pyiqa metric (``psnr ssim lpips niqe brisque musiq ...``;
``pyiqa:<name>`` forces pyiqa). Options per metric: ``name:key=value,key=value`` (``lpips:net=vgg``), or a YAML
file with a ``val.metrics``-style mapping (``--metrics-opt``). ``--crop-border`` goes to every metric that takes
it. Images are matched by file stem; unmatched ones are listed, never skipped silently (``--strict`` fails).
Writes eval.md, eval.csv, per_image.csv and eval.json to ``--out`` and prints the Markdown table.
"""
import argparse
import inspect
import os
import os.path as osp
import sys

from irtoolkit.config.options import yaml_load


def parse_method(text):
    """``label=folder`` or ``folder`` (label = folder name)."""
    label, sep, folder = text.partition('=')
    if not sep:
        folder, label = text, osp.basename(osp.normpath(text))
    if not label or not folder:
        raise argparse.ArgumentTypeError(f'--method {text!r}: expected LABEL=FOLDER or FOLDER')
    return label, folder


def parse_metric(text):
    """``name`` or ``name:key=value,...`` -> (name, options); values are YAML scalars."""
    if text.startswith('pyiqa:'):
        prefix, text = 'pyiqa:', text[len('pyiqa:'):]
    else:
        prefix = ''
    name, _, rest = text.partition(':')
    opts = {}
    for item in filter(None, rest.split(',')):
        key, sep, value = item.partition('=')
        if not sep:
            raise argparse.ArgumentTypeError(f'--metrics {text!r}: option {item!r} is not key=value')
        opts[key.strip()] = yaml_load(value)
    return prefix + name, opts


def takes_crop_border(metric_type):
    """Whether a metric accepts ``crop_border`` (registered function argument or pyiqa arch argument)."""
    from irtoolkit.utils.registry import METRIC_REGISTRY
    fn = METRIC_REGISTRY._obj_map.get(metric_type)
    if fn is not None:
        return 'crop_border' in inspect.signature(fn).parameters
    from pyiqa.utils.registry import ARCH_REGISTRY as PYIQA_ARCHS
    from pyiqa.default_model_configs import DEFAULT_CONFIGS
    cfg = DEFAULT_CONFIGS.get(metric_type.replace('pyiqa:', ''))
    if cfg is None:
        return False
    arch = PYIQA_ARCHS._obj_map.get(cfg['metric_opts']['type'])
    if arch is None:
        return False
    return 'crop_border' in inspect.signature(arch.__init__).parameters


def build_metrics_opt(args):
    opt = {}
    if args.metrics_opt:
        loaded = yaml_load(args.metrics_opt)
        loaded = (loaded.get('val') or {}).get('metrics', loaded) if isinstance(loaded, dict) else loaded
        if not isinstance(loaded, dict):
            sys.exit(f'error: {args.metrics_opt}: expected a mapping of metric name -> options')
        opt.update(loaded)
    for text in args.metrics or []:
        name, kw = parse_metric(text)
        label = name.replace('pyiqa:', '') if name not in opt else name
        opt[label] = {'type': name, **kw}
    if not opt:
        sys.exit('error: no metrics: give --metrics and/or --metrics-opt')
    if args.crop_border is not None:
        for entry in opt.values():
            if isinstance(entry, dict) and 'crop_border' not in entry and takes_crop_border(entry.get('type', '')):
                entry['crop_border'] = args.crop_border
    return opt


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--gt', help='folder of ground-truth images (omit for no-reference metrics only)')
    p.add_argument('--method', action='append', type=parse_method, default=[], metavar='LABEL=FOLDER',
                   help='a folder of restored images; repeat for a side-by-side table')
    p.add_argument('--metrics', nargs='+', help='metric names, optionally name:key=value,...')
    p.add_argument('--metrics-opt', help='YAML file with a metrics mapping (or an options file with val.metrics)')
    p.add_argument('--crop-border', type=int, default=None, help='crop_border for every metric that takes it')
    p.add_argument('--gt-row', action='store_true', help='also score the ground truth with no-reference metrics')
    p.add_argument('--out', help='output folder for eval.md / eval.csv / per_image.csv / eval.json')
    p.add_argument('--device', default='auto', help='auto, cpu, cuda, cuda:1 ...')
    p.add_argument('--batch-size', type=int, default=8)
    p.add_argument('--workers', type=int, default=min(4, os.cpu_count() or 1),
                   help='DataLoader workers reading (and on a CPU, scoring) images; 0 = all in this process')
    p.add_argument('--strict', action='store_true', help='fail when an image has no match')
    p.add_argument('--no-progress', action='store_true')
    args = p.parse_args(argv)
    if not args.method:
        p.error('give at least one --method LABEL=FOLDER')
    labels = [m for m, _ in args.method]
    if len(set(labels)) != len(labels):
        p.error(f'duplicate method labels: {labels}')

    from irtoolkit.metrics.evaluation import evaluate_folders, markdown_table, write_reports
    from irtoolkit.utils.dist import pick_device
    device = str(pick_device(args.device))
    try:
        result = evaluate_folders(dict(args.method), args.gt, build_metrics_opt(args), device=device,
                                  batch_size=args.batch_size, num_workers=args.workers, gt_row=args.gt_row,
                                  progress=not args.no_progress)
    except (ValueError, KeyError, FileNotFoundError) as err:  # OptionError, MissingWeightsError included
        sys.exit(f'error: {err}')
    table = markdown_table(result)
    print(table, end='')
    if args.out:
        for path in write_reports(result, args.out):
            print(f'wrote {path}')
    unmatched = [row for row, r in result['methods'].items() if r['missing'] or r['unmatched']]
    if args.strict and unmatched:
        sys.exit(f'error: unmatched images for {", ".join(unmatched)} (see the notes above)')


if __name__ == '__main__':
    sys.exit(main())
