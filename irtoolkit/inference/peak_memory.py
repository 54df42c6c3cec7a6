"""Peak resident memory of one forward pass, measured in a fresh process (used by ``irtk-complexity``).

The worker (``python -m irtoolkit.inference.peak_memory SPEC``) builds the network and its (1, C, H, W) input,
runs one warm-up forward (so that loading kernels and libraries on first use is not counted), returns freed memory
to the kernel (``malloc_trim``), resets the process's resident-memory high-water mark (``/proc/self/clear_refs``,
value 5, Linux >= 4.0), runs the measured forward and keeps its output, then reads the high-water mark
(``VmHWM`` of /proc/self/status). The forward's peak memory is that mark minus the resident size at the reset:
activations, workspaces and the output as the kernel sees them (memory glibc keeps for reuse is counted; this is
what a process needs, not what tensors hold). VmHWM is read rather than ``getrusage``'s ``ru_maxrss`` because it
is the value the reset acts on (``ru_maxrss`` also folds in a maximum the kernel keeps per process).

Where the mark cannot be reset (not Linux, or /proc not writable) the result is the rise of ``ru_maxrss`` over
its value with the network built and warmed up, which undercounts when that earlier peak was higher; ``method`` in
the result says which was used.

The allocator is set as ``irtk-infer`` runs on the CPU (:func:`irtoolkit.utils.memory.keep_freed_memory`), and the
thread count as given.
"""
import gc
import json
import os
import resource
import subprocess
import sys

__all__ = ['peak_forward_memory', 'measure']

RESET_METHOD = ('resident high-water mark (VmHWM) of a fresh process, reset (/proc/self/clear_refs 5) after a warm-up '
                'forward, minus the resident size at the reset')
DELTA_METHOD = 'rise of ru_maxrss over the built network (high-water mark not resettable here: may undercount)'


def _maxrss_bytes():
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == 'darwin' else rss * 1024  # Linux reports KiB, macOS bytes


def _release_freed_memory():
    gc.collect()
    try:
        import ctypes
        ctypes.CDLL('libc.so.6').malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _high_water_mark_bytes():
    """VmHWM of /proc/self/status (this mm's peak resident size), None where there is none."""
    try:
        with open('/proc/self/status', encoding='ascii') as f:
            for line in f:
                if line.startswith('VmHWM:'):
                    return int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError):
        pass
    return None


def _reset_high_water_mark():
    """Set VmHWM to the current resident size; True when that worked (checked, not assumed)."""
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
    except OSError:
        return False
    return _high_water_mark_bytes() is not None


def measure(spec):
    """Run in the worker process: ``spec`` = {net, size [H, W], channels, threads, plugins, base_dir}. Returns
    {base_rss_bytes, peak_rss_bytes, forward_peak_bytes, method}."""
    import torch

    from irtoolkit.inference.complexity import build_for_inference, input_channels
    from irtoolkit.utils.memory import keep_freed_memory
    from irtoolkit.utils.registry import load_plugins

    torch.set_num_threads(int(spec['threads']))
    keep_freed_memory()
    load_plugins(spec.get('plugins'), base_dir=spec.get('base_dir'))
    net = build_for_inference(spec['net'])
    h, w = spec['size']
    x = torch.rand(1, spec.get('channels') or input_channels(net), h, w)
    with torch.inference_mode():
        net(x)  # warm-up: first-use loading of kernels is not the forward's memory
        _release_freed_memory()
        reset = _reset_high_water_mark()
        read = _high_water_mark_bytes if reset else _maxrss_bytes
        base = read()
        out = net(x)
        peak = read()
    del out
    return {'base_rss_bytes': base, 'peak_rss_bytes': peak, 'forward_peak_bytes': max(0, peak - base),
            'method': RESET_METHOD if reset else DELTA_METHOD}


def peak_forward_memory(net_opt, size, threads=1, channels=None, plugins=None, base_dir=None, timeout=None):
    """Measure one forward of ``net_opt`` (options as built for inference) at ``size`` = (H, W) in a fresh Python
    process; returns :func:`measure`'s dict. A failing worker raises RuntimeError with its last error line."""
    spec = {'net': net_opt, 'size': list(size), 'channels': channels, 'threads': threads, 'plugins': plugins,
            'base_dir': base_dir}
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    proc = subprocess.run([sys.executable, '-m', 'irtoolkit.inference.peak_memory', json.dumps(spec)],
                          capture_output=True, text=True, env=env, timeout=timeout)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        err = (proc.stderr.strip().splitlines() or ['no output'])[-1]
        raise RuntimeError(f'peak-memory worker for {net_opt.get("type")} failed (exit {proc.returncode}): {err}')
    return json.loads(lines[-1])


if __name__ == '__main__':
    print(json.dumps(measure(json.loads(sys.argv[1]))))
