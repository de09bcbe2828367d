"""Engine timing: a wall/CPU clock per named part, and the CPU allocator tuning."""
from __future__ import annotations

import sys
import time
from collections import defaultdict
from typing import Dict, Tuple

import torch

from ..utils import synchronize


def tune_cpu_allocator() -> bool:
    """Stop glibc from returning large blocks to the OS after every free (Linux only).

    By default glibc serves every allocation above its mmap threshold (at most 32 MB) with a
    fresh ``mmap`` and unmaps it on free, so each CPU forward of a large batch page-faults its
    activations in again: measured on Lite0 at batch 64, ~20 ms/image of system time on top of
    ~30 ms/image of compute. Raising ``M_MMAP_THRESHOLD`` and ``M_TRIM_THRESHOLD`` keeps the
    freed memory in the heap for the next forward (peak memory is kept, not returned).
    Process-wide; :func:`run` calls it for CPU runs (``BenchConfig.tune_malloc``).

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
