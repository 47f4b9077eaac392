"""Peak-memory and CPU-time measurement shared by the benchmarks (CPU, Linux).

Peak memory is the process's resident high-water mark (VmHWM), reset before every run through /proc/self/clear_refs,
minus the resident size when the run started. With MALLOC_MMAP_THRESHOLD_=65536 (`ensure_mmap_threshold`) large
buffers are returned to the OS when freed, so each run's own peak is measured, not the allocator's leftovers.
"""
from __future__ import annotations

import gc
import os
import sys
import time

import torch


def ensure_mmap_threshold() -> None:
    """Re-exec this script once with MALLOC_MMAP_THRESHOLD_ set (glibc reads it at start-up only)."""
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") != "65536":
        os.execve(sys.executable, [sys.executable] + sys.argv, {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"})


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
