"""Convert a BasicSR-layout or upstream IRConStyle recipe into an irtoolkit recipe.

    irtk-convert-options upstream/train_ConStyleNAFNet_Dehaze.yml options/train/my_dehaze.yml
    python tools/convert_options.py upstream/train_ConStyleNAFNet_Dehaze.yml options/train/my_dehaze.yml  # the same

Prints every change and every key it could not map (one line each; see
:mod:`irtoolkit.config.convert` for what is mapped), then writes OUT. Exit status 0 when everything
mapped, 1 when some keys need a hand (OUT is written either way, so they can be fixed there).
"""
import argparse
import sys

import yaml

from irtoolkit.config.convert import convert_options
from irtoolkit.config.recipe import load_recipe
from irtoolkit.utils.errors import UserError


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
        f.write(f'# converted from {args.input} by irtk-convert-options\n')
        yaml.safe_dump(opt, f, sort_keys=False)
    print(f'wrote {args.output}: {len(changes)} changes, {len(unmapped)} keys not mapped')
    return 1 if unmapped else 0


if __name__ == '__main__':
    sys.exit(main())
