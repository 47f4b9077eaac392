"""Peak-memory and CPU-time measurement shared by the benchmarks (CPU, Linux).

Peak memory is the process's resident high-water mark (VmHWM), reset before every run through /proc/self/clear_refs,
minus the resident size when the run started. With MALLOC_MMAP_THRESHOLD_=65536 (`ensure_mmap_threshold`) large
buffers are returned to the OS when freed, so each run's own peak is measured, not the allocator's leftovers.

That setting makes every large buffer a fresh mapping whose pages fault in on first touch (a 8192x64 -> 512 Linear:
22.5 ms with it, 10.7 ms without, 1 thread), a cost neither engine pays in normal use. Timed runs therefore run
under `reusing_allocator` (glibc's own behaviour once warm: large freed buffers kept for reuse) and memory is
measured in separate runs under the 64 KiB threshold.
"""
from __future__ import annotations

import ctypes
import gc
import os
from contextlib import contextmanager
import sys
import time

import torch


def ensure_mmap_threshold() -> None:
    """Re-exec this script once with MALLOC_MMAP_THRESHOLD_ set (glibc reads it at start-up only)."""
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") != str(SMALL_MMAP_THRESHOLD):
        os.execve(sys.executable, [sys.executable] + sys.argv,
                  {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(SMALL_MMAP_THRESHOLD)})


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters (malloc.h)
SMALL_MMAP_THRESHOLD = 65536


def _libc():
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


@contextmanager
def reusing_allocator(mmap_threshold: int = 32 * 2 ** 20, trim_threshold: int = 2 ** 31):
    """glibc keeps freed buffers up to `mmap_threshold` bytes in its heap for reuse and does not return the heap
    to the OS while timing (the steady state its dynamic threshold reaches in a long run); afterwards the 64 KiB
    threshold of the memory runs is restored and the heap trimmed, so later peak measurements start from what is
    in use. Without glibc (another libc) this does nothing."""
    libc = _libc()
    if libc is not None:
        libc.mallopt(M_MMAP_THRESHOLD, mmap_threshold)
        libc.mallopt(M_TRIM_THRESHOLD, trim_threshold)
    try:
        yield
    finally:
        if libc is not None:
            libc.mallopt(M_MMAP_THRESHOLD, SMALL_MMAP_THRESHOLD)
            libc.mallopt(M_TRIM_THRESHOLD, SMALL_MMAP_THRESHOLD * 2)
            gc.collect()
            libc.malloc_trim(0)


def rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    raise RuntimeError(field)


def measure(fn) -> tuple[float, float]:
    """(CPU seconds of this process, extra peak MiB) of one call under inference mode."""
    _, cpu, peak = measure_wall(fn)
    return cpu, peak


def measure_wall(fn) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds of this process, extra peak MiB) of one call under inference mode.

    With more than one thread CPU time also counts the worker threads' spinning at barriers: wall time is then
    the figure that matters (and the noisier one on a shared machine)."""
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the high-water mark to the current RSS
    base = rss_kib("VmRSS")
    w0, t0 = time.perf_counter(), time.process_time()  # CPU time: robust to other load on a shared machine
    with torch.inference_mode():
        out = fn()
    dt, wall = time.process_time() - t0, time.perf_counter() - w0
    peak = (rss_kib("VmHWM") - base) / 1024
    del out
    return wall, dt, peak
