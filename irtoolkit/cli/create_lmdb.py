"""Image folders -> LMDB in BasicSR's layout (data.mdb + meta_info.txt), readable by irtoolkit and basicsr.

    # paired: LQ and GT matched by name; both databases get the GT names as keys
    irtk-create-lmdb paired --lq DIR --gt DIR --out-lq X_lq.lmdb --out-gt X_gt.lmdb [--verify]
        [--filename-tmpl '{}x4']            LQ name from GT name (one LQ per GT)
        [--gt-name-sub '_.*$' '']           GT name from LQ name by regex (many LQ per GT, e.g. RESIDE);
                                            then the LQ database keeps the LQ names and the GT one the GT names
    # unpaired: two independent sets
    irtk-create-lmdb unpaired --lq DIR --gt DIR --out-lq X_lq.lmdb --out-gt X_gt.lmdb
    # single folder (clean images for on-the-fly degradation, test sets)
    irtk-create-lmdb single --src DIR --out X.lmdb
    # class folders (ImageNet's DIR/<class>/<image>): keys <class>/<stem>, and X.lmdb/labels.txt ("<key> <class>")
    # for LabeledImageDataset (labels: folders or labels: file)
    irtk-create-lmdb classes --src DIR --out X.lmdb
    # check an existing database (every key decodes, shapes match meta_info; with --src: keys and pixels too)
    irtk-create-lmdb verify X.lmdb [--src DIR]

    # paired from a list file of "LQ GT" paths (RealBlur, SPA-Data); keys from the LQ paths
    irtk-create-lmdb paired --list train_list.txt [--list-order gt,lq] --out-lq .. --out-gt ..
    (verify a --tile database with: verify X.lmdb --src DIR --tile T --step S)

Common options: --workers N (parallel reading, default 4), --compress-level 0-9 (PNG, default 1; 0 stores raw
rows: bigger, ~4x faster to decode), --force (overwrite an existing database), --verify (after writing,
compare every record with its source), --tile T [--step S] (store T px sub-images <name>_sNNN every S px,
the last ones flush with the border; for large training images such as DFWB and GoPro).
Exit status: 0 ok, 1 verification failed, 2 bad input (unmatched names, missing folder, existing database).
``python tools/create_lmdb.py ...`` is the same command.
"""
import argparse
import os
import os.path as osp
import sys
import time

from irtoolkit.data.labeled_dataset import ClassFolderSource
from irtoolkit.data.lmdb_util import files_to_lmdb, verify_against_files, verify_lmdb
from irtoolkit.data.sources import PairingError, pair_keys, scan_images


def _write(files, out, args, what):
    t0 = time.time()
    n = files_to_lmdb(files, out, args.compress_level, args.workers, args.force, desc=what, tile=args.tile,
                      step=args.step)
    print(f'{what}: wrote {n} records from {len(files)} images to {out} in {time.time() - t0:.1f} s')
    if args.verify:
        problems = verify_against_files(out, files, tile=args.tile, step=args.step)
        for p in problems:
            print(f'VERIFY FAILED: {p}', file=sys.stderr)
        if problems:
            return False
        print(f'{what}: verified {n} records (keys, shapes, pixels) against {len(files)} source images')
    return True


def read_pair_list(path, root=None, order='lq,gt'):
    """``([(key, lq_path)], [(key, gt_path)])`` from a text file of whitespace-separated path pairs, one per line
    (RealBlur and SPA-Data ship such lists). Paths are relative to ``root`` (default: the list's folder); the
    key is the LQ path relative to ``root`` without extension, ``/`` replaced by ``_``. Every line whose files
    are missing is reported at once."""
    if order not in ('lq,gt', 'gt,lq'):
        raise ValueError(f'--list-order must be lq,gt or gt,lq, got {order!r}')
    root = root or osp.dirname(osp.abspath(path))
    lq_files, gt_files, missing, keys = [], [], [], set()
    with open(path) as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) < 2:  # further columns (some lists carry extra fields) are ignored
                raise ValueError(f'{path}:{n}: expected two paths, got {line.strip()!r}')
            lq, gt = parts[:2] if order == 'lq,gt' else parts[1::-1]
            lq, gt = (p if osp.isabs(p) else osp.join(root, p) for p in (lq, gt))
            missing += [f'{path}:{n}: {p}' for p in (lq, gt) if not osp.isfile(p)]
            key = osp.splitext(osp.relpath(lq, root))[0].replace(os.sep, '_').replace('/', '_')
            if key in keys:
                raise ValueError(f'{path}:{n}: LQ {lq} appears twice')
            keys.add(key)
            lq_files.append((key, lq))
            gt_files.append((key, gt))
    if missing:
        raise FileNotFoundError(f'{len(missing)} listed files do not exist: ' + '; '.join(missing[:30])
                                + (f'; ... ({len(missing) - 30} more)' if len(missing) > 30 else ''))
    return lq_files, gt_files


def _check_targets(args, outs):
    for out in outs:
        if osp.exists(out) and not args.force:
            raise FileExistsError(f'{out} already exists; pass --force to overwrite it')
        if not out.rstrip('/').endswith('.lmdb'):
            raise ValueError(f'output must end with .lmdb: {out}')


def run(args):
    if args.cmd == 'verify':
        expected = None
        if args.src:
            expected = sorted(scan_images(args.src, 'verify --src').items())
            problems = verify_against_files(args.db, expected, tile=args.tile, step=args.step)
        else:
            problems = verify_lmdb(args.db)
        for p in problems:
            print(f'VERIFY FAILED: {p}', file=sys.stderr)
        if not problems:
            print(f'{args.db}: OK (every record decodes{", matches " + args.src if args.src else ""})')
        return 1 if problems else 0
    if args.cmd == 'single':
        _check_targets(args, [args.out])
        files = sorted(scan_images(args.src, '--src').items())
        return 0 if _write(files, args.out, args, 'single') else 1
    if args.cmd == 'classes':
        _check_targets(args, [args.out])
        files = sorted(ClassFolderSource(args.src, '--src').files.items())
        if not _write(files, args.out, args, 'classes'):
            return 1
        with open(osp.join(args.out, 'labels.txt'), 'w', encoding='utf-8') as f:
            f.writelines(f'{key} {key.split("/", 1)[0]}\n' for key, _ in files)
        print(f'classes: {len({k.split("/", 1)[0] for k, _ in files})} classes, labels in {args.out}/labels.txt')
        return 0
    _check_targets(args, [args.out_lq, args.out_gt])
    if getattr(args, 'list', None):
        lq_files, gt_files = read_pair_list(args.list, args.list_root, args.list_order)
        print(f'paired: {len(lq_files)} pairs from {args.list}')
        ok = _write(lq_files, args.out_lq, args, 'lq') and _write(gt_files, args.out_gt, args, 'gt')
        return 0 if ok else 1
    if not args.lq or not args.gt:
        raise ValueError(f'{args.cmd}: give --lq and --gt folders' + (' (or --list)' if args.cmd == 'paired' else ''))
    lq, gt = scan_images(args.lq, '--lq'), scan_images(args.gt, '--gt')
    if args.cmd == 'unpaired':
        ok = _write(sorted(lq.items()), args.out_lq, args, 'lq') and _write(sorted(gt.items()), args.out_gt, args, 'gt')
        return 0 if ok else 1
    pairs = pair_keys(gt, lq, args.filename_tmpl, 'paired', args.gt_name_sub)  # PairingError lists every name
    if args.gt_name_sub:  # many-to-one: keep each name once on each side; the dataset pairs with gt_name_sub
        lq_files = [(k, lq[k]) for _, k in pairs]
        gt_files = [(k, gt[k]) for k in sorted({g for g, _ in pairs})]
    else:  # one-to-one: both databases under the GT names, so basicsr's paired_paths_from_lmdb pairs them too
        lq_files = [(g, lq[k]) for g, k in pairs]
        gt_files = [(g, gt[g]) for g, _ in pairs]
    print(f'paired: {len(pairs)} pairs ({len(lq_files)} LQ, {len(gt_files)} GT images)')
    ok = _write(lq_files, args.out_lq, args, 'lq') and _write(gt_files, args.out_gt, args, 'gt')
    return 0 if ok else 1


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest='cmd', required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument('--workers', type=int, default=4, help='reading/encoding threads (default 4)')
    common.add_argument('--compress-level', type=int, default=1, choices=range(10), metavar='0-9',
                        help='PNG compression level (default 1, as basicsr)')
    common.add_argument('--force', action='store_true', help='overwrite existing databases')
    common.add_argument('--verify', action='store_true', help='after writing, check every record against its source')
    common.add_argument('--tile', type=int, help='store TILE px sub-images (keys <name>_sNNN) instead of whole images')
    common.add_argument('--step', type=int, help='sub-image stride (default: --tile, i.e. no overlap)')
    for name in ('paired', 'unpaired'):
        s = sub.add_parser(name, parents=[common])
        s.add_argument('--lq', required=name == 'unpaired', help='folder of degraded images')
        s.add_argument('--gt', required=name == 'unpaired', help='folder of clean images')
        s.add_argument('--out-lq', required=True)
        s.add_argument('--out-gt', required=True)
        if name == 'paired':
            g = s.add_mutually_exclusive_group()
            g.add_argument('--filename-tmpl', default='{}', help="LQ name from GT name, e.g. '{}_x4' (default '{}')")
            g.add_argument('--gt-name-sub', nargs=2, metavar=('PATTERN', 'REPL'),
                           help="GT name = re.sub(PATTERN, REPL, LQ name), e.g. '_.*$' '' for RESIDE")
            s.add_argument('--list', help='instead of --lq/--gt: a text file of "LQ GT" path pairs, one per line')
            s.add_argument('--list-root', help='folder the listed paths are relative to (default: the list\'s)')
            s.add_argument('--list-order', default='lq,gt', help='order of the two paths: lq,gt (default) or gt,lq')
    for name in ('single', 'classes'):
        s = sub.add_parser(name, parents=[common])
        s.add_argument('--src', required=True, help='image folder' + (' of class sub-folders' * (name == 'classes')))
        s.add_argument('--out', required=True)
    s = sub.add_parser('verify')
    s.add_argument('db')
    s.add_argument('--src', help='source folder: also compare keys and pixels')
    s.add_argument('--tile', type=int, help='the database holds sub-images written with this --tile')
    s.add_argument('--step', type=int, help='... and this --step')
    return p.parse_args(argv)


def main(argv=None):
    args = parse(argv)
    try:
        return run(args)
    except (PairingError, FileExistsError, FileNotFoundError, ValueError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2


if __name__ == '__main__':
    sys.exit(main())
