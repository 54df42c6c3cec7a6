"""ConStyleModel (joint), ConStylePretrainModel (prior alone) and IRConStyleModel (frozen prior) on CPU."""
import numpy as np
import pytest
import torch

from irtoolkit.utils.checkpoint import atomic_save
from irtoolkit.engine.data import build_dataloader, build_dataset
from irtoolkit.engine.runner import build_model, set_random_seed
from irtoolkit.models.base_model import bare

NET = {'type': 'ConStyleNAFNet', 'dim': 8, 'left_blk_num': [1, 1, 1], 'bottom_blk_num': 1,
       'right_blk_num': [1, 1, 1], 'constyle_opt': {'K': 16}}


def _opt(model_type='ConStyleModel', net=None, **train):
    train_opt = {'optim_g': {'type': 'AdamW', 'lr': 1e-3}, 'pixel_opt': {'type': 'L1Loss'},
                 'infonce_opt': {'type': 'QueueInfoNCELoss'}, 'content_opt': {'type': 'ContentLoss'},
                 'style_opt': {'type': 'StyleLoss'}}
    train_opt.update(train)
    return {'name': 't', 'model_type': model_type, 'is_train': True, 'num_gpu': 0, 'manual_seed': 0,
            'network_g': net or dict(NET), 'train': train_opt, 'path': {}}


def _loader(root, batch=4, gt_size=32):
    ds = {'name': 'tr', 'type': 'PairedImageDataset', 'dataroot_gt': f'{root}/train/gt',
          'dataroot_lq': f'{root}/train/lq', 'filename_tmpl': '{}', 'io_backend': {'type': 'disk'},
          'gt_size': gt_size, 'use_hflip': True, 'use_rot': False, 'phase': 'train', 'scale': 1,
          'batch_size_per_gpu': batch, 'dataset_enlarge_ratio': 20}
    return build_dataloader(build_dataset(ds, 'datasets.train'), ds, 'train')[0]


def _train(model, loader, iters, start=1):
    logs = []
    for it, batch in enumerate(loader, start):
        model.feed_data(batch)
        model.optimize_parameters(it)
        logs.append(dict(model.get_current_log()))
        if it == start + iters - 1:
            return logs


def test_constyle_model_30_iterations_losses_fall(tiny_data):
    """Upstream's losses and settings (unnormalised InfoNCE, T 0.07, query enqueue, negative-MSE style)."""
    set_random_seed(0)
    model = build_model(_opt())
    logs = _train(model, _loader(tiny_data), 30)
    series = {k: np.array([log[k] for log in logs]) for k in logs[0]}
    assert set(series) == {'l_pixel', 'l_infonce', 'l_content', 'l_style', 'acc_infonce', 'l_total'}
    assert all(np.isfinite(v).all() for v in series.values())
    assert series['l_pixel'][-5:].mean() < series['l_pixel'][:5].mean()
    # once the queue (16 = 4 batches) holds real latents, the prior learns to match LQ and GT latents
    assert series['l_infonce'][-5:].mean() < 0.7 * series['l_infonce'][4:10].mean()
    assert series['l_content'][-5:].mean() < series['l_content'][4:10].mean()
    assert series['acc_infonce'][-10:].mean() > series['acc_infonce'][4:10].mean()
    assert int(bare(model.net_g).ConStyle.queue_ptr) == (30 * 4) % 16


def test_freeze_after_constyle_iter_and_mixup_only_in_training(tiny_data):
    set_random_seed(0)
    model = build_model(_opt(ConStyle_iter=2, mixing_augs={'mixup': True, 'mixup_beta': 1.2}))
    loader = _loader(tiny_data)
    logs = _train(model, loader, 3)
    assert 'l_infonce' in logs[1] and 'l_infonce' not in logs[2] and 'l_pixel' in logs[2]
    cs = bare(model.net_g).ConStyle
    assert cs.frozen and not cs.training and not any(p.requires_grad for p in cs.parameters())
    before = {k: v.clone() for k, v in cs.state_dict().items()}
    _train(model, loader, 2, start=4)
    assert all(torch.equal(before[k], v) for k, v in cs.state_dict().items())  # no BN, momentum or queue change
    batch = next(iter(loader))
    model.feed_data(batch)
    assert torch.equal(model.lq, batch['lq'])  # feed_data (validation's too) never mixes
    model.optimize_parameters(6)
    assert not torch.equal(model.lq, batch['lq'])  # the training step does


def test_pretrain_then_irconstyle(tiny_data, tmp_path):
    set_random_seed(0)
    cs_net = {'type': 'ConStyle', 'K': 16, 'num_classes': 2, 'enqueue': 'key'}
    opt = _opt('ConStylePretrainModel', cs_net, degradations={
        'haze': [{'type': 'haze'}], 'noise': [{'type': 'gaussian_noise', 'sigma': [15, 50]}]},
        infonce_opt={'type': 'QueueInfoNCELoss', 'normalize': True}, style_opt={'type': 'StyleLoss', 'mode': 'bounded'})
    opt['train'].pop('pixel_opt')
    pre = build_model(opt)
    loader = _loader(tiny_data)
    logs = _train(pre, loader, 4)
    assert {'l_infonce', 'l_content', 'l_style', 'l_total'} <= set(logs[-1])
    lq, label = pre.lq, pre.label
    assert lq.shape == pre.gt.shape and set(label.tolist()) <= {0, 1}
    assert not torch.equal(lq, pre.gt)
    val_set = {'name': 'v', 'type': 'PairedImageDataset', 'dataroot_gt': f'{tiny_data}/val/gt',
               'dataroot_lq': f'{tiny_data}/val/lq', 'filename_tmpl': '{}', 'io_backend': {'type': 'disk'},
               'phase': 'val', 'scale': 1}
    val = build_dataloader(build_dataset(val_set, 'v'), val_set, 'val')[0]
    res = pre.validation(val, 4)
    assert 0 <= res['retrieval_top1'] <= 1 and -1 <= res['cos_pos'] <= 1

    ckpt = str(tmp_path / 'constyle.pth')
    atomic_save({'params': bare(pre.net_g).state_dict()}, ckpt)
    net = dict(NET, Train=False)
    opt = _opt('IRConStyleModel', net, ConStyle_iter=1000)
    opt['path'] = {'pretrain_constyle': ckpt}
    for k in ('infonce_opt', 'content_opt', 'style_opt'):
        opt['train'].pop(k)
    ir = build_model(opt)
    cs = bare(ir.net_g).ConStyle
    src = bare(pre.net_g).encoder_q.state_dict()
    assert all(torch.equal(v, src[k]) for k, v in cs.encoder_q.state_dict().items())  # classifier dropped
    assert cs.frozen
    fused = bare(ir.net_g).local_fusion.weight.clone()
    logs = _train(ir, loader, 2, start=1)
    assert set(logs[-1]) == {'l_pixel', 'l_total'}
    assert all(torch.equal(v, src[k]) for k, v in cs.encoder_q.state_dict().items())
    assert not torch.equal(fused, bare(ir.net_g).local_fusion.weight)


def test_options_and_runner(tiny_data, in_tmp):
    """Through the runner: option schema (ConStyle_iter, infonce_opt), logging of every term, checkpoints."""
    from irtoolkit.engine.runner import train
    from irtk_testutils import tiny_options, write_options
    opt = tiny_options(tiny_data, 'cs_runner', 6)
    opt.update(model_type='ConStyleModel', network_g=dict(NET))
    opt['train'].update(ConStyle_iter=3, infonce_opt={'type': 'QueueInfoNCELoss', 'normalize': True},
                        content_opt={'type': 'ContentLoss'}, style_opt={'type': 'StyleLoss', 'mode': 'bounded'})
    opt['logger'].update(print_freq=3, save_checkpoint_freq=6)
    opt['val']['val_freq'] = 6
    train(['-opt', write_options(opt, in_tmp / 'cs.yml')])
    log = open(next((in_tmp / 'experiments/cs_runner').glob('train_*.log'))).read()
    assert 'l_infonce' in log and 'l_style' in log and 'acc_infonce' in log and 'ConStyle frozen at iter 4' in log
    assert '# psnr' in log
    state = torch.load(in_tmp / 'experiments/cs_runner/models/net_g_6.pth', weights_only=True)
    assert 'ConStyle.queue' in state['params'] and 'ConStyle.queue' in state['params_ema']
    opt['train']['ConStyle_iter'] = 'never'
    with pytest.raises(Exception, match='ConStyle_iter'):
        train(['-opt', write_options(opt, in_tmp / 'bad.yml')])
