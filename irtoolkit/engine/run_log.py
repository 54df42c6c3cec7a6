"""Log file, console, TensorBoard and the terminal progress bar; and reading the loss curves back from a log."""
import datetime
import logging
import os
import re
import sys
import time

from tqdm import tqdm

_LOGGER_NAME = 'irtoolkit'


def get_logger(log_file=None, rank=0, level=logging.INFO):
    """The 'irtoolkit' logger: console on rank 0 (tqdm-safe) and, when given, a log file on rank 0."""
    logger = logging.getLogger(_LOGGER_NAME)
    if rank != 0:
        logger.setLevel(logging.ERROR)
        return logger
    logger.setLevel(level)
    logger.propagate = False
    fmt = logging.Formatter('%(asctime)s %(levelname)s: %(message)s')
    if not any(isinstance(h, TqdmHandler) for h in logger.handlers):
        h = TqdmHandler()
        h.setFormatter(fmt)
        logger.addHandler(h)
    if log_file and not any(getattr(h, 'baseFilename', None) == os.path.abspath(log_file) for h in logger.handlers):
        for h in [h for h in logger.handlers if isinstance(h, logging.FileHandler)]:
            logger.removeHandler(h)
            h.close()
        fh = logging.FileHandler(log_file, 'a')
        fh.setFormatter(fmt)
        logger.addHandler(fh)
    return logger


class TqdmHandler(logging.StreamHandler):
    """Console handler that prints above an active tqdm bar instead of through it."""

    def __init__(self):
        super().__init__(sys.stdout)

    def emit(self, record):
        try:
            tqdm.write(self.format(record), file=sys.stdout)
        except Exception:  # never let logging kill a run
            self.handleError(record)


def init_tb_logger(log_dir):
    from torch.utils.tensorboard import SummaryWriter
    return SummaryWriter(log_dir=log_dir)


class TrainProgress:
    """Formats BasicSR-style iteration lines, writes scalars to TensorBoard and drives a tqdm bar with ETA."""

    def __init__(self, opt, start_iter, tb_logger, logger, show_bar, tracker=None):
        self.name, self.total, self.tracker = opt['name'], opt['train']['total_iter'], tracker
        self.print_freq = opt['logger']['print_freq']
        self.tb, self.logger = tb_logger, logger
        self.start_iter, self.start_time = start_iter, time.time()
        self.bar = tqdm(total=self.total, initial=start_iter, unit='it', dynamic_ncols=True, desc=self.name,
                        disable=not show_bar, file=sys.stderr)

    def update(self, current_iter, epoch, lrs, logs, iter_time, data_time):
        self.bar.update(1)
        if logs:
            self.bar.set_postfix({k: f'{v:.3e}' for k, v in list(logs.items())[:4]}, refresh=False)
        if current_iter % self.print_freq != 0:
            return
        done = current_iter - self.start_iter
        eta = (time.time() - self.start_time) / max(done, 1) * (self.total - current_iter)
        msg = (f'[{self.name[:5]}..][epoch:{epoch:3d}, iter:{current_iter:8,d}, lr:(' +
               ','.join(f'{lr:.3e}' for lr in lrs) + ')] ' +
               f'[eta: {datetime.timedelta(seconds=int(eta))}, time (data): {iter_time:.3f} ({data_time:.3f})] ' +
               ' '.join(f'{k}: {v:.4e}' for k, v in logs.items()))
        self.logger.info(msg)
        if self.tb is not None:
            for k, v in logs.items():
                self.tb.add_scalar(f'losses/{k}' if k.startswith('l_') else k, v, current_iter)
            for i, lr in enumerate(lrs):
                self.tb.add_scalar(f'lr/{i}', lr, current_iter)
        if self.tracker is not None:
            scalars = {f'losses/{k}' if k.startswith('l_') else k: v for k, v in logs.items()}
            self.tracker.log({**scalars, **{f'lr/{i}': lr for i, lr in enumerate(lrs)}}, current_iter)

    def close(self):
        self.bar.close()


_ITER = re.compile(r'\[epoch:\s*\d+, iter:\s*([\d,]+)')  # the runner's iteration lines only
_LOSS = re.compile(r'(?<!\w)(l_\w+): ([-+0-9.eE]+|nan|inf)')


def parse_log(paths):
    """{loss name: ([iters], [values])} from the runner's iteration lines of one log or several (a run and its
    resumed continuation, in order)."""
    curves = {}
    lines = []
    for path in [paths] if isinstance(paths, str) else paths:
        with open(path, encoding='utf-8') as f:
            lines.extend(f)
    for line in lines:
        m = _ITER.search(line)
        if not m:
            continue
        it = int(m.group(1).replace(',', ''))
        for name, val in _LOSS.findall(line):
            xs, ys = curves.setdefault(name, ([], []))
            xs.append(it)
            ys.append(float(val))
    return curves
