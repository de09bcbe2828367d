"""Overhead of the metric protocols over the forwards they need, measured in one run.

For each metric family (``lcam``, ``adcc``, ``insertion``, ``deletion``) this prints::

    ratio = time of the protocol call / (forwards it made x best per-image forward time)

where the best per-image forward time is the fastest of a few timed forwards of
``eval_batch_size`` images (channels_last, inference mode) of the same backbone, and each
protocol call is timed as the best of ``--repeats`` calls after a warm-up call (glibc's
allocator tuned as in ``camzoo bench``). Both wall-clock
and process CPU time are reported (on a shared, loaded machine CPU time is the steadier).
Families with few forwards (``lcam``, ``adcc`` on a handful of images) run below the best batch
size, so their ratios include small-batch inefficiency; the engine packs them across a batch. A ratio of 1.00
means the protocol costs exactly its forwards; the excess is input construction, softmax and
bookkeeping. It also prints ``build-only``: the same insertion/deletion calls with a
parameter-free null model, per perturbed image, divided by the forward time (the pure
construction overhead), and the same for ``lcam`` with the classifier's normalization called as
a function and fused into one pass (``mean_std``, what the engine does). ``lcam fused`` is the
protocol call as the engine makes it.

Usage::

    python -m benchmarks.speed.bench_metrics                     # Lite0, 2 photos, steps 64
    python -m benchmarks.speed.bench_metrics --images 4 --steps 224 --eval-batch-size 64

(from the repository root).
"""
from __future__ import annotations


import torch

from benchmarks._common import (add_threads, add_tune_malloc, best_of, machine, parser, set_threads,
                                tune_malloc)


class _Null(torch.nn.Module):
    """Parameter-free stand-in: touches one value per image, returns [N, 1000] logits."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(x.shape[0], 1000, device=x.device) + x[:, :1, 0, 0]


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--eval-batch-size", type=int, default=64)
    add_threads(ap)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=3, help="timed calls per measurement (best kept)")
    add_tune_malloc(ap)
    args = ap.parse_args()
    set_threads(args.threads)
    tune_malloc(args.device, args)  # as camzoo bench does on CPU

    import camzoo
    from camzoo.data.images import sample_photos
    from camzoo.metrics.scorer import Scorer
    from camzoo.metrics.adcc import adcc_scores
    from camzoo.metrics import insertion_deletion
    from camzoo.metrics.lcam_protocol import masked_confidence

    dev = torch.device(args.device)
    bb = camzoo.load_backbone(args.backbone, device=dev)
    photos = sample_photos()
    x = torch.stack([bb.preprocess(photos[i % len(photos)][1]) for i in range(args.images)]).to(dev)
    B, bs = x.shape[0], args.eval_batch_size
    with torch.inference_mode():
        probs = torch.softmax(bb.model(x.contiguous(memory_format=torch.channels_last)).float(), 1)
    c = probs.argmax(1)
    Y = probs[torch.arange(B, device=dev), c]
    V = camzoo.explain("gradcam", bb, x, c)

    # best per-image forward time at eval_batch_size
    xb = torch.randn(bs, 3, *x.shape[2:], device=dev).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        best, best_cpu = (t / bs for t in best_of(lambda: bb.model(xb), max(3, args.repeats), dev))

    def timed(fn):
        """(wall, cpu) seconds of fn(): best of ``--repeats`` calls after one warm-up call."""
        return best_of(fn, args.repeats, dev)

    calls = 1 + args.repeats  # timed() calls fn this often; forwards per call = count / calls
    rows = []
    x01 = bb.denormalize(x).clamp(0, 1)
    s = Scorer(bb.model, bs)
    dt = timed(lambda: masked_confidence(s, x01, V, c, bb.normalize))
    rows.append(("lcam", dt, s.counts["lcam"] // calls))
    s = Scorer(bb.model, bs)
    dt = timed(lambda: masked_confidence(s, x01, V, c, bb.normalize, mean_std=(bb.mean, bb.std)))
    rows.append(("lcam fused", dt, s.counts["lcam"] // calls))
    s = Scorer(bb.model, bs)
    dt = timed(lambda: adcc_scores(s, x, V, c, Y, lambda E, cc: V))  # V' cost is the explainer's
    rows.append(("adcc", dt, s.counts["adcc"] // calls))
    for mode in ("insertion", "deletion"):
        s = Scorer(bb.model, bs)
        dt = timed(lambda: insertion_deletion(s, x, V, c, steps=args.steps, modes=(mode,)))
        rows.append((mode, dt, s.counts[mode] // calls))
    null = Scorer(_Null(), bs)
    dt_null = timed(lambda: insertion_deletion(null, x, V, c, steps=args.steps))
    n_null = null.total // calls
    null_lcam = {}
    for name, ms in (("generic normalize", None), ("fused, as the engine", (bb.mean, bb.std))):
        sn = Scorer(_Null(), bs)
        null_lcam[name] = (timed(lambda: masked_confidence(sn, x01, V, c, bb.normalize, mean_std=ms)),
                           sn.total // calls)

    print(f"backbone {args.backbone}, {B} images {tuple(x.shape[2:])}, steps {args.steps}, "
          f"eval batch {bs}, device {dev}, threads {torch.get_num_threads()}")
    print(f"machine: {machine(dev)}")
    print(f"best forward: {best * 1e3:.2f} ms/image wall, {best_cpu * 1e3:.2f} ms/image CPU, "
          f"at batch {bs}")
    print(f"{'family':<10} {'forwards':>8} {'wall s':>8} {'ratio':>6} {'CPU s':>8} {'CPU ratio':>9}")
    for fam, (dt, dc), n in rows:
        print(f"{fam:<10} {n:>8d} {dt:>8.2f} {dt / (n * best):>6.3f} {dc:>8.2f} "
              f"{dc / (n * best_cpu):>9.3f}")
    per, per_cpu = dt_null[0] / n_null, dt_null[1] / n_null
    print(f"build-only (null model): {per * 1e3:.3f} ms wall per perturbed image = "
          f"{per / best:.3f} x one forward ({per_cpu / best_cpu:.3f} in CPU time)")
    for name, ((dw, dc), n) in null_lcam.items():
        print(f"lcam build-only (null model), {name}: {dw / n * 1e3:.3f} ms wall per masked image "
              f"= {dw / n / best:.3f} x one forward ({dc / n / best_cpu:.3f} in CPU time)")


if __name__ == "__main__":
    main()
