"""L-CAM on the embedded EfficientNet-Lite0: train, evaluate against other CAMs, time inference.

1. Inference cost: L-CAM map per image vs one plain forward of the backbone at the same batch
   size (target <= 1.1x), measured in this run (median of interleaved repetitions).
2. Training: L-CAM-Img, L-CAM-Fm and their CE-only ablations (L-CAM-Img*, L-CAM-Fm*) on
   ../shared/data/imagenette-224 with model-truth labels, an 80/20 split by image.
3. Evaluation with camzoo.bench.run: Grad-CAM, Grad-CAM++, Score-CAM, Fake-CAM and the
   four heads on the held-out 20 % under every protocol (lcam, adcc, rise), and on
   ../shared/data/imagenet-samples (classes the heads never trained on).

Full configuration (GPU; what the paper would do, 25 epochs is Lite0's default schedule), from
the repository root::

    python -m benchmarks.studies.lcam_lite0 --epochs 25 --out results/lcam_lite0_full

CPU-sized configuration (minutes to an hour on 2 cores)::

    python -m benchmarks.studies.lcam_lite0 --limit 400 --epochs 2 --lr 1e-3 --eval-limit 16 \\
        --samples-limit 16 --steps 16 --scorecam-layer blocks --out results/lcam_lite0_cpu

``--timing-only`` runs step 1 alone (an untrained head times the same as a trained one).
Everything printed is also written to OUT/report.md.
"""
from __future__ import annotations

import os
import time

import torch

import camzoo
from benchmarks._common import (IMAGENETTE, REPO, SAMPLES, Report, command, echo, machine, parser,
                                ratio_table, register_ce_ablations, tagged, top1, versus_forward,
                                write_labels)
from camzoo.train.data import training_data
from camzoo.train.lcam import LCAMTask, train_lcam
from camzoo.train.loop import CHECKPOINT_FORMAT, save_checkpoint

HEADS = {  # method name -> (variant, ce_only)
    "lcam-img": ("img", False),
    "lcam-fm": ("fm", False),
    "lcam-img-ce": ("img", True),
    "lcam-fm-ce": ("fm", True),
}

REPORT = Report()
say = REPORT.say


def untrained_checkpoint(bb, variant: str, path: str) -> str:
    task = LCAMTask(bb, variant)
    save_checkpoint({"format": CHECKPOINT_FORMAT, "task": "lcam", "epoch": 0, "epochs": 0,
                     "state_dict": task.net.state_dict(), "optimizer": None, "scheduler": None,
                     "metadata": task.metadata(), "history": []}, path)
    return path


def time_inference(bb, ckpt: str, batch: int, reps: int, threads: int) -> None:
    """Median time per batch: plain forward vs L-CAM (y=None: top-1 from the same forward;
    y given: the engine's case), interleaved so that load changes hit all alike.

    On CPU the process CPU time (``time.process_time``) is reported next to the wall time,
    with ``threads`` torch threads: on a machine shared with other jobs the wall time
    mostly measures the neighbours, CPU time the work done."""
    from camzoo.data.datasets import open_dataset
    from camzoo.train.data import TrainImages

    ds = open_dataset(IMAGENETTE, limit=batch, seed=1)
    imgs = TrainImages(ds.items, bb, augment=False)
    x = torch.stack([imgs[i][0] for i in range(len(imgs))]).to(bb.device)
    ex = camzoo.get_explainer("lcam-img", checkpoint=ckpt)
    old_threads = torch.get_num_threads()
    if bb.device.type == "cpu" and threads:
        torch.set_num_threads(threads)
    y = top1(bb.model, x)
    mw, mc = versus_forward(bb.model, x, {"lcam (y=None)": lambda: ex.explain(bb, x),
                                          "lcam (y given)": lambda: ex.explain(bb, x, y)}, reps, bb.device)
    torch.set_num_threads(old_threads)
    REPORT.section(f"### Inference time, batch {batch}, {reps} interleaved repetitions (median), "
                   f"{torch.get_num_threads() if bb.device.type != 'cpu' else threads} torch thread(s)",
                   ratio_table(mw, mc, digits=3))


def main() -> None:
    ap = parser(__doc__, full=True)
    ap.add_argument("--data", default=IMAGENETTE)
    ap.add_argument("--samples", default=SAMPLES)
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
    register_ce_ablations()  # lcam-img-ce, lcam-fm-ce: all four heads in one bench run
    os.makedirs(a.out, exist_ok=True)
    bb = camzoo.load_backbone("efficientnet_lite0", device=a.device)
    say(f"# L-CAM on efficientnet_lite0 ({bb.weights_id})")
    say("")
    say(f"machine: {machine(bb.device)}")
    say(f"command: {command()}")
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
                         log=tagged(h))
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

    held_labels = write_labels(va.items, a.data, os.path.join(a.out, "heldout_labels.csv"))
    options = {h: {"checkpoint": p} for h, p in ckpts.items()}
    if a.scorecam_layer:
        options["scorecam"] = {"layer": a.scorecam_layer}
    methods = ["gradcam", "gradcam++", "scorecam", "fakecam"] + heads
    for title, data, labels, limit, sub in (
            ("held-out imagenette (classes the heads trained on)", a.data, held_labels, a.eval_limit, "bench_heldout"),
            ("imagenet-samples (mostly classes the heads never saw)", a.samples, None, a.samples_limit, "bench_samples")):
        cfg = BenchConfig(backbone=bb, methods=methods, options=options, metrics=a.metrics,
                          data=data, labels=labels, limit=limit, seed=a.seed, metric_options={"rise": {"steps": a.steps}},
                          device=str(bb.device), out=os.path.join(a.out, sub), resume=True,
                          progress=False, figures=False)
        t = time.perf_counter()
        r = run(cfg, echo=echo)
        say(f"## Evaluation on {title} ({time.perf_counter() - t:.0f} s)")
        say("")
        say(summary(r).to("markdown"))
        say("")
    _write(a)


def _write(a) -> None:
    REPORT.write(os.path.join(a.out, "report.md"))


if __name__ == "__main__":
    main()
