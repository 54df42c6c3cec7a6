"""irtk-create-lmdb (tools/create_lmdb.py) and irtoolkit.data.lmdb_util: round trip, verify, corruption, pairing
errors, reuse."""
import os
import os.path as osp
import shutil

import cv2
import numpy as np
import pytest
import torch

from irtoolkit.cli import create_lmdb
from irtoolkit.data.lmdb_util import LmdbRecordError, read_meta_info
from irtoolkit.data.sources import PairingError
from irtoolkit.utils.registry import DATASET_REGISTRY


def _paired(split_root, lq, gt, phase='val', backend='lmdb', **kw):
    opt = dict(name='t', dataroot_lq=lq, dataroot_gt=gt, io_backend={'type': backend}, phase=phase, **kw)
    return DATASET_REGISTRY.get('PairedRestorationDataset')(opt)


@pytest.fixture
def lmdbs(tiny_data, tmp_path):
    """Paired LMDBs of the tiny train set (8 pairs of 64 px PNGs)."""
    lq, gt = osp.join(tmp_path, 'tr_lq.lmdb'), osp.join(tmp_path, 'tr_gt.lmdb')
    rc = create_lmdb.main(['paired', '--lq', osp.join(tiny_data, 'train', 'lq'), '--gt',
                           osp.join(tiny_data, 'train', 'gt'), '--out-lq', lq, '--out-gt', gt, '--workers', '2',
                           '--verify'])
    assert rc == 0
    return lq, gt


def _corrupt(db, key):
    """Flip bytes in the middle of ``key``'s stored PNG inside data.mdb (what a bad disk sector does)."""
    import lmdb
    env = lmdb.open(db, readonly=True, lock=False)
    with env.begin() as txn:
        value = txn.get(key.encode())
    env.close()
    path = osp.join(db, 'data.mdb')
    data = bytearray(open(path, 'rb').read())
    at = data.find(value[len(value) // 2:len(value) // 2 + 64])
    assert at > 0
    for i in range(at, at + 48):
        data[i] ^= 0xFF
    with open(path, 'wb') as f:
        f.write(data)


def test_round_trip_same_pixels_as_png(tiny_data, lmdbs):
    lq_db, gt_db = lmdbs
    meta = read_meta_info(gt_db)
    assert [k for k, _ in meta] == [f'{i:04d}' for i in range(8)] and meta[0][1] == (64, 64, 3)
    ds = _paired(tiny_data, lq_db, gt_db)
    disk = _paired(tiny_data, osp.join(tiny_data, 'train', 'lq'), osp.join(tiny_data, 'train', 'gt'), backend='disk')
    assert len(ds) == len(disk) == 8
    for i in range(8):
        a, b = ds[i], disk[i]
        assert a['gt_path'] == osp.splitext(osp.basename(b['gt_path']))[0]
        assert torch.equal(a['lq'], b['lq']) and torch.equal(a['gt'], b['gt'])
        png = cv2.cvtColor(cv2.imread(b['gt_path']), cv2.COLOR_BGR2RGB)
        assert torch.equal(a['gt'], torch.from_numpy(png.transpose(2, 0, 1).astype(np.float32) / 255))


def test_two_datasets_on_one_lmdb_in_one_process(lmdbs):
    lq_db, gt_db = lmdbs
    train = _paired(None, lq_db, gt_db, phase='train', gt_size=32, use_hflip=True, use_rot=True)
    val = _paired(None, lq_db, gt_db)
    basic = DATASET_REGISTRY.get('PairedImageDataset')(dict(
        dataroot_lq=lq_db, dataroot_gt=gt_db, io_backend={'type': 'lmdb'}, filename_tmpl='{}', phase='val',
        scale=1))
    assert train[0]['gt'].shape == (3, 32, 32) and val[1]['gt'].shape == (3, 64, 64)
    assert torch.allclose(basic[1]['gt'], val[1]['gt'])
    # and in a DataLoader worker (forked: opens its own environment)
    loader = torch.utils.data.DataLoader(val, batch_size=4, num_workers=1)
    assert sum(b['gt'].shape[0] for b in loader) == 8


def test_verify_catches_corrupted_record(lmdbs, capsys):
    lq_db, _ = lmdbs
    assert create_lmdb.main(['verify', lq_db]) == 0
    broken = lq_db.replace('tr_lq', 'broken_lq')
    shutil.copytree(lq_db, broken)
    _corrupt(broken, '0003')
    assert create_lmdb.main(['verify', broken]) == 1
    err = capsys.readouterr().err
    assert "record '0003'" in err and broken in err and 'corrupt' in err
    # the dataset fails on that record with the dataset name, the key and the database path
    ds = _paired(None, broken, lmdbs[1])
    ds[2]
    with pytest.raises(LmdbRecordError, match=r"t \(LQ\): record '0003' in LMDB .*broken_lq\.lmdb is corrupt"):
        ds[3]


def test_verify_against_source_catches_wrong_pixels(tiny_data, lmdbs, capsys):
    lq_db, _ = lmdbs
    assert create_lmdb.main(['verify', lq_db, '--src', osp.join(tiny_data, 'train', 'lq')]) == 0
    assert create_lmdb.main(['verify', lq_db, '--src', osp.join(tiny_data, 'train', 'gt')]) == 1
    assert "record '0000' differs from its source" in capsys.readouterr().err


def test_missing_key_names_key_path_and_dataset(lmdbs):
    from irtoolkit.data.sources import LmdbSource
    src = LmdbSource(lmdbs[0], 'my_set')
    with pytest.raises(LmdbRecordError, match=r"my_set: key 'nope' not found in LMDB .*tr_lq\.lmdb"):
        src.read('nope')


def test_unmatched_names_are_all_listed(tiny_data, tmp_path, capsys):
    lq, gt = tmp_path / 'lq', tmp_path / 'gt'
    shutil.copytree(osp.join(tiny_data, 'train', 'lq'), lq)
    shutil.copytree(osp.join(tiny_data, 'train', 'gt'), gt)
    os.remove(lq / '0002.png')
    os.remove(lq / '0005.png')
    os.rename(gt / '0007.png', gt / 'extra.png')
    rc = create_lmdb.main(['paired', '--lq', str(lq), '--gt', str(gt), '--out-lq', str(tmp_path / 'x_lq.lmdb'),
                           '--out-gt', str(tmp_path / 'x_gt.lmdb')])
    err = capsys.readouterr().err
    assert rc == 2 and '3 GT without LQ: 0002, 0005, extra' in err and '1 LQ without GT: 0007' in err
    assert not osp.exists(tmp_path / 'x_lq.lmdb')
    with pytest.raises(PairingError, match='3 GT without LQ: 0002, 0005, extra; 1 LQ without GT: 0007'):
        _paired(None, str(lq), str(gt), backend='disk')


def test_many_to_one_pairing_with_gt_name_sub(tiny_data, tmp_path):
    lq, gt = tmp_path / 'hazy', osp.join(tiny_data, 'train', 'gt')
    lq.mkdir()
    for i, beta in ((0, '0.8'), (0, '1.2'), (3, '0.6')):  # RESIDE-style names: <clear>_<beta>_<A>
        shutil.copy(osp.join(tiny_data, 'train', 'lq', f'{i:04d}.png'), lq / f'{i:04d}_{beta}_0.9.png')
    out_lq, out_gt = str(tmp_path / 'h_lq.lmdb'), str(tmp_path / 'h_gt.lmdb')
    assert create_lmdb.main(['paired', '--lq', str(lq), '--gt', gt, '--out-lq', out_lq, '--out-gt', out_gt,
                             '--gt-name-sub', '_.*$', '', '--verify']) == 0
    assert [k for k, _ in read_meta_info(out_gt)] == ['0000', '0003']
    ds = _paired(None, out_lq, out_gt, gt_name_sub=['_.*$', ''])
    assert len(ds) == 3 and [ds[i]['gt_path'] for i in range(3)] == ['0000', '0000', '0003']
    with pytest.raises(PairingError, match=r'3 LQ without GT: 0000_0.8_0.9 \(-> 0000_0.8\), 0000_1.2_0.9'):
        _paired(None, out_lq, out_gt, gt_name_sub=['_0.9$', ''])


def test_refuses_to_overwrite_without_force(tiny_data, lmdbs, capsys):
    src = osp.join(tiny_data, 'val', 'gt')
    assert create_lmdb.main(['single', '--src', src, '--out', lmdbs[1]]) == 2
    assert 'already exists; pass --force' in capsys.readouterr().err
    assert len(read_meta_info(lmdbs[1])) == 8
    _paired(None, lmdbs[0], lmdbs[1])[0]  # open (and cache) the old environment, then rebuild in-process
    assert create_lmdb.main(['single', '--src', src, '--out', lmdbs[1], '--force', '--verify']) == 0
    from irtoolkit.data.sources import LmdbSource
    src_db = LmdbSource(lmdbs[1])
    assert src_db.keys == ['0000', '0001'] and src_db.read('0001').shape == (64, 64, 3)


def test_unpaired_lmdbs_keep_their_own_names(tiny_data, tmp_path):
    out_lq, out_gt = str(tmp_path / 'u_lq.lmdb'), str(tmp_path / 'u_gt.lmdb')
    assert create_lmdb.main(['unpaired', '--lq', osp.join(tiny_data, 'train', 'lq'), '--gt',
                             osp.join(tiny_data, 'val', 'gt'), '--out-lq', out_lq, '--out-gt', out_gt]) == 0
    assert len(read_meta_info(out_lq)) == 8 and len(read_meta_info(out_gt)) == 2


def test_sub_images_and_pair_list(tiny_data, tmp_path):
    lq_dir, gt_dir = osp.join(tiny_data, 'train', 'lq'), osp.join(tiny_data, 'train', 'gt')
    out_lq, out_gt = str(tmp_path / 's_lq.lmdb'), str(tmp_path / 's_gt.lmdb')
    assert create_lmdb.main(['paired', '--lq', lq_dir, '--gt', gt_dir, '--out-lq', out_lq, '--out-gt', out_gt,
                             '--tile', '40', '--step', '20', '--verify']) == 0
    meta = read_meta_info(out_gt)  # 64 px: corners at 0, 20 and 24 (flush with the border) -> 9 per image
    assert len(meta) == 8 * 9 and meta[2] == ('0000_s002', (40, 40, 3))
    ds = _paired(None, out_lq, out_gt)
    full = cv2.cvtColor(cv2.imread(osp.join(gt_dir, '0000.png')), cv2.COLOR_BGR2RGB)
    assert torch.equal(ds[2]['gt'], torch.from_numpy(full[0:40, 24:64].transpose(2, 0, 1) / 255).float())
    assert create_lmdb.main(['verify', out_gt, '--src', gt_dir, '--tile', '40', '--step', '20']) == 0
    # a list file of "GT LQ" lines, relative paths, one missing file reported with its line
    lst = tmp_path / 'list.txt'
    lst.write_text(''.join(f'train/gt/{i:04d}.png train/lq/{i:04d}.png\n' for i in range(3)))
    out_lq2, out_gt2 = str(tmp_path / 'l_lq.lmdb'), str(tmp_path / 'l_gt.lmdb')
    assert create_lmdb.main(['paired', '--list', str(lst), '--list-root', tiny_data, '--list-order', 'gt,lq',
                             '--out-lq', out_lq2, '--out-gt', out_gt2, '--verify']) == 0
    assert [k for k, _ in read_meta_info(out_gt2)] == ['train_lq_0000', 'train_lq_0001', 'train_lq_0002']
    lst.write_text('train/gt/0000.png train/lq/0000.png\ntrain/gt/0001.png train/lq/9999.png\n')
    assert create_lmdb.main(['paired', '--list', str(lst), '--list-root', tiny_data, '--out-lq',
                             str(tmp_path / 'm_lq.lmdb'), '--out-gt', str(tmp_path / 'm_gt.lmdb')]) == 2


def test_failed_write_leaves_nothing_and_keeps_the_old_database(tiny_data, lmdbs, tmp_path, capsys):
    from irtoolkit.data.lmdb_util import write_lmdb
    img = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(ValueError, match="key 'a' is a duplicate"):
        write_lmdb(tmp_path / 'dup.lmdb', [('a', img), ('a', img)])
    assert not osp.exists(tmp_path / 'dup.lmdb') and not osp.exists(tmp_path / 'dup.lmdb.partial')
    bad = tmp_path / 'bad'
    shutil.copytree(osp.join(tiny_data, 'val', 'gt'), bad)
    (bad / '0001.png').write_bytes(b'not a png')
    assert create_lmdb.main(['single', '--src', str(bad), '--out', lmdbs[1], '--force']) == 2
    assert f'cannot read image {bad}/0001.png' in capsys.readouterr().err
    assert len(read_meta_info(lmdbs[1])) == 8 and not osp.exists(lmdbs[1] + '.partial')
