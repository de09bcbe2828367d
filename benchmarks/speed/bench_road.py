"""ROAD: camzoo's batched protocol vs pytorch-grad-cam's ``ROADCombined``, measured in one run.

Same backbone, images, maps (camzoo Grad-CAM at the default layer), classes and removal
fractions (10 %, ..., 90 %, MoRF and LeRF) on both sides. Prints, per image:

- camzoo ``road`` (imputation + forwards through the counting ``Scorer``): wall and CPU seconds,
  and the share spent imputing;
- the forward-pass limit: the same number of forwards (``2 * P`` per image) timed alone at the
  protocol's batch size (best of ``--repeats``), and camzoo / limit;
- pytorch-grad-cam ``ROADCombined(percentiles=10..90)`` on the normalized tensor (as its docs
  use it: noise 0.01 in normalized space, per-image scipy ``spsolve``, one forward batch per
  percentile), and its time / camzoo's.

The three take turns in each of ``--rounds`` rounds (this VM's speed drifts by tens of per
cent within minutes); each round's ratios are printed, then the best time of each.

Targets (CPU): camzoo >= 5x faster than pytorch-grad-cam, and camzoo <= 1.3x the forward limit
(imputation under a third of the forwards). The two do not compute the same numbers (noise
space and level, percentile thresholds; see docs/metrics.md), so only times are compared.

Usage::

    python -m benchmarks.speed.bench_road                              # Lite0, 2 photos, 224 px
    python -m benchmarks.speed.bench_road --backbone resnet50 --images 2
    python -m benchmarks.speed.bench_road --skip-theirs --images 4     # camzoo only
"""
from __future__ import annotations

import argparse
import copy
import time

import torch


def _clock():
    return time.perf_counter(), time.process_time()


def _since(t):
    w, c = _clock()
    return w - t[0], c - t[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--weights", default=None, help="state_dict file, 'random', or the default")
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--eval-batch-size", type=int, default=18)
    ap.add_argument("--solve-batch", type=int, default=None, help="systems imputed together")
    ap.add_argument("--tol", type=float, default=None,
                    help="imputation tolerance (default: the protocol's DEFAULT_TOL)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = leave as is)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=3,
                    help="timed forward batches per round (best kept)")
    ap.add_argument("--rounds", type=int, default=2,
                    help="rounds of camzoo, forward limit and pytorch-grad-cam in turn (best kept)")
    ap.add_argument("--skip-theirs", action="store_true", help="do not run pytorch-grad-cam")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cpu":
        from camzoo.engine.timing import tune_cpu_allocator

        tune_cpu_allocator()  # camzoo's work, not glibc's page faults (speed/bench_malloc.py)

    import camzoo
    from camzoo.data.images import sample_photos
    from camzoo.metrics.scorer import Scorer
    from camzoo.metrics.road.curves import DEFAULT_FRACTIONS, road_scores
    from camzoo.metrics.road.solver import DEFAULT_TOL

    bb = camzoo.load_backbone(args.backbone, weights=args.weights, device=args.device)
    photos = [img for _, img in sample_photos()]
    n = args.images
    x = torch.stack([bb.preprocess(photos[i % len(photos)]) for i in range(n)]).to(bb.device)
    with torch.inference_mode():
        c = bb.model(x).argmax(1)
    V = camzoo.explain("gradcam", bb, x, c)
    x01 = bb.denormalize(x).clamp(0, 1)
    P = len(DEFAULT_FRACTIONS)
    tol = DEFAULT_TOL if args.tol is None else args.tol
    print(f"backbone {bb.name}, {n} image(s) {tuple(x.shape[-2:])}, {P} fractions x 2 orders, "
          f"eval batch {args.eval_batch_size}, {torch.get_num_threads()} thread(s), device {bb.device}, "
          f"imputation tol {tol:g}")

    # warm-up (allocator, oneDNN / cuDNN plans)
    road_scores(Scorer(bb.model, args.eval_batch_size), x01[:1], V[:1], c[:1], bb.normalize,
                fractions=DEFAULT_FRACTIONS[:2], solve_batch=args.solve_batch, tol=tol)
    xb = x.repeat((args.eval_batch_size + n - 1) // n, 1, 1, 1)[:args.eval_batch_size]
    xb = xb.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        bb.model(xb)
    metric = None
    if not args.skip_theirs:
        import pytorch_grad_cam.metrics.road as pgc
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

        # as a user passes the model: a contiguous-format copy (Module.to converts in place,
        # and camzoo's own rounds keep the channels-last weights load_backbone gives)
        plain = copy.deepcopy(bb.model).to(memory_format=torch.contiguous_format)
        targets = [ClassifierOutputSoftmaxTarget(int(k)) for k in c]
        cams = V.cpu().numpy()
        metric = pgc.ROADCombined(percentiles=[round(100 * p) for p in DEFAULT_FRACTIONS])

    # the three measurements take turns in each round (this VM's speed drifts); best kept
    best = {k: (float("inf"), float("inf")) for k in ("ours", "imp", "lim", "theirs")}
    nfw = 2 * P * n
    for rnd in range(args.rounds):
        timing: dict = {}
        sc = Scorer(bb.model, args.eval_batch_size)
        t = _clock()
        ours = road_scores(sc, x01, V, c, bb.normalize, solve_batch=args.solve_batch, tol=tol,
                           timing=timing)
        got = {"ours": _since(t), "imp": (timing["impute"], timing["impute_cpu"])}
        assert sc.counts["road"] == nfw, sc.counts
        # the forward-pass limit: the same number of forwards alone, at the same batch size
        lim = (float("inf"), float("inf"))
        with torch.inference_mode():
            for _ in range(args.repeats):
                t = _clock()
                torch.softmax(bb.model(xb).float(), 1)
                w, cc = _since(t)
                lim = (min(lim[0], w), min(lim[1], cc))
        got["lim"] = (lim[0] / xb.shape[0] * nfw, lim[1] / xb.shape[0] * nfw)
        if metric is not None:
            t = _clock()
            theirs = metric(x, cams, targets, plain)
            got["theirs"] = _since(t)
        line = (f"round {rnd + 1}: camzoo {got['ours'][0] / n:.3f} s/img wall, limit "
                f"{got['lim'][0] / n:.3f}, camzoo / limit {got['ours'][0] / got['lim'][0]:.2f}")
        if metric is not None:
            line += (f", pytorch-grad-cam {got['theirs'][0] / n:.3f}, theirs / camzoo "
                     f"{got['theirs'][0] / got['ours'][0]:.1f}x")
        print(line)
        for k, (w, cc) in got.items():
            best[k] = (min(best[k][0], w), min(best[k][1], cc))

    (w_ours, c_ours), (imp, imp_c), (lim_w, lim_c) = best["ours"], best["imp"], best["lim"]
    print(f"best of {args.rounds} round(s):")
    print(f"camzoo road      : {w_ours / n:8.3f} s/img wall  {c_ours / n:8.3f} s/img CPU  "
          f"(imputation {imp / n:.3f} s/img wall = {imp / w_ours:.0%}, {imp_c / n:.3f} CPU = "
          f"{imp_c / c_ours:.0%}; {nfw // n} forwards/img)")
    print(f"forward limit    : {lim_w / n:8.3f} s/img wall  {lim_c / n:8.3f} s/img CPU  "
          f"-> camzoo / limit = {w_ours / lim_w:.2f} wall, {c_ours / lim_c:.2f} CPU; "
          f"imputation / forwards = {imp / lim_w:.2f} wall, {imp_c / lim_c:.2f} CPU")
    print(f"camzoo ROAD-MoRF(p) {ours['road_morf'].mean():.4f} ROAD-LeRF(p) {ours['road_lerf'].mean():.4f} "
          f"ROAD(p) {ours['road'].mean():.4f} (probability of c; pytorch-grad-cam's scale)")
    if metric is not None:
        w_th, c_th = best["theirs"]
        print(f"pytorch-grad-cam : {w_th / n:8.3f} s/img wall  {c_th / n:8.3f} s/img CPU  "
              f"-> theirs / camzoo = {w_th / w_ours:.1f}x wall, {c_th / c_ours:.1f}x CPU "
              f"(ROADCombined mean {float(theirs.mean()):.4f}, a different definition)")


if __name__ == "__main__":
    main()
