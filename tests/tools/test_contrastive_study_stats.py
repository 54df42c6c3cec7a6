"""benchmarks/contrastive_study.py's statistic and verdicts (docs/contrastive.md, "Miniature study (issue 20):
protocol") on synthetic run records: paired differences per seed, the 95 % t interval, the success criterion."""
import importlib.util
import math
import os.path as osp

import pytest
from irtk_testutils import REPO


@pytest.fixture(scope='module')
def study():
    path = osp.join(REPO, 'benchmarks', 'contrastive_study.py')
    spec = importlib.util.spec_from_file_location('irtk_bench_cst', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def record(method, arm, seed, psnr, input_psnr, sets=('haze', )):
    """A run record as the worker writes it: per set, per weights, per metric, per image (two images)."""
    def metrics(p):
        return {'psnr': [p - 1, p + 1], 'ssim': [0.5, 0.5], 'niqe': [5.0, 5.0]}
    scores = {d: {'raw': metrics(psnr), 'input': metrics(input_psnr), 'gt': metrics(99), 'names': ['a', 'b']}
              for d in sets}
    return {'method': method, 'arm': arm, 'seed': seed, 'scores': scores, 'iters': 10, 'wall_s': 1.0, 'options': {}}


def test_t_interval_matches_the_t_distribution(study):
    mean, half, n = study.t_interval([1.0, 2.0, 3.0])
    # sd 1, n 3: t_{0.975, 2} = 4.3027
    assert (mean, n) == (2.0, 3) and half == pytest.approx(4.3027 / math.sqrt(3), rel=1e-4)
    assert math.isnan(study.t_interval([1.0])[1])


def test_paired_differences_are_per_seed_and_against_the_input(study):
    runs = [record('uniremoval', 'full', s, 20 + s, 18) for s in (1, 2, 3)]
    runs += [record('uniremoval', 'no-mgcl', s, 19 + 2 * s, 18) for s in (1, 2)]  # seed 3 missing: not paired
    diffs, seeds = study.paired(runs, 'uniremoval', 'full', 'no-mgcl', 'psnr', 'raw')
    assert seeds == [1, 2] and diffs == pytest.approx([0.0, -1.0])
    diffs, seeds = study.paired(runs, 'uniremoval', 'full', 'input', 'psnr', 'raw')
    assert seeds == [1, 2, 3] and diffs == pytest.approx([3.0, 4.0, 5.0])


def test_verdict_needs_every_interval_above_zero(study):
    # full beats the input clearly on every seed, but beats no-mgcl by a noisy margin: criterion not met
    runs = [record('uniremoval', 'full', s, 22 + 0.1 * s, 18, ('haze', 'rain')) for s in (1, 2, 3)]
    runs += [record('uniremoval', 'no-mgcl', s, 22 + 0.1 * s + d, 18, ('haze', 'rain'))
             for s, d in zip((1, 2, 3), (-1.0, 0.5, -0.2))]
    table = study.method_table('uniremoval', runs)
    assert '| full − input | +4.20 [+3.95, +4.45]' in table
    assert '| full − no-mgcl |' in table and 'not met' in table and 'success' in table
    assert table.rstrip().endswith('**no**.')
    runs = [r for r in runs if r['arm'] == 'full'] + [record('uniremoval', 'no-mgcl', s, 21 + 0.1 * s + d, 18,
                                                             ('haze', 'rain')) for s, d in zip((1, 2, 3), (0, .1, .2))]
    assert study.method_table('uniremoval', runs).rstrip().endswith('**yes**.')
