"""How close is the estimate `camzoo bench` prints before a run to the time the run takes?

Runs each configuration once (in this process, fresh run directory) and reads back from its
``timings.json`` the estimate printed before the loop (``estimate.seconds``, from the probe) and
the measured evaluation (``loop_wall_s`` less the probe's own seconds); prints both, their ratio
(measured / estimated; the target is within a factor of 2) and the whole command's wall time
(model loading, tables, figures included, which the estimate leaves out).

Configurations:

- ``default``: a bare ``camzoo bench`` (the six sample photos, the quick preset);
- ``photos16``: ``camzoo bench --data ../shared/data/imagenet-samples --limit 16 --metrics all
  --preset quick --steps 32`` (16 labelled photos, the three papers' protocols; the full preset's
  Score-CAM over 1280 channels and 4,000 RISE masks would take over an hour on 2 CPU cores);
- ``scorecam`` (``--configs scorecam``): the same 16 photos with Score-CAM over every channel
  and 256 RISE masks (the maps priced by their forwards, not measured by the probe).

Usage (from the repository root)::

    python -m benchmarks.speed.estimate_accuracy                   # default, photos16
    python -m benchmarks.speed.estimate_accuracy --configs default,photos16,scorecam
"""
from __future__ import annotations

import json
import os
import tempfile
import time

from benchmarks._common import default_data, machine, parser, quiet


def configs(data: str) -> dict:
    """name -> BenchConfig keyword arguments."""
    photos = dict(data=data, limit=16, metrics="all", preset="quick", metric_options={"rise": {"steps": 32}})
    return {
        "default": {},
        "photos16": photos,
        "scorecam": {**photos, "methods": "gradcam,scorecam,rise", "options": {"rise": {"n_masks": 256}}},
    }


def measure(name: str, kw: dict, root: str) -> dict:
    """One run of ``kw``; its estimate and what it took."""
    from camzoo.bench import BenchConfig, run

    out = os.path.join(root, name)
    t = time.perf_counter()
    run(BenchConfig(**kw, out=out, progress=False), echo=quiet)
    wall = time.perf_counter() - t
    with open(os.path.join(out, "timings.json")) as f:
        tm = json.load(f)
    est = tm["estimate"]
    evaluated = tm["process"]["loop_wall_s"] - est["probe_s"]
    return {"name": name, "estimate": est["seconds"], "measured": evaluated, "probe": est["probe_s"],
            "wall": wall, "ratio": evaluated / est["seconds"]}


def main() -> int:
    ap = parser(__doc__)
    ap.add_argument("--configs", default="default,photos16")
    ap.add_argument("--data", default=default_data())
    a = ap.parse_args()
    print(f"machine: {machine('cpu')}")
    table = configs(a.data)
    rows = []
    with tempfile.TemporaryDirectory() as root:
        for name in a.configs.split(","):
            r = measure(name, table[name], root)
            rows.append(r)
            print(f"{name}: estimated {r['estimate']:.1f} s, measured {r['measured']:.1f} s "
                  f"(ratio {r['ratio']:.2f}; probe {r['probe']:.1f} s; whole command {r['wall']:.1f} s)",
                  flush=True)
    worst = max(max(r["ratio"], 1 / r["ratio"]) for r in rows)
    print(f"worst factor between estimate and measurement: {worst:.2f} (target: <= 2)")
    return 0 if worst <= 2 else 1


if __name__ == "__main__":
    raise SystemExit(main())
