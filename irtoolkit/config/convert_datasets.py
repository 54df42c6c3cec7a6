"""Upstream dataset sections converted into irtoolkit's datasets, with the pairing, padding and cropping of the upstream
class, so a converted recipe reads the data the upstream recipe reads.

Each class below was read for how it pairs LQ with GT, what it pads or cuts and which keys it reads (upstream
IRConStyle ``Dongqi-Fan/IRConStyle`` ``data/image_datasets.py`` at ``b3e193d``; ConStyle v2 ``Dongqi-Fan/ConStyle_v2``
at ``7960cee``; the Restormer fork ``swz30/Restormer`` ``basicsr/data/paired_image_dataset.py``).

IRConStyle (``model_type`` ``ConStyle`` / ``Origin``):

- ``Dataset_Paired``: by name (``filename_tmpl``); pads to a multiple of 8 in the test phase;
- ``Dataset_Derain``: a folder in sorted order, an LMDB by name; 8 in the test phase;
- ``Dataset_Derain_Maxim``: as ``Dataset_Derain``; 64 in the test phase (upstream's ``build_dataset`` omits it);
- ``Dataset_Dehaze``: sorted order, whatever the backend; 8 in the test phase;
- ``Dataset_Maxim``: by name; 64 in every phase;
- ``Dataset_Maxim_Dehaze``: sorted order; 64 in every phase;
- ``Dataset_GaussianDenoising``: GT only, Gaussian noise added; 8 in the val and test phases;
- ``Dataset_Maxim_GaussianDenoising``: GT only, Gaussian noise added; 64 in every phase.

ConStyle v2 (``model_type`` ``IRConStyle`` / ``ConStyle_v2``, or a dataset with ``mod``): outside training its
classes cut LQ and GT at the bottom and right to multiples of ``mod`` instead of padding: ``Dataset_Paired`` (by
name), ``Dataset_Non_Paired`` (sorted order), ``Dataset_GaussianDenoising``, ``Dataset_JPEG`` (GT only, JPEG at
``quality_factor``; a test set).

The Restormer fork (other model types): ``Dataset_PairedImage`` (by name) and ``Dataset_GaussianDenoising``: no
padding; ``geometric_augs`` (its 8 flips/rotations) -> ``use_hflip`` and ``use_rot`` (together the same 8, equally
likely).

Sorted order: the i-th file of the sorted LQ folder with the i-th of the sorted GT folder, names never compared,
both folders the same length (upstream's ``paired_paths_from_folder_dehaze``). Padding: reflection (the edge row not
repeated) at the bottom and right. Paired classes become ``PairedRestorationDataset`` (``pairing: name | sorted``,
``pad_multiple``, ``crop_multiple``), the others ``SyntheticDegradationDataset`` with a ``gaussian_noise`` (σ:
``sigma_type`` constant: ``sigma_range``; random: uniform in ``sigma_range``; choice: ``one_of`` the listed σ;
``sigma_test`` outside training) or ``jpeg`` degradation. ``pad_multiple`` reproduces upstream's test protocol:
metrics are measured on the padded image, as upstream's numbers are (irtoolkit's networks pad inside, so deleting it
measures the image itself).

Keys the upstream class does not read are dropped (reported); keys it reads that irtoolkit cannot honour
(``color: y``, ``meta_info_file``, ``in_ch: 1``, ``mean``/``std``, a missing σ, an LMDB for ``Dataset_Non_Paired``)
are reported as not mapped. ``Datasets_Paired`` (a typo in upstream's Restormer deblurring recipes, which upstream's
``build_dataset`` refuses) is read as ``Dataset_Paired``.
"""
from collections import namedtuple

from irtoolkit.config.options import DATASET_SCHEMA

__all__ = ['UpstreamDataset', 'IRCONSTYLE_DATASETS', 'V2_DATASETS', 'FORK_DATASETS', 'convert_datasets']

# kind: paired | noise | jpeg; folder / lmdb: how pairs are made (name | sorted; None: the class cannot read it);
# pad: the multiple LQ and GT are reflect-padded to in pad_phases; crop_mod: cut to `mod` outside training (v2)
UpstreamDataset = namedtuple('UpstreamDataset', 'kind folder lmdb pad pad_phases crop_mod',
                             defaults=('name', 'name', None, (), False))
EVERY_PHASE = ('train', 'val', 'test')
IRCONSTYLE_DATASETS = {
    'Dataset_Paired': UpstreamDataset('paired', pad=8, pad_phases=('test', )),
    'Dataset_Derain': UpstreamDataset('paired', 'sorted', 'name', 8, ('test', )),
    'Dataset_Derain_Maxim': UpstreamDataset('paired', 'sorted', 'name', 64, ('test', )),
    'Dataset_Dehaze': UpstreamDataset('paired', 'sorted', 'sorted', 8, ('test', )),
    'Dataset_Maxim': UpstreamDataset('paired', pad=64, pad_phases=EVERY_PHASE),
    'Dataset_Maxim_Dehaze': UpstreamDataset('paired', 'sorted', 'sorted', 64, EVERY_PHASE),
    'Dataset_GaussianDenoising': UpstreamDataset('noise', pad=8, pad_phases=('val', 'test')),
    'Dataset_Maxim_GaussianDenoising': UpstreamDataset('noise', pad=64, pad_phases=EVERY_PHASE),
}
V2_DATASETS = {
    'Dataset_Paired': UpstreamDataset('paired', crop_mod=True),
    'Dataset_Non_Paired': UpstreamDataset('paired', 'sorted', None, crop_mod=True),
    'Dataset_GaussianDenoising': UpstreamDataset('noise', crop_mod=True),
    'Dataset_JPEG': UpstreamDataset('jpeg', crop_mod=True),
}
FORK_DATASETS = {
    'Dataset_PairedImage': UpstreamDataset('paired'),
    'Dataset_GaussianDenoising': UpstreamDataset('noise'),
}
V1_MODEL_TYPES, V2_MODEL_TYPES = ('ConStyle', 'Origin'), ('IRConStyle', 'ConStyle_v2')
V2_ONLY = ('Dataset_Non_Paired', 'Dataset_JPEG', 'Dataset_train_ImageNet')
TYPOS = {'Datasets_Paired': 'Dataset_Paired'}
LOADER_KEYS = tuple(k for k in DATASET_SCHEMA if not k.startswith('re:'))
KEPT = {'paired': ('dataroot_gt', 'dataroot_lq', 'gt_size', 'use_hflip', 'use_rot', 'filename_tmpl'),
        'noise': ('dataroot_gt', 'gt_size', 'use_hflip', 'use_rot'), 'jpeg': ('dataroot_gt', )}
# read by an upstream class, not by irtoolkit's datasets
UNSUPPORTED = {'color': "irtoolkit's datasets read RGB; color: y (Y channel) is not supported",
               'meta_info_file': "irtoolkit's datasets read every image of the folder or LMDB; make a folder of the "
                                 'listed images',
               'mean': 'normalisation is not supported', 'std': 'normalisation is not supported'}


def _tables(datasets, model_type):
    """The dataset tables to look a class up in, first match wins: the recipe's own repository first."""
    sections = [d for d in datasets.values() if isinstance(d, dict)]
    v2 = model_type in V2_MODEL_TYPES or any('mod' in d or d.get('type') in V2_ONLY for d in sections)
    if v2:
        return V2_DATASETS, IRCONSTYLE_DATASETS, FORK_DATASETS
    if model_type in V1_MODEL_TYPES:
        return IRCONSTYLE_DATASETS, FORK_DATASETS
    return FORK_DATASETS, IRCONSTYLE_DATASETS


def _number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _drop_unread(where, d, kind, cls, report):
    for k in [k for k in d if k not in KEPT[kind] + LOADER_KEYS]:
        value = d.pop(k)
        if k in UNSUPPORTED and value is not None and not (k == 'color' and value != 'y'):
            report.unmapped.append(f'{where}.{k}: {UNSUPPORTED[k]}')
        else:
            report.change(f'{where}.{k}', f'dropped (not read by {cls})')


def _geometric_augs(where, d, report):
    if 'geometric_augs' in d:
        value = bool(d.pop('geometric_augs'))
        d.update(use_hflip=value, use_rot=value)
        report.change(f'{where}.geometric_augs', f'-> use_hflip: {value}, use_rot: {value}')


def _pairing(where, d, cls, spec, report):
    lmdb = (d.get('io_backend') or {}).get('type') == 'lmdb'
    pairing = spec.lmdb if lmdb else spec.folder
    if pairing is None:
        report.unmapped.append(f'{where}.io_backend: {cls} cannot read an LMDB (upstream raises); use the folders')
    elif pairing == 'sorted':
        d['pairing'] = 'sorted'
        report.change(f'{where}.pairing', f'sorted ({cls} pairs the i-th of the sorted LQ and GT '
                      f'{"keys" if lmdb else "files"}, names not compared)')
        if d.pop('filename_tmpl', '{}') not in ('{}', None):
            report.change(f'{where}.filename_tmpl', 'dropped (sorted pairing compares no names)')


def _sigma(where, d, phase, cls, report):
    """The ``gaussian_noise`` degradation upstream's ``sigma_*`` keys describe (None, reported, when they do not)."""
    kind, values, test = d.pop('sigma_type', None), d.pop('sigma_range', None), d.pop('sigma_test', None)
    if phase != 'train':
        if _number(test):
            return {'type': 'gaussian_noise', 'sigma': test}
        report.unmapped.append(f'{where}.sigma_test: {cls} needs a number here, got {test!r}')
        return None
    numbers = isinstance(values, (list, tuple)) and values and all(_number(v) for v in values)
    if kind == 'constant' and _number(values):
        return {'type': 'gaussian_noise', 'sigma': values}
    if kind == 'random' and numbers and len(values) == 2:
        return {'type': 'gaussian_noise', 'sigma': list(values)}
    if kind == 'choice' and numbers:
        return {'type': 'one_of', 'choices': [{'type': 'gaussian_noise', 'sigma': v} for v in values]}
    report.unmapped.append(f'{where}.sigma_type: {cls} needs constant with one σ, random with [low, high] or choice '
                           f'with a list in sigma_range; got {kind!r} with {values!r}')
    return None


def _degradation(where, d, phase, cls, spec, report):
    if spec.kind == 'jpeg':
        quality = d.pop('quality_factor', None)
        if not _number(quality):
            report.unmapped.append(f'{where}.quality_factor: {cls} needs a JPEG quality, got {quality!r}')
            return None
        return {'type': 'jpeg', 'quality': quality}
    in_ch = d.pop('in_ch', 3)
    if in_ch != 3:
        report.unmapped.append(f'{where}.in_ch: {in_ch} (grayscale): irtoolkit\'s datasets read RGB')
    return _sigma(where, d, phase, cls, report)


def _convert(key, d, cls, spec, report):
    where, phase = f'datasets.{key}', key.split('_')[0]
    d.pop('phase', None)
    mod = d.pop('mod', None)
    _geometric_augs(where, d, report)
    if spec.kind == 'paired':
        _drop_unread(where, d, spec.kind, cls, report)
        _pairing(where, d, cls, spec, report)
        d['type'] = 'PairedRestorationDataset'
        report.change(f'{where}.type', f'{cls} -> PairedRestorationDataset')
    else:
        degradation = _degradation(where, d, phase, cls, spec, report)
        _drop_unread(where, d, spec.kind, cls, report)
        d['type'] = 'SyntheticDegradationDataset'
        if degradation is not None:
            d['degradations'] = [degradation]
        report.change(f'{where}.type', f'{cls} -> SyntheticDegradationDataset with {degradation}')
    if spec.pad and phase in spec.pad_phases:
        d['pad_multiple'] = spec.pad
        report.change(f'{where}.pad_multiple', f'{spec.pad} (upstream pads LQ and GT so in this phase; metrics on the '
                      'padded image, as upstream\'s)')
    if spec.crop_mod and phase != 'train' and isinstance(mod, int) and mod > 1:
        d['crop_multiple'] = mod
        report.change(f'{where}.mod', f'-> crop_multiple: {mod} (LQ and GT cut to multiples of it, as upstream)')
    elif mod is not None:
        report.change(f'{where}.mod', f'dropped (not read by {cls} in this phase)')


def convert_datasets(opt, model_type, report):
    """Convert every ``datasets.*`` section of ``opt`` (in place) whose class is an upstream one; ``model_type`` is
    the recipe's model type before conversion; ``report`` has ``change(key, what)`` and an ``unmapped`` list."""
    datasets = opt.get('datasets') or {}
    tables = _tables(datasets, model_type)
    for key, d in datasets.items():
        if not isinstance(d, dict):
            continue
        where = f'datasets.{key}'
        if d.get('prefetch_mode') == 'cuda':
            del d['prefetch_mode']
            report.change(f'{where}.prefetch_mode', 'cuda dropped (irtoolkit loaders pin memory)')
        cls = d.get('type')
        if cls in TYPOS:
            report.change(f'{where}.type', f'{cls} read as {TYPOS[cls]} (a typo upstream\'s build_dataset refuses)')
            cls = TYPOS[cls]
        spec = next((t[cls] for t in tables if cls in t), None)
        if spec is not None:
            _convert(key, d, cls, spec, report)
