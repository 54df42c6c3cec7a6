"""Checkpoint formats, the best checkpoint and re-validation, end to end on the tiny recipe.

One uninterrupted run of 12 iterations (checkpoints and validation every 4, ``val.save_best``) and the same run in
three pieces: 0-4 writing .pth, 4-8 resumed from the .pth files writing .safetensors, 8-12 resumed from those writing
.pth again. The runner's resume is exact (test_runner_train.py::test_resume_is_exact), so every number must match:
weights (max abs diff 0), ``best.json`` and ``net_g_best``, and ``irtk-validate-checkpoints`` must give the run's
own validations at every checkpoint.
"""
import csv
import json

import pytest
import torch
from irtk_testutils import shrink_recipe, write_options

from irtoolkit.cli.validate_checkpoints import main as validate_checkpoints_main
from irtoolkit.engine import runner
from irtoolkit.utils.checkpoint import find_network_file, read_state_dict, safe_load

pytestmark = pytest.mark.slow  # four short training runs and a re-validation: 6-12 s on 2 shared cores


def _recipe(data, name):
    # higher_is_better: false makes the best the LOWEST PSNR. The tiny run's PSNR rises, so that best comes from the
    # first piece (iteration 4, before both resumes): a resumed run that forgot it would overwrite net_g_best at its
    # first validation. Whatever the trajectory, the pieces must agree with the uninterrupted run.
    save_best = {'metric': 'psnr', 'higher_is_better': False}
    return shrink_recipe(data, name, 12, checkpoint_freq=4, val_freq=4,
                         update={'val': {'save_img': False, 'save_best': save_best}})


@pytest.fixture(scope='module')
def runs(tiny_data, tmp_path_factory):
    """``(root, validations)``: both runs under ``root``; ``validations[(name, iter)]`` is what the runner's
    validate returned (per set, per metric) at that iteration."""
    root = tmp_path_factory.mktemp('ckpt_formats')
    validations = {}
    original = runner.validate

    def recording(model, loaders, current_iter, *args, **kwargs):
        results = original(model, loaders, current_iter, *args, **kwargs)
        validations[(model.opt['name'], current_iter)] = results
        return results

    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setattr(runner, 'validate', recording)
        runner.train(['-opt', write_options(_recipe(tiny_data, 'full'), root / 'full.yml')])
        part = write_options(_recipe(tiny_data, 'part'), root / 'part.yml')
        runner.train(['-opt', part, '--force_yml', 'train.total_iter=4'])
        runner.train(['-opt', part, '--auto_resume', '--force_yml', 'train.total_iter=8',
                      'logger.checkpoint_format=safetensors'])
        runner.train(['-opt', part, '--auto_resume'])
    return root, validations


def _max_diff(a, b):
    assert set(a) == set(b)
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def test_switching_format_on_resume_is_exact(runs):
    root, _ = runs
    models = root / 'experiments/part/models'
    names = sorted(p.name for p in models.iterdir())
    # one file per network and tag: the format that wrote it last (latest: .safetensors at 8, .pth again at 12)
    assert names == ['net_g_12.pth', 'net_g_4.pth', 'net_g_8.safetensors', 'net_g_best.pth', 'net_g_latest.pth']
    for tag in ('8', 'latest'):
        full = find_network_file(root / 'experiments/full/models', f'net_g_{tag}')
        piece = find_network_file(models, f'net_g_{tag}')
        for key in ('params', 'params_ema'):
            diff = _max_diff(read_state_dict(full, key)[0], read_state_dict(piece, key)[0])
            assert diff == 0.0, f'net_g_{tag} {key}: max weight difference {diff}'
    assert not list(root.rglob('*.tmp.*'))  # atomic writes leave no temporaries
    states = sorted(p.name for p in (root / 'experiments/part/training_states').iterdir())
    assert states == ['12.state', '4.state', '8.state']  # training states stay torch files
    assert safe_load(str(root / 'experiments/part/training_states/8.state'))['iter'] == 8


def test_best_checkpoint_survives_resume(runs):
    root, validations = runs
    best = {name: json.loads((root / f'experiments/{name}/best.json').read_text()) for name in ('full', 'part')}
    assert best['part'] == best['full']
    psnr = {it: res['tiny_val']['psnr'] for (name, it), res in validations.items() if name == 'part'}
    assert sorted(psnr) == [4, 8, 12]  # every validation of the three pieces, none twice
    lowest = min(psnr, key=psnr.get)
    assert best['part'] == {'metric': 'psnr', 'dataset': 'tiny_val', 'value': psnr[lowest], 'iter': lowest,
                            'higher_is_better': False}
    files = {name: find_network_file(root / f'experiments/{name}/models', 'net_g_best') for name in ('full', 'part')}
    periodic = find_network_file(root / 'experiments/part/models', f'net_g_{lowest}')
    for key in ('params', 'params_ema'):
        assert _max_diff(read_state_dict(files['full'], key)[0], read_state_dict(files['part'], key)[0]) == 0.0
        assert _max_diff(read_state_dict(periodic, key)[0], read_state_dict(files['part'], key)[0]) == 0.0


def test_validate_checkpoints_equals_the_runs_validation(runs, capsys):
    root, validations = runs
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        assert validate_checkpoints_main(['-opt', str(root / 'part.yml')]) == 0
    out = root / 'results/part'
    with open(out / 'checkpoints.csv', newline='') as f:
        rows = list(csv.DictReader(f))
    assert [r['checkpoint'] for r in rows] == ['net_g_4', 'net_g_8', 'net_g_12', 'net_g_latest', 'net_g_best']
    assert [r['file'].rsplit('.', 1)[1] for r in rows] == ['pth', 'safetensors', 'pth', 'pth', 'pth']
    best_iter = json.loads((root / 'experiments/part/best.json').read_text())['iter']
    for row in rows:
        it = {'net_g_latest': 12, 'net_g_best': best_iter}.get(row['checkpoint'], row['iter'] and int(row['iter']))
        assert row['param_key'] == 'params_ema'  # the EMA copy is what the run validated
        for metric in ('psnr', 'ssim'):
            assert float(row[f'tiny_val/{metric}']) == validations[('part', it)]['tiny_val'][metric], (row, metric)
    md = (out / 'checkpoints.md').read_text()
    assert '| iter | tiny_val/psnr | tiny_val/ssim |' in md and '| net_g_best | ' in md
    assert (out / 'checkpoints.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert '| 8 | ' in capsys.readouterr().out


def test_validate_checkpoints_without_a_run_is_one_line_and_exit_2(runs, tmp_path, capsys):
    root, _ = runs
    for experiment in (tmp_path / 'nowhere', tmp_path):  # no folder; a folder without models/
        with pytest.raises(SystemExit) as exit_:
            validate_checkpoints_main(['-opt', str(root / 'part.yml'), '--experiment', str(experiment)])
        assert exit_.value.code == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and str(experiment) in err, err


def test_checkpoints_of_a_format_switch_load_into_the_network(runs):
    """Both formats of the run load into a fresh net_g through the inference loader (irtk-infer's)."""
    from irtoolkit.inference.loader import load_network
    root, _ = runs
    net_opt = _recipe('.', 'x')['network_g']
    outs = []
    x = torch.rand(1, 3, 16, 16)
    for name in ('net_g_8.safetensors', 'net_g_12.pth'):
        net, used = load_network(net_opt, str(root / 'experiments/part/models' / name))
        assert used == 'params_ema'
        with torch.no_grad():
            outs.append(net(x))
    assert outs[0].shape == outs[1].shape == x.shape and not torch.equal(outs[0], outs[1])
