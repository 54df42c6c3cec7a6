"""irtk-export: exported networks give the PyTorch output at any size, ConStyle's prior is inside the graph, the
check catches a wrong export, and bad input ends with one line and exit status 2.

The networks are small (NAFNet width 8, ConStyleNAFNet dim 8, one block per level) with every parameter drawn
from a normal distribution: at their initial values NAFNet's blocks are the identity (beta = gamma = 0), which
would let a broken block pass.
"""
import numpy as np
import pytest
import torch
from irtk_testutils import SMALL_NAFNET

from irtoolkit.archs import arch_util
from irtoolkit.cli.export import main
from irtoolkit.inference import export as ex
from irtoolkit.inference.export_survey import image_to_image_problem, registered_archs

SMALL_CONSTYLE = {'type': 'ConStyleNAFNet', 'dim': 8, 'left_blk_num': [1, 1, 1], 'bottom_blk_num': 1,
                  'right_blk_num': [1, 1, 1], 'Train': True, 'constyle_opt': {'K': 16}}
# square, odd (no arch's multiple divides it: the in-graph padding runs), tiny (reflect falls back to replicate;
# down-sampled sides of 1)
SIZES = ((64, 64), (75, 97), (3, 5), (1, 1))


def small(net_opt, seed=0):
    """The export network of ``net_opt`` with every parameter drawn anew: weights ~ N(0, 1 / fan-in) (the
    activations stay O(1), so 1e-4 is a tight bound), vectors (biases, norms) ~ N(0, 0.5)."""
    torch.manual_seed(seed)
    net, _ = ex.build_for_export(net_opt)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, p[0].numel() ** -0.5 if p.dim() > 1 else 0.5)
    return net


def stderr_lines(capsys):
    return [ln for ln in capsys.readouterr().err.splitlines() if ln.strip() and not ln.startswith('warning:')]


# ------------------------------------------------------------------------------------------ padding in the graph
@pytest.mark.parametrize('mode', ['constant', 'reflect', 'replicate'])
def test_graph_padding_equals_the_archs_padding(mode):
    for h, w in ((1, 1), (3, 5), (7, 2), (8, 8), (9, 17), (61, 45)):
        x = torch.randn(2, 3, h, w)
        for multiple in (1, 4, 8, (4, 16), (64, 8)):
            want, size = arch_util.pad_to_multiple(x, multiple, mode)
            got, got_size = ex.graph_pad_to_multiple(x, multiple, mode)
            assert got_size == size and got.shape == want.shape and torch.equal(got, want), (mode, h, w, multiple)


def test_graph_resize_gives_maxims_sizes():
    from irtoolkit.archs.maxim_arch import resize
    for h, w in ((64, 64), (96, 32), (8, 40)):
        x = torch.rand(1, 2, h, w)
        for ratio in (0.25, 0.5, 1, 2, 4):
            want = resize(x, ratio)
            assert torch.equal(ex.graph_resize(x, ratio), want), (h, w, ratio)


def test_traceable_sizes_are_swapped_in_and_back():
    from irtoolkit.archs import constyle_maxim_arch, constyle_unet_arch, maxim_arch, restormer_arch
    original, original_resize = arch_util.pad_to_multiple, maxim_arch.resize
    with ex.traceable_sizes():
        assert constyle_unet_arch.pad_to_multiple is ex.graph_pad_to_multiple
        assert restormer_arch.pad_to_multiple is ex.graph_pad_to_multiple
        assert arch_util.pad_to_multiple is ex.graph_pad_to_multiple  # unet_forward (NAFNet, KBNet) looks it up here
        assert maxim_arch.resize is ex.graph_resize and constyle_maxim_arch.resize is ex.graph_resize
    assert constyle_unet_arch.pad_to_multiple is original and arch_util.pad_to_multiple is original
    assert constyle_maxim_arch.resize is original_resize


# ------------------------------------------------------------------------------------------ ONNX
@pytest.mark.slow  # torch.export + ONNX translation: 7-20 s on 2 cores
def test_nafnet_onnx_matches_pytorch_at_any_size(tmp_path):
    pytest.importorskip('onnxruntime')
    net = small(SMALL_NAFNET)
    path = str(tmp_path / 'nafnet.onnx')
    exporter, _ = ex.export_onnx(net, path)
    diffs = ex.onnx_max_diff(net, path, SIZES)
    assert max(diffs) <= ex.PARITY_TOLERANCE, (exporter, dict(zip(SIZES, diffs)))
    # batch is dynamic too
    session = ex.onnx_session(path)
    x = torch.rand(3, 3, 40, 24)
    with torch.no_grad():
        want = net(x).numpy()
    assert np.abs(session.run(None, {'lq': x.numpy()})[0] - want).max() <= ex.PARITY_TOLERANCE


@pytest.mark.slow
def test_constyle_onnx_takes_the_degraded_image_alone_with_the_prior_inside(tmp_path):
    pytest.importorskip('onnxruntime')
    onnx = pytest.importorskip('onnx')
    net = small(SMALL_CONSTYLE)  # the options ask for a training build; export builds for inference
    assert not net.net.ConStyle.Train and not hasattr(net.net.ConStyle, 'encoder_k')
    path = str(tmp_path / 'constyle.onnx')
    ex.export_onnx(net, path)
    model = onnx.load(path)
    assert [i.name for i in model.graph.input] == ['lq']
    names = {i.name for i in model.graph.initializer}
    assert any('encoder_q' in n for n in names), 'the prior encoder is not in the graph'
    assert not any('encoder_k' in n or n.endswith('queue') for n in names)
    diffs = ex.onnx_max_diff(net, path, SIZES)
    assert max(diffs) <= ex.PARITY_TOLERANCE, dict(zip(SIZES, diffs))
    # the output depends on the prior: feeding the restorer another image's prior changes it
    x, other = torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        latent, feas = net.net.ConStyle.encode(other)
        swapped = net.net.restore(x, latent, feas).numpy()
    out = ex.onnx_session(path).run(None, {'lq': x.numpy()})[0]
    assert np.abs(out - swapped).max() > 100 * ex.PARITY_TOLERANCE


# ------------------------------------------------------------------------------------------ TorchScript
def test_torchscript_round_trip(tmp_path):
    net = small(SMALL_CONSTYLE)
    path = str(tmp_path / 'constyle.pt')
    ex.export_torchscript(net, path)
    diffs = ex.torchscript_max_diff(net, path, SIZES)
    assert max(diffs) <= ex.PARITY_TOLERANCE, dict(zip(SIZES, diffs))


def test_check_fails_when_the_exported_padding_is_wrong(tmp_path, monkeypatch, capsys):
    # ConStyleNAFNet reflect-pads to a multiple of 8; an export that zero-pads instead is wrong only at sizes that
    # are not multiples of 8, which the check must include
    zero_pad = arch_util.pad_to_multiple
    monkeypatch.setattr(ex, 'graph_pad_to_multiple', lambda x, multiple, mode='constant': zero_pad(x, multiple))
    out = str(tmp_path / 'wrong.pt')
    net = '{type: ConStyleNAFNet, dim: 8, left_blk_num: [1, 1, 1], bottom_blk_num: 1, right_blk_num: [1, 1, 1]}'
    assert main(['--net', net, '--format', 'torchscript', '--out', out, '--check']) == 1
    lines = stderr_lines(capsys)
    assert len(lines) == 1 and 'above 0.0001' in lines[0], lines


@pytest.mark.filterwarnings('ignore:`torch.jit.load` is deprecated')
def test_cli_torchscript_with_weights_and_check(tmp_path, capsys):
    net = small(SMALL_NAFNET, seed=3)
    weights = str(tmp_path / 'net_g.pth')
    torch.save({'params': net.net.state_dict()}, weights)
    out = str(tmp_path / 'nafnet.pt')
    opt = '{type: NAFNet, width: 8, middle_blk_num: 1, enc_blk_nums: [1, 1], dec_blk_nums: [1, 1]}'
    assert main(['--net', opt, '--weights', weights, '--format', 'torchscript', '--out', out, '--check']) == 0
    assert 'check: max |exported - PyTorch|' in capsys.readouterr().out
    with torch.no_grad():  # the file holds the checkpoint's weights, not an initialisation
        x = torch.rand(1, 3, 30, 22)
        assert (torch.jit.load(out)(x) - net(x)).abs().max() <= ex.PARITY_TOLERANCE


@pytest.mark.filterwarnings('ignore:`torch.jit.load` is deprecated')
def test_constyle_training_checkpoint_exports_for_inference(tmp_path, capsys):
    # a checkpoint written in training holds the key encoder and the queue; the export build has neither and
    # must still load it (strictly for everything else) and give the trained network's inference output
    torch.manual_seed(1)
    from irtoolkit.utils.registry import build_network
    trained = build_network(SMALL_CONSTYLE).eval()
    with torch.no_grad():
        for p in trained.parameters():
            p.normal_(0, p[0].numel() ** -0.5 if p.dim() > 1 else 0.5)
    assert any(k.startswith('ConStyle.encoder_k.') for k in trained.state_dict())
    weights, out = str(tmp_path / 'net_g.pth'), str(tmp_path / 'constyle.pt')
    torch.save({'params': trained.state_dict()}, weights)
    opt = ('{type: ConStyleNAFNet, dim: 8, left_blk_num: [1, 1, 1], bottom_blk_num: 1, right_blk_num: [1, 1, 1], '
           'Train: true, constyle_opt: {K: 16}}')
    assert main(['--net', opt, '--weights', weights, '--format', 'torchscript', '--out', out, '--check']) == 0
    x = torch.rand(1, 3, 37, 50)
    with torch.no_grad():
        assert (torch.jit.load(out)(x) - trained(x)).abs().max() <= ex.PARITY_TOLERANCE


# ------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize('argv, where', [
    (['-opt', '/nowhere/recipe.yml', '--out', 'x.onnx'], '/nowhere/recipe.yml'),
    (['--arch', 'NAFNot', '--out', 'x.onnx'], "--arch: unknown arch 'NAFNot'"),
    (['--net', '{type: NAFNet, widht: 8}', '--out', 'x.onnx'], 'widht'),
    (['--arch', 'NAFNet', '--weights', '/nowhere/w.pth', '--out', 'x.onnx'], '--weights: not found'),
    (['--all', '--only', 'NAFNet,Nope'], '--only'),
])
def test_bad_input_is_one_line_and_status_2(argv, where, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    lines = stderr_lines(capsys)
    assert len(lines) == 1 and lines[0].startswith('error: ') and where in lines[0], lines
    assert not (tmp_path / 'x.onnx').exists()


def test_checkpoint_that_does_not_fit_is_one_line_and_status_2(tmp_path, capsys):
    weights = str(tmp_path / 'other.pth')
    torch.save({'params': small(dict(SMALL_NAFNET, width=16)).net.state_dict()}, weights)
    opt = '{type: NAFNet, width: 8, middle_blk_num: 1, enc_blk_nums: [1, 1], dec_blk_nums: [1, 1]}'
    assert main(['--net', opt, '--weights', weights, '--out', str(tmp_path / 'x.onnx')]) == 2
    lines = stderr_lines(capsys)
    assert len(lines) == 1 and 'does not fit NAFNet' in lines[0], lines


# ------------------------------------------------------------------------------------------ --all's arch list
def test_survey_tells_restoration_networks_from_helpers():
    names = registered_archs()
    assert {'NAFNet', 'ConStyleNAFNet', 'PatchGANDiscriminator', 'NegativeGenerator'} <= set(names)
    assert 'SwinIR' not in names  # basicsr's own archs are not irtoolkit's
    assert image_to_image_problem(small(SMALL_NAFNET)) is None
    critic, _ = ex.build_for_export({'type': 'PatchGANDiscriminator', 'num_feat': 8, 'num_layers': 2})
    assert 'not an image' in image_to_image_problem(critic)
    prior, _ = ex.build_for_export({'type': 'ConStyle', 'K': 16})
    assert 'not an image' in image_to_image_problem(prior)
