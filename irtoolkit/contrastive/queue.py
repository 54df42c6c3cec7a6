"""A FIFO queue of detached embeddings (MoCo-style), used to enlarge the set of negatives.

CDD-GAN's abstract speaks of "a queue of challenging negative adversaries"; whether past generated negatives
are kept is not stated (notes §2.2, [U]), so the queue is optional (``size: 0`` disables it). The storage is a
buffer, so it is saved with the module that owns it and never receives gradients.
"""
import torch
from torch import nn

from irtoolkit.utils.dist import all_gather_cat

__all__ = ['EmbeddingQueue']


class EmbeddingQueue(nn.Module):
    """Ring buffer of ``size`` vectors of dimension ``dim``.

    ``push(x)``: (N, D) vectors from every rank (gathered when distributed), stored detached (oldest
    overwritten). ``get()``: (n_filled, D) in storage
    order. ``len(queue)`` is the number of stored vectors.
    """

    def __init__(self, size, dim):
        super().__init__()
        self.size, self.dim = int(size), int(dim)
        self.register_buffer('data', torch.zeros(self.size, self.dim))
        self.register_buffer('ptr', torch.zeros((), dtype=torch.long))
        self.register_buffer('filled', torch.zeros((), dtype=torch.long))

    def __len__(self):
        return int(self.filled)

    @torch.no_grad()
    def push(self, x):
        if self.size == 0:
            return
        # every rank stores every rank's vectors: the queues stay equal across ranks (see utils.dist.wrap_ddp)
        x = all_gather_cat(x.detach().reshape(-1, self.dim).contiguous()).to(self.data.dtype)
        if x.shape[0] >= self.size:
            x = x[-self.size:]
        n = x.shape[0]
        idx = (self.ptr + torch.arange(n, device=x.device)) % self.size
        self.data[idx] = x
        self.ptr.copy_((self.ptr + n) % self.size)
        self.filled.copy_(torch.clamp(self.filled + n, max=self.size))

    def get(self):
        return self.data[:int(self.filled)]
