"""Peak memory of one call, for the benchmarks.

CUDA: the allocator's peak above what was allocated before the call. CPU: the process's peak
resident memory (VmHWM, reset through /proc/self/clear_refs just before the calls) above its
resident memory then, measured in a fresh process (``python -m benchmarks.memory MODULE FACTORY
ARGS...``), where ``FACTORY(*ARGS)`` returns the function to measure; it is called once to warm
up (one-time allocations are not the call's; what it freed is returned to the system with glibc's
``malloc_trim``), then three times. The least peak of three fresh
processes is reported: glibc's allocator makes one process's peak vary by tens of percent.

``live=True`` runs the processes with ``MALLOC_MMAP_THRESHOLD_=65536``: every block of 64 KiB or
more is then its own mapping, returned to the system when freed, so the peak is that of the
memory in use (the tensors and the libraries' buffers), without what glibc's default (a
threshold that grows to the largest block freed, up to 32 MiB) keeps in its heaps between
calls. The default measure is what a process sees; the live one is what the computation needs.
"""
import importlib
import json
import os
import subprocess
import sys

import torch

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def _status_mib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"no {field} in /proc/self/status")


def peak_mib(module: str, factory: str, *args, live: bool = False) -> float:
    """Runs ``module.factory(*args)()`` in a fresh process and returns its peak memory in MiB
    (``live``: large blocks mapped and unmapped one by one, see the module's docstring)."""
    if torch.cuda.is_available():
        fn = getattr(importlib.import_module(module), factory)(*args)
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    peaks = []
    for _ in range(3):  # the allocator's history makes one process's peak vary by tens of percent: the least of 3
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536") if live else None
        out = subprocess.run([sys.executable, "-m", "benchmarks.memory", module, factory, json.dumps(list(args))],
                             capture_output=True, text=True, cwd=ROOT, check=True, env=env)
        peaks.append(float(out.stdout.strip().splitlines()[-1]))
    return min(peaks)


if __name__ == "__main__":
    sys.path.insert(0, ROOT)
    torch.set_num_threads(2)
    fn = getattr(importlib.import_module(sys.argv[1]), sys.argv[2])(*json.loads(sys.argv[3]))
    fn()  # warm-up: one-time allocations (autograd engine, FFT plans, thread pools) are not the call's
    try:  # ... but what the warm-up freed goes back to the system, so that the calls below must grow again
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets the peak resident set size (VmHWM) to the current one
    before = _status_mib("VmRSS")
    for _ in range(3):
        fn()
    print(max(_status_mib("VmHWM") - before, 0.0))
