"""Helpers shared by tests (importable because pyproject sets pytest's pythonpath to tests/)."""
import copy
import math
import os.path as osp
import socket

import torch
import yaml

from irtoolkit.config.recipe import load_recipe

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
TESTS = osp.join(REPO, 'tests')

TINY_RECIPE = 'train/NAFNet/train_NAFNet_tiny.yml'

# Small networks the fast tests put in place of a recipe's (tiny NAFNet: width 8, two levels).
SMALL_NAFNET = {'type': 'NAFNet', 'width': 8, 'middle_blk_num': 1, 'enc_blk_nums': [1, 1], 'dec_blk_nums': [1, 1]}
SMALL_PATCHGAN = {'type': 'PatchGANDiscriminator', 'num_feat': 8, 'num_layers': 2}

# How the contrastive demo recipes are shrunk (arguments of ``shrink_recipe``; shared by the model tests and by
# tests/contrastive/test_contrastive_ddp.py, which trains the same small models under DDP).
CDDGAN_DEMO = dict(
    recipe='train/CDDGAN/demo_CDDGAN_haze.yml', crop=32, batch=2, print_freq=1,
    networks={'network_g': SMALL_NAFNET, 'network_d': SMALL_PATCHGAN,
              'network_n': {'num_negatives': 8, 'hidden_dim': 16, 'queue_size': 16}},
    update={'cddgan': {'encoder': {'type': 'self', 'layers': ['intro', 'encoders.0', 'encoders.1']},
                       'num_patches': 16, 'head': {'out_dim': 16, 'hidden_dim': 16},
                       'clear_exemplar': ['identity', 'positive']},
            'train': {'identity_opt': {'type': 'L1Loss', 'loss_weight': 0.5}}})
NLCL_DEMO = dict(
    recipe='train/NLCL/demo_NLCL_rain.yml', crop=40, batch=2, print_freq=1,
    networks={'network_g': {'width': 8, 'enc_blk_nums': [1, 1], 'dec_blk_nums': [1, 1]},
              'network_r': {'nf': 8, 'num_blocks': 2}, 'network_d': {'num_feat': 8, 'num_layers': 2}},
    update={'nlcl': {'d_warmup_iter': 0,  # the demo's warm-up is longer than these runs; tests opt in
                     'location_encoder': {'type': 'self', 'layers': ['intro', 'encoders.0', 'encoders.1']},
                     'layer_encoder': {'type': 'disc', 'layers': ['input', 'body.0', 'body.1']},
                     'num_patches': 16, 'num_rain': 12, 'head': {'out_dim': 16, 'hidden_dim': 16}}})
# stage 1 also needs ``opt['uniremoval']['teachers']`` (checkpoints written by the test), see uniremoval_teachers
UNIREMOVAL_DEMO_STAGE1 = dict(
    recipe='train/UniRemoval/demo_UniRemoval_stage1.yml', crop=32, batch=3, print_freq=1,
    networks={'network_g': SMALL_NAFNET},
    update={'uniremoval': {'student_layers': ['encoders.0', 'encoders.1', 'middle_blks'], 'teacher_layers': None,
                           'proj_channels': 8, 'num_patches': 16}})
UNIREMOVAL_DEMO_STAGE2 = dict(
    recipe='train/UniRemoval/demo_UniRemoval_stage2.yml', crop=32, batch=2, print_freq=1,
    networks={'network_g': SMALL_NAFNET, 'network_d': {'num_feat': 8, 'num_layers': 2}},
    update={'uniremoval': {'cluster_dim': 16, 'queue_size': 8}})
UNIREMOVAL_LABELS = ('haze', 'rain', 'blur')


def shrink_recipe(data_root, name=None, total_iter=20, *, recipe=TINY_RECIPE, networks=None, crop=None, batch=None,
                  print_freq=5, checkpoint_freq=10, val_freq=10, update=None, **overrides):
    """A recipe under options/ as a dict, shrunk for a fast test.

    - ``data_root``: a tiny set laid out as ``{train,val}/{gt,lq}`` (conftest's ``tiny_data``). The training set
      (every one of its ``sets``, for a multi-degradation set) reads ``train/``; the first validation set of the
      recipe becomes ``datasets.val`` on ``val/`` and any other ``val_*`` set is dropped; both read from disk.
    - ``name``: the experiment name (default: the recipe's).
    - ``total_iter``: training iterations; a ``periods`` scheduler gets one period of that length.
    - ``networks``: ``{'network_g': spec, ...}``; a spec with a ``type`` replaces the network, one without updates
      the recipe's arguments (e.g. ``{'width': 8}``).
    - ``crop``, ``batch``: the training ``gt_size`` and ``batch_size_per_gpu`` (default: the recipe's).
    - ``print_freq``, ``checkpoint_freq``, ``val_freq``: logging, checkpoint and validation intervals; the
      tensorboard logger is always off.
    - ``update``: ``{section: {key: value}}`` set inside top-level sections (e.g. ``{'train': {'ema_decay': 0}}``).
    - ``overrides``: replace top-level keys (e.g. ``network_g=...``, ``plugins=[...]``).
    """
    opt = load_recipe(recipe if osp.isabs(recipe) else osp.join(REPO, 'options', recipe))
    if name is not None:
        opt['name'] = name
    datasets = opt['datasets']
    train = datasets['train']
    for source in train.get('sets') or [train]:
        source.update(dataroot_lq=osp.join(data_root, 'train', 'lq'), dataroot_gt=osp.join(data_root, 'train', 'gt'))
    train['io_backend'] = {'type': 'disk'}
    if crop is not None:
        train['gt_size'] = crop
    if batch is not None:
        train['batch_size_per_gpu'] = batch
    val_keys = [k for k in datasets if k.startswith('val')]
    if val_keys:
        val = datasets[val_keys[0]]
        for key in val_keys:
            del datasets[key]
        datasets['val'] = dict(val, dataroot_lq=osp.join(data_root, 'val', 'lq'),
                               dataroot_gt=osp.join(data_root, 'val', 'gt'), io_backend={'type': 'disk'})
    for key, spec in copy.deepcopy(networks or {}).items():
        if 'type' in spec:
            opt[key] = spec
        else:
            opt[key].update(spec)
    opt['train']['total_iter'] = total_iter
    scheduler = opt['train'].get('scheduler')
    if scheduler and 'periods' in scheduler:
        scheduler['periods'] = [total_iter]
        if 'restart_weights' in scheduler:
            scheduler['restart_weights'] = [1]
    opt['logger'].update(print_freq=print_freq, save_checkpoint_freq=checkpoint_freq, use_tb_logger=False)
    opt['val']['val_freq'] = val_freq
    for section, values in copy.deepcopy(update or {}).items():
        opt.setdefault(section, {}).update(values)
    opt.update(copy.deepcopy(overrides))
    return opt


def uniremoval_teachers(checkpoints):
    """``uniremoval.teachers`` for the small stage-1 recipe: one small NAFNet per label, from ``{label: path}``."""
    return [{'label': lab, 'network': dict(SMALL_NAFNET), 'checkpoint': checkpoints[lab]} for lab in UNIREMOVAL_LABELS]


def write_options(opt, path):
    with open(path, 'w') as f:
        yaml.safe_dump(opt, f, sort_keys=False)
    return str(path)


def read_key_list(path):
    """``[(key, shape, dtype)]`` of an upstream state-dict key list (``key<TAB>shape<TAB>dtype`` lines)."""
    rows = []
    with open(path) as f:
        for line in f:
            if line.startswith('#') or not line.strip():
                continue
            key, shape, dtype = line.rstrip('\n').split('\t')
            rows.append((key, tuple(int(s) for s in shape.strip('()').split(',') if s.strip()), dtype))
    return rows


def train_iterations(model, data, iters, start=1):
    """``iters`` real iterations of ``model`` (``optimize_parameters``) on batches drawn from the iterator ``data``."""
    for it in range(start, start + iters):
        model.feed_data(next(data))
        model.optimize_parameters(it)


def grad_norms(terms, groups):
    """{term: {group: |d term / d params|}} for loss ``terms`` {name: tensor} and parameter ``groups`` {name: [params]},
    through ``torch.autograd.grad``; a group the term does not reach gets 0."""
    every = [p for params in groups.values() for p in params]
    table = {}
    for name, value in terms.items():
        grads = torch.autograd.grad(value, every, retain_graph=True, allow_unused=True)
        norms, i = {}, 0
        for group, params in groups.items():
            norms[group] = math.sqrt(sum(float((g.double() ** 2).sum()) for g in grads[i:i + len(params)]
                                         if g is not None))
            i += len(params)
        table[name] = norms
    return table


def free_port():
    """A TCP port free on 127.0.0.1 now, for a test's torchrun / process group: fixed ports collide when two tests run
    at once (``make test`` runs two pytest-xdist workers) or another run on the machine holds one."""
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]
