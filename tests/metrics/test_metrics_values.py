"""Metric values on real photos: irtoolkit's numbers equal basicsr's and pyiqa's own functions."""
import numpy as np
import pytest
import skimage.data
import torch
from basicsr.metrics import calculate_niqe, calculate_psnr, calculate_ssim

from irtoolkit.metrics import paper_metric
from irtoolkit.metrics.calculate import MetricSet
from irtoolkit.utils.errors import OptionError


def _pair(photo, seed, size=256, sigma=12.0, offset=(0, 0)):
    """A clean 8-bit crop of a scikit-image photo and a noisy copy, both uint8 RGB (H, W, 3)."""
    img = getattr(skimage.data, photo)()
    y, x = offset
    gt = img[y:y + size, x:x + size]
    rng = np.random.default_rng(seed)
    noisy = np.clip(gt.astype(np.float64) + rng.normal(0, sigma, gt.shape), 0, 255).round().astype(np.uint8)
    return noisy, gt


def _t(rgb):
    return torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255.0


def _bgr(rgb):
    return np.ascontiguousarray(rgb[..., ::-1])


@pytest.fixture(scope='module')
def photos():
    return [_pair('astronaut', 0, offset=(60, 120)), _pair('coffee', 1, offset=(100, 200)),
            _pair('chelsea', 2, offset=(20, 100))]


@pytest.mark.parametrize('crop_border', [0, 4])
@pytest.mark.parametrize('y', [False, True])
def test_paper_protocol_equals_basicsr(photos, crop_border, y):
    out = torch.cat([_t(o) for o, _ in photos])
    gt = torch.cat([_t(g) for _, g in photos])
    psnr = paper_metric.psnr(out, gt, crop_border, y)  # one batched call
    ssim = paper_metric.ssim(out, gt, crop_border, y)
    for i, (o, g) in enumerate(photos):
        assert psnr[i].item() == pytest.approx(calculate_psnr(_bgr(o), _bgr(g), crop_border, test_y_channel=y),
                                               abs=1e-9)
        assert ssim[i].item() == pytest.approx(calculate_ssim(_bgr(o), _bgr(g), crop_border, test_y_channel=y),
                                               abs=1e-9)


def test_metricset_float_output_is_rounded_like_tensor2img(photos):
    """Validation passes float network outputs: paper metrics must score the 8-bit image BasicSR would save."""
    noisy, gt = photos[0]
    out = _t(noisy) + (torch.rand(1, 3, 256, 256) - 0.5) / 255.0 * 0.98  # rounds back to ``noisy``
    basicsr_y = {'type': 'calculate_psnr', 'crop_border': 0, 'test_y_channel': True}
    ms = MetricSet({'psnr_y': {'type': 'psnr_y'}, 'b': basicsr_y})
    v = ms.update(out, _t(gt), 'a')
    assert v['psnr_y'] == pytest.approx(v['b'], abs=1e-9)
    assert v['psnr_y'] == pytest.approx(calculate_psnr(_bgr(noisy), _bgr(gt), 0, test_y_channel=True), abs=1e-9)


def test_identical_images_give_inf_psnr_like_basicsr(photos):
    _, gt = photos[0]
    assert paper_metric.psnr(_t(gt), _t(gt)).item() == float('inf') == calculate_psnr(gt, gt, 0)


def test_pyiqa_names_equal_pyiqa(photos):
    import pyiqa
    out = torch.cat([_t(o) for o, _ in photos])
    gt = torch.cat([_t(g) for _, g in photos])
    ms = MetricSet({'psnr': None, 'ssim': {}, 'ssimc': {'type': 'pyiqa:ssimc'}})
    rows = ms.update_batch(out, gt, ['a', 'b', 'c'])
    for name in ('psnr', 'ssim', 'ssimc'):
        ref = pyiqa.create_metric(name, device='cpu')
        for i in range(len(photos)):
            # psnr: batched float32 reductions differ in the last bits; ssim: irtoolkit filters with the exact
            # float64 Gaussian, separably, pyiqa with its window rounded to float32 (~5e-7 apart)
            assert rows[i][name] == pytest.approx(ref(out[i:i + 1], gt[i:i + 1]).item(), rel=1e-6, abs=2e-6)
    assert not ms.lower_is_better('psnr') and ms.is_full_reference('ssim')


def test_niqe_offline_equals_pyiqa_function_with_basicsr_params(photos):
    """pyiqa's NIQE with basicsr's shipped pristine parameters, no weight file; close to basicsr's own NIQE."""
    import basicsr.metrics
    import os.path as osp
    from pyiqa.archs.niqe_arch import calculate_niqe as pyiqa_niqe
    params = np.load(osp.join(osp.dirname(basicsr.metrics.__file__), 'niqe_pris_params.npz'))
    mu, cov = torch.from_numpy(params['mu_pris_param']).ravel(), torch.from_numpy(params['cov_pris_param'])
    out = _t(photos[0][0])
    ms = MetricSet({'niqe': None})
    value = ms.update(out, None, 'a')['niqe']
    assert value == pytest.approx(pyiqa_niqe(out, 0, True, 'yiq', mu, cov).item(), abs=1e-9)
    assert ms.lower_is_better('niqe') and not ms.is_full_reference('niqe')
    # a different implementation (MATLAB-style resize, BT.601 Y): same scale, not identical
    assert value == pytest.approx(calculate_niqe(_bgr(photos[0][0]), 0), rel=0.05)


def test_basicsr_registered_function_through_metricset(photos):
    noisy, gt = photos[1]
    ms = MetricSet({'ssim': {'type': 'calculate_ssim', 'crop_border': 2, 'test_y_channel': True}})
    v = ms.update(_t(noisy), _t(gt), 'x')['ssim']
    assert v == calculate_ssim(_bgr(noisy), _bgr(gt), 2, test_y_channel=True)
    assert ms.results() == {'ssim': v} and ms.per_image == [('x', {'ssim': v})]


def test_bad_metric_options_fail_early():
    with pytest.raises(OptionError, match=r"val\.metrics\.x\.type: unknown metric 'psnr_yy'.*psnr_y"):
        MetricSet({'x': {'type': 'psnr_yy'}})
    with pytest.raises(OptionError, match=r'val\.metrics\.p: calculate_psnr needs crop_border'):
        MetricSet({'p': {'type': 'calculate_psnr'}})
    with pytest.raises(OptionError, match=r'val\.metrics\.p\.colour'):
        MetricSet({'p': {'type': 'psnr_y', 'colour': 1}})
    with pytest.raises(ValueError, match='full-reference'):
        MetricSet({'psnr_y': None}).update(torch.rand(1, 3, 32, 32), None, 'img7')


def test_validation_with_pyiqa_and_paper_metrics_from_options(tiny_data, in_tmp):
    """val.metrics mixes paper-protocol, basicsr and pyiqa names; validation logs the values evaluate.py gives."""
    from irtk_testutils import shrink_recipe, write_options
    from irtoolkit.engine.runner import test as run_test
    from irtoolkit.engine.runner import train as run_train
    from irtoolkit.metrics.evaluation import evaluate_folders
    opt = shrink_recipe(tiny_data, 'valmetrics', 10)
    opt['val']['metrics'] = {'psnr_y': {'crop_border': 2}, 'ssim': None,
                             'basicsr_psnr': {'type': 'calculate_psnr', 'crop_border': 0}}
    run_train(['-opt', write_options(opt, in_tmp / 'train.yml')])
    log = next((in_tmp / 'experiments' / 'valmetrics').glob('train_valmetrics_*.log')).read_text()
    assert '# psnr_y:' in log and '# ssim:' in log and '# basicsr_psnr:' in log
    test_opt = {'name': 'valmetrics_test', 'model_type': 'RestorationModel', 'num_gpu': 0,
                'datasets': {'test_1': dict(opt['datasets']['val'], name='tiny_val')},
                'network_g': opt['network_g'],
                'path': {'pretrain_network_g': str(in_tmp / 'experiments/valmetrics/models/net_g_latest.pth'),
                         'param_key_g': 'params_ema'},
                'val': {'save_img': True, 'suffix': 'out', 'metrics': opt['val']['metrics']}}
    results = run_test(['-opt', write_options(test_opt, in_tmp / 'test.yml')])['tiny_val']
    saved = in_tmp / 'results' / 'valmetrics_test' / 'visualization' / 'tiny_val'
    # the saved 8-bit images scored by the folder tool give the same numbers as validation on float outputs
    renamed = in_tmp / 'renamed'
    renamed.mkdir()
    for p in saved.glob('*_out.png'):
        p.rename(renamed / p.name.replace('_out', ''))
    folder = evaluate_folders({'m': str(renamed)}, str(tiny_data) + '/val/gt', opt['val']['metrics'],
                              num_workers=0, progress=False)['methods']['m']['means']
    for name in ('psnr_y', 'basicsr_psnr'):
        assert folder[name] == pytest.approx(results[name], abs=1e-9)
    assert folder['ssim'] == pytest.approx(results['ssim'], abs=1e-6)
