"""Convert a BasicSR-layout or upstream IRConStyle recipe into an irtoolkit recipe.

    python tools/convert_options.py upstream/train_ConStyleNAFNet_Dehaze.yml options/train/my_dehaze.yml

Prints every change and every key it could not map (one line each; see
:mod:`irtoolkit.config.convert` for what is mapped), then writes OUT. Exit status 0 when everything
mapped, 1 when some keys need a hand (OUT is written either way, so they can be fixed there).
"""
import argparse
import os.path as osp
import sys

import yaml

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
if ROOT not in sys.path:  # run as a script from anywhere, or imported by a test: this checkout's package
    sys.path.insert(0, ROOT)

import irtoolkit  # noqa: E402,F401  (compat patches, registrations)
from irtoolkit.config.convert import convert_options  # noqa: E402
from irtoolkit.utils.errors import UserError  # noqa: E402
from irtoolkit.config.recipe import load_recipe  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('input', help='a BasicSR or upstream IRConStyle recipe')
    p.add_argument('output', help='the irtoolkit recipe to write')
    args = p.parse_args(argv)
    try:
        opt, changes, unmapped = convert_options(load_recipe(args.input))
    except UserError as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    for line in changes:
        print(f'changed  {line}')
    for line in unmapped:
        print(f'NOT MAPPED  {line}')
    with open(args.output, 'w', encoding='utf-8') as f:
        f.write(f'# converted from {args.input} by tools/convert_options.py\n')
        yaml.safe_dump(opt, f, sort_keys=False)
    print(f'wrote {args.output}: {len(changes)} changes, {len(unmapped)} keys not mapped')
    return 1 if unmapped else 0


if __name__ == '__main__':
    sys.exit(main())
