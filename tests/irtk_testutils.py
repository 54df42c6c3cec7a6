"""Helpers shared by tests (importable because pyproject sets pytest's pythonpath to tests/)."""
import os.path as osp

import yaml

from irtoolkit.utils.recipe import load_recipe

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


def tiny_options(data_root, name='tiny', total_iter=20, **overrides):
    """The tiny NAFNet recipe as a dict, pointed at ``data_root``; ``overrides`` replace top-level keys."""
    opt = load_recipe(osp.join(REPO, 'options/train/NAFNet/train_NAFNet_tiny.yml'))
    opt['name'] = name
    for split in ('train', 'val'):
        opt['datasets'][split]['dataroot_gt'] = osp.join(data_root, split, 'gt')
        opt['datasets'][split]['dataroot_lq'] = osp.join(data_root, split, 'lq')
    opt['train']['total_iter'] = total_iter
    opt['train']['scheduler']['periods'] = [total_iter]
    opt['logger'].update(print_freq=5, save_checkpoint_freq=10, use_tb_logger=False)
    opt['val']['val_freq'] = 10
    opt.update(overrides)
    return opt


def write_options(opt, path):
    with open(path, 'w') as f:
        yaml.safe_dump(opt, f, sort_keys=False)
    return str(path)
