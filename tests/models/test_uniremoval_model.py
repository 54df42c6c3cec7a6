"""UniRemovalStage1Model (frozen teachers from checkpoints, routed by label; student + projectors learn) and
UniRemovalStage2Model (discriminator + cluster-grained loss), 10 runner iterations each with finite, logged losses."""
import math

import pytest
import torch
from irtk_testutils import (SMALL_NAFNET, UNIREMOVAL_DEMO_STAGE1, UNIREMOVAL_DEMO_STAGE2, UNIREMOVAL_LABELS,
                            shrink_recipe, uniremoval_teachers, write_options)

from irtoolkit.engine.logging import parse_log
from irtoolkit.engine.runner import build_model
from irtoolkit.engine.runner import train as run_train
from irtoolkit.utils.options import parse_options
from irtoolkit.utils.registry import OptionError, build_network


@pytest.fixture
def teachers(tmp_path):
    """``uniremoval.teachers``: one checkpoint per degradation (distinct random weights: stand-ins for trained
    teachers)."""
    paths = {}
    for i, lab in enumerate(UNIREMOVAL_LABELS):
        torch.manual_seed(100 + i)
        net = build_network(SMALL_NAFNET)
        for p in net.parameters():  # NAFNet's zero-initialised scales would make every teacher the identity
            p.data.add_(0.05 * torch.randn_like(p))
        paths[lab] = str(tmp_path / f'teacher_{lab}.pth')
        torch.save({'params': net.state_dict()}, paths[lab])
    return uniremoval_teachers(paths)


def test_stage1_teachers_frozen_and_routed(tiny_data, in_tmp, teachers):
    opt = shrink_recipe(tiny_data, 'uni1', **UNIREMOVAL_DEMO_STAGE1)
    opt['uniremoval']['teachers'] = teachers
    opt = parse_options(write_options(opt, in_tmp / 'u1.yml'), True)
    opt.update(rank=0, world_size=1, dist=False)
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
    opt = shrink_recipe(tiny_data, 'uni1', **UNIREMOVAL_DEMO_STAGE1)
    opt['uniremoval']['teachers'] = teachers
    opt['uniremoval']['teachers'][1]['checkpoint'] = 'nowhere/teacher.pth'
    opt = parse_options(write_options(opt, in_tmp / 'bad.yml'), True)
    opt.update(rank=0, world_size=1, dist=False)
    with pytest.raises(OptionError, match=r'uniremoval.teachers\[1\].checkpoint: cannot load nowhere/teacher.pth'):
        build_model(opt)


@pytest.mark.slow
def test_both_stages_train_10_iters_with_finite_logged_losses(tiny_data, in_tmp, teachers):
    opt = shrink_recipe(tiny_data, 'uni1', 10, checkpoint_freq=5, val_freq=5, **UNIREMOVAL_DEMO_STAGE1)
    opt['uniremoval']['teachers'] = teachers
    run_train(['-opt', write_options(opt, in_tmp / 'u1.yml')])
    exp1 = in_tmp / 'experiments' / 'uni1'
    curves = parse_log(str(next(exp1.glob('train_uni1_*.log'))))
    for name in ('l_distill', 'l_pixel', 'l_mgcl', 'l_mgcl_feature', 'l_mgcl_image', 'l_proj_recon', 'l_total'):
        assert curves[name][0] == list(range(1, 11)) and all(math.isfinite(v) for v in curves[name][1]), name

    opt = shrink_recipe(tiny_data, 'uni2', 10, checkpoint_freq=5, val_freq=5, **UNIREMOVAL_DEMO_STAGE2)
    opt['path']['pretrain_network_g'] = str(exp1 / 'models' / 'net_g_latest.pth')
    run_train(['-opt', write_options(opt, in_tmp / 'u2.yml')])
    exp2 = in_tmp / 'experiments' / 'uni2'
    curves = parse_log(str(next(exp2.glob('train_uni2_*.log'))))
    for name in ('l_d', 'l_g_gan', 'l_cluster', 'l_consistency', 'l_total'):
        assert curves[name][0] == list(range(1, 11)) and all(math.isfinite(v) for v in curves[name][1]), name
    assert curves['l_consistency'][1][0] < 1e-6  # starts from the stage-1 student it is anchored to
    bank = torch.load(exp2 / 'models' / 'net_cluster_latest.pth', weights_only=True)['params']
    assert int(bank['pos_queue.filled']) == 8  # queues are carried in the checkpoint
