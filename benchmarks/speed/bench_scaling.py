"""Images per second of one process vs N torchrun processes on the same images (gloo on CPU,
NCCL on GPUs), and the scaling efficiency, measured in one run of this script.

Each configuration is a real ``camzoo bench`` command in a fresh run directory:

- ``1 process``: ``python -m camzoo bench ...`` with ``OMP_NUM_THREADS=1`` (one core);
- ``N processes``: ``torchrun --standalone --nproc_per_node N -m camzoo bench ...`` with
  ``OMP_NUM_THREADS=1`` per process (one core each; ``--device cuda`` gives each its GPU).

For each it prints the engine's images/s -- images / the longest ``loop_wall_s`` of a
process (``timings.json``: the batch loop, from the first image to the last row stored) --
and the end-to-end images/s of the whole command (interpreter start, model load, the merge and
the tables included). Efficiency = (images/s with N) / (N x images/s with 1); target >= 0.85
on CPU with one core per process. The merged rows are compared with the one-process rows
(``python -m benchmarks.compare_runs``; floating-point only: the shards form other batches).

The two runs alternate ``--repeats`` times (a shared machine's speed drifts) and the best
of each is kept. The load average before and after is printed: with fewer idle cores than
processes the efficiency measures the other jobs, not camzoo.

Usage::

    python -m benchmarks.speed.bench_scaling                    # Lite0, 16 photos, 2 processes
    python -m benchmarks.speed.bench_scaling --images 32 --nproc 2 --repeats 2
    python -m benchmarks.speed.bench_scaling --device cuda --nproc 8 --images 512   # one node, 8 GPUs

(from the repository root).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

from benchmarks._common import REPO, Clock, add_amp, default_data, load_average, machine, parser


def bench_args(a, out):
    args = ["--backbone", a.backbone, "--methods", a.methods, "--steps", str(a.steps),
            "--batch-size", str(a.batch_size), "--out", out, "--no-progress"]
    if a.data:
        args += ["--data", a.data, "--limit", str(a.images), "--seed", "0"]
    if a.device:
        args += ["--device", a.device]
    if a.amp:
        args += ["--amp", a.amp]
    for o in a.opt:
        args += ["--opt", o]
    return args


def loop_seconds(out: str, nproc: int) -> float:
    """The longest engine loop of the run's processes (``timings*.json``)."""
    if nproc == 1:
        names = ["timings.json"]
    else:
        names = [f"timings.rank-{r}-of-{nproc}.json" for r in range(nproc)]
    secs = []
    for n in names:
        with open(os.path.join(out, n)) as f:
            secs.append(json.load(f)["process"]["loop_wall_s"])
    return max(secs)


def one(a, tmp, nproc: int, k: int):
    out = os.path.join(tmp, f"n{nproc}-{k}")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    if nproc == 1:
        cmd = [sys.executable, "-m", "camzoo", "bench", *bench_args(a, out)]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
               str(nproc), "-m", "camzoo", "bench", *bench_args(a, out)]
    with Clock() as t:
        p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return out, t.wall, loop_seconds(out, nproc)


def main() -> int:
    ap = parser(__doc__)
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--methods", default="gradcam,fakecam")
    ap.add_argument("--data", default=default_data())
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--device", default=None)
    add_amp(ap)
    ap.add_argument("--opt", action="append", default=[])
    ap.add_argument("--keep", default=None, help="keep the run directories here")
    a = ap.parse_args()
    n_img = a.images if a.data else 6
    load0 = load_average()
    with tempfile.TemporaryDirectory(dir=a.keep) as tmp:
        best = {1: None, a.nproc: None}
        for k in range(a.repeats):
            for n in (1, a.nproc):
                out, wall, loop = one(a, tmp, n, k)
                print(f"run {k}, {n} process(es): loop {loop:.2f} s, end to end {wall:.2f} s", flush=True)
                if best[n] is None or loop < best[n][2]:
                    best[n] = (out, wall, loop)
        load1 = load_average()
        cmp = subprocess.run([sys.executable, "-m", "benchmarks.compare_runs", best[1][0],
                              best[a.nproc][0], "--atol", "1e-5"], cwd=REPO, capture_output=True, text=True)
        (o1, w1, l1), (on, wn, ln) = best[1], best[a.nproc]
        print(f"\ncamzoo bench scaling: {a.backbone}, {n_img} images, methods {a.methods}, steps "
              f"{a.steps}, batch {a.batch_size}, device {a.device or 'default'}, OMP_NUM_THREADS=1 per process")
        print(f"load average before {load0[0]:.2f} {load0[1]:.2f}, after {load1[0]:.2f} {load1[1]:.2f}; "
              f"machine: {machine()}")
        print(f"{'':<14}{'engine img/s':>14}{'end-to-end img/s':>18}")
        print(f"{'1 process':<14}{n_img / l1:>14.3f}{n_img / w1:>18.3f}")
        print(f"{a.nproc} processes{'':<{max(0, 4 - len(str(a.nproc)))}}{n_img / ln:>14.3f}{n_img / wn:>18.3f}")
        print(f"efficiency (engine):     {l1 / (a.nproc * ln):.3f}")
        print(f"efficiency (end to end): {w1 / (a.nproc * wn):.3f}")
        print("merged rows vs one process: " + (cmp.stdout.strip().splitlines() or ["?"])[-1]
              + " (atol 1e-5)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
