"""irtk-evaluate (tools/evaluate.py): name matching, listed misses, batching that does not change values, report
files."""
import csv
import json
import os.path as osp

import cv2
import numpy as np
import pytest
import skimage.data

from irtoolkit.cli import evaluate as evaluate_tool
from irtoolkit.utils.image_io import read_image
from irtoolkit.metrics.calculate import MetricSet
from irtoolkit.metrics.evaluation import evaluate_folders


@pytest.fixture(scope='module')
def folders(tmp_path_factory):
    """gt/ (5 crops, two sizes), lq/ (noisy, all), out/ (blurred lq, one missing, one extra), png and jpg names."""
    root = tmp_path_factory.mktemp('eval')
    rng = np.random.default_rng(0)
    photo = skimage.data.astronaut()
    crops = [photo[0:96, 0:96], photo[96:192, 0:96], photo[200:296, 300:396], photo[0:80, 200:328],
             photo[300:380, 100:228]]
    for d in ('gt', 'lq', 'out'):
        (root / d).mkdir()
    for i, gt in enumerate(crops):
        lq = np.clip(gt + rng.normal(0, 15, gt.shape), 0, 255).astype(np.uint8)
        cv2.imwrite(str(root / 'gt' / f'img{i}.png'), gt[..., ::-1])
        cv2.imwrite(str(root / 'lq' / f'img{i}.png'), lq[..., ::-1])
        if i != 2:
            cv2.imwrite(str(root / 'out' / f'img{i}.png'), cv2.GaussianBlur(lq, (5, 5), 1.0)[..., ::-1])
    cv2.imwrite(str(root / 'out' / 'stray.png'), crops[0][..., ::-1])
    return root


METRICS = {'psnr_y': {'type': 'psnr_y', 'crop_border': 2}, 'ssim_rgb': None, 'psnr': None, 'piqe': None}


def test_values_equal_per_image_metricset_and_batching_does_not_matter(folders):
    methods = {'input': str(folders / 'lq'), 'blur': str(folders / 'out')}
    a = evaluate_folders(methods, str(folders / 'gt'), METRICS, batch_size=4, num_workers=0, progress=False)
    b = evaluate_folders(methods, str(folders / 'gt'), METRICS, batch_size=1, num_workers=2, progress=False)
    ref = MetricSet(METRICS)
    for method, folder in methods.items():
        ra, rb = a['methods'][method], b['methods'][method]
        assert list(ra['per_image']) == list(rb['per_image'])
        for name, values in ra['per_image'].items():
            direct = ref.update(read_image(osp.join(folder, f'{name}.png'))[None],
                                read_image(str(folders / 'gt' / f'{name}.png'))[None], name)
            for m in METRICS:
                assert values[m] == pytest.approx(direct[m], rel=1e-5, abs=1e-7), (method, name, m)
                assert values[m] == pytest.approx(rb['per_image'][name][m], rel=1e-5, abs=1e-7)
        assert ra['means']['psnr_y'] == pytest.approx(np.mean([v['psnr_y'] for v in ra['per_image'].values()]))
    assert a['methods']['input']['n_images'] == 5 and a['methods']['blur']['n_images'] == 4
    assert a['methods']['blur']['missing'] == ['img2'] and a['methods']['blur']['unmatched'] == ['stray']
    assert a['methods']['blur']['means']['psnr_y'] > a['methods']['input']['means']['psnr_y']  # blur removes noise


def test_cli_writes_markdown_csv_json_and_lists_misses(folders, tmp_path, capsys):
    out = tmp_path / 'report'
    evaluate_tool.main(['--gt', str(folders / 'gt'), '--method', f'input={folders / "lq"}', '--method',
                        str(folders / 'out'), '--metrics', 'psnr_y', 'ssim_y', 'piqe', '--crop-border', '4',
                        '--gt-row', '--out', str(out), '--workers', '0', '--no-progress'])
    printed = capsys.readouterr().out
    assert '| method | images | psnr_y ↑ | ssim_y ↑ | piqe ↓ |' in printed
    assert '- out: 1 ground-truth image(s) have no match' in printed and 'img2' in printed
    assert '- out: 1 image(s) without ground truth, not scored: stray' in printed
    with open(out / 'eval.csv') as f:
        rows = list(csv.DictReader(f))
    assert [r['method'] for r in rows] == ['input', 'out', 'GT'] and rows[1]['missing'] == '1'
    assert rows[2]['psnr_y'] == '' and float(rows[2]['piqe']) > 0  # GT row: no-reference metrics only
    data = json.loads((out / 'eval.json').read_text())
    assert data['metrics']['psnr_y']['lower_better'] is False and data['metrics']['piqe']['lower_better'] is True
    # --crop-border reached the paper metric: recompute one value with crop 4
    img = read_image(str(folders / 'lq' / 'img0.png'))[None]
    gt = read_image(str(folders / 'gt' / 'img0.png'))[None]
    expected = MetricSet({'p': {'type': 'psnr_y', 'crop_border': 4}}).update(img, gt)['p']
    assert data['methods']['input']['per_image']['img0']['psnr_y'] == pytest.approx(expected)
    with open(out / 'per_image.csv') as f:
        assert len(list(csv.DictReader(f))) == 5 + 4 + 5


def test_cli_errors(folders):
    with pytest.raises(SystemExit, match='full-reference metrics psnr_y need a ground-truth folder'):
        evaluate_tool.main(['--method', str(folders / 'lq'), '--metrics', 'psnr_y', '--no-progress'])
    with pytest.raises(SystemExit, match='unmatched images for out'):
        evaluate_tool.main(['--gt', str(folders / 'gt'), '--method', str(folders / 'out'), '--metrics', 'psnr_y',
                            '--strict', '--workers', '0', '--no-progress'])
    with pytest.raises(SystemExit, match="unknown metric 'psnrr'"):
        evaluate_tool.main(['--gt', str(folders / 'gt'), '--method', str(folders / 'out'), '--metrics', 'psnrr'])


def test_no_reference_only_without_gt(folders):
    r = evaluate_folders({'lq': str(folders / 'lq')}, None, {'piqe': None}, num_workers=0, progress=False)
    assert r['methods']['lq']['n_images'] == 5 and r['methods']['lq']['means']['piqe'] > 0


def test_size_mismatch_names_both_files(folders, tmp_path):
    bad = tmp_path / 'bad'
    bad.mkdir()
    cv2.imwrite(str(bad / 'img0.png'), np.zeros((50, 50, 3), np.uint8))
    with pytest.raises(ValueError, match=r'bad/img0\.png is \(3, 50, 50\).*gt/img0\.png'):
        evaluate_folders({'bad': str(bad)}, str(folders / 'gt'), {'psnr_y': None}, num_workers=0, progress=False)


def test_metric_option_syntax():
    assert evaluate_tool.parse_metric('lpips:net=vgg,version=0.1') == ('lpips', {'net': 'vgg', 'version': 0.1})
    assert evaluate_tool.parse_metric('pyiqa:psnr:test_y_channel=true') == ('pyiqa:psnr', {'test_y_channel': True})
    assert evaluate_tool.parse_method('NAFNet=/a/b') == ('NAFNet', '/a/b')
    assert evaluate_tool.parse_method('/a/b/') == ('b', '/a/b/')
