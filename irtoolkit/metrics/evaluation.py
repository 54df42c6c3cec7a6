"""Score folders of restored images, side by side, with the same :class:`MetricSet` validation uses.

``evaluate_folders(methods, gt_folder, metrics_opt)`` matches every method folder to the ground truth by file
stem (``0001.png`` <-> ``0001.jpg``), lists what is missing on either side, reads images in DataLoader workers,
groups images of one size into batches and scores every method of a batch in one call per metric. On a CPU the
scoring runs in the workers too (one single-threaded process per core); on a GPU in the main process.
Without ground truth only no-reference metrics are allowed. ``write_reports`` writes Markdown, CSV and JSON.
"""
import csv
import json
import math
import os
import os.path as osp
from collections import OrderedDict, defaultdict
from functools import partial

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from irtoolkit.utils.image_io import image_size, images_by_stem, read_image
from irtoolkit.metrics.calculate import MetricSet

GT_ROW = 'GT'


class MatchedImages(Dataset):
    """Item ``i``: ``{'name', 'gt': (C,H,W) or None, 'methods': {method: (C,H,W)}}`` for one image stem."""

    def __init__(self, names, gt_paths, method_paths):
        self.names, self.gt_paths, self.method_paths = names, gt_paths, method_paths

    def __len__(self):
        return len(self.names)

    def __getitem__(self, i):
        name = self.names[i]
        gt_path = self.gt_paths.get(name) if self.gt_paths else None
        gt = read_image(gt_path) if gt_path else None
        methods = {}
        for method, paths in self.method_paths.items():
            if name in paths:
                img = read_image(paths[name])
                if gt is not None and img.shape != gt.shape:
                    raise ValueError(f'{method}: {paths[name]} is {tuple(img.shape)} (C, H, W) but the ground truth '
                                     f'{gt_path} is {tuple(gt.shape)}')
                methods[method] = img
        return {'name': name, 'gt': gt, 'methods': methods}


def _collate(items):
    """Stack a same-size group: gt (B, C, H, W) or None; per method (indices into the batch, stacked images)."""
    names = [it['name'] for it in items]
    gt = torch.stack([it['gt'] for it in items]) if items[0]['gt'] is not None else None
    methods = OrderedDict()
    for m in OrderedDict.fromkeys(m for it in items for m in it['methods']):
        idx = [i for i, it in enumerate(items) if m in it['methods']]
        methods[m] = (idx, torch.stack([items[i]['methods'][m] for i in idx]))
    return {'names': names, 'gt': gt, 'methods': methods}


def _score_batch(batch, sets, gt_row, device):
    """``{row: (names, {metric: (B,) tensor})}`` for one collated batch (in the main process or a worker)."""
    dev = torch.device(device)
    gt = batch['gt'].to(dev) if batch['gt'] is not None else None
    out = {}
    with torch.inference_mode():
        for method, (idx, imgs) in batch['methods'].items():
            names = [batch['names'][i] for i in idx]
            out[method] = (names, sets[method].score(imgs.to(dev), gt[idx] if gt is not None else None, names))
        if gt_row:
            out[GT_ROW] = (batch['names'], sets[GT_ROW].score(gt, None, batch['names']))
    return out


def _collate_and_score(items, sets, gt_row, device):
    # CPU evaluation scores inside the DataLoader workers: one single-threaded process per core, no OpenMP
    # contention, and the main process only collects numbers
    return {'scores': _score_batch(_collate(items), sets, gt_row, device)}


def _size_batches(names, paths_for, batch_size):
    """Batches of indices whose images share one size (stacking needs it); order follows ``names``."""
    groups = defaultdict(list)
    for i, n in enumerate(names):
        groups[tuple(image_size(p) for p in paths_for(n))].append(i)
    batches = [g[j:j + batch_size] for g in groups.values() for j in range(0, len(g), batch_size)]
    return sorted(batches, key=lambda b: b[0])


def match_folders(methods, gt_folder=None):
    """Match method folders to the ground truth by stem.

    Returns ``(names, gt_paths, method_paths, report)``; ``report[method] = {'folder', 'missing', 'unmatched'}``
    (``missing``: ground-truth stems without an image in the method folder; ``unmatched``: method images without a
    ground truth). Without ground truth every stem of every method is scored.
    """
    gt_paths = images_by_stem(gt_folder) if gt_folder else None
    method_paths, report = OrderedDict(), OrderedDict()
    for method, folder in methods.items():
        paths = images_by_stem(folder)
        if gt_paths is not None:
            report[method] = {'folder': folder, 'missing': sorted(set(gt_paths) - set(paths)),
                              'unmatched': sorted(set(paths) - set(gt_paths))}
            paths = {k: v for k, v in paths.items() if k in gt_paths}
        else:
            report[method] = {'folder': folder, 'missing': [], 'unmatched': []}
        method_paths[method] = paths
    names = sorted(gt_paths) if gt_paths is not None else sorted(set().union(*method_paths.values()))
    return names, gt_paths, method_paths, report


def evaluate_folders(methods, gt_folder, metrics_opt, device='cpu', batch_size=8, num_workers=2, gt_row=False,
                     progress=True):
    """Score every method folder with ``metrics_opt`` (a ``val.metrics``-style mapping).

    ``methods``: ``{label: folder}`` (ordered). ``gt_row``: also score the ground truth itself with the
    no-reference metrics (a reference row). Returns a result dict (see :func:`write_reports`).
    """
    if not methods:
        raise ValueError('no method folder to evaluate')
    # quantize=False: 8-bit files are 8-bit already, and 16-bit files keep their precision
    metric_set = MetricSet(metrics_opt, where='metrics', device=device, quantize=False)
    fr = [m for m in metric_set.names if metric_set.is_full_reference(m)]
    if fr and not gt_folder:
        raise ValueError(f'full-reference metrics {", ".join(fr)} need a ground-truth folder')
    names, gt_paths, method_paths, report = match_folders(methods, gt_folder)
    rows = list(methods) + ([GT_ROW] if gt_row and gt_folder else [])
    sets = {m: MetricSet.from_metrics(metric_set.metrics, quantize=False) for m in methods}
    if GT_ROW in rows:  # the ground truth scored by the no-reference metrics, as a reference row
        sets[GT_ROW] = MetricSet.from_metrics({k: v for k, v in metric_set.metrics.items() if not v.full_reference},
                                              quantize=False)

    def paths_for(n):
        return ([gt_paths[n]] if gt_paths else []) + [p[n] for p in method_paths.values() if n in p]

    batches = _size_batches(names, paths_for, batch_size)
    dev = torch.device(device)
    in_workers = dev.type == 'cpu' and num_workers > 0
    collate = partial(_collate_and_score, sets=sets, gt_row=GT_ROW in rows, device=device) if in_workers \
        else _collate
    loader = DataLoader(MatchedImages(names, gt_paths, method_paths), batch_sampler=batches, collate_fn=collate,
                        num_workers=num_workers, persistent_workers=False)
    n_images = sum(len(p) for p in method_paths.values()) + (len(names) if GT_ROW in rows else 0)
    if n_images == 0:
        raise ValueError('no image of any method folder matches a ground-truth image by name')
    bar = tqdm(total=n_images, unit='img', desc='evaluate', disable=not progress)
    for batch in loader:
        scores = batch['scores'] if in_workers else _score_batch(batch, sets, GT_ROW in rows, device)
        for row, (row_names, row_scores) in scores.items():
            sets[row].record(row_names, row_scores)
            bar.update(len(row_names))
    bar.close()
    return _summarise(metric_set, rows, sets, report, gt_folder)


def _summarise(metric_set, rows, sets, report, gt_folder):
    out = {'gt_folder': gt_folder,
           'metrics': OrderedDict((m, {'lower_better': metric_set.lower_is_better(m),
                                       'full_reference': metric_set.is_full_reference(m),
                                       'source': metric_set.metrics[m].source}) for m in metric_set.names),
           'methods': OrderedDict()}
    for row in rows:
        per_image = OrderedDict(sets[row].per_image)
        keys = list(sets[row].metrics)
        means = OrderedDict((m, math.fsum(v[m] for v in per_image.values()) / len(per_image) if per_image else None)
                            for m in keys)
        info = report.get(row, {'folder': gt_folder, 'missing': [], 'unmatched': []})
        out['methods'][row] = {'folder': info['folder'], 'n_images': len(per_image), 'means': means,
                               'missing': info['missing'], 'unmatched': info['unmatched'], 'per_image': per_image}
    return out


def _fmt(v):
    if v is None:
        return '–'
    if math.isinf(v):
        return 'inf'
    return f'{v:.2f}' if abs(v) >= 10 else f'{v:.4f}'


def markdown_table(result):
    """The summary as a Markdown table (arrows give each metric's direction), then the missing-image notes."""
    metrics = result['metrics']
    head = ['method', 'images'] + [f'{m} {"↓" if i["lower_better"] else "↑"}' for m, i in metrics.items()]
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '|'.join(['---'] + ['---:'] * (len(head) - 1)) + '|']
    for row, r in result['methods'].items():
        cells = [row, str(r['n_images'])] + [_fmt(r['means'].get(m)) for m in metrics]
        lines.append('| ' + ' | '.join(cells) + ' |')
    notes = []
    for row, r in result['methods'].items():
        if r['missing']:
            notes.append(f'- {row}: {len(r["missing"])} ground-truth image(s) have no match in {r["folder"]}: '
                         + ', '.join(r['missing'][:20]) + (' ...' if len(r['missing']) > 20 else ''))
        if r['unmatched']:
            notes.append(f'- {row}: {len(r["unmatched"])} image(s) without ground truth, not scored: '
                         + ', '.join(r['unmatched'][:20]) + (' ...' if len(r['unmatched']) > 20 else ''))
    return '\n'.join(lines + ([''] + notes if notes else [])) + '\n'


def _jsonable(obj):
    """Strict JSON: infinite PSNR (identical images) as the string "inf", NaN as null."""
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None if math.isnan(obj) else ('inf' if obj > 0 else '-inf')
    return obj


def write_reports(result, out_dir, formats=('md', 'csv', 'json')):
    """Write ``eval.md``, ``eval.csv`` (means), ``per_image.csv`` and ``eval.json`` (everything) to ``out_dir``."""
    os.makedirs(out_dir, exist_ok=True)
    written = []
    metrics = list(result['metrics'])
    if 'md' in formats:
        written.append(osp.join(out_dir, 'eval.md'))
        with open(written[-1], 'w', encoding='utf-8') as f:
            f.write(markdown_table(result))
    if 'csv' in formats:
        written.append(osp.join(out_dir, 'eval.csv'))
        with open(written[-1], 'w', newline='') as f:
            w = csv.writer(f)
            w.writerow(['method', 'images', 'missing'] + metrics)
            for row, r in result['methods'].items():
                w.writerow([row, r['n_images'], len(r['missing'])] + [r['means'].get(m, '') for m in metrics])
        written.append(osp.join(out_dir, 'per_image.csv'))
        with open(written[-1], 'w', newline='') as f:
            w = csv.writer(f)
            w.writerow(['method', 'image'] + metrics)
            for row, r in result['methods'].items():
                for name, values in r['per_image'].items():
                    w.writerow([row, name] + [values.get(m, '') for m in metrics])
    if 'json' in formats:
        written.append(osp.join(out_dir, 'eval.json'))
        with open(written[-1], 'w') as f:
            json.dump(_jsonable(result), f, indent=1)
    return written
