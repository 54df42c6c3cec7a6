"""The run context: what belongs to one run of a recipe, not to the recipe.

A resolved recipe (:func:`irtoolkit.config.options.parse_options`) holds what its YAML says plus the schema's
defaults, and nothing else. Which process this is (rank, world size), where it runs (device, GPU count), which
file it came from and where its outputs go live here, beside it: the experiment folder keeps the recipe, and a
recipe never suggests ``rank`` or ``is_train`` as an option.

Output folders follow BasicSR's layout: training ``experiments/<name>/{models,training_states,visualization}`` (the
log beside them), testing ``results/<name>/{visualization}``; ``path.experiments_root`` / ``path.results_root`` in
a recipe move them.
"""
import os
import os.path as osp
from copy import deepcopy
from dataclasses import dataclass, field

import torch

__all__ = ['RunContext', 'gpu_count', 'recipe_device']


def gpu_count(recipe):
    """GPUs a run of ``recipe`` uses: ``num_gpu`` (``auto``: every visible one) unless ``device: cpu``."""
    if recipe.get('device', 'auto') == 'cpu':
        return 0
    num = recipe.get('num_gpu', 'auto')
    return torch.cuda.device_count() if num in ('auto', None) else int(num)


def recipe_device(recipe):
    """The device of a run of ``recipe``: the current CUDA device when it asks for GPUs and one is there, else the
    CPU."""
    if gpu_count(recipe) and torch.cuda.is_available():
        return torch.device('cuda', torch.cuda.current_device())
    return torch.device('cpu')


def _output_paths(recipe, root, is_train):
    path, name = recipe.get('path') or {}, recipe.get('name', 'run')
    if is_train:
        exp = path.get('experiments_root') or osp.join(root, 'experiments', name)
        return {'experiments_root': exp, 'models': osp.join(exp, 'models'), 'log': exp,
                'training_states': osp.join(exp, 'training_states'), 'visualization': osp.join(exp, 'visualization')}
    res = path.get('results_root') or osp.join(root, 'results', name)
    return {'results_root': res, 'log': res, 'visualization': osp.join(res, 'visualization')}


@dataclass
class RunContext:
    """One run of a recipe.

    ``opt_path``: the options file ('' for a recipe built in code); ``is_train``; ``rank`` / ``world_size`` and
    ``dist`` (launched distributed); ``device`` and ``num_gpu``; ``root_path`` (outputs are relative to it) and
    ``paths`` (``experiments_root``, ``models``, ``training_states``, ``visualization``, ``log`` when training;
    ``results_root``, ``visualization``, ``log`` when testing); ``launcher``; ``batch_size_per_gpu`` and
    ``accumulate``, the recipe's or derived from ``datasets.train.global_batch_size`` for this world size.
    """
    opt_path: str = ''
    is_train: bool = True
    rank: int = 0
    world_size: int = 1
    dist: bool = False
    launcher: str = 'none'
    device: torch.device = field(default_factory=lambda: torch.device('cpu'))
    num_gpu: int = 0
    root_path: str = ''
    paths: dict = field(default_factory=dict)
    batch_size_per_gpu: int = 0  # the per-process batch derived from datasets.train.global_batch_size (0: recipe's)
    accumulate: int = 1  # micro-batches per optimiser step: train.accumulate, or derived as above

    @classmethod
    def create(cls, recipe, opt_path='', is_train=True, launcher='none', root_path=None):
        """The context of ``recipe`` in this process: rank and world size from the process group when one is
        initialised (a launcher, or a test that set one up), else one process."""
        from irtoolkit.utils.dist import get_dist_info
        rank, world = get_dist_info()
        root = osp.abspath(root_path or os.getcwd())
        train_set = (recipe.get('datasets') or {}).get('train') or {}
        return cls(opt_path=osp.abspath(opt_path) if opt_path else '', is_train=is_train, rank=rank,
                   batch_size_per_gpu=train_set.get('batch_size_per_gpu') or 0,
                   accumulate=(recipe.get('train') or {}).get('accumulate') or 1, world_size=world,
                   dist=world > 1 or launcher != 'none', launcher=launcher,
                   device=recipe_device(recipe), num_gpu=gpu_count(recipe), root_path=root,
                   paths=_output_paths(recipe, root, is_train))

    def where(self, key=''):
        """``file: key: `` for an option error (either part left out when unknown)."""
        return ''.join(f'{part}: ' for part in (self.opt_path, key) if part)

    def basicsr_options(self, recipe):
        """``recipe`` as a basicsr model reads its options: the run's fields written in (``is_train``, ``dist``,
        ``rank``, ``world_size``, an int ``num_gpu``, ``root_path``) and the output folders under ``path``. A copy."""
        opt = deepcopy(recipe)
        opt.update(is_train=self.is_train, dist=self.dist, rank=self.rank, world_size=self.world_size,
                   num_gpu=self.num_gpu, root_path=self.root_path, opt_path=self.opt_path)
        opt['path'] = {**(recipe.get('path') or {}), **self.paths}
        if self.batch_size_per_gpu and 'train' in opt.get('datasets', {}):
            opt['datasets']['train']['batch_size_per_gpu'] = self.batch_size_per_gpu
        return opt

    def describe(self):
        """One line for the log."""
        return (f'device {self.device.type}, world size {self.world_size}, launcher {self.launcher}, rank {self.rank}'
                f', options {self.opt_path or "(built in code)"}')
