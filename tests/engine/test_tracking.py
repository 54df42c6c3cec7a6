"""Weights & Biases tracking with the real ``wandb`` package, offline (no network): the run's training scalars,
validation metrics and a sample image are read back from the offline run file; ``--auto_resume`` continues the same
run id; without the package, asking for it is one line."""
import glob
import math
import struct
import sys
import time

import pytest
from irtk_testutils import shrink_recipe, write_options

from irtoolkit.config.run import RunContext
from irtoolkit.engine.runner import train as run_train
from irtoolkit.engine.tracking import build_tracker
from irtoolkit.utils.errors import OptionError

wandb = pytest.importorskip('wandb')


def read_history(run_file, expect=1, timeout=30):
    """The history rows of an offline run file, once it holds ``expect`` rows: W&B's service process may still be
    writing when ``finish()`` has returned."""
    deadline = time.time() + timeout
    rows = parse_history(run_file)
    while len(rows) < expect and time.time() < deadline:
        time.sleep(0.5)
        rows = parse_history(run_file)
    return rows


def parse_history(run_file):
    """The history rows of an offline ``run-<id>.wandb`` file (LevelDB-log blocks of protobuf records)."""
    from wandb.proto import wandb_internal_pb2 as pb
    data, pos, buf, rows = open(run_file, 'rb').read(), 7, b'', []  # 7: the ':W&B' header, magic and version
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack('<IHB', data[pos:pos + 7])
        buf, pos = buf + data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 0 and length == 0:
            break
        if kind in (1, 4):  # a full record, or the last piece of one
            record = pb.Record()
            record.ParseFromString(buf)
            buf = b''
            if record.WhichOneof('record_type') == 'history':
                rows.append({item.key or '/'.join(item.nested_key): item.value_json for item in record.history.item})
    return rows


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv('WANDB_MODE', 'offline')
    monkeypatch.setenv('WANDB_SILENT', 'true')


def test_offline_run_logs_scalars_metrics_images_and_resumes_the_same_run(tiny_data, in_tmp, offline):
    opt = shrink_recipe(tiny_data, 'wb', 10)
    opt['logger'].update(print_freq=2, wandb={'project': 'irtoolkit-test'})
    path = write_options(opt, in_tmp / 'wb.yml')
    run_train(['-opt', path])
    exp = in_tmp / 'experiments' / 'wb'
    run_id = (exp / 'wandb_id').read_text()
    files = glob.glob(str(exp / 'wandb' / f'offline-run-*-{run_id}' / f'run-{run_id}.wandb'))
    assert len(files) == 1, list(exp.rglob('*.wandb'))
    rows = read_history(files[0], expect=5)
    losses = [(int(r['_step']), float(r['losses/l_pixel'])) for r in rows if 'losses/l_pixel' in r]
    assert [s for s, _ in losses] == [2, 4, 6, 8, 10] and all(math.isfinite(v) for _, v in losses)
    psnr = [float(r['metrics/tiny_val/psnr']) for r in rows if 'metrics/tiny_val/psnr' in r]
    assert len(psnr) == 1 and 10 < psnr[0] < 60  # validation at iteration 10
    image = next(r for r in rows if 'samples/tiny_val/path' in r)
    assert image['samples/tiny_val/_type'] == '"image-file"' and int(image['samples/tiny_val/width']) == 3 * 64
    png = next(exp.glob('wandb/*/files/media/images/samples/tiny_val_10_*.png'))
    assert png.stat().st_size > 5000  # three 64 px photos, not a blank strip
    run_train(['-opt', path, '--auto_resume', '--force_yml', 'train.total_iter=14',
               'train.scheduler.periods=[14]'])
    assert (exp / 'wandb_id').read_text() == run_id
    resumed = sorted(glob.glob(str(exp / 'wandb' / f'offline-run-*-{run_id}' / f'run-{run_id}.wandb')))
    assert len(resumed) == 2
    steps = [int(r['_step']) for r in read_history(resumed[-1], expect=2) if 'losses/l_pixel' in r]
    assert steps == [12, 14]


def test_missing_package_is_one_line(tiny_data, monkeypatch):
    monkeypatch.setitem(sys.modules, 'wandb', None)  # import wandb -> ImportError
    opt = {'name': 'x', 'logger': {'wandb': {'project': 'p'}}}
    run = RunContext(opt_path='x.yml', paths={'experiments_root': '.'})
    with pytest.raises(OptionError, match=r"^x\.yml: logger\.wandb: the wandb package is not installed") as err:
        build_tracker(opt, run, resumed=False)
    assert '\n' not in str(err.value)
