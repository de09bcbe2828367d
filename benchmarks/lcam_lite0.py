"""L-CAM on the embedded EfficientNet-Lite0: train, evaluate against other CAMs, time inference.

1. Inference cost: L-CAM map per image vs one plain forward of the backbone at the same batch
   size (target <= 1.1x), measured in this run (median of interleaved repetitions).
2. Training: L-CAM-Img, L-CAM-Fm and their CE-only ablations (L-CAM-Img*, L-CAM-Fm*) on
   ../shared/data/imagenette-224 with model-truth labels, an 80/20 split by image.
3. Evaluation with camzoo.bench.run: Grad-CAM, Grad-CAM++, Score-CAM, Fake-CAM and the
   four heads on the held-out 20 % under every protocol (lcam, adcc, rise), and on
   ../shared/data/imagenet-samples (classes the heads never trained on).

Full configuration (GPU; what the paper would do, 25 epochs is Lite0's default schedule)::

    python benchmarks/lcam_lite0.py --epochs 25 --out results/lcam_lite0_full

CPU-sized configuration (minutes to an hour on 2 cores)::

    python benchmarks/lcam_lite0.py --limit 400 --epochs 2 --lr 1e-3 --eval-limit 16 \\
        --samples-limit 16 --steps 16 --scorecam-layer blocks --out results/lcam_lite0_cpu

``--timing-only`` runs step 1 alone (an untrained head times the same as a trained one).
Everything printed is also written to OUT/report.md.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
SHARED = os.path.normpath(os.path.join(REPO, "..", "shared", "data"))

import camzoo  # noqa: E402
from camzoo.explainers.base import register_explainer  # noqa: E402
from camzoo.explainers.learned.lcam import LCAMFm, LCAMImg  # noqa: E402
from camzoo.train.data import training_data  # noqa: E402
from camzoo.train.lcam import LCAMTask, train_lcam  # noqa: E402
from camzoo.train.loop import CHECKPOINT_FORMAT, save_checkpoint  # noqa: E402


# the CE-only ablations are the same explainers with another checkpoint; distinct names let
# one bench run hold all four heads
@register_explainer
class LCAMImgCE(LCAMImg):
    name = "lcam-img-ce"
    summary = "L-CAM-Img* (CE-only ablation)"


@register_explainer
class LCAMFmCE(LCAMFm):
    name = "lcam-fm-ce"
    summary = "L-CAM-Fm* (CE-only ablation)"


HEADS = {  # method name -> (variant, ce_only)
    "lcam-img": ("img", False),
    "lcam-fm": ("fm", False),
    "lcam-img-ce": ("img", True),
    "lcam-fm-ce": ("fm", True),
}

LINES = []


def say(s: str = "") -> None:
    print(s, flush=True)
    LINES.append(s)


def untrained_checkpoint(bb, variant: str, path: str) -> str:
    task = LCAMTask(bb, variant)
    save_checkpoint({"format": CHECKPOINT_FORMAT, "task": "lcam", "epoch": 0, "epochs": 0,
                     "state_dict": task.net.state_dict(), "optimizer": None, "scheduler": None,
                     "metadata": task.metadata(), "history": []}, path)
    return path


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def time_inference(bb, ckpt: str, batch: int, reps: int, threads: int) -> None:
    """Median time per batch: plain forward vs L-CAM (y=None: top-1 from the same forward;
    y given: the engine's case), interleaved so that load changes hit all alike.

    On CPU the process CPU time (``time.process_time``) is reported next to the wall time,
    with ``threads`` torch threads: on a machine shared with other jobs the wall time
    mostly measures the neighbours, CPU time the work done."""
    from camzoo.data import open_dataset
    from camzoo.train.data import TrainImages

    ds = open_dataset(os.path.join(SHARED, "imagenette-224"), limit=batch, seed=1)
    imgs = TrainImages(ds.items, bb, augment=False)
    x = torch.stack([imgs[i][0] for i in range(len(imgs))]).to(bb.device)
    ex = camzoo.get_explainer("lcam-img", checkpoint=ckpt)
    old_threads = torch.get_num_threads()
    if bb.device.type == "cpu" and threads:
        torch.set_num_threads(threads)
    with torch.inference_mode():
        y = bb.model(x).argmax(1)

    def plain():
        with torch.inference_mode():
            bb.model(x)

    fns = {"forward": plain, "lcam (y=None)": lambda: ex.explain(bb, x),
           "lcam (y given)": lambda: ex.explain(bb, x, y)}
    for f in fns.values():  # warm-up
        f()
    wall = {k: [] for k in fns}
    cpu = {k: [] for k in fns}
    for _ in range(reps):
        for k, f in fns.items():
            _sync(bb.device)
            t, c = time.perf_counter(), time.process_time()
            f()
            _sync(bb.device)
            wall[k].append(time.perf_counter() - t)
            cpu[k].append(time.process_time() - c)
    torch.set_num_threads(old_threads)
    mw = {k: statistics.median(v) for k, v in wall.items()}
    mc = {k: statistics.median(v) for k, v in cpu.items()}
    say(f"### Inference time, batch {batch}, {reps} interleaved repetitions (median), "
        f"{torch.get_num_threads() if bb.device.type != 'cpu' else threads} torch thread(s)")
    say("")
    say("| | wall s / batch | wall ratio to forward | CPU s / batch | CPU ratio to forward |")
    say("|---|---|---|---|---|")
    for k in fns:
        say(f"| {k} | {mw[k]:.4f} | {mw[k] / mw['forward']:.3f} | {mc[k]:.4f} | "
            f"{mc[k] / mc['forward']:.3f} |")
    say("")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.path.join(SHARED, "imagenette-224"))
    ap.add_argument("--samples", default=os.path.join(SHARED, "imagenet-samples"))
    ap.add_argument("--limit", type=int, default=None, help="images of --data used (before the split)")
    ap.add_argument("--val-fraction", type=float, default=0.2)
    ap.add_argument("--epochs", type=int, default=25)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--lr-decay", type=float, default=0.95)
    ap.add_argument("--heads", default=",".join(HEADS), help="comma-separated subset of " + ",".join(HEADS))
    ap.add_argument("--eval-limit", type=int, default=None, help="held-out images evaluated")
    ap.add_argument("--samples-limit", type=int, default=None, help="imagenet-samples images evaluated")
    ap.add_argument("--metrics", default="all")
    ap.add_argument("--steps", type=int, default=None, help="insertion/deletion steps (default 224)")
    ap.add_argument("--scorecam-layer", default=None, help="Score-CAM layer (default conv_head: 1280 forwards/image)")
    ap.add_argument("--timing-batch", type=int, default=32)
    ap.add_argument("--timing-reps", type=int, default=10)
    ap.add_argument("--timing-threads", type=int, default=1,
                    help="torch threads while timing on CPU (0 = leave as is)")
    ap.add_argument("--timing-only", action="store_true")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--device", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=os.path.join(REPO, "results", "lcam_lite0"))
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    bb = camzoo.load_backbone("efficientnet_lite0", device=a.device)
    say(f"# L-CAM on efficientnet_lite0 ({bb.weights_id})")
    say("")
    say(f"hardware: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU threads, "
        f"torch {torch.__version__}, device {bb.device}"
        + (f" ({torch.cuda.get_device_name(bb.device)})" if bb.device.type == "cuda" else "")
        + f", torch threads {torch.get_num_threads()}")
    say(f"command: python {' '.join(sys.argv)}")
    say("")

    time_inference(bb, untrained_checkpoint(bb, "img", os.path.join(a.out, "untrained-img.pt")),
                   a.timing_batch, a.timing_reps, a.timing_threads)
    if a.timing_only:
        return _write(a)

    heads = [h.strip() for h in a.heads.split(",") if h.strip()]
    tr, va = training_data(a.data, bb, val_fraction=a.val_fraction, seed=a.seed, limit=a.limit)
    say(f"## Training: {len(tr)} training / {len(va)} held-out images of {a.data}, model-truth "
        f"labels, {a.epochs} epochs, batch {a.batch_size}, lr {a.lr} x {a.lr_decay}/epoch, "
        f"SGD+Nesterov")
    say("")
    say("| head | train s | final train loss (tv / av / ce) | held-out AD(100%) | held-out IC(100%) |")
    say("|---|---|---|---|---|")
    ckpts = {}
    for h in heads:
        variant, ce_only = HEADS[h]
        path = os.path.join(a.out, f"{h}.pt")
        t = time.perf_counter()
        res = train_lcam(bb, tr, va, variant=variant, ce_only=ce_only, epochs=a.epochs,
                         batch_size=a.batch_size, lr=a.lr, lr_decay=a.lr_decay, out=path,
                         resume=True, seed=a.seed, num_workers=a.workers, progress=False,
                         log=lambda s, h=h: print(f"[{h}] {s}", flush=True))
        secs = time.perf_counter() - t
        last = res["history"][-1]
        tl, vl = last["train"], last["val"]
        total_s = sum(e["seconds"] for e in res["history"])
        say(f"| {h} | {total_s:.0f} (this process {secs:.0f}) | {tl['loss']:.3f} ({tl['tv']:.3f} / "
            f"{tl['av']:.3f} / {tl['ce']:.3f}) | {vl.get('ad100', float('nan')):.2f} | "
            f"{vl.get('ic100', float('nan')):.2f} |")
        ckpts[h] = path
    say("")

    from camzoo.bench import BenchConfig, run
    from camzoo.results.tables import summary

    held_labels = os.path.join(a.out, "heldout_labels.csv")
    with open(held_labels, "w") as f:
        f.write("file,class_index\n")
        for it in va.items:
            f.write(f"{os.path.relpath(it.path, a.data)},{it.label}\n")
    options = {h: {"checkpoint": p} for h, p in ckpts.items()}
    if a.scorecam_layer:
        options["scorecam"] = {"layer": a.scorecam_layer}
    methods = ["gradcam", "gradcam++", "scorecam", "fakecam"] + heads
    for title, data, labels, limit, sub in (
            ("held-out imagenette (classes the heads trained on)", a.data, held_labels, a.eval_limit, "bench_heldout"),
            ("imagenet-samples (mostly classes the heads never saw)", a.samples, None, a.samples_limit, "bench_samples")):
        cfg = BenchConfig(backbone=bb, methods=methods, options=options, metrics=a.metrics,
                          data=data, labels=labels, limit=limit, seed=a.seed, steps=a.steps,
                          device=str(bb.device), out=os.path.join(a.out, sub), resume=True,
                          progress=False, figures=False)
        t = time.perf_counter()
        r = run(cfg, echo=lambda s: print(s, flush=True))
        say(f"## Evaluation on {title} ({time.perf_counter() - t:.0f} s)")
        say("")
        say(summary(r).to("markdown"))
        say("")
    _write(a)


def _write(a) -> None:
    with open(os.path.join(a.out, "report.md"), "w") as f:
        f.write("\n".join(LINES) + "\n")
    print(f"wrote {os.path.join(a.out, 'report.md')}")


if __name__ == "__main__":
    main()
