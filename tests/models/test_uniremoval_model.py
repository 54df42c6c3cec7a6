"""UniRemovalStage1Model (frozen teachers from checkpoints, routed by label; student + projectors learn) and
UniRemovalStage2Model (discriminator + cluster-grained loss), 20 runner iterations each with finite, logged
losses."""
import math
import os.path as osp

import pytest
import torch
from irtk_testutils import REPO, write_options

from irtoolkit.engine.run_log import parse_log
from irtoolkit.utils.registry import build_model
from irtoolkit.engine.runner import train as run_train
from irtoolkit.config.options import parse_options
from irtoolkit.config.recipe import load_recipe
from irtoolkit.utils.errors import OptionError

NET = {'type': 'NAFNet', 'width': 8, 'middle_blk_num': 1, 'enc_blk_nums': [1, 1], 'dec_blk_nums': [1, 1]}
LABELS = ('haze', 'rain', 'blur')


def stage1_recipe(data_root, teachers, name='uni1', iters=20):
    opt = load_recipe(osp.join(REPO, 'options/train/UniRemoval/demo_UniRemoval_stage1.yml'))
    opt['name'] = name
    tr = opt['datasets']['train']
    tr['sets'] = [{'name': lab, 'dataroot_lq': osp.join(data_root, 'train/lq'),
                   'dataroot_gt': osp.join(data_root, 'train/gt')} for lab in LABELS]
    tr.update(io_backend={'type': 'disk'}, gt_size=32, batch_size_per_gpu=3)
    for key in [k for k in opt['datasets'] if k.startswith('val')]:
        del opt['datasets'][key]
    opt['datasets']['val'] = {'name': 'tiny_val', 'type': 'PairedRestorationDataset', 'io_backend': {'type': 'disk'},
                              'dataroot_lq': osp.join(data_root, 'val/lq'),
                              'dataroot_gt': osp.join(data_root, 'val/gt')}
    opt['network_g'] = NET
    u = opt['uniremoval']
    u['teachers'] = [{'label': lab, 'network': NET, 'checkpoint': teachers[lab]} for lab in LABELS]
    u.update(student_layers=['encoders.0', 'encoders.1', 'middle_blks'], teacher_layers=None, proj_channels=8,
             num_patches=16)
    opt['train']['total_iter'] = iters
    opt['train']['scheduler']['periods'] = [iters]
    opt['val']['val_freq'] = 10
    opt['logger'].update(print_freq=1, save_checkpoint_freq=10)
    return opt


def test_stage1_teachers_frozen_and_routed(tiny_data, in_tmp, teachers):
    opt = parse_options(write_options(stage1_recipe(tiny_data, teachers), in_tmp / 'u1.yml'), True)
    m = build_model(opt)
    before = [{k: v.clone() for k, v in t.state_dict().items()} for t in m.teachers]
    student = {k: v.clone() for k, v in m.net_g.state_dict().items()}
    x = torch.rand(3, 3, 32, 32)
    m.feed_data({'lq': x, 'gt': torch.rand(3, 3, 32, 32), 'deg_type': ['rain', 'haze', 'rain']})
    with torch.no_grad():
        outs = [t(x) for t in m.teachers]
    m.optimize_parameters(1)
    for t, b in zip(m.teachers, before):
        assert not t.training and all(torch.equal(v, b[k]) for k, v in t.state_dict().items())
    assert any(not torch.equal(v, student[k]) for k, v in m.net_g.state_dict().items())
    # routing: sample 0 and 2 are distilled from the rain teacher, sample 1 from the haze teacher
    picked = m._select(torch.stack(outs), m._label_index(['rain', 'haze', 'rain']))
    assert torch.equal(picked[0], outs[1][0]) and torch.equal(picked[1], outs[0][1])
    with pytest.raises(ValueError, match="batch label 'snow' has no teacher"):
        m._label_index(['snow'])
    log = m.get_current_log()
    assert {'l_distill', 'l_pixel', 'l_mgcl_feature', 'l_mgcl_image', 'l_proj_recon'} <= set(log)


def test_stage1_missing_checkpoint_is_one_clear_error(tiny_data, in_tmp, teachers):
    opt = stage1_recipe(tiny_data, teachers)
    opt['uniremoval']['teachers'][1]['checkpoint'] = 'nowhere/teacher.pth'
    opt = parse_options(write_options(opt, in_tmp / 'bad.yml'), True)
    with pytest.raises(OptionError, match=r'uniremoval.teachers\[1\].checkpoint: cannot load nowhere/teacher.pth'):
        build_model(opt)


@pytest.mark.slow
def test_both_stages_train_20_iters_with_finite_logged_losses(tiny_data, in_tmp, teachers):
    run_train(['-opt', write_options(stage1_recipe(tiny_data, teachers, 'uni1'), in_tmp / 'u1.yml')])
    exp1 = in_tmp / 'experiments' / 'uni1'
    curves = parse_log(str(next(exp1.glob('train_uni1_*.log'))))
    for name in ('l_distill', 'l_pixel', 'l_mgcl_feature', 'l_mgcl_image', 'l_mgcl_feature_raw', 'l_proj_recon',
                 'l_total'):
        assert curves[name][0] == list(range(1, 21)) and all(math.isfinite(v) for v in curves[name][1]), name

    opt = load_recipe(osp.join(REPO, 'options/train/UniRemoval/demo_UniRemoval_stage2.yml'))
    opt['name'] = 'uni2'
    opt['datasets'] = {
        'train': {**opt['datasets']['train'], 'dataroot_lq': osp.join(tiny_data, 'train/lq'),
                  'dataroot_gt': osp.join(tiny_data, 'train/gt'), 'io_backend': {'type': 'disk'}, 'gt_size': 32,
                  'batch_size_per_gpu': 2},
        'val': {'name': 'tiny_val', 'type': 'PairedRestorationDataset', 'io_backend': {'type': 'disk'},
                'dataroot_lq': osp.join(tiny_data, 'val/lq'), 'dataroot_gt': osp.join(tiny_data, 'val/gt')}}
    opt['network_g'] = NET
    opt['network_d'].update(num_feat=8, num_layers=2)
    opt['uniremoval'].update(cluster_dim=16, queue_size=8)
    opt['train']['consistency_opt'] = {'type': 'L1Loss', 'loss_weight': 1.0}  # an option, off in the recipes
    opt['path']['pretrain_network_g'] = str(exp1 / 'models' / 'net_g_latest.pth')
    opt['train']['total_iter'] = 20
    opt['val']['val_freq'] = 10
    opt['logger'].update(print_freq=1, save_checkpoint_freq=10)
    run_train(['-opt', write_options(opt, in_tmp / 'u2.yml')])
    exp2 = in_tmp / 'experiments' / 'uni2'
    curves = parse_log(str(next(exp2.glob('train_uni2_*.log'))))
    for name in ('l_d', 'l_g_gan', 'l_cluster', 'l_consistency', 'l_total'):
        assert curves[name][0] == list(range(1, 21)) and all(math.isfinite(v) for v in curves[name][1]), name
    assert curves['l_consistency'][1][0] < 1e-6  # starts from the stage-1 student it is anchored to
    bank = torch.load(exp2 / 'models' / 'net_cluster_latest.pth', weights_only=True)['params']
    assert int(bank['pos_queue.filled']) == 8  # queues are carried in the checkpoint


def stage1_model(tiny_data, in_tmp, teachers, **uni):
    opt = stage1_recipe(tiny_data, teachers)
    opt['uniremoval'].update(uni)
    opt = parse_options(write_options(opt, in_tmp / 'u1.yml'), True)
    return build_model(opt)


def test_stage1_batch_negatives_encoded_by_the_anchors_teacher(tiny_data, in_tmp, teachers):
    """U2: with image_encoder teacher and batch_negatives, sample b's negatives are every input of the batch seen by
    b's own teacher (the encoder of its anchor and positive), not other inputs seen by other teachers."""
    m = stage1_model(tiny_data, in_tmp, teachers)
    x = torch.rand(3, 3, 32, 32)
    idx = m.batch_labels({'lq': x, 'gt': torch.rand(3, 3, 32, 32), 'deg_type': ['rain', 'haze', 'blur']})
    with torch.no_grad():
        negs = m._image_negatives(x, idx)
        direct = [tap(x) for tap in m.img_taps]  # [teacher][layer] (B, C, H, W)
    for layer, n in enumerate(negs):
        assert n.shape[:2] == (3, 3)
        for b in range(3):
            assert torch.allclose(n[b], direct[int(idx[b])][layer])


def test_stage1_without_mgcl_has_no_projectors(tiny_data, in_tmp, teachers):
    opt = stage1_recipe(tiny_data, teachers)
    del opt['train']['mgcl_opt']
    opt = parse_options(write_options(opt, in_tmp / 'u1.yml'), True)
    m = build_model(opt)
    assert set(m.networks) == {'net_g', 'net_teacher0', 'net_teacher1', 'net_teacher2'}
    m.feed_data({'lq': torch.rand(3, 3, 32, 32), 'gt': torch.rand(3, 3, 32, 32), 'deg_type': ['rain', 'haze', 'blur']})
    m.optimize_parameters(1)
    assert set(m.get_current_log()) == {'l_distill', 'l_pixel', 'l_total'}


def stage2_model(in_tmp, data_root, **uni):
    opt = load_recipe(osp.join(REPO, 'options/train/UniRemoval/demo_UniRemoval_stage2.yml'))
    opt['datasets'] = {'train': {**opt['datasets']['train'], 'dataroot_lq': osp.join(data_root, 'train/lq'),
                                 'dataroot_gt': osp.join(data_root, 'train/gt'), 'io_backend': {'type': 'disk'}}}
    opt['network_g'] = NET
    opt['network_d'].update(num_feat=8, num_layers=2)
    opt['uniremoval'].update(cluster_dim=16, queue_size=8, **uni)
    opt['path']['pretrain_network_g'] = None
    opt = parse_options(write_options(opt, in_tmp / 'u2.yml'), True)
    return build_model(opt)


def test_stage2_keys_from_a_momentum_encoder(tiny_data, in_tmp):
    """U3: positive / negative keys, in the batch and in the queues, come from an EMA copy of D and the head (MoCo),
    which follows the live ones at the key momentum; a live key encoder refuses a queue (its entries go stale)."""
    from copy import deepcopy

    from irtoolkit.contrastive.encoders import build_encoder
    from irtoolkit.models.uniremoval_stage2_model import embed
    torch.manual_seed(0)
    m = stage2_model(in_tmp, tiny_data, key_momentum=0.9)
    assert 'consistency' not in m.losses and m.anchor_net is None  # consistency: off in the recipes
    d_m0, head_m0 = deepcopy(m.networks['net_d_m']), deepcopy(m.networks['net_cluster_m'])
    x, y = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    m.feed_data({'lq': x, 'gt': y})
    m.optimize_parameters(1)
    with torch.no_grad():  # the queued keys: the momentum encoder as it was in the step, not the live D and head
        keys = embed(head_m0, build_encoder(m.opt['uniremoval']['cluster_encoder'], None, d_m0)(y))
        live = embed(m.bank.head, m.cluster_encoder(y))
    assert torch.allclose(m.bank.pos_queue.get(), keys, atol=1e-6)
    assert not torch.allclose(m.bank.pos_queue.get(), live, atol=1e-3)
    d_live = m.net_d.state_dict()
    for k, v in m.networks['net_d_m'].state_dict().items():  # then EMA: 0.9 old + 0.1 live
        if k.endswith('weight'):
            assert torch.allclose(v, 0.9 * d_m0.state_dict()[k] + 0.1 * d_live[k], atol=1e-6)
    with pytest.raises(OptionError, match='uniremoval.queue_size: a queue needs key_encoder: momentum'):
        stage2_model(in_tmp, tiny_data, key_encoder='live')
