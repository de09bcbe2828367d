"""ROAD imputation alone: time, iterations and error against tolerance, measured in one run.

The systems are the protocol's own: Grad-CAM maps (Lite0, default layer) of ``--images``
sample photos at 224x224, MoRF and LeRF at 10..90 % (18 systems per image), solved in chunks of
``--solve-batch`` by the torch solver (the only one). The reference is the same solver run on
float64 input to ``tol = 1e-12`` (a float64 iterative refinement; tests/metrics/test_road.py
checks the solver against scipy's exact ``spsolve``). The tolerances take turns within each of
``--repeats`` passes (best pass kept). Prints, per tolerance: CPU ms per system, CG iterations
per chunk, the largest |imputed - reference| over all pixels and the ratio of CPU time to the
default tolerance's.

Usage::

    python -m benchmarks.speed.bench_road_solver                 # 4 photos, 72 systems, 1 thread
    python -m benchmarks.speed.bench_road_solver --tols 1e-5,1e-6,1e-7
    python -m benchmarks.speed.bench_road_solver --tols 1e-6 --solve-batch 4 --threads 2
"""
from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--solve-batch", type=int, default=8)
    ap.add_argument("--tols", default="1e-5,3e-6,1e-6")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3, help="timed passes (best kept)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from camzoo.engine.timing import tune_cpu_allocator

    tune_cpu_allocator()
    import camzoo
    from camzoo.data.images import sample_photos
    from camzoo.metrics.road.curves import DEFAULT_FRACTIONS
    from camzoo.metrics.road.solver import DEFAULT_TOL, impute
    from camzoo.metrics.road.masks import ORDERS, random_fields, removal_masks

    bb = camzoo.load_backbone("efficientnet_lite0")
    photos = [img for _, img in sample_photos()]
    n = args.images
    x = torch.stack([bb.preprocess(photos[i % len(photos)]) for i in range(n)])
    with torch.inference_mode():
        c = bb.model(x).argmax(1)
    V = camzoo.explain("gradcam", bb, x, c)
    x01 = bb.denormalize(x).clamp(0, 1)
    P, (H, W) = len(DEFAULT_FRACTIONS), x.shape[-2:]
    ties = random_fields(0, len(ORDERS) * P, (H, W), 1e-4)
    masks = torch.cat([removal_masks(V, DEFAULT_FRACTIONS, o, ties[k * P:(k + 1) * P])
                       .reshape(n * P, H, W) for k, o in enumerate(ORDERS)])
    imgs = torch.arange(n).repeat_interleave(P).repeat(len(ORDERS))
    xs = x01[imgs]
    ch = args.solve_batch
    chunks = [(xs[a:a + ch], masks[a:a + ch]) for a in range(0, len(masks), ch)]
    ref = torch.cat([impute(xx.double(), rr, tol=1e-12) for xx, rr in chunks])
    print(f"{len(masks)} systems ({n} photos x {P} fractions x 2 orders), {H}x{W}, chunks of {ch}, "
          f"{torch.get_num_threads()} thread(s); default tol {DEFAULT_TOL:g}")
    tols = [float(t) for t in args.tols.split(",")]
    for tol in tols:
        impute(*chunks[0], tol=tol)  # warm-up
    # the tolerances take turns within each pass (this VM's speed drifts between passes)
    best = {tol: float("inf") for tol in tols}
    its: dict = {}
    errs: dict = {}
    for _ in range(args.repeats):
        for tol in tols:
            t0, out, its[tol] = time.process_time(), [], []
            for xx, rr in chunks:
                info: dict = {}
                out.append(impute(xx, rr, tol=tol, info=info))
                its[tol].append(info["inner"])
            best[tol] = min(best[tol], time.process_time() - t0)
            errs[tol] = float((torch.cat(out).double() - ref).abs().max())
    rows = [(tol, best[tol] / len(masks) * 1e3, sum(its[tol]) / len(its[tol]), errs[tol])
            for tol in tols]
    base = next((r[1] for r in rows if r[0] == DEFAULT_TOL), rows[0][1])
    print(f"{'tol':>8} {'ms/system (CPU)':>16} {'CG its/chunk':>13} {'max |err|':>10} "
          f"{'time / default':>15}")
    for tol, ms, it, err in rows:
        print(f"{tol:8.0e} {ms:16.1f} {it:13.1f} {err:10.2e} {ms / base:15.2f}")


if __name__ == "__main__":
    main()
