"""LFI-CAM on imagenette (the paper's small-dataset setting, Tables 1-2 and Fig. 6).

1. End-to-end (the paper): for each backbone and seed, train the baseline classifier and its
   LFI-CAM version with the same recipe and a new 10-class classifier on
   ../shared/data/imagenette-224 (split by image, the same split for every seed): ResNet-18
   from scratch (no pretrained ResNet weights exist offline) and the embedded EfficientNet-Lite0
   from its ImageNet weights. Report held-out top-1 of each (mean +- std over seeds) and the
   stability IoU of the LFI-CAM maps across seeds (baseline = the most accurate seed).
2. Frozen mode on the embedded Lite0 (1000 classes, unchanged): train the FIN (model-truth
   labels) and an L-CAM-Img head on the same training images, then evaluate Grad-CAM,
   Grad-CAM++, L-CAM-Img and LFI-CAM with camzoo.bench.run on the held-out images.
3. Inference cost of LFI-CAM vs one plain forward of its classifier (ratio, this run).

Paper recipe (GPU-sized), from the repository root::

    python -m benchmarks.studies.lficam_imagenette --epochs 300 --image-size 224 --batch-size 128 \\
        --seeds 0,1,2 --out results/lficam_imagenette_full

CPU-sized configuration (what runs on 2 shared cores; minutes per model)::

    python -m benchmarks.studies.lficam_imagenette --limit 300 --image-size 96 --epochs 3 \\
        --batch-size 32 --seeds 0,1,2 --frozen-limit 200 --frozen-epochs 1 \\
        --eval-limit 24 --out results/lficam_imagenette_cpu

Finished checkpoints are reused when the script is run again (``--out`` keeps them).
Everything printed is also written to OUT/report.md.
"""
from __future__ import annotations

import os
import statistics
import time

import torch

import camzoo
from benchmarks._common import (IMAGENETTE, REPO, Report, command, echo, machine, parser, ratio_table, tagged,
                                top1, versus_forward, write_labels)
from camzoo.train.lficam import lficam_data, train_lficam
from camzoo.train.loop import load_checkpoint

REPORT = Report()
say = REPORT.say


def _ms(vals):
    vals = [v for v in vals if v is not None]
    if not vals:
        return "-"
    if len(vals) == 1:
        return f"{vals[0]:.3f}"
    return f"{statistics.mean(vals):.3f} +- {statistics.stdev(vals):.3f}"


def train_one(bb, tr, va, info, a, *, mode, init, lr, seed, path, epochs, labels="gt",
              num_classes=10):
    """Train (or reuse) one checkpoint; returns (checkpoint dict, seconds of training)."""
    if os.path.isfile(path):
        ck = load_checkpoint(path)
        if ck["epoch"] >= epochs:
            return ck, sum(h["seconds"] for h in ck["history"])
    res = train_lficam(bb, tr, va, mode=mode, labels=labels, num_classes=num_classes,
                       class_map=info.get("class_map"), class_names=info.get("class_names"),
                       init=init, image_size=tr.size, epochs=epochs, batch_size=a.batch_size,
                       lr=lr, out=path, resume=True, seed=seed, num_workers=a.workers,
                       device=bb.device, progress=False,
                       log=tagged(os.path.basename(path)))
    return res, sum(h["seconds"] for h in res["history"])


def end_to_end(a, data: str) -> None:
    from camzoo.engine.cross_model import run_stability, sources_from_checkpoints

    say("## 1. End-to-end: baseline vs LFI-CAM, new 10-class classifier")
    say("")
    specs = {"resnet18": ("random", a.lr_scratch), "efficientnet_lite0": ("pretrained", a.lr_pretrained)}
    rows = []
    stab = []
    for name in [b.strip() for b in a.backbones.split(",") if b.strip()]:
        init, lr = specs[name]
        bb = camzoo.load_backbone(name, weights="random" if init == "random" else None, device=a.device)
        tr, va, info = lficam_data(data, bb, num_classes=10, val_fraction=a.val_fraction,
                                   seed=0, split_seed=a.split_seed, limit=a.limit,
                                   image_size=a.image_size)
        res = {"baseline": [], "end-to-end": []}
        secs = {"baseline": [], "end-to-end": []}
        paths = []
        for seed in a.seeds:
            # augmentation follows the training seed; the split stays fixed (split_seed)
            tr.seed = seed
            for mode in ("baseline", "end-to-end"):
                path = os.path.join(a.out, f"{name}-{mode}-s{seed}.pt")
                ck, s = train_one(bb, tr, va, info, a, mode=mode, init=init, lr=lr, seed=seed,
                                  path=path, epochs=a.epochs)
                res[mode].append(ck["history"][-1]["val"].get("top1"))
                secs[mode].append(s)
                if mode == "end-to-end":
                    paths.append(path)
        lab = write_labels(va.items, data, os.path.join(a.out, "heldout_labels.csv"))
        st = None
        if len(paths) >= 2:
            srcs = sources_from_checkpoints(paths, device=bb.device)
            st = run_stability(srcs, data, labels=lab, limit=a.stability_limit, progress=False)
            stab.append((name, st))
        rows.append((name, init, lr, len(tr), len(va), tr.size, res, secs, st))
    say(f"{a.epochs} epochs, batch {a.batch_size}, SGD momentum 0.9, lr / 10 at 50 % and 75 %, "
        f"weight decay {'5e-4' if a.image_size and a.image_size <= 64 else '1e-4'}, random-resized "
        f"crop + flip; seeds {','.join(map(str, a.seeds))}; held-out split fixed "
        f"(split seed {a.split_seed}).")
    say("")
    say("| backbone | init | lr | train / held-out imgs | px | baseline top-1 | LFI-CAM top-1 | "
        "LFI-CAM - baseline | train s / model (baseline, LFI-CAM) | stability IoU (LFI-CAM, seeds) |")
    say("|---|---|---|---|---|---|---|---|---|---|")
    for name, init, lr, ntr, nva, px, res, secs, st in rows:
        diff = [b2 - b1 for b1, b2 in zip(res["baseline"], res["end-to-end"])
                if b1 is not None and b2 is not None]
        say(f"| {name} | {init} | {lr} | {ntr} / {nva} | {px} | {_ms(res['baseline'])} | "
            f"{_ms(res['end-to-end'])} | {_ms(diff)} | {statistics.mean(secs['baseline']):.0f}, "
            f"{statistics.mean(secs['end-to-end']):.0f} | "
            f"{'-' if st is None else f'{st.overall:.3f}'} |")
    say("")
    say("Per-seed held-out top-1 (baseline / LFI-CAM): " + "; ".join(
        f"{name}: " + ", ".join(f"s{s} {b if b is None else round(b, 3)} / {e if e is None else round(e, 3)}"
                                for s, b, e in zip(a.seeds, res["baseline"], res["end-to-end"]))
        for name, _, _, _, _, _, res, _, _ in rows))
    say("")
    for name, st in stab:
        say(f"Stability of the LFI-CAM maps, {name} (baseline seed = most accurate, "
            f"{st.n_images} held-out images, high attention = map >= 127/255): "
            + ", ".join(f"{k} {v:.3f}" for k, v in st.per_model.items())
            + f" vs {st.baseline}; overall {st.overall:.3f}")
    say("")


def frozen(a, data: str) -> None:
    from camzoo.bench import BenchConfig, run
    from camzoo.results.tables import summary
    from camzoo.train.lcam import train_lcam

    bb = camzoo.load_backbone("efficientnet_lite0", device=a.device)
    tr, va, _ = lficam_data(data, bb, val_fraction=a.val_fraction, seed=0,
                            split_seed=a.split_seed, limit=a.frozen_limit)
    say("## 2. Frozen mode on the embedded Lite0 (1000 classes, weights unchanged)")
    say("")
    fpath = os.path.join(a.out, "lite0-frozen.pt")
    ck, fs = train_one(bb, tr, va, {}, a, mode="frozen", init="pretrained", lr=a.frozen_lr,
                       seed=0, path=fpath, epochs=a.frozen_epochs, labels="model",
                       num_classes=None)
    v = ck["history"][-1]["val"]
    say(f"FIN: {len(tr)} training / {len(va)} held-out images (224 px), model-truth labels, "
        f"{a.frozen_epochs} epoch(s), lr {a.frozen_lr}, {fs:.0f} s. Held-out top-1 of the "
        f"LFI-CAM model {v.get('top1', float('nan')):.3f} vs the frozen backbone "
        f"{v.get('backbone_top1', float('nan')):.3f}; same top-1 as the backbone on "
        f"{v.get('agree', float('nan')):.3f} of the images.")
    lpath = a.lcam_checkpoint or os.path.join(a.out, "lite0-lcam-img.pt")
    if not a.lcam_checkpoint and not (os.path.isfile(lpath) and load_checkpoint(lpath)["epoch"] >= a.frozen_epochs):
        t = time.perf_counter()
        # the lcam trainer's own crops (resize 256 + random crop + flip) on the same items
        from camzoo.train.data import TrainImages

        ltr = TrainImages(tr.items, bb, augment=True, seed=0, root=tr.root)
        lva = TrainImages(va.items, bb, augment=False, seed=0, root=va.root)
        train_lcam(bb, ltr, lva, variant="img", epochs=a.frozen_epochs, batch_size=a.batch_size,
                   lr=a.lcam_lr, out=lpath, resume=True, seed=0, num_workers=a.workers,
                   progress=False, log=tagged("lcam-img"))
        say(f"L-CAM-Img head trained the same way ({a.frozen_epochs} epoch(s), lr {a.lcam_lr}, "
            f"{time.perf_counter() - t:.0f} s).")
    say("")
    lab = write_labels(va.items, data, os.path.join(a.out, "heldout_labels_frozen.csv"))
    cfg = BenchConfig(backbone=bb, methods=["gradcam", "gradcam++", "lcam-img", "lficam"],
                      options={"lcam-img": {"checkpoint": lpath}, "lficam": {"checkpoint": fpath}},
                      metrics=a.metrics, data=data, labels=lab, limit=a.eval_limit, seed=0,
                      metric_options={"rise": {"steps": a.steps}}, device=str(bb.device), out=os.path.join(a.out, "bench_frozen"),
                      resume=True, progress=False, figures=False)
    t = time.perf_counter()
    r = run(cfg, echo=echo)
    say(f"camzoo.bench.run on the held-out images ({time.perf_counter() - t:.0f} s); every "
        "method explains the same frozen Lite0:")
    say("")
    say(summary(r).to("markdown"))
    say("")
    timing(a, bb, fpath, va)


def timing(a, bb, ckpt: str, va) -> None:
    """Median CPU/wall time per batch: plain forward vs LFI-CAM map (frozen Lite0, 224 px)."""
    n = min(a.timing_batch, len(va))
    x = torch.stack([va[i][0] for i in range(n)]).to(bb.device)
    ex = camzoo.get_explainer("lficam", checkpoint=ckpt)
    y = top1(bb.model, x)
    mw, mc = versus_forward(bb.model, x, {"lficam map": lambda: ex.explain(bb, x, y),
                                          "gradcam map": lambda: camzoo.explain("gradcam", bb, x, y)},
                            a.timing_reps, bb.device)
    REPORT.section(f"## 3. Inference cost, frozen Lite0 + FIN at conv_head (1280 channels), batch {n}, "
                   f"{a.timing_reps} interleaved repetitions (median)", ratio_table(mw, mc, digits=2))


def main() -> None:
    ap = parser(__doc__, full=True)
    ap.add_argument("--data", default=IMAGENETTE)
    ap.add_argument("--limit", type=int, default=None, help="images used for part 1 (before the split)")
    ap.add_argument("--val-fraction", type=float, default=0.2)
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument("--image-size", type=int, default=None, help="part 1 resolution (default 224)")
    ap.add_argument("--epochs", type=int, default=300, help="part 1 epochs (paper: 300)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--backbones", default="resnet18,efficientnet_lite0")
    ap.add_argument("--lr-scratch", type=float, default=0.1, help="paper: 0.1")
    ap.add_argument("--lr-pretrained", type=float, default=0.01,
                    help="fine-tuning lr for the pretrained Lite0 (0.1 erases the pretraining)")
    ap.add_argument("--stability-limit", type=int, default=None, help="held-out images for stability")
    ap.add_argument("--skip-end-to-end", action="store_true")
    ap.add_argument("--skip-frozen", action="store_true")
    ap.add_argument("--frozen-limit", type=int, default=None, help="images used for part 2")
    ap.add_argument("--frozen-epochs", type=int, default=10)
    ap.add_argument("--frozen-lr", type=float, default=0.1)
    ap.add_argument("--lcam-lr", type=float, default=1e-3)
    ap.add_argument("--lcam-checkpoint", default=None, help="use this L-CAM-Img head instead of training one")
    ap.add_argument("--eval-limit", type=int, default=None, help="held-out images in the bench table")
    ap.add_argument("--metrics", default="lcam,adcc")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--timing-batch", type=int, default=16)
    ap.add_argument("--timing-reps", type=int, default=5)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--device", default=None)
    ap.add_argument("--out", default=os.path.join(REPO, "results", "lficam_imagenette"))
    a = ap.parse_args()
    a.seeds = [int(s) for s in a.seeds.split(",") if s.strip()]
    os.makedirs(a.out, exist_ok=True)
    data = os.path.abspath(a.data)
    dev = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    say("# LFI-CAM on imagenette")
    say("")
    say(f"machine: {machine(dev)}")
    say(f"command: {command()}")
    say("")
    t0 = time.perf_counter()
    if not a.skip_end_to_end:
        end_to_end(a, data)
    if not a.skip_frozen:
        frozen(a, data)
    say(f"total wall time {time.perf_counter() - t0:.0f} s")
    REPORT.write(os.path.join(a.out, "report.md"))


if __name__ == "__main__":
    main()
