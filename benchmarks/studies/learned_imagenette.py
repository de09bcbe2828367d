"""The L-CAM paper's claim, checked on Imagenette with the embedded EfficientNet-Lite0.

Claim (L-CAM paper, Table 1, qualitatively): trained L-CAM heads explain the frozen classifier
better than Grad-CAM (lower AD(100%), higher IC(100%)), the paper's loss beats its CE-only
ablation (L-CAM-Fm*, L-CAM-Img*), and an L-CAM map costs 1 forward.

Stages (``--stages``, each resumable: a finished stage is skipped on the next run):

1. ``split``: ``OUT/train_labels.csv`` = the ImageNet *training* photos of
   ``../shared/data/imagenette-224`` (3791), ``OUT/test_labels.csv`` = its 134
   ``ILSVRC2012_val_*`` photos (ImageNet validation images: the classifier never saw them),
   the held-out test set.
2. ``train``: on the training photos (``--val-fraction`` of them held out for the per-epoch
   validation curves and the best-checkpoint choice), model-truth labels by default, with the
   feature cache (``--views``): L-CAM-Fm and L-CAM-Fm* (``--fm-epochs``), L-CAM-Img and
   L-CAM-Img* (epoch by epoch until ``--img-cpu-minutes`` of training CPU time or
   ``--img-epochs``),
   LFI-CAM frozen mode (``--lficam-epochs``). Each head writes ``NAME.pt``, ``NAME.best.pt``,
   ``NAME.train_log.csv`` and ``NAME.training.png`` into ``OUT/heads``.
3. ``bench``: ``camzoo.bench.run`` on the 134 test photos, explaining the model's top-1 class
   (``--target pred``, the paper's protocol, Sec. 3.3; ``--target gt`` the ground truth, as the
   2026-12-02 report did), every protocol (lcam, rise with ``--steps``, adcc), in separate runs
   (``--bench``; each resumable, they can run in parallel processes): ``gradcam`` (Grad-CAM,
   Grad-CAM++, XGrad-CAM), ``scorecam`` (at ``--scorecam-layer``), ``rise`` (``--rise-masks``)
   and ``learned`` (the heads, ``--checkpoint best`` or ``last``). Same images, classes and
   protocol options in all, so their rows form one table.
4. ``report``: ``OUT/report.md``: the training summary (epochs, time, held-out curves per
   epoch), the combined table and which rows of the claim hold.

One command from the repository root (2 CPU cores: several hours; see benchmarks/README.md for
the measured times)::

    nice -n 10 python -m benchmarks.studies.learned_imagenette --out results/learned_imagenette

Each bench run is a plain ``camzoo bench``; e.g. the Score-CAM one (the script resumes it
when OUT/bench_scorecam exists)::

    camzoo bench --methods scorecam --opt scorecam.layer=blocks --data ../shared/data/imagenette-224 \\
        --labels OUT/test_labels.csv --target pred --metrics all --steps 16 --out OUT/bench_scorecam
"""
from __future__ import annotations

import csv
import os
import time

import camzoo
from benchmarks._common import IMAGENETTE, REPO, Report, command, echo, machine, parser, register_ce_ablations
from camzoo.train.data import training_data
from camzoo.train.lcam import train_lcam
from camzoo.train.lficam import lficam_data, train_lficam
from camzoo.train.loop import load_checkpoint
from camzoo.train.records import read_log, run_files

#: method name in the bench -> (kind, variant/mode, ce_only)
HEADS = {
    "lcam-fm": ("lcam", "fm", False),
    "lcam-fm-ce": ("lcam", "fm", True),
    "lcam-img": ("lcam", "img", False),
    "lcam-img-ce": ("lcam", "img", True),
    "lficam": ("lficam", "frozen", False),
}
PAPER_NAME = {"lcam-fm": "L-CAM-Fm", "lcam-fm-ce": "L-CAM-Fm*", "lcam-img": "L-CAM-Img",
              "lcam-img-ce": "L-CAM-Img*", "lficam": "LFI-CAM (frozen)"}
#: the post-hoc baselines, in separate bench runs (they run in parallel processes and resume
#: independently; every run has the same images, classes and protocol options)
BASELINE_RUNS = {"gradcam": ["gradcam", "gradcam++", "xgradcam"], "scorecam": ["scorecam"],
                 "rise": ["rise"]}
#: runs of hundreds of forwards per image: on ``--subset`` of the test photos only
SUBSET_RUNS = ("scorecam", "rise")

REPORT = Report()
say = REPORT.say


def split(a) -> None:
    """Write the train / test label files (the 134 ILSVRC2012_val_* photos are the test set)."""
    src = os.path.join(a.data, "labels.csv")
    with open(src, newline="") as f:
        rows = list(csv.DictReader(f))
    test = [r for r in rows if os.path.basename(r["file"]).startswith("ILSVRC2012_val_")]
    train = [r for r in rows if not os.path.basename(r["file"]).startswith("ILSVRC2012_val_")]
    for name, rs in (("train_labels.csv", train), ("test_labels.csv", test)):
        path = os.path.join(a.out, name)
        text = "file,class_index\n" + "".join(f"{r['file']},{r['class_index']}\n" for r in rs)
        if not os.path.isfile(path) or open(path).read() != text:
            with open(path, "w") as f:
                f.write(text)
    print(f"split: {len(train)} training photos, {len(test)} test photos (ILSVRC2012_val_*)", flush=True)


def head_path(a, name: str) -> str:
    return os.path.join(a.out, "heads", f"{name}.pt")


def trained_cpu_minutes(path: str) -> float:
    """CPU time (all threads of the training process, minutes) of the epochs in a checkpoint;
    on a shared machine wall time measures the neighbours too."""
    if not os.path.isfile(path):
        return 0.0
    hist = load_checkpoint(path).get("history", [])
    return float(sum(h.get("cpu_seconds", h["seconds"]) for h in hist)) / 60.0


def train(a, bb, names) -> None:
    labels = os.path.join(a.out, "train_labels.csv")
    log = echo
    for name in names:
        kind, variant, ce_only = HEADS[name]
        out = head_path(a, name)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        t0 = time.perf_counter()
        if kind == "lficam":
            tr, va, _ = lficam_data(a.data, bb, val_fraction=a.val_fraction, seed=a.seed,
                                    split_seed=a.seed, labels_file=labels, need_labels=a.labels == "gt")
            train_lficam(bb, tr, va, mode="frozen", layer=a.lficam_layer, labels=a.labels,
                         epochs=a.lficam_epochs, batch_size=a.batch_size, lr=a.lficam_lr,
                         out=out, resume=True, seed=a.seed, num_workers=a.workers,
                         cache=a.cache, views=a.views, progress=not a.no_progress, log=log)
        else:
            tr, va = training_data(a.data, bb, val_fraction=a.val_fraction, seed=a.seed,
                                   labels_file=labels, need_labels=a.labels == "gt")
            kw = dict(variant=variant, ce_only=ce_only, labels=a.labels, batch_size=a.batch_size,
                      out=out, resume=True, seed=a.seed, num_workers=a.workers, cache=a.cache,
                      views=a.views, progress=not a.no_progress, log=log)
            if variant == "fm":
                train_lcam(bb, tr, va, epochs=a.fm_epochs, lr=a.fm_lr, lr_decay=a.fm_decay, **kw)
            else:  # epoch by epoch until the CPU-time budget (recorded in the checkpoint)
                done = load_checkpoint(out)["epoch"] if os.path.isfile(out) else 0
                while done < a.img_epochs and trained_cpu_minutes(out) < a.img_cpu_minutes:
                    train_lcam(bb, tr, va, epochs=done + 1, lr=a.img_lr, lr_decay=a.img_decay, **kw)
                    done += 1
        print(f"[{name}] {time.perf_counter() - t0:.0f} s in this process", flush=True)


def bench(a, bb, names):
    from camzoo.bench import BenchConfig, run

    test = os.path.join(a.out, "test_labels.csv")
    common = dict(backbone=bb, metrics=a.metrics, data=a.data, labels=test, target=a.target,
                  metric_options={"rise": {"steps": a.steps}}, device=str(bb.device), progress=not a.no_progress,
                  figures=False, tune_malloc=False)  # parallel runs on a shared machine: less RSS
    runs = {}
    opts = {"rise": {"n_masks": a.rise_masks}}
    if a.scorecam_layer:
        opts["scorecam"] = {"layer": a.scorecam_layer}
    for name, methods in BASELINE_RUNS.items():
        if name not in a.bench:
            continue
        out = os.path.join(a.out, f"bench_{name}")
        limit = a.subset if name in SUBSET_RUNS else None
        runs[name] = run(BenchConfig(methods=methods, out=out, resume=os.path.isdir(out),
                                     limit=limit, seed=0,
                                     options={m: opts[m] for m in methods if m in opts}, **common),
                         echo=echo)
    if "learned" in a.bench:
        out = os.path.join(a.out, "bench_learned")
        paths = {n: (run_files(head_path(a, n)).best if a.checkpoint == "best" else head_path(a, n))
                 for n in names}
        runs["learned"] = run(BenchConfig(methods=list(names),
                                          options={n: {"checkpoint": p} for n, p in paths.items()},
                                          out=out, resume=os.path.isdir(out), **common),
                              echo=echo)
    return runs


def combined(runs, image_ids=None):
    """One :class:`camzoo.results.tables.Table` of several bench runs (same protocols), their
    rows restricted to ``image_ids`` when given."""
    import pandas as pd

    from camzoo.results.tables import Table, summary

    class Subset:  # a run seen through a subset of its images (what summary() reads)
        def __init__(self, run):
            self.run = run

        def rows(self, curves=False):
            rows = self.run.rows(curves=curves)
            return rows[rows["image_id"].isin(set(image_ids))]

        def failures(self):
            f = self.run.failures()
            return f[f["image_id"].isin(set(image_ids))] if "image_id" in f.columns else f

        def __getattr__(self, name):  # anything else summary() may read: the run's own
            return getattr(self.run, name)

    from camzoo.results import bootstrap
    from camzoo.results.tables import near_best_tests

    seen = [r if image_ids is None else Subset(r) for r in runs]
    tables = [summary(r, ci=False, tests=False) for r in seen]
    out = Table(pd.concat([x.df for x in tables]), tables[0].higher_is_better,
                list(dict.fromkeys(n for x in tables for n in x.footnotes)))
    # intervals and the ≈ marker over every method of every run (the same images): the runs'
    # per-image matrices side by side, as one run's table would have them
    specs = runs[0].specs()
    mats = {s.header: pd.concat([bootstrap.table_matrices(r.rows(), [s], r.methods)[s.header] for r in seen],
                                axis=1) for s in specs}
    out.binary = {s.header for s in specs if s.binary}
    lo, hi = bootstrap.cell_intervals(mats, binary=out.binary)
    out.lo, out.hi = lo.reindex(out.df.index), hi.reindex(out.df.index)
    out.ci_note = ("±: half-width of the 95 % BCa bootstrap interval over images (10,000 resamples, "
                   "seed 0); [lo, hi] in IC: the exact interval of the percentage.")
    out.p_best = near_best_tests(out, mats)
    return out


def report(a, names) -> None:
    from camzoo.bench import Run

    say("# L-CAM's claim on Imagenette, embedded EfficientNet-Lite0")
    say("")
    say(f"machine: {machine()}; command: {command()}")
    say("")
    say("## Training (held-out validation split of the training photos)")
    say("")
    say("| head | epochs | train wall s | train CPU s | best epoch (held-out loss) | "
        "val AD(100%) best / last | val IC(100%) best / last | mask area last |")
    say("|---|---|---|---|---|---|---|---|")
    curves = {}
    for n in names:
        p = head_path(a, n)
        if not os.path.isfile(p):
            continue
        ck = load_checkpoint(p)
        h = ck["history"]
        b = ck.get("best") or {}
        hb = h[b["epoch"] - 1]["val"] if b else {}
        last = h[-1]["val"]
        secs = sum(e["seconds"] for e in h)
        cpu = sum(e.get("cpu_seconds", float("nan")) for e in h)
        say(f"| {PAPER_NAME[n]} | {ck['epoch']} | {secs:.0f} | {cpu:.0f} | {b.get('epoch', '-')} | "
            f"{hb.get('ad100', float('nan')):.2f} / {last.get('ad100', float('nan')):.2f} | "
            f"{hb.get('ic100', float('nan')):.2f} / {last.get('ic100', float('nan')):.2f} | "
            f"{last.get('area', float('nan')):.3f} |")
        curves[n] = [r for r in read_log(run_files(p).log) if r.get("split") == "val"]
    say("")
    say("Held-out curves per epoch (loss / AD(100%) / IC(100%) / mask area):")
    say("")
    for n, rows in curves.items():
        cells = [f"{r['epoch']}: {r.get('loss', float('nan')):.3f} / {r.get('ad100', float('nan')):.1f} / "
                 f"{r.get('ic100', float('nan')):.1f} / {r.get('area', float('nan')):.2f}" for r in rows]
        say(f"- {PAPER_NAME[n]}: " + "; ".join(cells))
    say("")
    runs = [Run(os.path.join(a.out, f"bench_{n}")) for n in [*BASELINE_RUNS, "learned"]
            if os.path.isfile(os.path.join(a.out, f"bench_{n}", "config.json"))]
    if not runs:
        return
    full = [r for r in runs if int(r.config["data"]["n_images"]) == 134]
    part = [r for r in runs if r not in full]
    t = combined(full)
    target = {"gt": "ground-truth class", "pred": "the model's top-1 class"}[full[0].config.get("target", "gt")] \
        if full else "-"
    say(f"## Evaluation on the 134 held-out photos ({target})")
    say("")
    say(t.to("markdown"))
    say("")
    if part:
        ids = sorted(set.intersection(*[set(r.rows()["image_id"]) for r in part]))
        say(f"## The same on the {len(ids)} test photos that Score-CAM and RISE were run on")
        say("")
        say(combined(runs, ids).to("markdown"))
        say("")
    for r in runs:
        r.close()
    df = t.df
    ad = next(c for c in df.columns if c.startswith("AD(100%)"))
    ic = next(c for c in df.columns if c.startswith("IC(100%)"))
    fw = next(c for c in df.columns if c.startswith("#FW"))
    if "gradcam" in df.index:
        g = df.loc["gradcam"]
        say("## The claim, row by row")
        say("")
        for n in names:
            if n not in df.index or n == "lficam":
                continue
            r = df.loc[n]
            say(f"- {PAPER_NAME[n]} vs Grad-CAM: AD(100%) {r[ad]:.2f} vs {g[ad]:.2f} "
                f"({'lower: holds' if r[ad] < g[ad] else 'not lower: does not hold'}), IC(100%) "
                f"{r[ic]:.2f} vs {g[ic]:.2f} ({'higher: holds' if r[ic] > g[ic] else 'not higher: does not hold'}), "
                f"#FW {r[fw]:.0f}")
        for full, ce in (("lcam-fm", "lcam-fm-ce"), ("lcam-img", "lcam-img-ce")):
            if full in df.index and ce in df.index:
                f, c = df.loc[full], df.loc[ce]
                say(f"- {PAPER_NAME[full]} vs {PAPER_NAME[ce]}: AD(100%) {f[ad]:.2f} vs {c[ad]:.2f}, "
                    f"IC(100%) {f[ic]:.2f} vs {c[ic]:.2f} "
                    f"({'the paper loss wins on both' if f[ad] < c[ad] and f[ic] > c[ic] else 'the paper loss does not win on both'})")
        say("")


def main() -> None:
    ap = parser(__doc__, full=True)
    ap.add_argument("--data", default=IMAGENETTE)
    ap.add_argument("--out", default=os.path.join(REPO, "results", "learned_imagenette"))
    ap.add_argument("--stages", default="split,train,bench,report")
    ap.add_argument("--heads", default=",".join(HEADS), help="subset of " + ",".join(HEADS))
    ap.add_argument("--bench", default=",".join([*BASELINE_RUNS, "learned"]),
                    help="which bench runs: " + ", ".join([*BASELINE_RUNS, "learned"]))
    ap.add_argument("--cache", default=None, help="feature cache root (default OUT/heads/feature_cache)")
    ap.add_argument("--views", default="center+flip")
    ap.add_argument("--labels", choices=["model", "gt"], default="model")
    ap.add_argument("--target", choices=["pred", "gt"], default="pred",
                    help="class explained and scored in the bench stage: the model's top-1 (the "
                         "paper's Sec. 3.3 and the authors' evaluation scripts) or the ground truth")
    ap.add_argument("--val-fraction", type=float, default=0.05)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--fm-epochs", type=int, default=30)
    ap.add_argument("--fm-lr", type=float, default=0.1)
    ap.add_argument("--fm-decay", type=float, default=0.95)
    ap.add_argument("--img-cpu-minutes", type=float, default=120.0,
                    help="CPU-time budget per Img head (process CPU minutes, all threads: 120 = "
                         "an hour of both cores); a started epoch is finished")
    ap.add_argument("--img-epochs", type=int, default=30, help="at most this many Img epochs")
    ap.add_argument("--img-lr", type=float, default=0.1)
    ap.add_argument("--img-decay", type=float, default=0.95)
    ap.add_argument("--lficam-layer", default="blocks",
                    help="LFI-CAM layer (blocks: 320 channels; conv_head's 1280-channel FIN costs ~20 forwards per image)")
    ap.add_argument("--lficam-epochs", type=int, default=4)
    ap.add_argument("--lficam-lr", type=float, default=0.01)
    ap.add_argument("--checkpoint", choices=["best", "last"], default="best")
    ap.add_argument("--metrics", default="lcam,adcc",
                    help="bench protocols ('all' adds insertion/deletion, 2 x (steps+1) forwards per image)")
    ap.add_argument("--steps", type=int, default=16, help="insertion/deletion steps (with --metrics all)")
    ap.add_argument("--subset", type=int, default=32,
                    help="test photos (a deterministic subset) for Score-CAM and RISE; 0 = all 134")
    ap.add_argument("--rise-masks", type=int, default=500)
    ap.add_argument("--scorecam-layer", default="blocks")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--device", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-progress", action="store_true")
    a = ap.parse_args()
    register_ce_ablations()  # lcam-fm-ce, lcam-img-ce: the CE-only heads in the learned bench run
    os.makedirs(a.out, exist_ok=True)
    a.cache = a.cache or os.path.join(a.out, "heads", "feature_cache")
    names = [n.strip() for n in a.heads.split(",") if n.strip()]
    bad = [n for n in names if n not in HEADS]
    if bad:
        ap.error(f"unknown heads {bad}; valid: {', '.join(HEADS)}")
    stages = [s.strip() for s in a.stages.split(",") if s.strip()]
    a.bench = [s.strip() for s in a.bench.split(",") if s.strip()]
    a.subset = a.subset or None
    if "split" in stages:
        split(a)
    bb = camzoo.load_backbone("efficientnet_lite0", device=a.device)
    if "train" in stages:
        train(a, bb, names)
    if "bench" in stages:
        bench(a, bb, names)
    if "report" in stages:
        report(a, names)
        REPORT.write(os.path.join(a.out, "report.md"))


if __name__ == "__main__":
    main()
