"""ConStyle v2 as released: the KL distillation and classification terms of stage 1 (which parameters each
reaches), labels from class folders / LMDB label files / degradations, Real-ESRGAN degradations, the frozen prior's
BatchNorm mode, and the v2 stage 1 and stage 2 recipes trained for 20 iterations on tiny data with tiny networks."""
import importlib.util
import math
import os
import os.path as osp

import cv2
import numpy as np
import pytest
import torch
from irtk_testutils import REPO, write_options

from irtoolkit.data.degradations import blur_kernel, build_degradation, realesrgan, sinc_kernel
from irtoolkit.engine.data import build_dataloader, build_dataset
from irtoolkit.engine.run_log import parse_log
from irtoolkit.engine.runner import set_random_seed
from irtoolkit.utils.registry import build_model
from irtoolkit.models.base_model import bare
from irtoolkit.config.recipe import load_recipe
from irtoolkit.utils.registry import build_loss
from irtoolkit.utils.errors import OptionError

NET = {'type': 'ConStyleNAFNet', 'dim': 8, 'left_blk_num': [1, 1, 1], 'bottom_blk_num': 1,
       'right_blk_num': [1, 1, 1]}


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _class_folders(root, tiny_data, classes=('cat', 'dog', 'eel')):
    """Class folders cut from the tiny set's 64 px clean images: ``root/<class>/<name>.png``."""
    names = sorted(os.listdir(osp.join(tiny_data, 'train', 'gt')))
    for i, name in enumerate(names):
        cls = classes[i % len(classes)]
        os.makedirs(osp.join(root, cls), exist_ok=True)
        img = cv2.imread(osp.join(tiny_data, 'train', 'gt', name))
        cv2.imwrite(osp.join(root, cls, name), img)
    return str(root)


def _pretrain_opt(constyle=None, **train):
    train_opt = {'optim_g': {'type': 'AdamW', 'lr': 1e-3}, **train}
    return {'name': 't', 'model_type': 'ConStylePretrainModel', 'num_gpu': 0, 'manual_seed': 0,
            'network_g': {'type': 'ConStyle', 'K': 16, 'num_classes': 3, 'enqueue': 'key', 'init': 'kaiming'},
            'train': train_opt, 'path': {}, 'constyle': constyle or {}}


def _batch(b=4, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    gt = torch.rand(b, 3, size, size, generator=g)
    return {'gt': gt, 'lq': (gt + 0.2 * torch.randn(b, 3, size, size, generator=g)).clamp(0, 1),
            'label': torch.arange(b) % 3}


# ---------------------------------------------------------------------------------------------------------------- loss
def test_kl_distill_closed_form_and_teacher_gets_no_gradient():
    s, t = _rand(3, 5, seed=1).requires_grad_(), _rand(3, 5, seed=2).requires_grad_()
    temp = 2.0
    loss = build_loss({'type': 'KLDistillLoss', 'loss_weight': 0.5, 'temperature': temp})(s, t)
    expected = 0.
    for i in range(3):
        ps = [math.exp(v / temp) for v in s[i].tolist()]
        pt = [math.exp(v / temp) for v in t[i].tolist()]
        ps, pt = [v / sum(ps) for v in ps], [v / sum(pt) for v in pt]
        expected += sum(b * math.log(b / a) for a, b in zip(ps, pt))  # KL(teacher || student)
    assert loss.item() == pytest.approx(0.5 * temp ** 2 * expected / 3, rel=1e-9)
    loss.backward()
    assert s.grad is not None and s.grad.abs().sum() > 0 and t.grad is None
    same = build_loss({'type': 'KLDistillLoss'})(t.detach(), t.detach())
    assert same.item() == pytest.approx(0, abs=1e-12)
    with pytest.raises(ValueError, match='temperature'):
        build_loss({'type': 'KLDistillLoss', 'temperature': 0})


# --------------------------------------------------------------- which parameters each term reaches
def _grad_groups(model):
    """Groups of the prior's parameters (encoder_q trunk / mlp / classifier, encoder_k) that got a gradient."""
    groups = {}
    for name, p in bare(model.net_g).named_parameters():
        part = name.split('.')
        key = part[0] if part[0] == 'encoder_k' else (
            'q.mlp' if part[1].startswith('mlp') else 'q.classifier' if part[1] == 'classifier' else 'q.trunk')
        got = p.grad is not None and bool(p.grad.abs().sum() > 0)
        groups[key] = groups.get(key, False) or got
    return {k for k, v in groups.items() if v}


@pytest.mark.parametrize('terms,reached', [
    ({'cls_opt': {'type': 'LabelCrossEntropyLoss'}}, {'q.trunk', 'q.classifier'}),
    ({'kl_opt': {'type': 'KLDistillLoss'}}, {'q.trunk', 'q.classifier'}),
    ({'infonce_opt': {'type': 'QueueInfoNCELoss', 'normalize': True}}, {'q.trunk', 'q.mlp'}),
], ids=['cls', 'kl', 'infonce'])
def test_each_term_reaches_only_its_parameters(terms, reached):
    """The class-head terms train the query encoder's conv trunk and head, never its MLP latents or the key
    encoder (momentum only); InfoNCE trains trunk and MLP, never the head."""
    set_random_seed(0)
    model = build_model(_pretrain_opt(**terms))
    k_before = {k: v.clone() for k, v in bare(model.net_g).encoder_k.named_parameters()}
    model.feed_data(_batch())
    model.optimize_parameters(1)
    assert _grad_groups(model) == reached
    log = model.get_current_log()
    name = {'cls_opt': 'l_cls', 'kl_opt': 'l_kl', 'infonce_opt': 'l_infonce'}[next(iter(terms))]
    assert math.isfinite(log[name]) and log[name] > 0
    # the key encoder follows by momentum only (before this step's update it equals the query encoder)
    k_after = dict(bare(model.net_g).encoder_k.named_parameters())
    assert all(torch.allclose(k_before[k], v, rtol=1e-5, atol=1e-7) for k, v in k_after.items())


def test_cls_and_kl_iterations_and_label_sources(tiny_data, tmp_path):
    set_random_seed(0)
    model = build_model(_pretrain_opt(cls_opt={'type': 'LabelCrossEntropyLoss'}, kl_opt={'type': 'KLDistillLoss'},
                                      infonce_opt={'type': 'QueueInfoNCELoss', 'normalize': True},
                                      constyle={'cls_iter': 1, 'kl_iter': 2}))
    logs = []
    for it in (1, 2, 3):
        model.feed_data(_batch(seed=it))
        model.optimize_parameters(it)
        logs.append(set(model.get_current_log()))
    assert {'l_cls', 'acc_cls', 'l_kl'} <= logs[0]
    assert 'l_kl' in logs[1] and 'l_cls' not in logs[1]
    assert not {'l_cls', 'l_kl'} & logs[2] and 'l_infonce' in logs[2]

    # labels from the dataset (class folders) although the lq is degraded on the fly by the model
    root = _class_folders(tmp_path / 'cls', tiny_data)
    degs = {'noise': [{'type': 'gaussian_noise', 'sigma': 25}], 'jpeg': [{'type': 'jpeg', 'quality': 20}]}
    ds_opt = {'name': 'c', 'type': 'LabeledImageDataset', 'dataroot_gt': root, 'gt_size': 32, 'phase': 'train',
              'batch_size_per_gpu': 4, 'dataset_enlarge_ratio': 4}
    batch = next(iter(build_dataloader(build_dataset(ds_opt, 'd'), ds_opt, 'train')[0]))
    for source, expected in (('dataset', batch['label']), ('degradation', None)):
        model = build_model(_pretrain_opt(cls_opt={'type': 'LabelCrossEntropyLoss'},
                                          constyle={'degradations': degs, 'cls_labels': source}))
        model.feed_data(batch)
        model.optimize_parameters(1)
        lq, gt, label = model.training_pair(model.batch)
        assert lq.shape == gt.shape and not torch.equal(lq, gt)
        if expected is not None:
            assert torch.equal(label, expected)
        else:
            assert set(label.tolist()) <= {0, 1}
    with pytest.raises(OptionError, match='cls_labels: degradation needs constyle.degradations'):
        build_model(_pretrain_opt(cls_opt={'type': 'LabelCrossEntropyLoss'}, constyle={'cls_labels': 'degradation'}))
    no_head = _pretrain_opt(kl_opt={'type': 'KLDistillLoss'})
    no_head['network_g'].pop('num_classes')
    with pytest.raises(OptionError, match='kl_opt: needs network_g.num_classes'):
        build_model(no_head)


# ---------------------------------------------------------------------------------------------------------------- data
def test_labelled_dataset_folders_lmdb_and_label_file(tiny_data, tmp_path):
    root = _class_folders(tmp_path / 'cls', tiny_data)
    ds = build_dataset({'name': 'c', 'type': 'LabeledImageDataset', 'dataroot_gt': root, 'phase': 'val',
                        'gt_size': 48, 'degradations': [{'type': 'gaussian_noise', 'sigma': 25}]}, 'd')
    assert ds.classes == ['cat', 'dog', 'eel'] and len(ds) == 8
    assert list(ds.labels) == [0, 0, 0, 1, 1, 1, 2, 2]  # keys <class>/<name>, sorted
    item = ds[3]
    assert item['label'] == 1 and item['gt'].shape == (3, 48, 48) and item['lq'].shape == (3, 48, 48)
    assert torch.equal(ds[3]['lq'], item['lq'])  # validation degradations are seeded
    train = build_dataset({'name': 'c', 'type': 'LabeledImageDataset', 'dataroot_gt': root, 'phase': 'train',
                           'gt_size': 32, 'resize_short': 56, 'random_resized_crop': {'scale': [0.3, 1.0]},
                           'use_hflip': True}, 'd')
    assert train[0]['gt'].shape == (3, 32, 32) and 'lq' not in train[0]

    out = str(tmp_path / 'cls.lmdb')
    spec = importlib.util.spec_from_file_location('irtk_tool_create_lmdb', osp.join(REPO, 'tools', 'create_lmdb.py'))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert tool.main(['classes', '--src', root, '--out', out, '--workers', '1']) == 0
    assert osp.isfile(osp.join(out, 'labels.txt'))
    for labels in ('folders', 'file'):
        lm = build_dataset({'name': 'l', 'type': 'LabeledImageDataset', 'dataroot_gt': out, 'labels': labels,
                            'io_backend': {'type': 'lmdb'}, 'phase': 'val'}, 'd')
        assert lm.classes == ds.classes and list(lm.labels) == list(ds.labels)
        assert torch.equal(lm[3]['gt'][:, 8:56, 8:56], ds[3]['gt'])  # same pixels (centre crop of the folder set)

    flat = tmp_path / 'flat'
    flat.mkdir()
    for i, name in enumerate(sorted(os.listdir(osp.join(tiny_data, 'train', 'gt')))[:4]):
        os.link(osp.join(tiny_data, 'train', 'gt', name), flat / name)
    (flat / 'labels.txt').write_text('0000 7\n0001 2\n0002 7\n')
    with pytest.raises(ValueError, match='1 images without a label'):
        build_dataset({'name': 'f', 'type': 'LabeledImageDataset', 'dataroot_gt': str(flat), 'labels': 'file'}, 'd')
    (flat / 'labels.txt').write_text('0000 7\n0001 2\n0002 7\n0003 0  # comment\n')
    fl = build_dataset({'name': 'f', 'type': 'LabeledImageDataset', 'dataroot_gt': str(flat), 'labels': 'file',
                        'phase': 'val'}, 'd')
    assert list(fl.labels) == [7, 2, 7, 0]


def test_realesrgan_degradation_kernels_and_determinism():
    img = np.random.default_rng(0).random((64, 80, 3)).astype(np.float32)
    a, b = realesrgan(img, 5), realesrgan(img, 5)
    assert np.array_equal(a, b) and a.shape == img.shape and a.dtype == np.float32
    assert 0 <= a.min() and a.max() <= 1 and np.allclose(a * 255, np.round(a * 255), atol=1e-4)  # 8-bit
    assert not np.array_equal(realesrgan(img, 6), a)
    assert build_degradation([{'type': 'realesrgan', 'usm': False, 'noise_range': [1, 5]}])(img, 1).shape == img.shape
    with pytest.raises(ValueError, match='unknown parameter'):
        build_degradation([{'type': 'realesrgan', 'noise': 3}])
    for kind in ('iso', 'aniso', 'generalized_iso', 'generalized_aniso', 'plateau_iso', 'plateau_aniso'):
        k = blur_kernel(kind, 11, 2.0, 1.0, 0.4, 1.5)
        assert k.shape == (11, 11) and k.sum() == pytest.approx(1, abs=1e-5) and k.argmax() == 60  # peak in the centre
    iso = blur_kernel('iso', 11, 2.0)
    assert np.allclose(iso, iso.T) and np.allclose(iso, iso[::-1])
    s = sinc_kernel(13, np.pi / 2)
    assert s.sum() == pytest.approx(1, abs=1e-5) and s[6, 6] == s.max()


# ------------------------------------------------------------------------------------------ BN mode
@pytest.mark.parametrize('mode', ['eval', 'train'])
def test_frozen_prior_batchnorm_mode(mode):
    set_random_seed(0)
    opt = {'name': 't', 'model_type': 'IRConStyleModel', 'num_gpu': 0, 'manual_seed': 0,
           'network_g': dict(NET, Train=False), 'path': {},
           'train': {'optim_g': {'type': 'AdamW', 'lr': 1e-3}, 'pixel_opt': {'type': 'L1Loss'}, 'ema_decay': 0.9},
           'constyle': {'frozen_bn': mode}}
    model = build_model(opt)
    cs = bare(model.net_g).ConStyle
    bn = cs.encoder_q.mlp1[1]
    assert cs.frozen and not any(p.requires_grad for p in cs.parameters())
    assert bn.training == (mode == 'train') and not cs.encoder_q.stage1.training
    params = {k: v.clone() for k, v in cs.named_parameters()}
    stats = bn.running_mean.clone()
    batch = _batch(b=4, size=32)
    model.feed_data(batch)
    model.optimize_parameters(1)
    assert all(torch.equal(params[k], v) for k, v in cs.named_parameters())  # frozen either way
    assert torch.equal(stats, bn.running_mean) == (mode == 'eval')  # train: the running statistics move
    ema_cs = model.ema_networks['net_g'].ConStyle
    assert torch.equal(ema_cs.encoder_q.mlp1[1].running_mean, bn.running_mean)  # buffers copied to the EMA copy
    # train mode: a sample's latent depends on the rest of its batch; eval mode: it does not
    with torch.no_grad():
        x = batch['lq']
        alone = cs.encode(x[:2])[0]
        together = cs.encode(torch.cat([x[:2], x[2:] * 0.1]))[0][:2]
    assert torch.allclose(alone, together, atol=1e-6) == (mode == 'eval')
    model.net_g.eval()  # testing: running statistics in both modes
    assert not bn.training
    model.net_g.train()
    assert bn.training == (mode == 'train')


def test_freeze_option_checked():
    from irtoolkit.archs.constyle_arch import ConStyle
    with pytest.raises(ValueError, match='bn must be'):
        ConStyle(Train=False).freeze('batch')
    cs = ConStyle(Train=False).freeze('train').freeze('train')  # a second freeze keeps the mode
    assert cs.encoder_q.mlp2[1].training and not cs.training


# ------------------------------------------------------------------------------------------ v2 recipes, 20 iterations
def _shrink_stage1(tiny_data, tmp_path):
    opt = load_recipe(osp.join(REPO, 'options/train/ConStyle_v2/train_ConStylev2_ImageNet.yml'))
    root = _class_folders(tmp_path / 'imagenet_tiny', tiny_data)
    tr, va = opt['datasets']['train'], opt['datasets']['val']
    tr.update(dataroot_gt=root, resize_short=56, gt_size=32, num_worker_per_gpu=0, batch_size_per_gpu=4,
              dataset_enlarge_ratio=10)
    va.update(dataroot_gt=root, resize_short=48, gt_size=32)
    opt['network_g'].update(num_classes=3, K=16)
    opt['train'].update(total_iter=20)
    opt['constyle']['cls_iter'] = 10
    opt['train']['scheduler']['periods'] = [20]
    opt['val']['val_freq'] = 20
    opt['logger'].update(print_freq=5, save_checkpoint_freq=20, use_tb_logger=False)
    return opt


def _shrink_stage2(tiny_data, prior):
    opt = load_recipe(osp.join(REPO, 'options/train/ConStyle_v2/train_IRConStyleNAFNet_AllInOne.yml'))
    tr = opt['datasets']['train']
    tr.update(dataroot_gt=f'{tiny_data}/train/gt', dataroot_lq=f'{tiny_data}/train/lq', gt_size=32,
              num_worker_per_gpu=0, batch_size_per_gpu=4, dataset_enlarge_ratio=10)
    opt['datasets'] = {'train': tr, 'val_1': dict(opt['datasets']['val_1'], dataroot_gt=f'{tiny_data}/val/gt',
                                                  dataroot_lq=f'{tiny_data}/val/lq')}
    opt['network_g'].update({k: v for k, v in NET.items() if k != 'type'})
    opt['path']['pretrain_constyle'] = prior
    opt['train'].update(total_iter=20)
    opt['train']['scheduler'].update(periods=[10, 10])
    opt['val']['val_freq'] = 20
    opt['logger'].update(print_freq=5, save_checkpoint_freq=20, use_tb_logger=False)
    return opt


@pytest.mark.slow
def test_v2_stage1_and_stage2_recipes_train_20_iterations(tiny_data, in_tmp):
    """train_ConStylev2_ImageNet.yml and train_IRConStyleNAFNet_AllInOne.yml as written (losses, schedules, BN
    mode, Real-ESRGAN degradations), on tiny class folders / pairs, 32 px, batch 4, ConStyleNAFNet dim 8."""
    from irtoolkit.engine.runner import train
    opt1 = _shrink_stage1(tiny_data, in_tmp)
    train(['-opt', write_options(opt1, in_tmp / 'stage1.yml')])
    exp1 = in_tmp / 'experiments' / opt1['name']
    curves = parse_log(str(next(exp1.glob('train_*.log'))))
    for key in ('l_infonce', 'l_content', 'l_style', 'l_kl', 'l_total'):
        assert curves[key][0][-1] == 20 and all(math.isfinite(v) for v in curves[key][1]), key
    assert curves['l_cls'][0][-1] == 10  # cls_iter: the class head's cross-entropy stops after iteration 10
    log = open(next(exp1.glob('train_*.log'))).read()
    assert 'cls_acc' in log and 'retrieval_top1' in log
    prior = str(exp1 / 'models' / 'net_g_20.pth')
    state = torch.load(prior, weights_only=True)
    assert state['params_ema']['encoder_q.classifier.3.weight'].shape == (3, 512)

    opt2 = _shrink_stage2(tiny_data, prior)
    assert opt2['constyle']['frozen_bn'] == 'train' and opt2['model_type'] == 'IRConStyleModel'
    train(['-opt', write_options(opt2, in_tmp / 'stage2.yml')])
    exp2 = in_tmp / 'experiments' / opt2['name']
    curves = parse_log(str(next(exp2.glob('train_*.log'))))
    assert set(curves) >= {'l_pixel', 'l_total'} and not {'l_infonce', 'l_kl'} & set(curves)
    assert curves['l_pixel'][0][-1] == 20 and all(math.isfinite(v) for v in curves['l_pixel'][1])
    net = torch.load(exp2 / 'models' / 'net_g_20.pth', weights_only=True)['params']
    ema_prior = state['params_ema']
    conv = 'encoder_q.stage2.1.0.weight'  # frozen: still the stage-1 EMA weights after 20 iterations
    assert torch.equal(net[f'ConStyle.{conv}'], ema_prior[conv])
    assert not any(k.startswith('ConStyle.encoder_k') or 'classifier' in k for k in net)
    # BN in train mode: the running statistics moved away from stage 1's on the new data
    bn = 'encoder_q.mlp1.1.running_mean'
    assert not torch.equal(net[f'ConStyle.{bn}'], ema_prior[bn])
