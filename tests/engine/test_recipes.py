"""Every recipe under options/ is runnable as written up to its data: its keys and types pass its model's option
schema, every registered name exists (model, networks, datasets, losses, metrics), network arguments fit their
constructors, and its optimisers and scheduler build. Dataroots are not checked: the full-size sets are not shipped
(the demo and tiny recipes are trained end to end by their own tests)."""
import glob
import inspect
import os.path as osp

import pytest
import torch
from irtk_testutils import REPO

from irtoolkit.metrics.calculate import MetricSet
from irtoolkit.utils.optim import build_optimizer, build_scheduler
from irtoolkit.config.options import model_schema
from irtoolkit.config.recipe import load_recipe
from irtoolkit.utils.registry import (ARCH_REGISTRY, DATASET_REGISTRY, MODEL_REGISTRY, build_loss,
                                      get_from_registry, load_plugins)
from irtoolkit.config.schema import check_options
from irtoolkit.utils.errors import OptionError

RECIPES = sorted(p for p in glob.glob(osp.join(REPO, 'options', '**', '*.yml'), recursive=True)
                 if '_base_' not in osp.relpath(p, REPO).split(osp.sep))  # bases are parts of recipes


def test_every_method_has_recipes():
    folders = {osp.relpath(osp.dirname(p), osp.join(REPO, 'options')) for p in RECIPES}
    assert {'train/NAFNet', 'train/ConStyle', 'train/Restormer', 'train/Maxim', 'train/KBNet', 'train/Uformer',
            'train/CDDGAN', 'train/NLCL', 'train/UniRemoval', 'test/NAFNet', 'test/ConStyle', 'test/Restormer',
            'test/Maxim', 'test/KBNet', 'test/Uformer'} <= folders, folders
    names = {osp.basename(p) for p in RECIPES}
    assert {'demo_CDDGAN_haze.yml', 'train_CDDGAN_RESIDE.yml', 'demo_NLCL_rain.yml', 'train_NLCL_SPAData.yml',
            'demo_UniRemoval_stage1.yml', 'demo_UniRemoval_stage2.yml', 'train_UniRemoval_stage1.yml',
            'train_UniRemoval_stage2.yml'} <= names, names


@pytest.mark.parametrize('path', RECIPES, ids=lambda p: osp.relpath(p, osp.join(REPO, 'options')))
def test_recipe_builds_up_to_its_data(path):
    opt = load_recipe(path)
    load_plugins(opt.get('plugins'), base_dir=osp.dirname(path))
    model_cls = get_from_registry(MODEL_REGISTRY, opt['model_type'], 'model_type')
    check_options(opt, model_schema(model_cls), f'{path}: ')
    for key, net_opt in opt.items():
        if key.startswith('network_'):
            net_opt = dict(net_opt)
            cls = get_from_registry(ARCH_REGISTRY, net_opt.pop('type'), key)
            params = inspect.signature(cls.__init__).parameters
            if not any(p.kind == p.VAR_KEYWORD for p in params.values()):  # models may add arguments (e.g. dims)
                assert set(net_opt) <= set(params), f'{key}: unknown arguments {set(net_opt) - set(params)}'
    for key, dataset in (opt.get('datasets') or {}).items():
        get_from_registry(DATASET_REGISTRY, dataset['type'], f'datasets.{key}')
    train = opt.get('train') or {}
    for key, loss_opt in train.items():
        if key.endswith('_opt') and key != 'CrossEntropy_opt':  # upstream's alias, mapped by ConStyleModel
            build_loss(loss_opt, f'train.{key}')
    param = [torch.nn.Parameter(torch.zeros(1))]
    optimizers = [build_optimizer(param, o, f'train.{k}') for k, o in train.items() if k.startswith('optim_')]
    for optimizer in optimizers if train.get('scheduler') else []:
        build_scheduler(optimizer, train['scheduler'])
    MetricSet((opt.get('val') or {}).get('metrics'))


def test_unknown_method_key_is_rejected():
    opt = load_recipe(osp.join(REPO, 'options/train/CDDGAN/demo_CDDGAN_haze.yml'))
    opt['cddgan']['num_patch'] = 64
    schema = model_schema('CDDGANModel')
    with pytest.raises(OptionError, match=r'cddgan.num_patch: unknown option; did you mean num_patches\?'):
        check_options(opt, schema, 'demo: ')
