"""`make demo` end to end with 2 iterations per model: data, training, inference, evaluation, report."""
import pytest

from irtoolkit.cli import demo
from irtoolkit.engine.run_log import parse_log


@pytest.mark.slow
def test_demo_pipeline_writes_report(in_tmp):
    out = in_tmp / 'results' / 'demo'
    demo.main(['--iters', '2', '--data-root', str(in_tmp / 'demo_data'), '--out', str(out), '--device', 'cpu'])
    report = (out / 'report.md').read_text()
    for row in ('| input |', '| NAFNet |', '| ConStyleNAFNet |'):
        assert row in report, report
    assert (out / 'grid.png').stat().st_size > 10_000 and (out / 'curves.png').is_file()
    assert len(list((out / 'restored' / 'ConStyleNAFNet').glob('*.png'))) == 8
    curves = parse_log(str(sorted((in_tmp / 'experiments' / 'demo_ConStyleNAFNet_haze').glob('train_*.log'))[-1]))
    assert curves['l_pixel'][0] == [1, 2] and 'l_infonce' in curves
