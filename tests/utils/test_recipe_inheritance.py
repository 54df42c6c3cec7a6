"""Recipe inheritance (``_base_``): every recipe under options/ resolves to exactly the options of its snapshot,
and :func:`irtoolkit.config.recipe.load_recipe` follows its rules (bases in order, own keys last, mappings merged,
lists replaced, ``_delete_``, paths relative to the file, clear errors).

The snapshot, ``tests/data/resolved_recipes.json``, holds what every recipe resolves to (bases under
``options/_base_/`` are not recipes and are left out). Moving shared keys between bases and recipes must leave it
unchanged. When a recipe changes on purpose (a new value, a recipe added or removed), refresh the snapshot and
review the difference before committing it:

    irtk-snapshot-recipes --check    # every recipe and key path that differs, and how (or python tools/...)
    irtk-snapshot-recipes            # rewrite tests/data/resolved_recipes.json
    git diff tests/data/resolved_recipes.json   # only the values you meant to change?

A change to a base changes every recipe built on it: ``--check`` lists them all.
"""
import os.path as osp

import pytest
import yaml
from irtk_testutils import REPO

from irtoolkit.cli import snapshot_recipes as snapshot_tool
from irtoolkit.config.recipe import load_recipe
from irtoolkit.utils.errors import OptionError

SNAPSHOT = snapshot_tool.load_snapshot(osp.join(REPO, snapshot_tool.SNAPSHOT))
RECIPES = snapshot_tool.recipe_paths()
REFRESH = 'if the change is meant, run irtk-snapshot-recipes (python tools/snapshot_recipes.py) and review the diff'


# ---------------------------------------------------------------- the recipes under options/
def test_every_recipe_has_a_snapshot_entry_and_every_entry_a_recipe():
    assert len(RECIPES) >= 60 and not any('_base_' in p for p in RECIPES)
    gone = sorted(set(SNAPSHOT) - set(RECIPES))
    new = sorted(set(RECIPES) - set(SNAPSHOT))
    assert not gone, f'in the snapshot but no longer under options/: {gone}; {REFRESH}'
    assert not new, f'not in the snapshot: {new}; {REFRESH}'


@pytest.mark.parametrize('rel', RECIPES, ids=lambda p: p[len('options/'):])
def test_recipe_resolves_to_its_snapshot(rel):
    if rel not in SNAPSHOT:
        pytest.fail(f'{rel}: not in the snapshot; {REFRESH}')
    diffs = snapshot_tool.differences(SNAPSHOT[rel], load_recipe(osp.join(REPO, rel)))
    assert not diffs, f'{rel}: first difference {diffs[0]} ({len(diffs)} in all); {REFRESH}'


def _bases_of(path, seen):
    """Every file ``path`` inherits from, following ``_base_`` recursively (absolute paths into ``seen``)."""
    with open(path, encoding='utf-8') as f:
        bases = (yaml.safe_load(f) or {}).get('_base_') or []
    for base in [bases] if isinstance(bases, str) else bases:
        base = osp.normpath(osp.join(osp.dirname(path), base))
        if base not in seen:
            seen.add(base)
            _bases_of(base, seen)
    return seen


def test_every_base_is_used_and_loads():
    used = set()
    for rel in RECIPES:
        _bases_of(osp.join(REPO, rel), used)
    bases = {osp.normpath(osp.join(REPO, p)) for p in snapshot_tool.base_paths()}
    assert bases, 'no bases under options/_base_/'
    assert used <= bases, f'recipes inherit from files outside options/_base_/: {sorted(used - bases)}'
    assert not bases - used, f'bases no recipe uses: {sorted(osp.relpath(p, REPO) for p in bases - used)}'
    for base in bases:
        assert isinstance(load_recipe(base), dict)


def test_snapshot_comparison_is_strict_about_types():
    diff = snapshot_tool.differences
    assert diff({'a': {'b': [1, 2.0]}}, {'a': {'b': [1, 2.0]}}) == []
    assert diff({'lr': 3e-4}, {'lr': '3e-4'}) == ["lr: 0.0003 (float) -> '3e-4' (str)"]
    assert diff({'w': 1.0}, {'w': 1}) == ['w: 1.0 (float) -> 1 (int)']
    assert diff({'x': 1}, {'x': True}) == ['x: 1 (int) -> True (bool)']
    assert diff({'a': {'b': [1, 2]}}, {'a': {'b': [1, 3]}}) == ['a.b[1]: 2 (int) -> 3 (int)']
    assert diff({'a': {'b': 1}}, {'a': {}}) == ['a.b: removed (was 1)']
    assert diff({'a': {}}, {'a': {'c': None}}) == ['a.c: added (None)']
    assert diff({'l': [1]}, {'l': [1, 2]}) == ['l: [1] (list) -> [1, 2] (list)']


# ---------------------------------------------------------------- load_recipe's rules
def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def test_bases_merge_in_order_then_own_keys(tmp_path):
    write(tmp_path / 'a.yml', 'x: a\ny: a\nonly_a: 1\n')
    write(tmp_path / 'b.yml', 'y: b\nz: b\n')
    assert load_recipe(write(tmp_path / 'ab.yml', '_base_: [a.yml, b.yml]\n')) == {
        'x': 'a', 'y': 'b', 'only_a': 1, 'z': 'b'}
    assert load_recipe(write(tmp_path / 'ba.yml', '_base_: [b.yml, a.yml]\n'))['y'] == 'a'
    # own keys win over every base, wherever _base_ is written in the file
    own = load_recipe(write(tmp_path / 'own.yml', 'y: own\nz: own\n_base_: [a.yml, b.yml]\n'))
    assert own == {'x': 'a', 'y': 'own', 'only_a': 1, 'z': 'own'} and '_base_' not in own
    assert load_recipe(write(tmp_path / 'one.yml', '_base_: a.yml\nx: one\n'))['x'] == 'one'  # a single path


def test_mappings_merge_recursively(tmp_path):
    write(tmp_path / 'base.yml', 'train:\n  total_iter: 10\n  optim_g: {type: Adam, lr: 1.0e-3, betas: [0.9, 0.99]}\n'
          'val: {val_freq: 5}\n')
    opt = load_recipe(write(tmp_path / 'r.yml', '_base_: base.yml\ntrain:\n  optim_g: {lr: 2e-4}\n  ema_decay: 0.9\n'))
    assert opt == {'train': {'total_iter': 10, 'optim_g': {'type': 'Adam', 'lr': 2e-4, 'betas': [0.9, 0.99]},
                             'ema_decay': 0.9},
                   'val': {'val_freq': 5}}
    assert isinstance(opt['train']['optim_g']['lr'], float)  # 2e-4 read as a number (the safe loader's rule)


def test_lists_and_other_values_replace(tmp_path):
    write(tmp_path / 'base.yml', 'periods: [1, 2, 3]\nmetrics: {psnr: {type: calculate_psnr}}\nname: base\n'
          'layers: [a, b]\n')
    opt = load_recipe(write(tmp_path / 'r.yml', '_base_: base.yml\nperiods: [4]\nmetrics: ~\nlayers: []\n'))
    assert opt == {'periods': [4], 'metrics': None, 'name': 'base', 'layers': []}  # ~ sets None, keeps the key
    assert load_recipe(write(tmp_path / 's.yml', '_base_: base.yml\nname: {a: 1}\n'))['name'] == {'a': 1}


def test_delete_replaces_the_base_mapping(tmp_path):
    write(tmp_path / 'base.yml', 'train:\n  total_iter: 10\n'
          '  scheduler: {type: CosineAnnealingRestartLR, periods: [10], restart_weights: [1], eta_min: 1.0e-7}\n')
    opt = load_recipe(write(tmp_path / 'r.yml', '_base_: base.yml\ntrain:\n  scheduler:\n    _delete_: true\n'
                            '    type: MultiStepLR\n    milestones: [5]\n'))
    assert opt == {'train': {'total_iter': 10, 'scheduler': {'type': 'MultiStepLR', 'milestones': [5]}}}
    # a _delete_ under a key the bases do not have (or deeper) is dropped, not kept as an option
    opt = load_recipe(write(tmp_path / 'n.yml', '_base_: base.yml\nval:\n  _delete_: true\n  metrics:\n'
                            '    _delete_: true\n    psnr: {type: calculate_psnr}\n'))
    assert opt['val'] == {'metrics': {'psnr': {'type': 'calculate_psnr'}}}
    # _delete_: false merges as usual
    opt = load_recipe(write(tmp_path / 'f.yml', '_base_: base.yml\ntrain: {_delete_: false, warmup_iter: -1}\n'))
    assert opt['train'] == {'total_iter': 10, 'warmup_iter': -1, 'scheduler': {
        'type': 'CosineAnnealingRestartLR', 'periods': [10], 'restart_weights': [1], 'eta_min': 1e-7}}


def test_paths_are_relative_to_the_file_that_names_them(tmp_path, monkeypatch):
    write(tmp_path / 'shared' / 'runtime' / 'seed.yml', 'manual_seed: 0\nnum_gpu: auto\n')
    write(tmp_path / 'shared' / 'net.yml', '_base_: runtime/seed.yml\nnetwork_g: {type: NAFNet, width: 16}\n'
          'manual_seed: 10\n')
    write(tmp_path / 'shared' / 'data.yml', 'datasets: {train: {name: a}}\n')
    recipe = write(tmp_path / 'options' / 'train' / 'x' / 'r.yml',
                   '_base_: [../../../shared/net.yml, ../../../shared/data.yml]\nname: r\n')
    monkeypatch.chdir(tmp_path / 'shared')  # neither the working directory ...
    expected = {'manual_seed': 10, 'num_gpu': 'auto', 'network_g': {'type': 'NAFNet', 'width': 16},
                'datasets': {'train': {'name': 'a'}}, 'name': 'r'}
    assert load_recipe(recipe) == expected
    monkeypatch.chdir(tmp_path / 'options')  # ... nor a relative recipe path changes what the bases are
    assert load_recipe(osp.join('train', 'x', 'r.yml')) == expected


def test_a_base_reached_twice_is_not_a_cycle(tmp_path):
    write(tmp_path / 'root.yml', 'a: 1\nb: {c: 1}\n')
    write(tmp_path / 'left.yml', '_base_: root.yml\nb: {left: 1}\n')
    write(tmp_path / 'right.yml', '_base_: root.yml\nb: {right: 1}\n')
    assert load_recipe(write(tmp_path / 'r.yml', '_base_: [left.yml, right.yml]\n')) == {
        'a': 1, 'b': {'c': 1, 'left': 1, 'right': 1}}


def test_missing_base_names_the_file_and_the_entry(tmp_path):
    write(tmp_path / 'a.yml', 'x: 1\n')
    recipe = write(tmp_path / 'sub' / 'r.yml', '_base_: [../a.yml, ../missing.yml]\n')
    with pytest.raises(OptionError, match=r'r\.yml: _base_\[1\]: not found: .*missing\.yml') as err:
        load_recipe(recipe)
    assert str(err.value).startswith(recipe)
    nested = write(tmp_path / 'n.yml', '_base_: sub/r.yml\n')  # the error names the file that has the bad entry
    with pytest.raises(OptionError, match=r'sub[/\\]r\.yml: _base_\[1\]'):
        load_recipe(nested)
    with pytest.raises(OptionError, match=r'_base_\[0\]: expected a path, got int'):
        load_recipe(write(tmp_path / 'i.yml', '_base_: [1]\n'))
    with pytest.raises(OptionError, match='options file not found'):
        load_recipe(str(tmp_path / 'nowhere.yml'))


def test_cycles_are_errors(tmp_path):
    write(tmp_path / 'a.yml', '_base_: b.yml\nx: 1\n')
    write(tmp_path / 'b.yml', '_base_: c.yml\n')
    write(tmp_path / 'c.yml', '_base_: a.yml\n')
    with pytest.raises(OptionError, match=r'inheritance cycle: a\.yml -> b\.yml -> c\.yml -> a\.yml'):
        load_recipe(str(tmp_path / 'a.yml'))
    with pytest.raises(OptionError, match=r'inheritance cycle: self\.yml -> self\.yml'):
        load_recipe(write(tmp_path / 'self.yml', '_base_: self.yml\n'))
