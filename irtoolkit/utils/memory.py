"""The CPU memory allocator setting shared by training (``train.keep_freed_memory``) and tiled inference."""
import sys

__all__ = ['keep_freed_memory']

_MALLOC_TUNED = False


def keep_freed_memory():
    """glibc returns every freed block above 128 KiB to the kernel (mmap/munmap) and trims the heap top; torch's
    CPU allocator frees each large activation after use, so every training step and every tile of a tiled inference
    maps, zero-fills and unmaps its activations again, in system time (measured, with the commands, in
    docs/performance.md). Keep freed memory in the process instead, for reuse; peak RSS grows a little with
    fragmentation (tiled 2048x2048: 1.50 -> 1.68 GiB; a NAFNet training step: +0.2 %; docs/performance.md). Used by
    CPU training (``train.keep_freed_memory``) and tiled inference. Linux/glibc only; once per process, not undone.
    Can go if torch's CPU allocator caches (as its CUDA one does)."""
    global _MALLOC_TUNED
    if _MALLOC_TUNED or not sys.platform.startswith('linux'):
        return
    try:
        import ctypes
        libc = ctypes.CDLL('libc.so.6')
        m_trim_threshold, m_mmap_max = -1, -4  # mallopt parameters (malloc.h)
        libc.mallopt(m_mmap_max, 0)  # large blocks from the heap too (an mmap threshold is capped at 32 MiB)
        libc.mallopt(m_trim_threshold, 1 << 31)
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass
    _MALLOC_TUNED = True
