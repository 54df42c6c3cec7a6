"""Offline weights: one folder, one-line errors naming file and folder, no random fallback, losses load from it.

Where a test needs weight files it writes randomly initialised torchvision state dicts under the real file names
into a temporary folder: that checks where weights are read from, not what they are worth.
"""
import os.path as osp

import pytest
import torch
import torchvision

from irtoolkit.cli import weights as weights_cli
from irtoolkit.utils import weights as W


@pytest.fixture
def empty_weights(tmp_path, monkeypatch):
    folder = tmp_path / 'no_weights'
    monkeypatch.setenv('IRTOOLKIT_WEIGHTS', str(folder))
    return folder


def _fake_torchvision_state(model):
    """Random conv trunk; the (unused) classifier as zero views of a single element, so the file stays small."""
    return {k: v if k.startswith('features.') else torch.zeros(1).expand(v.shape)
            for k, v in model.state_dict().items()}


@pytest.fixture(scope='module')
def fake_weights(tmp_path_factory):
    folder = tmp_path_factory.mktemp('fake_weights')
    torch.manual_seed(0)
    torch.save(_fake_torchvision_state(torchvision.models.alexnet()), folder / W.TV_ALEXNET.name)
    torch.save(_fake_torchvision_state(torchvision.models.vgg16()), folder / W.TV_VGG16.name)
    return folder


def test_weights_dir_env_and_default(monkeypatch, tmp_path):
    monkeypatch.setenv('IRTOOLKIT_WEIGHTS', str(tmp_path))
    assert W.weights_dir() == str(tmp_path)
    monkeypatch.delenv('IRTOOLKIT_WEIGHTS')
    assert W.weights_dir() == osp.expanduser('~/.cache/irtoolkit/weights')


def test_missing_weight_message_is_one_line_with_file_and_folder(empty_weights):
    with pytest.raises(W.MissingWeightsError) as err:
        W.find_weight('vgg19-dcbb9e9d.pth', 'perceptual loss')
    msg = str(err.value)
    assert '\n' not in msg and 'vgg19-dcbb9e9d.pth' in msg and str(empty_weights) in msg
    assert msg.startswith('perceptual loss needs weight file') and err.value.filename == 'vgg19-dcbb9e9d.pth'


@pytest.mark.parametrize('metric, filename', [('lpips', W.TV_ALEXNET.name), ('brisque', 'brisque_svm_weights.pth'),
                                              ('musiq', 'musiq_koniq_ckpt-e95806b9.pth')])
def test_pyiqa_metric_without_weights_fails_naming_the_file(empty_weights, metric, filename):
    from irtoolkit.metrics.calculate import MetricSet
    with pytest.raises(W.MissingWeightsError) as err:
        MetricSet({metric: None})
    assert f'pyiqa metric {metric} needs weight file {filename}: put it in {empty_weights}' in str(err.value)


def test_clip_metrics_fail_naming_the_file_in_a_fresh_process(empty_weights):
    """pyiqa's CLIP loader is imported only when a CLIP metric is built, and downloads with urllib itself: its hook
    must be in place before that import (a fresh process, so no earlier test has imported it)."""
    import subprocess
    import sys
    code = ('from irtoolkit.utils.pyiqa_offline import build_pyiqa_metric\n'
            'try:\n    build_pyiqa_metric("clipiqa")\nexcept Exception as e:\n    print(type(e).__name__, e)\n')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120).stdout
    assert f'MissingWeightsError pyiqa metric clipiqa needs weight file RN50.pt: put it in {empty_weights}' in out, out


def test_requirements_table_matches_what_metrics_ask_for_first(empty_weights, monkeypatch):
    """The irtk-weights listing is only useful if it is right: each metric's first file is what it asks for.

    Every metric stops at its first weight file, before any weight is used, so the networks are built without their
    random fills (torch.nn.init's are no-ops here): filling VGG, AlexNet and ResNet weights was 80% of the time."""
    from irtoolkit.metrics.pyiqa_metric import create_pyiqa_metric
    for fill in ('uniform_', 'normal_', 'trunc_normal_', 'constant_', 'zeros_', 'ones_', 'kaiming_uniform_',
                 'kaiming_normal_', 'xavier_uniform_', 'xavier_normal_', 'orthogonal_'):
        monkeypatch.setattr(torch.nn.init, fill, lambda tensor, *args, **kwargs: tensor)
    checked = 0
    for consumer, (files, _) in W.REQUIREMENTS.items():
        if not consumer.startswith('metric ') or not files or consumer.startswith('metric topiq'):
            continue  # topiq imports timm (slow); its hf/ path is exercised by the hook test below
        name = consumer.split(' ', 1)[1]
        with pytest.raises(W.MissingWeightsError) as err:
            create_pyiqa_metric(name)
        assert err.value.filename == files[0].name, consumer
        checked += 1
    assert checked >= 20


def test_niqe_needs_no_file(empty_weights):
    from irtoolkit.metrics.calculate import MetricSet
    img = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    assert MetricSet({'niqe': None}).update(img)['niqe'] > 0


def test_hooks_call_through_outside_the_block():
    """Outside offline_weights the third-party functions behave as before (the wrappers delegate)."""
    import torch.hub
    with W.offline_weights('probe'):
        pass
    fn = torch.hub.load_state_dict_from_url
    assert getattr(fn, '_irtk_orig', None) is not None
    assert W._ACTIVE == []


def test_hf_hub_files_resolve_under_hf_folder(empty_weights):
    with W.offline_weights('timm backbone'):
        with pytest.raises(W.MissingWeightsError, match=r'model\.safetensors: put it in .*hf/timm/resnet50\.a1_in1k'):
            W._hf_download('timm/resnet50.a1_in1k', 'model.safetensors')
    target = empty_weights / 'hf' / 'timm' / 'resnet50.a1_in1k'
    target.mkdir(parents=True)
    (target / 'model.safetensors').write_bytes(b'x')
    with W.offline_weights('timm backbone'):
        assert W._hf_download('timm/resnet50.a1_in1k', 'model.safetensors') == str(target / 'model.safetensors')


def test_perceptual_and_lpips_losses_without_weights(empty_weights):
    from irtoolkit.utils.registry import build_loss
    with pytest.raises(W.MissingWeightsError, match=r'PerceptualGramLoss \(vgg19\) needs weight file '
                                                    r'vgg19-dcbb9e9d\.pth: put it in'):
        build_loss({'type': 'PerceptualGramLoss', 'layer_weights': {'relu2_2': 1.0}})
    with pytest.raises(W.MissingWeightsError, match=r'LPIPSLoss \(alex\) needs weight file alexnet-owt-7be5be79\.pth'):
        build_loss({'type': 'LPIPSLoss'})


def test_lpips_loss_uses_the_file_and_matches_pyiqa(fake_weights, monkeypatch):
    monkeypatch.setenv('IRTOOLKIT_WEIGHTS', str(fake_weights))
    from irtoolkit.metrics.calculate import MetricSet
    from irtoolkit.utils.registry import build_loss
    loss = build_loss({'type': 'LPIPSLoss', 'net': 'alex', 'loss_weight': 2.0})
    saved = torch.load(fake_weights / W.TV_ALEXNET.name, weights_only=True)
    assert torch.equal(loss.lpips.net.slice1[0].weight, saved['features.0.weight'])  # trunk from the folder
    loss.train()
    assert not loss.lpips.training  # dropout in the linear layers must stay off
    g = torch.Generator().manual_seed(1)
    gt = torch.rand(2, 3, 64, 64, generator=g)
    x = (gt + 0.1 * torch.randn(2, 3, 64, 64, generator=g)).clamp(0, 1).requires_grad_(True)
    value = loss(x, gt)
    value.backward()
    assert x.grad.abs().sum() > 0 and all(p.grad is None for p in loss.parameters())
    assert loss(gt, gt).item() == pytest.approx(0, abs=1e-6)
    metric = MetricSet({'lpips': None}, quantize=False).update_batch(x.detach(), gt)
    assert value.item() / 2 == pytest.approx(sum(r['lpips'] for r in metric) / 2, rel=1e-4)


def test_perceptual_gram_loss_uses_the_file(fake_weights, monkeypatch):
    monkeypatch.setenv('IRTOOLKIT_WEIGHTS', str(fake_weights))
    from irtoolkit.losses.perceptual_loss import gram_matrix
    from irtoolkit.utils.registry import build_loss
    loss = build_loss({'type': 'PerceptualGramLoss', 'vgg_type': 'vgg16', 'layer_weights': {'relu1_2': 1.0,
                       'relu2_2': 0.5}, 'style_weight': 10.0, 'criterion': 'l2'})
    saved = torch.load(fake_weights / W.TV_VGG16.name, weights_only=True)
    assert torch.equal(loss.vgg[0].weight, saved['features.0.weight'])
    assert len(loss.vgg) == 9  # truncated after relu2_2
    g = torch.Generator().manual_seed(2)
    gt = torch.rand(2, 3, 48, 48, generator=g)
    x = (gt + 0.1 * torch.randn(2, 3, 48, 48, generator=g)).requires_grad_(True)
    percep, style = loss(x, gt)
    (percep + style).backward()
    assert percep > 0 and style > 0 and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in loss.vgg.parameters())
    zero_p, zero_s = loss(gt, gt)
    assert zero_p.item() == 0 and zero_s.item() == 0
    fx, fg = loss.features(x.detach()), loss.features(gt)
    mse = torch.nn.functional.mse_loss
    expected = 10.0 * (mse(gram_matrix(fx['relu1_2']), gram_matrix(fg['relu1_2']))
                       + 0.5 * mse(gram_matrix(fx['relu2_2']), gram_matrix(fg['relu2_2'])))
    assert style.item() == pytest.approx(expected.item(), rel=1e-5)


def test_weights_tool_lists_missing_files(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv('IRTOOLKIT_WEIGHTS', str(tmp_path / 'none'))
    weights_cli.main([])
    text = capsys.readouterr().out
    assert f'weights folder: {tmp_path / "none"}' in text
    assert 'alexnet-owt-7be5be79.pth' in text and 'missing' in text
    assert 'metric niqe' in text and 'built in' in text
    assert 'loss PerceptualGramLoss (vgg19)' in text
    (tmp_path / 'none').mkdir()
    torch.save({}, tmp_path / 'none' / W.TV_VGG19.name)
    weights_cli.main(['--missing'])
    assert 'vgg19-dcbb9e9d.pth' not in capsys.readouterr().out


@pytest.mark.parametrize('loss_opt', [{'type': 'PerceptualGramLoss', 'vgg_type': 'vgg16', 'style_weight': 1.0,
                                       'layer_weights': {'relu2_2': 1.0}},
                                      {'type': 'LPIPSLoss', 'net': 'alex'}])
def test_losses_drive_an_image_towards_its_target(fake_weights, monkeypatch, loss_opt):
    """Gradient flows to the input only, and descending it lowers the loss (random trunks: mechanics, not quality)."""
    monkeypatch.setenv('IRTOOLKIT_WEIGHTS', str(fake_weights))
    from irtoolkit.utils.registry import build_loss
    loss_fn = build_loss(loss_opt)
    g = torch.Generator().manual_seed(3)
    gt = torch.rand(1, 3, 32, 32, generator=g)
    x = (gt + 0.3 * torch.randn(1, 3, 32, 32, generator=g)).clamp(0, 1).requires_grad_(True)
    opt = torch.optim.Adam([x], lr=0.02)

    def total():
        value = loss_fn(x, gt)
        return sum(v for v in value if v is not None) if isinstance(value, tuple) else value

    first = total().item()
    for _ in range(10):
        opt.zero_grad()
        total().backward()
        opt.step()
    assert total().item() < 0.7 * first
    assert all(p.grad is None for p in loss_fn.parameters())
