"""The pairing, padding and cutting upstream IRConStyle's / ConStyle v2's datasets have, as options of irtoolkit's:
``pairing: sorted`` (the i-th of each sorted folder), ``pad_multiple`` (reflect, bottom/right), ``crop_multiple``."""
import os.path as osp

import cv2
import numpy as np
import pytest

from irtoolkit.data.paired_dataset import PairedRestorationDataset
from irtoolkit.data.sources import PairingError
from irtoolkit.data.synthetic_dataset import SyntheticDegradationDataset
from irtoolkit.utils.errors import OptionError


def _folder(root, names, size=(12, 10), start=0):
    """Images whose every pixel holds its index in ``names`` (plus ``start``), so a pair shows which files met."""
    root.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        cv2.imwrite(str(root / name), np.full(size + (3, ), start + i, np.uint8))
    return str(root)


def _dataset(gt, lq, **opt):
    return PairedRestorationDataset(dict(name='set', phase='val', dataroot_gt=gt, dataroot_lq=lq,
                                         io_backend={'type': 'disk'}, **opt))


def _index(tensor):
    return int(round(float(tensor[0, 0, 0]) * 255))


def test_sorted_pairing_reads_identical_names_and_renamed_ones(tmp_path):
    """The issue's case: haze sets repackaged with each clear image stored under its hazy image's name. By name
    they pair; by RESIDE's name substitution (``gt_name_sub '_.*$'``) they do not; sorted, as upstream, they do.
    Names that differ (a clear folder of 0001.png ...) pair only in sorted order."""
    hazy = ['0001_0.8_0.2.png', '0002_1_0.16.png', '0003_0.9_0.08.png']
    gt = _folder(tmp_path / 'gt', hazy)
    lq = _folder(tmp_path / 'lq', hazy, start=100)
    with pytest.raises(PairingError, match='LQ and GT names do not match'):
        _dataset(gt, lq, gt_name_sub=['_.*$', ''])
    ds = _dataset(gt, lq, pairing='sorted')
    assert [(_index(ds[i]['gt']), _index(ds[i]['lq'])) for i in range(3)] == [(0, 100), (1, 101), (2, 102)]
    clear = _folder(tmp_path / 'clear', ['0001.png', '0002.png', '0003.png'])
    with pytest.raises(PairingError):
        _dataset(clear, lq)
    ds = _dataset(clear, lq, pairing='sorted')
    assert [osp.basename(ds[i]['lq_path']) for i in range(3)] == hazy
    assert [osp.basename(ds[i]['gt_path']) for i in range(3)] == ['0001.png', '0002.png', '0003.png']


def test_sorted_pairing_sorts_file_names_as_upstream(tmp_path):
    """``sorted(os.listdir)`` puts ``a-1.png`` before ``a.png`` ('-' < '.'), though the stems sort the other way."""
    gt = _folder(tmp_path / 'gt', ['x.png', 'y.png'])
    lq = _folder(tmp_path / 'lq', ['a.png', 'a-1.png'])
    ds = _dataset(gt, lq, pairing='sorted')
    assert [osp.basename(ds[i]['lq_path']) for i in range(2)] == ['a-1.png', 'a.png']


def test_sorted_pairing_of_unequal_folders_is_one_line(tmp_path):
    gt = _folder(tmp_path / 'gt', ['1.png', '2.png', '3.png'])
    lq = _folder(tmp_path / 'lq', ['1.png', '2.png'])
    with pytest.raises(PairingError) as err:
        _dataset(gt, lq, pairing='sorted')
    msg = str(err.value)
    assert '\n' not in msg and '2 LQ in ' + lq in msg and '3 GT in ' + gt in msg and msg.startswith('set: pairing')
    with pytest.raises(OptionError, match='pairing must be one of name, sorted'):
        _dataset(gt, lq, pairing='order')
    with pytest.raises(OptionError, match='cannot be used with pairing: sorted'):
        _dataset(gt, lq, pairing='sorted', gt_name_sub=['_.*$', ''])


def test_pad_and_crop_multiple(tmp_path):
    names = ['1.png']
    gt, lq = _folder(tmp_path / 'gt', names, (44, 52)), _folder(tmp_path / 'lq', names, (44, 52))
    img = np.random.default_rng(0).integers(0, 256, (44, 52, 3), dtype=np.uint8)
    cv2.imwrite(osp.join(lq, '1.png'), img)
    item = _dataset(gt, lq, pad_multiple=8)[0]
    assert item['lq'].shape == item['gt'].shape == (3, 48, 56)
    lq_rgb = img[..., ::-1].astype(np.float32) / 255
    got = item['lq'].numpy().transpose(1, 2, 0)
    assert np.array_equal(got[:44, :52], lq_rgb)
    assert np.array_equal(got[44, :52], lq_rgb[42]) and np.array_equal(got[:44, 52], lq_rgb[:, 50])  # edge not repeated
    assert _dataset(gt, lq, pad_multiple=64)[0]['lq'].shape == (3, 64, 64)  # MAXIM's: pad larger than the image
    cut = _dataset(gt, lq, crop_multiple=16)[0]
    assert cut['lq'].shape == cut['gt'].shape == (3, 32, 48)
    assert np.array_equal(cut['lq'].numpy().transpose(1, 2, 0), lq_rgb[:32, :48])
    with pytest.raises(OptionError, match='pad_multiple must be a positive integer'):
        _dataset(gt, lq, pad_multiple=8.0)
    noisy = SyntheticDegradationDataset(dict(name='n', phase='val', dataroot_gt=lq, pad_multiple=8,
                                             degradations=[{'type': 'gaussian_noise', 'sigma': 25}]))[0]
    assert noisy['lq'].shape == noisy['gt'].shape == (3, 48, 56)
    assert np.array_equal(noisy['gt'].numpy().transpose(1, 2, 0)[44, :52], lq_rgb[42])
    noisy = SyntheticDegradationDataset(dict(name='n', phase='test', dataroot_gt=lq, crop_multiple=16,
                                             degradations=[{'type': 'jpeg', 'quality': 20}]))[0]
    assert noisy['lq'].shape == noisy['gt'].shape == (3, 32, 48)
