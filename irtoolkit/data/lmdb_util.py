"""Write, read and verify image LMDBs in BasicSR's layout.

Layout (what basicsr's ``paired_paths_from_lmdb`` and ``FileClient('lmdb')`` read): a folder ``<name>.lmdb``
with ``data.mdb`` (key = file stem, ASCII; value = PNG bytes, OpenCV BGR channel order) and ``meta_info.txt``,
one line per record, ``<key>.png (<h>,<w>,<c>) <png compression level>``.

Reading goes through :func:`irtoolkit.data.lmdb_env.open_lmdb`, which opens each path once per process (py-lmdb >= 2
refuses a second ``lmdb.open`` of the same environment) and again in each forked DataLoader worker.
"""
import os
import os.path as osp
import re
import shutil

import cv2
import numpy as np

from irtoolkit.data.lmdb_env import close_lmdb, open_lmdb
from irtoolkit.utils.errors import UserError

__all__ = ['LmdbRecordError', 'encode_png', 'decode_image', 'write_lmdb', 'read_meta_info', 'LmdbImageReader',
           'verify_lmdb', 'files_to_lmdb', 'verify_against_files', 'tile_boxes']

_KEY_RE = re.compile(r'^[\x21-\x7e]+$')  # printable ASCII without spaces: meta_info.txt is space-separated
_META_RE = re.compile(r'^(\S+)\.png \((\d+),(\d+),(\d+)\) (\d+)$')


class LmdbRecordError(UserError, KeyError):
    """A missing key or an undecodable record; the message names the dataset, the key and the database."""

    def __str__(self):  # KeyError would print the message in quotes
        return str(self.args[0]) if self.args else ''


def encode_png(img, compress_level=1):
    """PNG bytes of a uint8/uint16 image (BGR or gray), as stored in the LMDB."""
    # Z_RLE: on photos it gave smaller files and faster encoding and decoding than zlib's default strategy
    # (384 px crop: 259 vs 282 KB, decode 6.4 vs 10.9 ms at level 1). Level 0 stores raw rows: ~4x faster decode.
    ok, buf = cv2.imencode('.png', img, [cv2.IMWRITE_PNG_COMPRESSION, int(compress_level), cv2.IMWRITE_PNG_STRATEGY,
                                         cv2.IMWRITE_PNG_STRATEGY_RLE])
    if not ok:
        raise ValueError(f'OpenCV could not encode a {img.dtype} {img.shape} image as PNG')
    return buf.tobytes()


def decode_image(buf):
    """Decode stored bytes to the array OpenCV gives (BGR, uint8/uint16, channels unchanged); None if invalid."""
    if not buf:
        return None
    return cv2.imdecode(np.frombuffer(buf, np.uint8), cv2.IMREAD_UNCHANGED)


def _shape3(img):
    return (img.shape[0], img.shape[1], 1 if img.ndim == 2 else img.shape[2])


def _forget_env(path):
    # open_lmdb caches one environment per (pid, path); a database rebuilt with --force in the same process
    # must not be read through the stale environment of the deleted files.
    close_lmdb(path)


class _GrowingWriter:
    """Batched puts into an LMDB environment whose map doubles whenever it is full (databases of unknown size)."""

    def __init__(self, path, commit_every):
        import lmdb
        self.full_error, self.map_size, self.commit_every = lmdb.MapFullError, 1 << 30, commit_every
        self.env = lmdb.open(path, map_size=self.map_size, subdir=True, lock=True, readahead=False, meminit=False)
        self.batch = []

    def put(self, key, value):
        self.batch.append((key, value))
        if len(self.batch) >= self.commit_every:
            self.flush()

    def flush(self):
        while True:
            try:
                with self.env.begin(write=True) as txn:
                    for k, v in self.batch:
                        txn.put(k, v)
                break
            except self.full_error:  # grow the map and redo the batch
                self.map_size *= 2
                self.env.set_mapsize(self.map_size)
        self.batch.clear()


def write_lmdb(path, records, compress_level=1, force=False, progress=None, commit_every=256):
    """Write ``records`` (an iterable of ``(key, image_array)`` or ``(key, png_bytes, shape)``) to ``path``.

    The database is built in ``<path>.partial`` and renamed at the end, so an interrupted run never leaves a
    half-written database under the final name (with ``force``, the old one is kept until then). Refuses an
    existing ``path`` unless ``force``. ``progress`` is
    an optional callable called once per record. Returns the number of records.
    """
    path = osp.abspath(os.fspath(path)).rstrip('/')
    if not path.endswith('.lmdb'):
        raise ValueError(f'LMDB path must end with .lmdb: {path}')
    if osp.exists(path) and not force:
        raise FileExistsError(f'{path} already exists; pass --force (force=True) to overwrite it')
    tmp = path + '.partial'
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    writer = _GrowingWriter(tmp, commit_every)
    try:
        meta = _put_records(writer, records, compress_level, progress, path)
        writer.flush()
    except BaseException:  # a failed or interrupted write leaves nothing behind
        writer.env.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    writer.env.close()
    with open(osp.join(tmp, 'meta_info.txt'), 'w') as f:
        f.writelines(meta)
    if osp.exists(path):  # --force: the old database goes only once the new one is complete
        _forget_env(path)
        shutil.rmtree(path)
    os.replace(tmp, path)
    return len(meta)


def _put_records(writer, records, compress_level, progress, path):
    """Encode and put every record (keys checked: printable ASCII, unique); returns the meta_info lines."""
    meta, seen = [], set()
    for rec in records:
        if len(rec) == 2:
            key, img = rec
            buf, shape = encode_png(img, compress_level), _shape3(img)
        else:
            key, buf, shape = rec
        if not _KEY_RE.match(key) or key in seen:
            raise ValueError(f'{path}: key {key!r} is ' + ('a duplicate' if key in seen else
                                                           'not printable ASCII without spaces'))
        seen.add(key)
        writer.put(key.encode('ascii'), buf)
        meta.append(f'{key}.png ({shape[0]},{shape[1]},{shape[2]}) {compress_level}\n')
        if progress is not None:
            progress()
    return meta


def read_meta_info(path):
    """``[(key, (h, w, c)), ...]`` from ``<path>/meta_info.txt`` in file order."""
    meta = osp.join(path, 'meta_info.txt')
    if not osp.isfile(meta):
        raise FileNotFoundError(f'{meta} not found (every irtoolkit/basicsr LMDB has one; rebuild with '
                                'tools/create_lmdb.py)')
    out = []
    with open(meta) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            m = _META_RE.match(line.strip())
            if m is None:
                raise ValueError(f'{meta}:{n}: expected "<key>.png (h,w,c) <level>", got {line.strip()!r}')
            out.append((m.group(1), tuple(int(m.group(i)) for i in (2, 3, 4))))
    return out


class LmdbImageReader:
    """Keys and decoded images of one LMDB; errors name ``dataset``, the key and the database path."""

    def __init__(self, path, dataset='dataset'):
        self.path = osp.abspath(os.fspath(path)).rstrip('/')
        self.dataset = dataset
        open_lmdb(self.path)  # fail now, with the path, if it is not a database
        self.meta = dict(read_meta_info(self.path))
        self.keys = list(self.meta)

    def get_bytes(self, key):
        with open_lmdb(self.path).begin(write=False) as txn:
            buf = txn.get(key.encode('ascii'))
        if buf is None:
            raise LmdbRecordError(f'{self.dataset}: key {key!r} not found in LMDB {self.path}')
        return buf

    def read_raw(self, key):
        """The stored image as OpenCV decodes it (BGR, uint8/uint16, channels unchanged)."""
        buf = self.get_bytes(key)
        img = decode_image(buf)
        if img is None:
            raise LmdbRecordError(f'{self.dataset}: record {key!r} in LMDB {self.path} is corrupt '
                                  f'({len(buf)} bytes do not decode as an image)')
        return img

    def __len__(self):
        return len(self.keys)


def verify_lmdb(path, expected=None, max_report=20):
    """Check every record of ``path`` decodes and matches ``meta_info.txt``; return a list of problems.

    ``expected`` (optional) maps key -> source image array or callable returning it; then the key sets must be
    equal and every decoded record must equal its source pixel for pixel (PNG is lossless).
    """
    import lmdb
    path = osp.abspath(os.fspath(path)).rstrip('/')
    problems = []
    try:
        meta = read_meta_info(path)
    except (FileNotFoundError, ValueError) as e:
        return [str(e)]
    reader = LmdbImageReader(path, dataset=osp.basename(path))
    with open_lmdb(path).begin(write=False) as txn:
        stored = {k.decode('ascii', 'replace') for k, _ in txn.cursor()}
    keys = [k for k, _ in meta]
    if set(keys) != stored or len(keys) != len(stored):
        extra, missing = sorted(stored - set(keys)), sorted(set(keys) - stored)
        problems.append(f'{path}: {len(stored)} records but {len(keys)} meta_info lines '
                        f'(not in meta_info: {extra[:max_report]}; missing records: {missing[:max_report]})')
    if expected is not None and set(expected) != set(keys):
        problems.append(f'{path}: {len(keys)} keys but the source has {len(expected)} '
                        f'(only in LMDB: {sorted(set(keys) - set(expected))[:max_report]}; '
                        f'only in source: {sorted(set(expected) - set(keys))[:max_report]})')
    for key, shape in meta:
        if key not in stored:
            continue
        try:
            img = reader.read_raw(key)
        except (LmdbRecordError, lmdb.Error, cv2.error) as e:
            problems.append(str(e))
            continue
        if _shape3(img) != shape:
            problems.append(f'{path}: record {key!r} decodes to {_shape3(img)} but meta_info says {shape}')
        elif expected is not None and key in expected:
            src = expected[key]
            src = src() if callable(src) else src
            if src.shape != img.shape or src.dtype != img.dtype or not np.array_equal(src, img):
                problems.append(f'{path}: record {key!r} differs from its source image')
        if len(problems) >= max_report:
            problems.append(f'{path}: stopped after {max_report} problems')
            break
    return problems


def tile_boxes(h, w, tile, step):
    """Top-left corners of ``tile`` x ``tile`` sub-images every ``step`` px, the last row/column flush with the
    border so that nothing is lost (BasicSR's sub-image extraction). One box covering all if the image is small."""
    if not tile or (h <= tile and w <= tile):
        return [(0, 0, h, w)]
    step = step or tile
    ys = list(range(0, max(h - tile, 0) + 1, step))
    xs = list(range(0, max(w - tile, 0) + 1, step))
    if ys[-1] != max(h - tile, 0):
        ys.append(h - tile)
    if xs[-1] != max(w - tile, 0):
        xs.append(w - tile)
    return [(y, x, min(tile, h), min(tile, w)) for y in ys for x in xs]


def _read_encode(path, compress_level, tile=None, step=None):
    """``[(key_suffix, png_bytes, shape), ...]`` of one image file: the image, or its sub-images ``_sNNN``."""
    img = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ValueError(f'cannot read image {path}')
    if not tile:
        return [('', encode_png(img, compress_level), _shape3(img))]
    out = []
    for n, (y, x, th, tw) in enumerate(tile_boxes(img.shape[0], img.shape[1], tile, step)):
        sub = np.ascontiguousarray(img[y:y + th, x:x + tw])
        out.append((f'_s{n:03d}', encode_png(sub, compress_level), _shape3(sub)))
    return out


def files_to_lmdb(files, out, compress_level=1, workers=4, force=False, desc=None, progress=True, tile=None,
                  step=None):
    """Write ``files`` (``[(key, image_path), ...]``) to the LMDB ``out``, reading and PNG-encoding in
    ``workers`` threads (OpenCV releases the GIL) while the main thread writes in order. With ``tile``, each
    image is stored as ``tile`` px sub-images every ``step`` px under keys ``<key>_sNNN`` (large training
    images: a crop then reads a small record instead of decoding a whole 2K frame). Returns the record count."""
    from concurrent.futures import ThreadPoolExecutor
    from tqdm import tqdm
    out = osp.abspath(os.fspath(out)).rstrip('/')
    if osp.exists(out) and not force:  # before reading anything
        raise FileExistsError(f'{out} already exists; pass --force (force=True) to overwrite it')
    bar = tqdm(total=len(files), desc=desc or osp.basename(out), unit='img', disable=not progress, leave=False)
    chunk = max(1, workers) * 32  # bounded read-ahead: memory stays small on sets of millions of images

    def records(pool):
        for start in range(0, len(files), chunk):
            part = files[start:start + chunk]
            for (key, _), recs in zip(part, pool.map(lambda kp: _read_encode(kp[1], compress_level, tile, step),
                                                     part)):
                for suffix, buf, shape in recs:
                    yield key + suffix, buf, shape
                bar.update()

    try:
        with ThreadPoolExecutor(max(1, workers)) as pool:
            return write_lmdb(out, records(pool), compress_level, force)
    finally:
        bar.close()


def verify_against_files(out, files, max_report=20, tile=None, step=None):
    """:func:`verify_lmdb` of ``out`` against its source ``[(key, image_path), ...]`` (keys, shapes, pixels),
    sub-images included when the database was written with ``tile``/``step``."""
    if not tile:
        expected = {key: (lambda p=path: cv2.imread(p, cv2.IMREAD_UNCHANGED)) for key, path in files}
        return verify_lmdb(out, expected, max_report)
    from functools import lru_cache

    @lru_cache(maxsize=2)  # meta_info lists a source's sub-images together: each source is decoded once
    def source(path):
        img = cv2.imread(path, cv2.IMREAD_UNCHANGED)
        if img is None:
            raise ValueError(f'cannot read source image {path}')
        return img

    expected, problems = {}, []
    for key, path in files:
        try:
            h, w = source(path).shape[:2]
        except ValueError as e:
            problems.append(str(e))
            continue
        for n, (y, x, th, tw) in enumerate(tile_boxes(h, w, tile, step)):
            expected[f'{key}_s{n:03d}'] = lambda p=path, b=(y, x, th, tw): source(p)[b[0]:b[0] + b[2], b[1]:b[1] + b[3]]
    return problems + verify_lmdb(out, expected, max_report)
