"""Every training sample read through one guard: its randomness tied to the sample and the epoch, bad samples named.

* **Randomness per sample.** Training samplers yield ``(index, epoch)``; the guard seeds Python's, NumPy's and
  torch's generators from ``(seed, epoch, index)`` before the dataset reads and augments the sample (and puts the
  process's own streams back afterwards). A sample's crop and flips therefore do not depend on which loader
  process reads it: exact resume holds with workers, and with another ``num_worker_per_gpu`` after resume.
* **Bad samples.** A corrupt or unreadable image or LMDB record becomes one line naming the dataset's option key,
  the sample and the file or key (:class:`BadSampleError`), raised in the loader worker and reported by the main
  process. ``datasets.<name>.bad_samples: skip`` reads the next index instead, logs the name and counts it; more than
  ``bad_samples_max_fraction`` of the dataset bad (counted per loader process) stops the run.
"""
import logging
import random

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from irtoolkit.utils.errors import UserError

__all__ = ['BadSampleError', 'SampleGuard', 'EpochTagged']
logger = logging.getLogger('irtoolkit')


class BadSampleError(UserError):
    """A sample that cannot be read. Re-raised by a DataLoader in the main process, it still prints its one line
    (the loader adds the worker's traceback to the message; only its last line is kept)."""

    def __str__(self):
        text = super().__str__()
        if text.startswith('Caught '):  # DataLoader's re-raise: "Caught ... Original Traceback ... <Class>: <msg>"
            last = [ln for ln in text.splitlines() if ln.strip()][-1]
            text = last.split('BadSampleError: ', 1)[-1]
        return text


def _sample_seed(seed, epoch, index):
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


class SampleGuard(Dataset):
    """``dataset`` read through the guard; other attributes (``opt``, ``make_batch_sampler`` ...) pass through."""

    def __init__(self, dataset, key, policy='error', max_fraction=0.01, seed=0):
        self.dataset, self.key, self.policy, self.max_fraction, self.seed = dataset, key, policy, max_fraction, seed
        self.bad = set()

    def __len__(self):
        return len(self.dataset)

    def __getattr__(self, name):
        if name == 'dataset':  # not set yet (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, item):
        index, epoch = item if isinstance(item, tuple) else (item, None)
        if epoch is None:
            return self._read(index)
        saved = random.getstate(), np.random.get_state(), torch.get_rng_state()
        s = _sample_seed(self.seed, epoch, index)
        random.seed(s)
        np.random.seed(s)
        torch.manual_seed(s)
        try:
            return self._read(index)
        finally:
            random.setstate(saved[0])
            np.random.set_state(saved[1])
            torch.set_rng_state(saved[2])

    def _read(self, index):
        n = len(self.dataset)
        for step in range(n):
            i = (index + step) % n
            try:
                return self.dataset[i]
            except Exception as err:  # any failure to read or decode: the file is named, never a bare traceback
                message = self._describe(i, err)
                if self.policy != 'skip':
                    raise BadSampleError(message) from err
                self.bad.add(i)
                logger.warning(f'{message}; skipped ({len(self.bad)} bad so far)')
                if len(self.bad) > self.max_fraction * n:
                    raise BadSampleError(f'{self.key}: {len(self.bad)} of {n} samples bad, more than '
                                         f'bad_samples_max_fraction {self.max_fraction}; last: {message}') from err
        raise BadSampleError(f'{self.key}: no readable sample')

    def _describe(self, i, err):
        paths = getattr(self.dataset, 'paths', None)  # basicsr's datasets keep their file names here
        files = ''
        if isinstance(paths, list) and i < len(paths):
            entry = paths[i]
            files = ' (' + ', '.join(map(str, entry.values() if isinstance(entry, dict) else [entry])) + ')'
        detail = str(err).splitlines()[0] if str(err) else type(err).__name__
        return f'{self.key}: sample {i}{files}: {type(err).__name__}: {detail}'


class EpochTagged(Sampler):
    """A sampler or batch sampler whose indices come out as ``(index, epoch)`` for :class:`SampleGuard`; the rest
    of its surface (``set_epoch``, ``len``) is the wrapped one's."""

    def __init__(self, sampler):
        self.sampler = sampler

    def set_epoch(self, epoch, start=0):
        self.sampler.set_epoch(epoch, start)

    def __iter__(self):
        epoch = self.sampler.epoch
        for item in self.sampler:
            yield [(i, epoch) for i in item] if isinstance(item, list) else (item, epoch)

    def __len__(self):
        return len(self.sampler)
