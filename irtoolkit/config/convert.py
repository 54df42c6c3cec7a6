"""A BasicSR-layout or upstream IRConStyle / ConStyle v2 recipe converted into an irtoolkit recipe, every change
reported.

What is mapped (upstream IRConStyle ``Dongqi-Fan/IRConStyle``, ConStyle v2 ``Dongqi-Fan/ConStyle_v2``, NAFNet's and
Restormer's BasicSR forks, BasicSR):

* model types: ``ConStyle`` -> ``ConStyleModel``; ``Origin``, ``ImageRestorationModel``, ``ImageCleanModel`` ->
  ``RestorationModel``; v2's ``IRConStyle`` -> ``IRConStyleModel`` and ``ConStyle_v2`` -> ``ConStylePretrainModel``
  (network ``ConStyle_v2`` -> ``ConStyle`` with the 1000-class head, ``train.class_iter`` -> ``constyle.cls_iter``);
  basicsr's own models (``SRModel`` ...) stay, they run unchanged; a ConStyle network under ``Origin`` (upstream's
  ``train_Maxim_ColorDenoise_*``, which upstream cannot run) becomes the baseline it is named after;
* every upstream dataset class, with its pairing (by name or in sorted order) and its padding or cutting: see
  :mod:`irtoolkit.config.convert_datasets`;
* ``train.CrossEntropy_opt: {type: CrossEntropyLoss}`` -> ``train.infonce_opt: {type: QueueInfoNCELoss}``;
* keys a model has moved into its method's section (its ``RENAMED_OPTIONS``, e.g. upstream's and irtoolkit's
  earlier ``train.ConStyle_iter`` -> ``constyle.iter``, ``contrastive`` -> ``cddgan``);
* dropped, with the reason: ``gpu_id`` (use ``CUDA_VISIBLE_DEVICES``), ``prefetch_mode: cuda`` (irtoolkit's loaders
  pin memory instead), ``mixing_augs`` with ``mixup: false`` on models without mixup, test-only top-level keys
  (``test``, ``crop_border``), an empty ``logger.wandb`` (no project); top-level ``suffix`` / ``save_img`` of test
  recipes move under ``val``; v2's ``pretraining`` (never read) and ``val.suffix: false``, unset
  ``path.*_constyle`` of models that load no separate prior, ``train.ConStyle_iter`` of a baseline;
* numbers YAML read as floats where an int is meant (``val_freq: !!float 5e3``) become ints.

Whatever still does not pass irtoolkit's option checks afterwards (unknown keys, types, names) is reported as not
mapped, one line each; data paths are left as they are.
"""
from copy import deepcopy

from irtoolkit.config.checks import registry_problems
from irtoolkit.config.convert_datasets import convert_datasets
from irtoolkit.config.options import model_class, model_schema, renamed_keys
from irtoolkit.config.schema import option_problems

__all__ = ['convert_options', 'move_key']

MODEL_TYPES = {'ConStyle': 'ConStyleModel', 'Origin': 'RestorationModel', 'IRConStyle': 'IRConStyleModel',
               'ConStyle_v2': 'ConStylePretrainModel', 'ImageRestorationModel': 'RestorationModel',
               'ImageCleanModel': 'RestorationModel'}
# upstream's train_Maxim_ColorDenoise_{15,25,50}.yml name ConStyleMaxim with model_type Origin (the baseline's model)
BASELINE_OF = {f'ConStyle{name}': name for name in ('NAFNet', 'Restormer', 'Maxim', 'KBNet', 'Uformer')}
DROPPED_TOP = {'gpu_id': 'select GPUs with CUDA_VISIBLE_DEVICES', 'test': 'the runner (test.py) says it',
               'crop_border': 'set per metric (val.metrics.<name>.crop_border)'}
INT_KEYS = (('val', 'val_freq'), ('logger', 'print_freq'), ('logger', 'save_checkpoint_freq'),
            ('train', 'total_iter'), ('train', 'warmup_iter'), ('train', 'ConStyle_iter'), ('constyle', 'iter'))


class _Report:

    def __init__(self):
        self.changes, self.unmapped = [], []

    def change(self, key, what):
        self.changes.append(f'{key}: {what}')


def _model(opt, report):
    old = opt.get('model_type')
    if old in MODEL_TYPES:
        opt['model_type'] = MODEL_TYPES[old]
        report.change('model_type', f'{old} -> {opt["model_type"]}')
    net = opt.get('network_g')
    if old == 'Origin' and isinstance(net, dict) and net.get('type') in BASELINE_OF:
        report.change('network_g.type', f'{net["type"]} -> {BASELINE_OF[net["type"]]} (upstream\'s Origin model calls '
                      'net(lq), which a ConStyle network refuses: the baseline the recipe is named after)')
        net['type'] = BASELINE_OF[net['type']]
    for key, why in DROPPED_TOP.items():
        if key in opt:
            report.change(key, f'dropped ({why})')
            del opt[key]
    for key in ('suffix', 'save_img'):
        if key in opt:
            value = opt.pop(key)
            if value is not None:
                opt.setdefault('val', {})[key] = value
            report.change(key, f'moved to val.{key}' if value is not None else 'dropped (unset)')
    if (opt.get('val') or {}).get('suffix') is False:  # ConStyle v2's test recipes: no suffix
        del opt['val']['suffix']
        report.change('val.suffix', 'false dropped (no suffix)')
    _v2(opt, old, report)


def _v2(opt, old, report):
    """ConStyle v2's keys: a key its code never reads, its stage-1 network and class-loss iterations, prior keys of
    models without a prior."""
    if 'pretraining' in opt:  # in v2's test recipes; no line of v2's code reads it
        report.change('pretraining', f'{opt.pop("pretraining")} dropped (not read by upstream either)')
    net, train, path = opt.get('network_g'), opt.get('train') or {}, opt.get('path') or {}
    if isinstance(net, dict) and net.get('type') == 'ConStyle_v2':
        net.update(type='ConStyle', Train=net.get('Train', True), num_classes=1000)
        report.change('network_g.type', 'ConStyle_v2 -> ConStyle with the 1000-class head (num_classes: 1000)')
    if 'class_iter' in train:
        opt.setdefault('constyle', {})['cls_iter'] = train.pop('class_iter')
        report.change('train.class_iter', '-> constyle.cls_iter')
    if opt.get('model_type') != 'IRConStyleModel' and path.get('pretrain_constyle', False) is None:
        for key in [k for k in path if k.endswith('_constyle')]:
            del path[key]
            report.change(f'path.{key}', f'dropped ({opt.get("model_type")} loads no separate prior)')
    if old == 'Origin' and 'ConStyle_iter' in train:
        report.change('train.ConStyle_iter', f'{train.pop("ConStyle_iter")} dropped (the baseline has no prior)')


def _train(opt, report):
    train = opt.get('train') or {}
    ce = train.get('CrossEntropy_opt')
    if isinstance(ce, dict) and ce.get('type') == 'CrossEntropyLoss' and 'infonce_opt' not in train:
        train['infonce_opt'] = dict(ce, type='QueueInfoNCELoss')
        del train['CrossEntropy_opt']
        report.change('train.CrossEntropy_opt', 'CrossEntropyLoss -> train.infonce_opt: {type: QueueInfoNCELoss}')
    mix = train.get('mixing_augs')
    schema_train = model_schema(opt.get('model_type', 'RestorationModel')).get('train') or {}
    schema_train = getattr(schema_train, 'spec', schema_train)
    if isinstance(mix, dict) and 'mixing_augs' not in schema_train and not mix.get('mixup'):
        del train['mixing_augs']
        report.change('train.mixing_augs', f'dropped (mixup off; {opt.get("model_type")} has no mixup)')


def _logger_and_ints(opt, report):
    wandb = (opt.get('logger') or {}).get('wandb')
    if isinstance(wandb, dict) and not wandb.get('project'):
        del opt['logger']['wandb']
        report.change('logger.wandb', 'dropped (no project: tracking off)')
    for section, key in INT_KEYS:
        value = (opt.get(section) or {}).get(key)
        if isinstance(value, float) and value.is_integer():
            opt[section][key] = int(value)
            report.change(f'{section}.{key}', f'{value!r} -> {int(value)}')


def move_key(opt, old, new):
    """Move the value at dotted path ``old`` to dotted path ``new`` (in place); a section left empty is removed.
    Returns whether ``old`` was there."""
    parts, node, trail = old.split('.'), opt, []
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            return False
        trail.append((node, part))
        node = node[part]
    if parts[-1] not in node:
        return False
    value = node.pop(parts[-1])
    for parent, key in reversed(trail):  # e.g. a train section that held only ConStyle_iter
        if parent[key] == {}:
            del parent[key]
    target = opt
    for part in new.split('.')[:-1]:
        target = target.setdefault(part, {})
    target[new.split('.')[-1]] = value
    return True


def _renames(opt, report):
    try:
        renames = renamed_keys(model_class(opt.get('model_type', 'RestorationModel')))
    except ValueError:  # an unknown model type: reported below
        return
    for old, new in renames.items():
        if move_key(opt, old, new):
            report.change(old, f'-> {new}')


def convert_options(opt):
    """``(converted options, changes, unmapped)``: ``opt`` is not modified; ``changes`` and ``unmapped`` are lines
    ``key: what``."""
    opt, report = deepcopy(opt), _Report()
    upstream_type = opt.get('model_type')
    _model(opt, report)
    convert_datasets(opt, upstream_type, report)
    _logger_and_ints(opt, report)
    _renames(opt, report)
    try:
        _train(opt, report)
        schema = model_schema(opt.get('model_type', 'RestorationModel'))
        report.unmapped += option_problems(opt, schema) + registry_problems(opt, schema)
    except ValueError as err:  # an unknown model type: nothing else can be checked against its schema
        report.unmapped.append(str(err))
    return opt, report.changes, report.unmapped
