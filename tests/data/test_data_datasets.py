"""The registered datasets: pairing by name, aligned crops, unpaired independence, labels and balanced batches,
seeded on-the-fly degradation, the demo builder's layout and split, and one runner pass on LMDB data."""
import json
import os
import os.path as osp
import shutil

import cv2
import numpy as np
import pytest
import torch
from irtk_testutils import shrink_recipe, write_options

from irtoolkit.data.demo import TRAIN_PHOTOS, VAL_PHOTOS, build_demo
from irtoolkit.data.lmdb_util import read_meta_info
from irtoolkit.data.multi_degradation_dataset import DegradationBalancedBatchSampler
from irtoolkit.engine.data import build_dataloader
from irtoolkit.utils.registry import DATASET_REGISTRY


def _make(name, **opt):
    opt.setdefault('name', 't')
    return DATASET_REGISTRY.get(name)(opt)


def _write(path, rgb_float):
    cv2.imwrite(str(path), cv2.cvtColor((rgb_float * 255).round().astype(np.uint8), cv2.COLOR_RGB2BGR))


@pytest.fixture(scope='module')
def demo(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('demo') / 'demo')
    build_demo(root, seed=0, n_train=8, n_unpaired=4, n_val=4, degradations=['haze', 'noise'], workers=1,
               log=lambda *a: None)
    return root


def test_train_crops_stay_aligned(tiny_data):
    gt = osp.join(tiny_data, 'train', 'gt')
    ds = _make('PairedRestorationDataset', dataroot_lq=gt, dataroot_gt=gt, phase='train', gt_size=24,
               use_hflip=True, use_rot=True)
    np.random.seed(0)
    for i in range(8):
        item = ds[i]
        assert item['gt'].shape == (3, 24, 24) and torch.equal(item['lq'], item['gt'])


def test_scale_crop_takes_the_matching_region(tiny_data, tmp_path):
    (tmp_path / 'lq').mkdir()
    (tmp_path / 'gt').mkdir()
    for name in ('0000', '0001'):
        gt = cv2.imread(osp.join(tiny_data, 'train', 'gt', name + '.png'))
        cv2.imwrite(str(tmp_path / 'gt' / f'{name}.png'), gt)
        cv2.imwrite(str(tmp_path / 'lq' / f'{name}x2.png'), gt[::2, ::2])
    ds = _make('PairedRestorationDataset', dataroot_lq=str(tmp_path / 'lq'),
               dataroot_gt=str(tmp_path / 'gt'), phase='train', gt_size=32, scale=2,
               filename_tmpl='{}x2')
    assert len(ds) == 2
    item = ds[1]
    assert item['lq'].shape == (3, 16, 16) and torch.equal(item['lq'], item['gt'][:, ::2, ::2])


def test_validation_pairs_by_name_not_by_sorted_order(tmp_path):
    # GT "a", "a_b" -> LQ "a_lq", "a_b_lq": sorted LQ order is (a_b_lq, a_lq), so zipping sorted lists would swap
    (tmp_path / 'gt').mkdir()
    (tmp_path / 'lq').mkdir()
    for i, name in enumerate(('a', 'a_b')):
        _write(tmp_path / 'gt' / f'{name}.png', np.full((8, 8, 3), 0.2 + 0.5 * i, np.float32))
        _write(tmp_path / 'lq' / f'{name}_lq.png', np.full((8, 8, 3), 0.1 + 0.5 * i, np.float32))
    ds = _make('PairedRestorationDataset', dataroot_lq=str(tmp_path / 'lq'), dataroot_gt=str(tmp_path / 'gt'),
               phase='val', filename_tmpl='{}_lq')
    for i in range(2):
        item = ds[i]
        assert osp.basename(item['lq_path']) == osp.basename(item['gt_path'])[:-4] + '_lq.png'
        assert abs(float((item['gt'] - item['lq']).mean()) - 0.1) < 0.01


def test_unpaired_sides_are_independent(demo):
    kw = dict(dataroot_lq=f'{demo}/haze/unpaired_lq.lmdb', dataroot_gt=f'{demo}/haze/unpaired_gt.lmdb',
              io_backend={'type': 'lmdb'})
    train = _make('UnpairedImageDataset', phase='train', gt_size=64, use_hflip=True, **kw)
    np.random.seed(0)
    items = [train[i % len(train)] for i in range(16)]
    assert all(it['lq'].shape == it['gt'].shape == (3, 64, 64) for it in items)
    assert all('_lq' in it['lq_path'] and '_gt' in it['gt_path'] for it in items)
    assert len({it['gt_path'] for it in items[:4]}) > 1 or len({it['gt_path'] for it in items}) > 1
    val = _make('UnpairedImageDataset', phase='val', **kw)
    assert [val[i]['gt_path'] for i in range(4)] == [val[i]['gt_path'] for i in range(4)]
    assert val[0]['gt'].shape == (3, 128, 128)
    # several roots per side (domain adaptation on several degradations at once)
    both = _make('UnpairedImageDataset', phase='val', io_backend={'type': 'lmdb'},
                 dataroot_lq=[f'{demo}/{d}/unpaired_lq.lmdb' for d in ('haze', 'noise')],
                 dataroot_gt=f'{demo}/haze/unpaired_gt.lmdb')
    assert len(both) == 2 * len(val)
    noise = _make('UnpairedImageDataset', phase='val', io_backend={'type': 'lmdb'},
                  dataroot_lq=f'{demo}/noise/unpaired_lq.lmdb', dataroot_gt=f'{demo}/haze/unpaired_gt.lmdb')
    assert torch.equal(both[0]['lq'], val[0]['lq']) and torch.equal(both[len(val)]['lq'], noise[0]['lq'])


def test_multi_degradation_labels_and_balanced_batches(demo):
    sets = [dict(name=d, dataroot_lq=f'{demo}/{d}/train_lq.lmdb', dataroot_gt=f'{demo}/{d}/train_gt.lmdb')
            for d in ('haze', 'noise')]
    sets.append(dict(name='noise_val', dataroot_lq=f'{demo}/noise/val/lq', dataroot_gt=f'{demo}/noise/val/gt',
                     io_backend={'type': 'disk'}))
    ds = _make('MultiDegradationDataset', sets=sets, io_backend={'type': 'lmdb'}, phase='train', gt_size=32)
    assert len(ds) == 8 + 8 + 4 and ds.label_names == ['haze', 'noise', 'noise_val']
    item = ds[17]
    assert item['label'] == 2 and item['deg_type'] == 'noise_val' and item['lq_path'].endswith('.png')
    sampler = ds.make_batch_sampler(batch_size=4, seed=3)
    assert len(sampler) == 5
    loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler)
    for batch in loader:
        assert set(batch['label'].tolist()) == {0, 1, 2} and batch['lq'].shape == (4, 3, 32, 32)
    # deterministic in (seed, epoch), resumable mid-epoch, different per epoch and per rank
    full = list(sampler)
    sampler.set_epoch(0, start=2 * 4)
    assert list(sampler) == full[2:] and len(sampler) == 3
    sampler.set_epoch(1)
    assert list(sampler) != full
    r0, r1 = (list(DegradationBalancedBatchSampler(ds.labels, 4, world_size=2, rank=r, seed=3)) for r in (0, 1))
    assert len(r0) == len(r1) == 3 and r0 != r1
    with pytest.raises(ValueError, match='batch_size >= number of degradations'):
        DegradationBalancedBatchSampler(ds.labels, 2)
    # the runner's loader builder uses the dataset's own batch sampler: every degradation in every batch
    loader, runner_sampler = build_dataloader(ds, {'batch_size_per_gpu': 3, 'dataset_enlarge_ratio': 2}, 'train')
    assert isinstance(runner_sampler.sampler, DegradationBalancedBatchSampler) and len(loader) == len(runner_sampler)
    assert all(set(b['label'].tolist()) == {0, 1, 2} for b in loader)


def test_synthetic_validation_is_the_same_every_time(demo):
    opt = dict(dataroot_gt=f'{demo}/noise/val_gt.lmdb', io_backend={'type': 'lmdb'}, seed=5,
               degradations=[{'type': 'gaussian_noise', 'sigma': [10, 50]}])
    val_a = _make('SyntheticDegradationDataset', phase='val', **opt)
    val_b = _make('SyntheticDegradationDataset', phase='val', **opt)
    loader = torch.utils.data.DataLoader(val_b, batch_size=1, num_workers=2)
    for i, batch in enumerate(loader):  # workers must reproduce the main process
        assert torch.equal(batch['lq'][0], val_a[i]['lq'])
    assert not torch.equal(val_a[0]['lq'], val_a[0]['gt']) and not torch.equal(val_a[0]['lq'] - val_a[0]['gt'],
                                                                               val_a[1]['lq'] - val_a[1]['gt'])
    train = _make('SyntheticDegradationDataset', phase='train', gt_size=64, **opt)
    np.random.seed(0)
    a, b = train[0], train[0]
    assert a['lq'].shape == (3, 64, 64) and not torch.equal(a['lq'] - a['gt'], b['lq'] - b['gt'])


def test_demo_layout_and_split_by_photo(demo):
    manifest = json.load(open(osp.join(demo, 'manifest.json')))
    assert set(manifest['sizes_bytes']) == {'haze', 'noise'}
    for deg in ('haze', 'noise'):
        d = osp.join(demo, deg)
        for split, n, size in (('train', 8, 128), ('val', 4, 256)):
            lq, gt = read_meta_info(f'{d}/{split}_lq.lmdb'), read_meta_info(f'{d}/{split}_gt.lmdb')
            assert [k for k, _ in lq] == [k for k, _ in gt] and len(lq) == n and lq[0][1] == (size, size, 3)
            photos = TRAIN_PHOTOS if split == 'train' else VAL_PHOTOS
            assert all(any(k.startswith(p + '_') for p in photos) for k, _ in lq)
        val_keys = [k for k, _ in read_meta_info(f'{d}/val_gt.lmdb')]
        assert sorted(f[:-4] for f in os.listdir(f'{d}/val/lq')) == sorted(val_keys)
        assert sorted(os.listdir(f'{d}/val/lq')) == sorted(os.listdir(f'{d}/val/gt'))
        ul, ug = read_meta_info(f'{d}/unpaired_lq.lmdb'), read_meta_info(f'{d}/unpaired_gt.lmdb')
        assert len(ul) == len(ug) == 4 and not {k for k, _ in ul} & {k for k, _ in ug}
    # the LMDB and the PNG validation sets are the same images
    a = _make('PairedRestorationDataset', dataroot_lq=f'{demo}/haze/val_lq.lmdb',
              dataroot_gt=f'{demo}/haze/val_gt.lmdb', io_backend={'type': 'lmdb'}, phase='val')
    b = _make('PairedRestorationDataset', dataroot_lq=f'{demo}/haze/val/lq', dataroot_gt=f'{demo}/haze/val/gt',
              phase='val')
    assert torch.equal(a[1]['lq'], b[1]['lq']) and torch.equal(a[1]['gt'], b[1]['gt'])
    assert float((a[1]['lq'] - a[1]['gt']).abs().mean()) > 0.02
    # the same recipe is not rebuilt
    msgs = []
    build_demo(demo, seed=0, n_train=8, n_unpaired=4, n_val=4, degradations=['haze', 'noise'], log=msgs.append)
    assert 'already built' in msgs[0]


def test_runner_trains_on_lmdb_with_val_on_the_same_database(demo, tiny_data, in_tmp):
    from irtoolkit.engine.runner import train as run_train
    opt = shrink_recipe(tiny_data, 'lmdb_run', 4)
    io = {'type': 'lmdb'}
    opt['datasets']['train'] = dict(name='haze_train', type='PairedRestorationDataset', io_backend=io,
                                    dataroot_lq=f'{demo}/haze/train_lq.lmdb',
                                    dataroot_gt=f'{demo}/haze/train_gt.lmdb', gt_size=32, use_hflip=True,
                                    use_rot=True, batch_size_per_gpu=2, num_worker_per_gpu=1)
    opt['datasets']['val'] = dict(name='haze_train_as_val', type='PairedRestorationDataset', io_backend=io,
                                  dataroot_lq=f'{demo}/haze/train_lq.lmdb', dataroot_gt=f'{demo}/haze/train_gt.lmdb')
    opt['val']['val_freq'] = 4
    opt['logger']['save_checkpoint_freq'] = 4
    run_train(['-opt', write_options(opt, in_tmp / 'train.yml')])
    log = next((in_tmp / 'experiments' / 'lmdb_run').glob('train_lmdb_run_*.log')).read_text()
    assert 'train set haze_train: 8 samples' in log and 'Validation haze_train_as_val (8 images)' in log
    assert '# psnr:' in log


def test_bad_options_name_the_dataset(tmp_path, demo):
    with pytest.raises(ValueError, match='t: option dataroot_gt is missing'):
        _make('PairedRestorationDataset', dataroot_lq='x')
    with pytest.raises(ValueError, match=r'is an LMDB; set io_backend: \{type: lmdb\}'):
        _make('PairedRestorationDataset', dataroot_lq=f'{demo}/haze/val_lq.lmdb',
              dataroot_gt=f'{demo}/haze/val_gt.lmdb', phase='val')
    with pytest.raises(FileNotFoundError, match='LMDB database not found'):
        _make('UnpairedImageDataset', dataroot_lq=str(tmp_path / 'no.lmdb'), dataroot_gt=str(tmp_path / 'no.lmdb'),
              io_backend={'type': 'lmdb'}, phase='val')
    small = _make('PairedRestorationDataset', dataroot_lq=f'{demo}/haze/val/lq', dataroot_gt=f'{demo}/haze/val/gt',
                  phase='train', gt_size=512)
    with pytest.raises(ValueError, match=r"t: pair 'grace_hopper_00' / 'grace_hopper_00': LQ is 256x256, smaller"):
        small[0]
    shutil.rmtree(tmp_path, ignore_errors=True)
