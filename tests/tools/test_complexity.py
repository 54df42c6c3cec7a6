"""irtk-complexity (irtoolkit.inference.complexity, irtoolkit.cli.complexity): parameter counts, FLOPs against
closed forms, the list of restoration archs, bad input, the JSON report. Latency and memory are measured by the
command, never asserted here (the memory worker is only checked for a plausible, non-zero figure)."""
import json

import pytest
import torch
import yaml
from irtk_testutils import REPO, SMALL_NAFNET
from torch import nn

from irtoolkit.cli import complexity as complexity_cli
from irtoolkit.inference.complexity import (build_for_inference, count_flops, count_parameters, inference_options,
                                            parse_size, restoration_archs)
from irtoolkit.utils.errors import OptionError

SMALL_CONSTYLE = {'type': 'ConStyleNAFNet', 'dim': 8, 'left_blk_num': [1, 1, 1], 'bottom_blk_num': 1,
                  'right_blk_num': [1, 1, 1]}


def test_parameter_count_is_the_sum_of_numel_and_trainable_leaves_out_frozen():
    net = build_for_inference(SMALL_NAFNET)
    net.intro.requires_grad_(False)
    counts = count_parameters(net)
    assert counts['total'] == sum(p.numel() for p in net.parameters())
    assert counts['trainable'] == counts['total'] - sum(p.numel() for p in net.intro.parameters())
    assert counts['prior'] is None and counts['prior_share'] is None


def test_constyle_prior_share_and_inference_build():
    opt, note = inference_options(SMALL_CONSTYLE)
    assert opt['Train'] is False and note == 'Train=False'
    net = build_for_inference(opt)
    counts = count_parameters(net)
    assert counts['prior'] == sum(p.numel() for p in net.ConStyle.parameters())  # encoder_q only: no key encoder
    assert not hasattr(net.ConStyle, 'encoder_k')
    assert counts['prior_share'] == pytest.approx(counts['prior'] / counts['total'])
    # the prior's MACs are those of its query encoder run alone (32 is a multiple of 8: no padding inside)
    flops = count_flops(net, (32, 32))
    assert flops['prior_macs'] == count_flops(net.ConStyle.encoder_q, (32, 32))['macs'] > 0
    assert inference_options(SMALL_CONSTYLE, keep_train=True)[0] == SMALL_CONSTYLE


@pytest.mark.parametrize('cin,cout,k,h,w,bias', [(3, 5, 3, 17, 11, True), (4, 2, 1, 8, 8, False),
                                                 (2, 3, 5, 9, 13, False)])
def test_single_conv_flops_equal_the_closed_form(cin, cout, k, h, w, bias):
    net = nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=bias)).eval()
    flops = count_flops(net, (h, w))
    assert flops['flops'] == 2 * cin * cout * k * k * h * w  # the bias add is not counted
    assert flops['macs'] == flops['conv_macs'] == cin * cout * k * k * h * w
    assert flops['matmul_macs'] == 0


def test_flops_scale_with_the_area_for_a_fully_convolutional_net():
    net = build_for_inference({'type': 'NLCLResGenerator', 'nf': 8, 'num_blocks': 2})
    small, large = count_flops(net, (24, 20))['flops'], count_flops(net, (60, 36))['flops']
    assert small > 0
    assert large * (24 * 20) == small * (60 * 36)  # exactly: stride-1 'same' convolutions only


def test_matmul_flops_are_counted_apart_from_convolutions():
    net = nn.Linear(6, 4, bias=False).eval()
    flops = count_flops(nn.Sequential(nn.Flatten(0, 1), net), (5, 6), channels=1)  # (5, 6) rows of 6 -> 4
    assert flops['matmul_macs'] == 5 * 6 * 4 and flops['conv_macs'] == 0


def test_parse_size():
    assert parse_size('256') == (256, 256)
    assert parse_size('128x96') == (128, 96)
    for bad in ('0', 'x', '12x', '3x4x5', 'abc', '-8'):
        with pytest.raises(OptionError, match='--size'):
            parse_size(bad)


def test_all_lists_restoration_networks_and_says_why_the_others_are_left_out():
    names, skipped = restoration_archs(f'{REPO}/options/_base_/networks')
    for name in ('NAFNet', 'Restormer', 'Uformer', 'KBNet', 'Maxim', 'ConStyleNAFNet', 'ConStyleRestormer'):
        assert name in names
    for name in ('PatchGANDiscriminator', 'NegativeGenerator', 'ConStyle', 'NAFBlock', 'RestormerBlock'):
        assert name not in names and skipped[name]
    assert not set(names) & set(skipped)


def test_unknown_arch_is_one_line_and_exit_status_2(capsys):
    assert complexity_cli.main(['--arch', 'NoSuchNetwork', '--no-latency', '--no-memory']) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: --arch:') and 'NoSuchNetwork' in lines[0]
    assert captured.out == ''


def test_json_report_parses_and_holds_one_row_per_size(capsys):
    net = yaml.safe_dump(SMALL_NAFNET, default_flow_style=True)
    assert complexity_cli.main(['--net', net, '--size', '32', '--size', '24x16', '--runs', '5', '--no-memory',
                                '--json']) == 0
    report = json.loads(capsys.readouterr().out)
    assert report['threads'] == 1 and report['runs'] == 5
    assert [r['input'] for r in report['rows']] == [[32, 32], [24, 16]]
    row = report['rows'][0]
    assert row['network'] == 'NAFNet' and row['error'] is None and row['memory'] is None
    assert row['params']['total'] == sum(p.numel() for p in build_for_inference(SMALL_NAFNET).parameters())
    assert row['flops']['flops'] == 2 * row['flops']['macs'] > 0
    assert len(row['latency']['times_s']) == 5 and row['latency']['median_s'] > 0


def test_markdown_report_names_the_reference_for_a_base_config(capsys):
    assert complexity_cli.main(['--arch', 'NAFNet_width32', '--size', '256', '--no-latency', '--no-memory']) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith('| NAFNet_width32 '))
    assert '256x256' in row and '16.00 G (NAFNet width 32' in row and 'not measured' in row
    assert 'FlopCounterMode' in out


@pytest.mark.slow
def test_peak_memory_worker_reports_at_least_one_activation():
    from irtoolkit.inference.peak_memory import peak_forward_memory
    result = peak_forward_memory({'type': 'NLCLResGenerator', 'nf': 16, 'num_blocks': 1}, (256, 256), threads=1)
    activation = 16 * 256 * 256 * torch.finfo(torch.float32).bits // 8  # one (1, 16, 256, 256) fp32 map
    assert activation <= result['forward_peak_bytes'] < 2 ** 31
    assert 'VmHWM' in result['method']  # Linux: the reset worked
