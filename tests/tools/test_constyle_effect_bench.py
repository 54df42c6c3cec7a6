"""benchmarks/constyle_effect.py end to end at 2 iterations: every arm trains and is scored, the v2 prior is
pre-trained once per seed and loaded by both v2 arms, finished runs are skipped on a rerun, the table is written."""
import importlib.util
import json
import os.path as osp

import pytest
from irtk_testutils import REPO


@pytest.mark.slow
def test_constyle_effect_benchmark_runs_and_resumes(in_tmp):
    spec = importlib.util.spec_from_file_location('irtk_bench_ce', osp.join(REPO, 'benchmarks', 'constyle_effect.py'))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = in_tmp / 'ce'
    argv = ['--quick', '--iters', '2', '--pretrain-iters', '2', '--seeds', '0', '--val-images', '1',
            '--data-root', str(in_tmp / 'demo'), '--out', str(out)]
    bench.main(argv)
    summary = json.loads((out / 'summary.json').read_text())
    assert {(r['arm'], r['seed']) for r in summary['runs']} == {(a, 0) for a in bench.ARMS}
    for r in summary['runs']:
        assert set(r['metrics']) == set(bench.DEGS) | {'mean'} and 5 < r['metrics']['mean']['psnr'] < 60
    assert len(summary['pretrain']) == 1 and (out / 'prior_s0.pth').is_file()
    table = (out / 'table.md').read_text()
    assert all(f'| {a} |' in table for a in bench.ARMS) and '| degraded input |' in table
    stamp = (out / 'runs' / 'NAFNet_s0.json').stat().st_mtime_ns
    bench.main(argv)  # everything done: skipped, same records
    assert (out / 'runs' / 'NAFNet_s0.json').stat().st_mtime_ns == stamp
