"""``val.save_best``: an improvement of the tracked metric saves every network as ``*_best`` and ``best.json``; the
best so far comes back on resume, so a resumed run overwrites the best weights only with a better validation."""
import json
import logging

import pytest
import torch
from irtk_testutils import SMALL_NAFNET

from irtoolkit.models.restoration_model import RestorationModel
from irtoolkit.training.best_checkpoint import BestCheckpoint
from irtoolkit.utils.checkpoint import find_network_file, read_state_dict, safe_load
from irtoolkit.utils.errors import OptionError


def _opt(save_best, fmt='pth', **val):
    return {'name': 'best', 'model_type': 'RestorationModel', 'num_gpu': 0, 'network_g': SMALL_NAFNET,
            'datasets': {'val': {'name': 'tiny_val', 'type': 'PairedImageDataset'},
                         'val_2': {'name': 'other', 'type': 'PairedImageDataset'}},
            'train': {'optim_g': {'type': 'Adam', 'lr': 1e-3}, 'pixel_opt': {'type': 'L1Loss'}, 'ema_decay': 0.5},
            'val': {'val_freq': 4, 'metrics': {'psnr': {'type': 'psnr_rgb'}, 'niqe': {'type': 'niqe'}},
                    'save_best': save_best, **val},
            'logger': {'checkpoint_format': fmt}}


class _Metrics:
    """What log_validation asks of a MetricSet: its per-image rows and each metric's direction."""
    per_image = [('0000', {}), ('0001', {})]

    def lower_is_better(self, name):
        return name == 'niqe'


def _validate(model, it, **results):
    model.log_validation('tiny_val', results, _Metrics(), it, None, None)


def _perturb(model):
    with torch.no_grad():
        for p in model.net_g.parameters():
            p.add_(0.01)


@pytest.mark.parametrize('fmt', ['pth', 'safetensors'])
def test_best_is_saved_and_survives_resume(in_tmp, fmt):
    torch.manual_seed(0)
    model = RestorationModel(_opt({'metric': 'psnr'}, fmt))
    _validate(model, 4, psnr=20.0, niqe=5.0)
    exp = in_tmp / 'experiments/best'
    best = json.loads((exp / 'best.json').read_text())
    assert best == {'metric': 'psnr', 'dataset': 'tiny_val', 'value': 20.0, 'iter': 4, 'higher_is_better': True}
    path = find_network_file(str(exp / 'models'), 'net_g_best')
    assert path.endswith(f'.{fmt}') and set(safe_load(path)) == {'params', 'params_ema', 'network'}
    saved = read_state_dict(path, 'params')[0]
    assert all(torch.equal(saved[k], v) for k, v in model.net_g.state_dict().items())
    assert not (exp / 'training_states').exists()  # 'best' writes networks only
    model.save(4)

    resumed = RestorationModel(_opt({'metric': 'psnr'}, fmt))
    resumed.resume_training(safe_load(str(exp / 'training_states/4.state')))
    assert (resumed.best_checkpoint.value, resumed.best_checkpoint.iter) == (20.0, 4)
    _perturb(resumed)
    _validate(resumed, 8, psnr=19.5, niqe=5.0)  # worse than before the resume: the best stays
    assert json.loads((exp / 'best.json').read_text())['iter'] == 4
    assert torch.equal(read_state_dict(path, 'params')[0]['intro.weight'], saved['intro.weight'])
    _validate(resumed, 8, psnr=20.0, niqe=5.0)  # a tie is no improvement
    assert json.loads((exp / 'best.json').read_text())['iter'] == 4
    _validate(resumed, 12, psnr=21.0, niqe=5.0)
    assert json.loads((exp / 'best.json').read_text())['iter'] == 12
    assert torch.equal(read_state_dict(path, 'params')[0]['intro.weight'], resumed.net_g.intro.weight)


def test_direction_comes_from_the_metric_unless_given(in_tmp):
    model = RestorationModel(_opt({'metric': 'niqe'}))  # NIQE: lower is better
    for it, niqe in ((4, 5.0), (8, 4.0), (12, 4.5), (16, float('nan'))):
        _validate(model, it, psnr=20.0, niqe=niqe)
    assert json.loads((in_tmp / 'experiments/best/best.json').read_text())['iter'] == 8
    assert model.best_checkpoint.higher_is_better is False
    model = RestorationModel(_opt({'metric': 'psnr', 'higher_is_better': False, 'dataset': 'val_2'}))
    model.log_validation('tiny_val', {'psnr': 1.0}, _Metrics(), 4, None, None)  # another set: not tracked
    assert model.best_checkpoint.value is None
    model.log_validation('other', {'psnr': 30.0}, _Metrics(), 4, None, None)
    model.log_validation('other', {'psnr': 25.0}, _Metrics(), 8, None, None)
    assert (model.best_checkpoint.dataset, model.best_checkpoint.value, model.best_checkpoint.iter) == \
        ('other', 25.0, 8)


def test_a_best_json_of_another_metric_is_ignored(in_tmp, caplog):
    model = RestorationModel(_opt({'metric': 'psnr'}))
    _validate(model, 4, psnr=20.0, niqe=5.0)
    tracker = BestCheckpoint('niqe', 'tiny_val', None, model.best_checkpoint.path)
    with caplog.at_level(logging.WARNING):
        assert tracker.restore(logging.getLogger('test')) is False
    assert tracker.value is None and 'tracks psnr on tiny_val' in caplog.text


def test_only_rank_0_writes(in_tmp):
    model = RestorationModel(_opt({'metric': 'psnr'}))
    model.rank = 1
    _validate(model, 4, psnr=20.0, niqe=5.0)
    assert model.best_checkpoint.value == 20.0 and not (in_tmp / 'experiments').exists()


@pytest.mark.parametrize('save_best, val, message', [
    ({'higher_is_better': True}, {}, 'val.save_best.metric: missing'),
    ({'metric': 'ssim'}, {}, "val.save_best.metric: 'ssim' is not in val.metrics"),
    ({'metric': 'psnr', 'dataset': 'nope'}, {}, "val.save_best.dataset: 'nope' is no validation set"),
    ({'metric': 'psnr'}, {'val_freq': None}, 'val.save_best: needs val.val_freq'),
])
def test_wrong_options_are_one_line(in_tmp, save_best, val, message):
    with pytest.raises(OptionError, match=message.replace('(', r'\(')):
        RestorationModel(_opt(save_best, **val))
