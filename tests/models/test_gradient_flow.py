"""Gradient flow, per model and per loss term: which parameter groups each term of each optimisation step reaches
(``x``) and which it must not (``-``), asserted as a table. Every term is back-propagated alone, inside the step's
:meth:`~irtoolkit.models.base_model.BaseModel.learning_only` of the step's optimisers, exactly as
:meth:`~irtoolkit.models.base_model.BaseModel.optimize` builds it.

What the tables pin down: frozen teachers and momentum copies never learn; critics are fixed in the generator step;
negative generators learn only in their own (ascent) step and get nothing from the generator step; the feature
grain of Uni-Removal reaches the student, the student projectors and the projectors of the teachers of the batch's
samples, never the other teachers' projectors (their projections are negatives, i.e. constants).
"""
import os.path as osp

import pytest
import torch
from irtk_testutils import REPO, write_options

from irtoolkit.utils.registry import build_model
from irtoolkit.config.options import parse_options
from irtoolkit.config.recipe import load_recipe


def parse_table(text):
    """``term group group ...`` header, then ``name x - ...`` rows -> {term: {group: bool}}."""
    lines = [ln.split() for ln in text.strip().splitlines()]
    groups = lines[0][1:]
    return {row[0]: dict(zip(groups, (c == 'x' for c in row[1:]))) for row in lines[1:]}


def grad_table(model, steps, groups=None):
    """{term: {group: receives gradient}} for ``steps`` = [(optimiser names, losses function, its arguments)];
    ``groups`` maps a group name to its parameters (default: one group per network of the model)."""
    groups = groups or {name: list(net.parameters()) for name, net in model.networks.items()}
    every = [p for net in model.networks.values() for p in net.parameters()]
    table = {}
    for optimizers, losses, args in steps:
        with model.learning_only(*model.learning_networks(*optimizers)):
            terms = losses(*args)
            for name, value in terms.items():
                for p in every:
                    p.grad = None
                value.backward(retain_graph=True)
                table[name] = {g: any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in params)
                               for g, params in groups.items()}
    return table


def build(opt, tmp, data_root):
    """The model of ``opt`` (its data replaced by the tiny set: models do not read it)."""
    torch.manual_seed(0)
    opt['datasets'] = {'train': {'name': 'tiny', 'type': 'PairedRestorationDataset', 'io_backend': {'type': 'disk'},
                                 'dataroot_lq': osp.join(data_root, 'train/lq'),
                                 'dataroot_gt': osp.join(data_root, 'train/gt')}}
    opt = parse_options(write_options(opt, tmp / 'opt.yml'), True)
    return build_model(opt)


# ---------------------------------------------------------------------------------------------------- CDD-GAN
CDDGAN_TABLE = """
term          net_g net_g_b net_d net_d_b net_f net_f_b net_fm net_fm_b net_n net_n_b
d             -     -       x     x       -     -       -      -        -     -
n             -     -       -     -       -     -       -      -        x     x
g_gan         x     x       -     -       -     -       -      -        -     -
cycle         x     x       -     -       -     -       -      -        -     -
identity      x     x       -     -       -     -       -      -        -     -
nce           x     x       -     -       x     x       -      -        -     -
exemplar_pos  x     -       -     -       x     -       -      -        -     -
"""


def cddgan_model(tmp, data_root):
    opt = load_recipe(osp.join(REPO, 'options/train/CDDGAN/demo_CDDGAN_haze.yml'))
    opt['network_g'].update(ngf=4, num_blocks=2)
    opt['network_d'].update(num_feat=8, num_layers=2)
    opt['network_n'].update(num_negatives=8, hidden_dim=16, queue_size=16)
    opt['cddgan'].update(num_patches=16, head={'out_dim': 16, 'hidden_dim': 16},
                         clear_exemplar=['identity', 'positive'])
    opt['train']['identity_opt'] = {'type': 'L1Loss', 'loss_weight': 0.5}
    model = build(opt, tmp, data_root)
    model.feed_data({'lq': torch.rand(2, 3, 32, 32), 'gt': torch.rand(2, 3, 32, 32)})
    return model


def test_cddgan_gradient_flow(tmp_path, tiny_data):
    model = cddgan_model(tmp_path, tiny_data)
    model.optimize_parameters(1)  # fills the queues: the N and G steps below also see queued negatives
    fwd = model.forward_generators(model.batch['lq'], model.batch['gt'])
    table = grad_table(model, [(('d', ), model.d_losses, (fwd, )), (('n', ), model.n_losses, (fwd, )),
                               (('g', 'f'), model.g_losses, (fwd, ))])
    assert table == parse_table(CDDGAN_TABLE)
    assert all(not q.data.requires_grad for n in model.neg_gens.values() for q in n.queues)  # constants


# ---------------------------------------------------------------------------------------------------- NLCL
NLCL_TABLE = """
term       net_g net_r net_d net_h_loc net_h_bg net_h_rain
d          -     -     x     -         -        -
g_gan      x     -     -     -         -        -
location   x     -     -     x         -        -
layer      x     x     -     -         x        x
recon      x     x     -     -         -        -
fidelity   x     -     -     -         -        -
"""


def test_nlcl_gradient_flow(tmp_path, tiny_data):
    opt = load_recipe(osp.join(REPO, 'options/train/NLCL/demo_NLCL_rain.yml'))
    opt['network_g'].update(width=8, enc_blk_nums=[1, 1], dec_blk_nums=[1, 1])
    opt['network_r'].update(nf=8, num_blocks=2)
    opt['network_d'].update(num_feat=8, num_layers=2)
    opt['nlcl'].update(location_encoder={'type': 'self', 'layers': ['intro', 'encoders.0', 'encoders.1']},
                       layer_encoder={'type': 'disc', 'layers': ['input', 'body.0.0', 'body.1.0']}, num_patches=16,
                       num_rain=12, head={'out_dim': 16, 'hidden_dim': 16}, identity_init=[], d_warmup_iter=0)
    model = build(opt, tmp_path, tiny_data)
    o, clean = torch.rand(2, 3, 40, 40), torch.rand(2, 3, 40, 40)
    b = model.net_g(o)
    table = grad_table(model, [(('d', ), model.d_losses, (clean, b)), (('g', 'heads'), model.g_losses, (o, clean, b))])
    assert table == parse_table(NLCL_TABLE)


# ---------------------------------------------------------------------------------------------------- Uni-Removal
NET = {'type': 'NAFNet', 'width': 8, 'middle_blk_num': 1, 'enc_blk_nums': [1, 1], 'dec_blk_nums': [1, 1]}
LABELS = ('haze', 'rain', 'blur')

# a batch of haze, haze, rain: the feature grain reaches the haze and rain teachers' projectors, never the blur one's
STAGE1_TABLE = """
term            student proj_student proj_haze proj_rain proj_blur proj_inverse teachers
distill         x       -            -         -         -         -            -
pixel           x       -            -         -         -         -            -
mgcl_feature    x       x            x         x         -         -            -
mgcl_image      x       -            -         -         -         -            -
proj_recon      -       -            x         x         x         x            -
"""

STAGE2_TABLE = """
term         net_g net_d net_cluster net_d_m net_cluster_m
d            -     x     -           -       -
g_gan        x     -     -           -       -
cluster      x     -     x           -       -
consistency  x     -     -           -       -
"""


def stage1_model(tmp, data_root, teachers, **uni):
    opt = load_recipe(osp.join(REPO, 'options/train/UniRemoval/demo_UniRemoval_stage1.yml'))
    opt['network_g'] = NET
    opt['uniremoval'].update(teachers=[{'label': lab, 'network': NET, 'checkpoint': teachers[lab]} for lab in LABELS],
                             student_layers=['encoders.0', 'encoders.1', 'middle_blks'], teacher_layers=None,
                             proj_channels=8, num_patches=16, **uni)
    return build(opt, tmp, data_root)


def test_uniremoval_stage1_gradient_flow(tmp_path, tiny_data, teachers):
    model = stage1_model(tmp_path, tiny_data, teachers)
    batch = {'lq': torch.rand(3, 3, 32, 32), 'gt': torch.rand(3, 3, 32, 32), 'deg_type': ['haze', 'haze', 'rain']}
    fwd = model.forward(batch['lq'], model.batch_labels(batch))
    proj = dict(model.proj.named_parameters())
    groups = {'student': list(model.net_g.parameters()),
              'proj_student': [p for k, p in proj.items() if k.startswith('student.')],
              **{f'proj_{lab}': [p for k, p in proj.items() if k.startswith(f'teachers.{i}.')]
                 for i, lab in enumerate(LABELS)},
              'proj_inverse': [p for k, p in proj.items() if k.startswith('inverse.')],
              'teachers': [p for t in model.teachers for p in t.parameters()]}
    table = grad_table(model, [(('g', ), model.g_losses, (fwd, batch['gt']))], groups)
    assert table == parse_table(STAGE1_TABLE)


def test_uniremoval_stage2_gradient_flow(tmp_path, tiny_data):
    opt = load_recipe(osp.join(REPO, 'options/train/UniRemoval/demo_UniRemoval_stage2.yml'))
    opt['network_g'] = NET
    opt['network_d'].update(num_feat=8, num_layers=2)
    opt['uniremoval'].update(cluster_dim=16, queue_size=8)
    opt['path']['pretrain_network_g'] = None
    opt['train']['consistency_opt'] = {'type': 'L1Loss', 'loss_weight': 1.0}
    model = build(opt, tmp_path, tiny_data)
    model.feed_data({'lq': torch.rand(2, 3, 32, 32), 'gt': torch.rand(2, 3, 32, 32)})
    model.optimize_parameters(1)  # moves the student off its frozen copy (L1's gradient at 0 is 0), fills the queues
    x, clean = model.batch['lq'], model.batch['gt']
    out = model.net_g(x)
    table = grad_table(model, [(('d', ), model.d_losses, (clean, out)),
                               (('g', ), model.g_losses, (x, out, model.keys(clean, x)))])
    assert table == parse_table(STAGE2_TABLE)


def test_learning_only_freezes_the_others_and_restores(tmp_path, tiny_data):
    model = cddgan_model(tmp_path, tiny_data)
    flags = {n: [p.requires_grad for p in net.parameters()] for n, net in model.networks.items()}
    with model.learning_only('net_n', 'net_n_b'):
        learning = {n for n, net in model.networks.items() if any(p.requires_grad for p in net.parameters())}
        assert learning == {'net_n', 'net_n_b'}  # frozen networks (net_fm*) stay frozen
    assert flags == {n: [p.requires_grad for p in net.parameters()] for n, net in model.networks.items()}
    with pytest.raises(KeyError, match="'net_fm'"):  # a frozen network cannot learn in a step
        with model.learning_only('net_fm'):
            pass
