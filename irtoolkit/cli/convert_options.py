"""Convert a BasicSR-layout or upstream IRConStyle / ConStyle v2 recipe into an irtoolkit recipe.

    irtk-convert-options upstream/train_ConStyleNAFNet_Dehaze.yml options/train/my_dehaze.yml
    python tools/convert_options.py upstream/train_ConStyleNAFNet_Dehaze.yml options/train/my_dehaze.yml  # the same
    irtk-convert-options --check IRConStyle/options   # every .yml under it (or the files given): what is not mapped

Prints every change and every key it could not map (one line each; see :mod:`irtoolkit.config.convert` and
:mod:`irtoolkit.config.convert_datasets` for what is mapped), then writes OUT. Exit status 0 when everything mapped,
1 when some keys need a hand (OUT is written either way, so they can be fixed there). ``--check`` writes nothing: it
prints each recipe's keys that are not mapped and ``N/M recipes convert with nothing unmapped`` (exit 0 when N = M).
"""
import argparse
import glob
import os.path as osp
import sys

import yaml

from irtoolkit.config.convert import convert_options
from irtoolkit.config.recipe import load_recipe
from irtoolkit.utils.errors import UserError


def _recipes(paths):
    """The ``.yml`` / ``.yaml`` files of ``paths`` (folders searched recursively), sorted, each once."""
    found = []
    for path in paths:
        if osp.isdir(path):
            found += [f for ext in ('yml', 'yaml') for f in glob.glob(osp.join(path, '**', f'*.{ext}'), recursive=True)]
        elif osp.isfile(path):
            found.append(path)
        else:
            raise UserError(f'{path}: no such file or folder')
    return sorted(set(found))


def check(paths):
    recipes = _recipes(paths)
    if not recipes:
        raise UserError(f'no .yml recipe under {", ".join(paths)}')
    clean = 0
    for path in recipes:
        try:
            _, _, unmapped = convert_options(load_recipe(path))
        except UserError as err:
            unmapped = [str(err)]
        clean += not unmapped
        for line in unmapped:
            print(f'{path}: NOT MAPPED  {line}')
    print(f'{clean}/{len(recipes)} recipes convert with nothing unmapped')
    return 0 if clean == len(recipes) else 1


def convert(src, out):
    opt, changes, unmapped = convert_options(load_recipe(src))
    for line in changes:
        print(f'changed  {line}')
    for line in unmapped:
        print(f'NOT MAPPED  {line}')
    with open(out, 'w', encoding='utf-8') as f:
        f.write(f'# converted from {src} by irtk-convert-options\n')
        yaml.safe_dump(opt, f, sort_keys=False)
    print(f'wrote {out}: {len(changes)} changes, {len(unmapped)} keys not mapped')
    return 1 if unmapped else 0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('paths', nargs='+', metavar='PATH', help='INPUT OUTPUT: a recipe and the irtoolkit recipe to write; '
                   'with --check: recipes or folders of recipes')
    p.add_argument('--check', action='store_true', help='convert every recipe given, write nothing, count the ones '
                   'with nothing unmapped')
    args = p.parse_args(argv)
    if not args.check and len(args.paths) != 2:
        p.error('expected INPUT OUTPUT (or --check PATH...)')
    try:
        return check(args.paths) if args.check else convert(*args.paths)
    except UserError as err:
        print(f'error: {err}', file=sys.stderr)
        return 2


if __name__ == '__main__':
    sys.exit(main())
