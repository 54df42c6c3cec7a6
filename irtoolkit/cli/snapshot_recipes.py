"""Snapshot what every recipe under options/ resolves to, or check that it still does.

    irtk-snapshot-recipes           # write tests/data/resolved_recipes.json
    irtk-snapshot-recipes --check   # compare; print each differing recipe and key path; exit 1 if any
    python tools/snapshot_recipes.py [--check]    # the same command

The snapshot maps each recipe's path relative to the repository (``options/train/NAFNet/train_NAFNet_Deblur.yml``)
to its options as :func:`irtoolkit.config.recipe.load_recipe` resolves them (``_base_`` files merged in). Files
under a ``_base_`` folder are bases, not recipes, and are left out. The repository is ``--repo``; by default the
checkout holding the package (an editable install), else the current directory. The comparison is strict about types
(``3e-4`` must stay a float, ``1`` must not become ``1.0`` or ``true``) and ignores the order of keys.
"""
import argparse
import json
import math
import os.path as osp
import sys

from irtoolkit.cli import checkout_root

REPO = checkout_root()
SNAPSHOT = osp.join('tests', 'data', 'resolved_recipes.json')
BASE_DIR = '_base_'


def _yml_under_options(repo, bases):
    import glob
    found = glob.glob(osp.join(repo, 'options', '**', '*.yml'), recursive=True)
    rel = (osp.relpath(p, repo).replace(osp.sep, '/') for p in found)
    return sorted(p for p in rel if (BASE_DIR in p.split('/')[:-1]) == bases)


def recipe_paths(repo=REPO):
    """Every ``*.yml`` under ``options/`` (relative to ``repo``, sorted), except files in a ``_base_`` folder."""
    return _yml_under_options(repo, bases=False)


def base_paths(repo=REPO):
    """Every ``*.yml`` in a ``_base_`` folder under ``options/`` (relative to ``repo``, sorted): parts of recipes."""
    return _yml_under_options(repo, bases=True)


def _check_json(value, where):
    """Refuse what JSON would not keep exactly (non-string keys, dates, sets, ...)."""
    if isinstance(value, dict):
        for key, sub in value.items():
            if not isinstance(key, str):
                raise TypeError(f'{where}: key {key!r} is a {type(key).__name__}; the snapshot keeps string keys')
            _check_json(sub, f'{where}.{key}')
    elif isinstance(value, list):
        for i, sub in enumerate(value):
            _check_json(sub, f'{where}[{i}]')
    elif value is not None and not isinstance(value, (str, bool, int, float)):
        raise TypeError(f'{where}: {type(value).__name__} value {value!r} cannot be snapshotted as JSON')


def resolve_all(repo=REPO):
    """{relative recipe path: resolved options} for every recipe under ``repo/options``."""
    from irtoolkit.config.recipe import load_recipe
    out = {}
    for rel in recipe_paths(repo):
        opt = load_recipe(osp.join(repo, rel))
        _check_json(opt, rel)
        out[rel] = opt
    return out


def differences(old, new, path=''):
    """Key paths where ``new`` differs from ``old`` (types strictly: 1 != 1.0 != True); empty when equal."""
    if isinstance(old, dict) and isinstance(new, dict):
        diffs = []
        for key in sorted(set(old) | set(new), key=str):
            sub = f'{path}.{key}' if path else str(key)
            if key not in new:
                diffs.append(f'{sub}: removed (was {old[key]!r})')
            elif key not in old:
                diffs.append(f'{sub}: added ({new[key]!r})')
            else:
                diffs.extend(differences(old[key], new[key], sub))
        return diffs
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [d for i, (a, b) in enumerate(zip(old, new)) for d in differences(a, b, f'{path}[{i}]')]
    same_nan = isinstance(old, float) and isinstance(new, float) and math.isnan(old) and math.isnan(new)
    if type(old) is not type(new) or (old != new and not same_nan):
        return [f'{path or "<top>"}: {old!r} ({type(old).__name__}) -> {new!r} ({type(new).__name__})']
    return []


def compare(snapshot, resolved):
    """{recipe: [differing key paths]} for recipes that differ, were added or were removed."""
    out = {}
    for rel in sorted(set(snapshot) | set(resolved)):
        if rel not in resolved:
            out[rel] = ['recipe is in the snapshot but no longer exists']
        elif rel not in snapshot:
            out[rel] = ['recipe is not in the snapshot']
        else:
            diffs = differences(snapshot[rel], resolved[rel])
            if diffs:
                out[rel] = diffs
    return out


def dump(resolved):
    return json.dumps(resolved, indent=1, sort_keys=True, ensure_ascii=False) + '\n'


def load_snapshot(path):
    with open(path, encoding='utf-8') as f:
        return json.load(f)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--check', action='store_true', help='compare with the snapshot instead of writing it')
    parser.add_argument('--repo', default=REPO, help='the repository whose options/ is resolved (default: %(default)s)')
    parser.add_argument('--snapshot', help=f'the JSON file (default: REPO/{SNAPSHOT})')
    args = parser.parse_args(argv)
    args.snapshot = args.snapshot or osp.join(args.repo, SNAPSHOT)
    resolved = resolve_all(args.repo)
    if not args.check:
        import os
        os.makedirs(osp.dirname(osp.abspath(args.snapshot)), exist_ok=True)
        with open(args.snapshot, 'w', encoding='utf-8') as f:
            f.write(dump(resolved))
        print(f'wrote {len(resolved)} recipes to {args.snapshot}')
        return 0
    if not osp.isfile(args.snapshot):
        print(f'{args.snapshot}: no snapshot; write one with irtk-snapshot-recipes')
        return 1
    diffs = compare(load_snapshot(args.snapshot), resolved)
    for rel, lines in diffs.items():
        print(rel)
        for line in lines:
            print(f'    {line}')
    if diffs:
        print(f'{len(diffs)} of {len(resolved)} recipes differ from {args.snapshot}')
        return 1
    print(f'all {len(resolved)} recipes resolve as in {args.snapshot}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
