"""Engine timing: a wall/CPU clock per named part, and the CPU allocator tuning."""
from __future__ import annotations

import os
import sys
import time
from collections import defaultdict
from typing import Dict, Tuple

import torch

from ..utils import synchronize


#: glibc's own environment variables with the effect of :func:`tune_cpu_allocator`, set before
#: the process starts (no code of camzoo's involved)
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "1073741824", "MALLOC_TRIM_THRESHOLD_": "2147483647"}


def malloc_env_set() -> bool:
    """True when the environment already tunes glibc's allocator (:data:`MALLOC_ENV`)."""
    return all(os.environ.get(k) for k in MALLOC_ENV)


def tune_cpu_allocator() -> bool:
    """Stop glibc from returning large blocks to the OS after every free (Linux only); only
    when asked (``BenchConfig(tune_malloc=True)``, ``camzoo bench --tune-malloc``).

    By default glibc serves every allocation above its mmap threshold with a fresh ``mmap`` and
    unmaps it on free, so each CPU forward of a large batch page-faults its activations in again:
    Lite0 at batch 64 spends ~17 ms/image of system time on it and runs ~1.9x slower
    (``python -m benchmarks.speed.bench_malloc``). Raising ``M_MMAP_THRESHOLD`` and
    ``M_TRIM_THRESHOLD`` keeps the freed memory in the heap for the next forward (peak memory
    is kept, not returned). It changes the allocator of the whole process, which is why it is
    an explicit option, off by default; the environment variables :data:`MALLOC_ENV` do the
    same without any call (glibc reads them at start-up).

    Returns:
        True when both settings were accepted.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return (libc.mallopt(m_mmap_threshold, 1 << 30) == 1
                and libc.mallopt(m_trim_threshold, (1 << 31) - 1) == 1)
    except (OSError, AttributeError):  # not glibc
        return False


class Clock:
    """Accumulates wall-clock and process-CPU seconds per named part of the engine."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.wall: Dict[str, float] = defaultdict(float)
        self.cpu: Dict[str, float] = defaultdict(float)

    def start(self) -> Tuple[float, float]:
        synchronize(self.device)
        return time.perf_counter(), time.process_time()

    def stop(self, key: str, t0: Tuple[float, float]) -> float:
        """Add the time since ``t0`` to ``key``; return the wall seconds."""
        synchronize(self.device)
        w = time.perf_counter() - t0[0]
        self.wall[key] += w
        self.cpu[key] += time.process_time() - t0[1]
        return w

    def to_dict(self) -> Dict[str, Dict[str, float]]:
        return {"wall_s": dict(self.wall), "cpu_s": dict(self.cpu)}
