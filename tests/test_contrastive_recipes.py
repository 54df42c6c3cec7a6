"""Every CDD-GAN / NLCL / Uni-Removal recipe passes the option schema of its model (keys and types), and its
losses and networks build (dataroots are not checked here: the full-size data sets are not shipped)."""
import glob
import os.path as osp

import pytest
from irtk_testutils import REPO

from irtoolkit.utils.options import BASE_SCHEMA
from irtoolkit.utils.recipe import load_recipe
from irtoolkit.utils.schema import check_options, merge_schema
from irtoolkit.utils.registry import MODEL_REGISTRY, OptionError, build_loss

RECIPES = sorted(glob.glob(osp.join(REPO, 'options/train/CDDGAN/*.yml')) +
                 glob.glob(osp.join(REPO, 'options/train/NLCL/*.yml')) +
                 glob.glob(osp.join(REPO, 'options/train/UniRemoval/*.yml')))


def test_recipes_exist():
    names = {osp.basename(p) for p in RECIPES}
    assert {'demo_CDDGAN_haze.yml', 'train_CDDGAN_RESIDE.yml', 'demo_NLCL_rain.yml', 'train_NLCL_SPAData.yml',
            'demo_UniRemoval_stage1.yml', 'demo_UniRemoval_stage2.yml', 'train_UniRemoval_stage1.yml',
            'train_UniRemoval_stage2.yml'} <= names


@pytest.mark.parametrize('path', RECIPES, ids=osp.basename)
def test_recipe_schema_and_losses(path):
    opt = load_recipe(path)
    model_cls = MODEL_REGISTRY.get(opt['model_type'])
    check_options(opt, merge_schema(BASE_SCHEMA, getattr(model_cls, 'OPTION_SCHEMA', None)), f'{path}: ')
    for key, loss_opt in opt['train'].items():
        if key.endswith('_opt'):
            build_loss(loss_opt, f'train.{key}')


def test_unknown_contrastive_key_is_rejected():
    opt = load_recipe(osp.join(REPO, 'options/train/CDDGAN/demo_CDDGAN_haze.yml'))
    opt['contrastive']['num_patch'] = 64
    schema = merge_schema(BASE_SCHEMA, MODEL_REGISTRY.get('CDDGANModel').OPTION_SCHEMA)
    with pytest.raises(OptionError, match=r'contrastive.num_patch: unknown option; did you mean num_patches\?'):
        check_options(opt, schema, 'demo: ')
