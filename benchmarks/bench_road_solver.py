"""ROAD imputation alone: time, iterations and error against tolerance, measured in one run.

The systems are the protocol's own: Grad-CAM maps (Lite0, default layer) of ``--images``
sample photos at 224x224, MoRF and LeRF at 10..90 % (18 systems per image), solved in chunks of
``--solve-batch``, on each solver path of ``--paths`` (``c``: the compiled CPU kernels, ``torch``:
the torch operators). The reference is the same solver run on float64 input to ``tol = 1e-12``
(a float64 iterative refinement; tests/test_road.py checks the solver against scipy's exact
``spsolve``). The (path, tolerance) settings take turns within each of ``--repeats`` passes
(best pass kept). Prints, per setting: CPU ms per system, CG iterations per chunk, the largest
|imputed - reference| over all pixels and the ratio of CPU time to the first path's at the
default tolerance.

Usage::

    python benchmarks/bench_road_solver.py                 # 4 photos, 72 systems, 1 thread
    python benchmarks/bench_road_solver.py --tols 1e-5,1e-6,1e-7
    python benchmarks/bench_road_solver.py --paths c --tols 1e-6 --solve-batch 4
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
    ap.add_argument("--paths", default="c,torch",
                    help="solver paths: c (compiled kernels, where available), torch")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from camzoo.engine.timing import tune_cpu_allocator

    tune_cpu_allocator()
    import camzoo
    from camzoo.data.images import sample_photos
    from camzoo.metrics import road_kernels
    from camzoo.metrics.road import (DEFAULT_FRACTIONS, DEFAULT_TOL, ORDERS, impute,
                                     random_fields, removal_masks)

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
    paths = [p for p in args.paths.split(",") if p != "c" or road_kernels.available()]
    if "c" in args.paths.split(",") and "c" not in paths:
        print(f"(no compiled kernels here: {road_kernels.error()})")
    settings = [(p, tol) for p in paths for tol in tols]
    for p, tol in settings:
        impute(*chunks[0], tol=tol, kernels=p == "c")  # warm-up
    # the settings take turns within each pass (this VM's speed drifts between passes)
    best = {s: float("inf") for s in settings}
    its: dict = {}
    errs: dict = {}
    for _ in range(args.repeats):
        for s in settings:
            p, tol = s
            t0, out, its[s] = time.process_time(), [], []
            for xx, rr in chunks:
                info: dict = {}
                out.append(impute(xx, rr, tol=tol, info=info, kernels=p == "c"))
                its[s].append(info["inner"])
            best[s] = min(best[s], time.process_time() - t0)
            errs[s] = float((torch.cat(out).double() - ref).abs().max())
    rows = [(s, best[s] / len(masks) * 1e3, sum(its[s]) / len(its[s]), errs[s]) for s in settings]
    base = next((r[1] for r in rows if r[0][1] == DEFAULT_TOL), rows[0][1])
    print(f"{'path':>6} {'tol':>8} {'ms/system (CPU)':>16} {'CG its/chunk':>13} {'max |err|':>10} "
          f"{'time / first':>13}")
    for (p, tol), ms, it, err in rows:
        print(f"{p:>6} {tol:8.0e} {ms:16.1f} {it:13.1f} {err:10.2e} {ms / base:13.2f}")


if __name__ == "__main__":
    main()
