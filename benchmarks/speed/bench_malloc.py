"""Does glibc's allocator setting matter for CPU forwards? The same Lite0 forwards (batch 64,
fp32, channels-last, as ``camzoo bench`` runs them on CPU) in two fresh processes: glibc's
defaults, and ``MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=2147483647`` (glibc's
own environment variables: freed activations stay in the heap instead of being unmapped and
page-faulted in again by the next forward). Prints wall and system seconds per image of each and
their ratio, measured in one run, the two processes taking turns.

    python -m benchmarks.speed.bench_malloc [--batch 64] [--rounds 3] [--threads 2]
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys

from benchmarks._common import REPO, machine, parser

TUNED = {"MALLOC_MMAP_THRESHOLD_": "1073741824", "MALLOC_TRIM_THRESHOLD_": "2147483647"}


def child(batch: int, reps: int, threads: int) -> None:
    """One process: ``reps`` timed forwards after a warm-up; prints JSON seconds per image."""
    import time

    import torch

    import camzoo

    torch.set_num_threads(threads)
    bb = camzoo.load_backbone("efficientnet_lite0", device="cpu")
    x = torch.randn(batch, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        bb.model(x).softmax(1)
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        for _ in range(reps):
            bb.model(x).softmax(1)
        r1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    n = batch * reps
    print(json.dumps({"wall": (t1 - t0) / n, "sys": (r1.ru_stime - r0.ru_stime) / n}))


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--reps", type=int, default=4, help="timed forwards per process")
    ap.add_argument("--rounds", type=int, default=3, help="processes per setting, taking turns")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--child", action="store_true", help=argparse_hidden())
    a = ap.parse_args()
    if a.child:
        return child(a.batch, a.reps, a.threads)
    print(machine("cpu"))
    best = {}
    for r in range(a.rounds):
        for name, extra in (("glibc defaults", {}), ("MALLOC_*_THRESHOLD_", TUNED)):
            env = {k: v for k, v in os.environ.items() if k not in TUNED}
            out = subprocess.run([sys.executable, "-m", "benchmarks.speed.bench_malloc", "--child", "--batch",
                                  str(a.batch), "--reps", str(a.reps), "--threads", str(a.threads)],
                                 env={**env, **extra}, cwd=REPO, capture_output=True, text=True, check=True)
            got = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"round {r + 1} {name:20s} wall {1000 * got['wall']:.1f} ms/img, sys {1000 * got['sys']:.1f} ms/img")
            if name not in best or got["wall"] < best[name]["wall"]:
                best[name] = got
    d, t = best["glibc defaults"], best["MALLOC_*_THRESHOLD_"]
    print(f"best of {a.rounds}: defaults {1000 * d['wall']:.1f} ms/img (sys {1000 * d['sys']:.1f}), "
          f"tuned {1000 * t['wall']:.1f} ms/img (sys {1000 * t['sys']:.1f}): defaults / tuned = "
          f"{d['wall'] / t['wall']:.2f}x")


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
