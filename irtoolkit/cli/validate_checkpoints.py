"""Re-validate every saved checkpoint of a run and tabulate the metrics against the iteration.

    irtk-validate-checkpoints -opt options/train/NAFNet/train_NAFNet_tiny.yml
    irtk-validate-checkpoints -opt experiments/NAFNet_tiny/options_<stamp>_resolved.yml \\
        --experiment experiments/NAFNet_tiny --param-key params
    python tools/validate_checkpoints.py ...    # the same command

The model of the recipe (the run's own, or the resolved copy in its experiment folder) is built for testing; each
``models/net_g_<iter>.pth`` / ``.safetensors`` of the experiment (default ``experiments/<name>``) is loaded in
iteration order, then ``net_g_latest`` and ``net_g_best``, and the recipe's validation sets (``datasets.val*``; a
test recipe's ``test_*``) run through the model's own validation: a row is what the run logged at that iteration.
``--param-key auto`` loads ``params_ema`` when a file has it (the network the run validated), ``params`` the raw
weights. Writes ``checkpoints.csv``, ``checkpoints.md`` (iteration x metric) and ``checkpoints.png`` (metric vs
iteration) to ``results/<name>`` (``path.results_root``, or ``--out``) and prints the table. A missing experiment
folder or checkpoint is one line and exit status 2. The work is in :mod:`irtoolkit.engine.checkpoint_validation`
and :mod:`irtoolkit.engine.checkpoint_report`.
"""
import argparse
import json
import os
import os.path as osp
import sys
import time


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('-opt', '--opt', required=True, help="the run's recipe, or its resolved copy")
    p.add_argument('--experiment', help='the experiment folder (default: experiments/<name> of the recipe)')
    p.add_argument('--param-key', default='auto', choices=('auto', 'params', 'params_ema'),
                   help='auto: params_ema when a file has it, else params')
    p.add_argument('--out', help='folder for checkpoints.csv/.md/.png (default: results/<name>)')
    p.add_argument('--force_yml', nargs='+', default=None, help='override options: key.sub=value ...')
    return p.parse_args(argv)


def recipe_for_testing(opt_path, overrides=None):
    """The recipe resolved for testing, without ``path.pretrain_network_*``: every checkpoint is loaded anyway, and
    a pre-training file that has moved since must not stop the re-validation."""
    from irtoolkit.config.options import apply_overrides, load_options, resolve_options, validate_options
    opt = apply_overrides(load_options(opt_path), overrides)
    path_opt = opt.get('path') or {}
    opt['path'] = {k: v for k, v in path_opt.items() if not k.startswith(('pretrain_network_', 'resume_state'))}
    return resolve_options(opt, validate_options(opt, opt_path, is_train=False), opt_path, is_train=False)


def direction(opt):
    """``lower_is_better(metric)`` of the recipe's ``val.metrics`` (False for a name it does not list)."""
    from irtoolkit.metrics.calculate import MetricSet
    metrics = MetricSet(opt['val'].get('metrics'))
    return lambda m: m in metrics.names and bool(metrics.lower_is_better(m))


def run(argv):
    from irtoolkit.config.run import RunContext
    from irtoolkit.engine.checkpoint_report import write_report
    from irtoolkit.engine.checkpoint_validation import experiment_models, run_checkpoints, validate_checkpoints
    from irtoolkit.engine.run_log import get_logger
    from irtoolkit.training.best_checkpoint import BEST_JSON

    args = parse_args(argv)
    opt = recipe_for_testing(args.opt, args.force_yml)
    experiment = args.experiment or RunContext.create(opt, args.opt, True).paths['experiments_root']
    models = experiment_models(experiment)
    best_iter = None
    if osp.isfile(osp.join(experiment, BEST_JSON)):
        with open(osp.join(experiment, BEST_JSON), encoding='utf-8') as f:
            best_iter = json.load(f).get('iter')
    checkpoints = run_checkpoints(models, best_iter=best_iter)
    context = RunContext.create(opt, args.opt, is_train=False)
    out = args.out or context.paths['results_root']
    os.makedirs(out, exist_ok=True)
    logger = get_logger(osp.join(out, f'validate_checkpoints_{opt["name"]}_{time.strftime("%Y%m%d_%H%M%S")}.log'))
    logger.info(f'{len(checkpoints)} checkpoint(s) in {models}, param key {args.param_key}')
    rows = validate_checkpoints(opt, context, checkpoints, args.param_key, logger=logger)
    paths, text = write_report(rows, out, f'Checkpoints of {opt["name"]} ({experiment})', direction(opt))
    print(text)
    print('wrote ' + ', '.join(paths))
    return 0


def main(argv=None):
    from irtoolkit.engine.runner import user_errors
    return user_errors(run, argv)


if __name__ == '__main__':
    sys.exit(main())
