"""Figures: map overlays and explanation grids (matplotlib, Agg backend)."""
from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str, dpi: int = 110, suptitle: Optional[str] = None, fontsize: int = 9) -> None:
    """Title (optional), tight layout, write ``path``, close the figure."""
    if suptitle:
        fig.suptitle(suptitle, fontsize=fontsize)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    _plt().close(fig)


def overlay(image01: np.ndarray, saliency: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend a ``[H,W]`` map in [0,1] (jet colour map) over an ``[H,W,3]`` image in [0,1]."""
    from matplotlib import colormaps

    heat = colormaps["jet"](np.clip(saliency, 0, 1))[..., :3]
    return np.clip((1 - alpha) * image01 + alpha * heat, 0, 1)


def explanation_grid(
    image01: np.ndarray,
    maps: Sequence[np.ndarray],
    titles: Sequence[str],
    path: str,
    suptitle: Optional[str] = None,
) -> None:
    """Save a one-row PNG: the input, then one overlay per map with its title."""
    plt = _plt()
    n = len(maps) + 1
    fig, axes = plt.subplots(1, n, figsize=(2.6 * n, 2.9), squeeze=False)
    axes = axes[0]
    axes[0].imshow(image01)
    axes[0].set_title("input", fontsize=8)
    for ax, m, t in zip(axes[1:], maps, titles):
        ax.imshow(overlay(image01, m))
        ax.set_title(t, fontsize=7)
    for ax in axes:
        ax.axis("off")
    _save(fig, path, 110, suptitle)


# -- bench figures ---------------------------------------------------------------------------
def mean_curves(curves: dict, path: str, steps_label: str = "fraction of pixels", title: str = "") -> None:
    """Save one figure with the mean insertion (left) and deletion (right) curve per method.

    Args:
        curves: ``{method: {"insertion": [N,L], "deletion": [N,L]}}`` float arrays of softmax
            probabilities in [0,1] (either key may be missing).
        path: PNG file to write.
    """
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), squeeze=False)
    for ax, kind in zip(axes[0], ("insertion", "deletion")):
        for method, cs in curves.items():
            c = cs.get(kind)
            if c is None or len(c) == 0:
                continue
            mean = np.asarray(c, dtype=np.float64).mean(axis=0)
            t = np.linspace(0.0, 1.0, len(mean))
            area = (mean.sum() - mean[0] / 2 - mean[-1] / 2) / (len(mean) - 1)
            ax.plot(t, mean, label=f"{method} ({100 * area:.1f})", lw=1.4)
        ax.set_title(f"{kind} (mean over images; AUC x100)", fontsize=9)
        ax.set_xlabel(steps_label)
        ax.set_ylabel("softmax probability of c")
        ax.set_xlim(0, 1)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    _save(fig, path, 110, title or None)


def overlay_grid(images01: Sequence[np.ndarray], maps: Sequence[Sequence[Optional[np.ndarray]]],
                 row_titles: Sequence[str], col_titles: Sequence[str], path: str, title: str = "") -> None:
    """Save a grid: one row per image (input, then one overlay per method).

    Args:
        images01: ``[H,W,3]`` images in [0,1].
        maps: ``maps[i][j]`` = ``[H,W]`` map in [0,1] of image i by method j (None = blank).
        row_titles: one per image; col_titles: one per method.
        title: the figure's title (e.g. the backbone).
    """
    plt = _plt()
    n, m = len(images01), len(col_titles)
    fig, axes = plt.subplots(n, m + 1, figsize=(1.9 * (m + 1), 2.0 * n + 0.3), squeeze=False)
    for i, img in enumerate(images01):
        axes[i][0].imshow(img)
        axes[i][0].set_title(row_titles[i], fontsize=7)
        for j in range(m):
            ax = axes[i][j + 1]
            v = maps[i][j]
            if v is not None:
                ax.imshow(overlay(img, np.asarray(v, dtype=np.float32)))
            if i == 0:
                ax.set_title(col_titles[j], fontsize=8)
    for row in axes:
        for ax in row:
            ax.axis("off")
    _save(fig, path, 100, title or None)


def bench_figures(run, ds, bb, n_images: int = 4) -> List[str]:
    """Write ``curves.png`` (mean insertion/deletion curves, when the run has them) and
    ``grid.png`` (overlays of the first ``n_images`` images for every method) into a bench
    run directory; return the written paths."""
    import os

    from .run import map_path

    from ..models.weights import backbone_label

    b = run.config["backbone"]
    title = backbone_label(b["name"], b.get("weights_id"))  # marks random weights
    written = []
    curves = {}
    for m in run.methods:
        cs = {k: run.store.curves(m, col) for k, col in (("insertion", "ins_curve"), ("deletion", "del_curve"))}
        cs = {k: v for k, v in cs.items() if v is not None}
        if cs:
            curves[m] = cs
    if curves:
        p = os.path.join(run.dir, "curves.png")
        mean_curves(curves, p, title=title)
        written.append(p)
    grid_dir = os.path.join(run.dir, "grid")
    if n_images > 0 and os.path.isdir(grid_dir):
        errors = set(run.store.error_ids())
        items = [it for it in ds.items if it.image_id not in errors][:n_images]
        rows = run.rows()
        imgs, maps, titles = [], [], []
        for it in items:
            files = [map_path(run.dir, "grid", m, it.image_id) for m in run.methods]
            if not any(os.path.isfile(f) for f in files):
                continue
            x = bb.preprocess(ds.load(it)).unsqueeze(0).to(bb.device)
            imgs.append(bb.denormalize(x)[0].clamp(0, 1).permute(1, 2, 0).cpu().numpy())
            maps.append([np.load(f).astype(np.float32) if os.path.isfile(f) else None for f in files])
            r = rows[rows.image_id == it.image_id]
            cls = int(r["c"].iloc[0]) if len(r) else None
            name = bb.class_names[cls][:18] if cls is not None and cls < len(bb.class_names) else ""
            titles.append(f"{it.image_id[-22:]}\n{name}")
        if imgs:
            p = os.path.join(run.dir, "grid.png")
            overlay_grid(imgs, maps, titles, run.methods, p, title=title)
            written.append(p)
    return written


def agreement_heatmap(matrix, path: str, title: str = "") -> None:
    """Save a heatmap of a square correlation matrix (a DataFrame, values in [-1,1], index =
    columns = metric names; NaN cells blank) with the values written in the cells."""
    plt = _plt()
    M = np.asarray(matrix, dtype=np.float64)
    names = list(matrix.columns)
    n = len(names)
    fig, ax = plt.subplots(figsize=(1.0 + 0.62 * n, 0.6 + 0.55 * n))
    im = ax.imshow(np.ma.masked_invalid(M), cmap="coolwarm", vmin=-1, vmax=1)
    ax.set_xticks(range(n), names, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(n), names, fontsize=7)
    for i in range(n):
        for j in range(n):
            if np.isfinite(M[i, j]):
                ax.text(j, i, f"{M[i, j]:.2f}", ha="center", va="center", fontsize=6)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    if title:
        ax.set_title(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def similarity_curves(curves: dict, steps: Sequence[str], path: str, title: str = "",
                      ylabel: str = "similarity") -> None:
    """Save the sanity check's line plot (Adebayo et al. 2018, Fig. 3 style): similarity to the
    trained model's map (y) against the randomized block (x), one line per method.

    Args:
        curves: ``{method: (mean [S], std [S])}`` over images, one value per step.
        steps: the S step labels (``original``, then the blocks).
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(5.0, 0.55 * len(steps) + 2), 3.8))
    x = np.arange(len(steps))
    for method, (mean, std) in curves.items():
        mean, std = np.asarray(mean, dtype=np.float64), np.asarray(std, dtype=np.float64)
        ax.plot(x[: len(mean)], mean, marker="o", ms=3, lw=1.4, label=method)
        ax.fill_between(x[: len(mean)], mean - std, mean + std, alpha=0.15)
    ax.axhline(0.0, color="k", lw=0.6, alpha=0.5)
    ax.set_xticks(x, steps, rotation=60, ha="right", fontsize=7)
    ax.set_ylim(-1.05, 1.05)
    ax.set_ylabel(ylabel)
    ax.set_xlabel("randomized block (from the logits down)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def training_curves(rows: Sequence[dict], path: str, title: str = "") -> None:
    """Save the curves of a training log (:mod:`camzoo.train.records`) as one PNG.

    One panel per logged quantity: the per-step training values (thin line), their mean per
    epoch (dots at each epoch's last step) and the held-out value of each epoch (squares),
    against the global step. Quantities logged only on the held-out split (e.g. ``ad100``,
    ``ic100``) get a panel of their own.

    Args:
        rows: dicts with ``epoch``, ``step``, ``split`` (``"train"`` / ``"val"``) and numbers.
        path: PNG file to write.
        title: figure title.
    """
    plt = _plt()
    skip = {"epoch", "step", "split", "lr"}
    keys: List[str] = []
    for r in rows:
        for k, v in r.items():
            if k not in skip and k not in keys and isinstance(v, (int, float)):
                keys.append(k)
    n = max(len(keys), 1)
    ncol = min(3, n)
    nrow = (n + ncol - 1) // ncol
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 2.9 * nrow), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        tr = [(r["step"], r[key], r["epoch"]) for r in rows
              if r.get("split") == "train" and r.get(key) is not None]
        va = [(r["step"], r[key]) for r in rows if r.get("split") == "val" and r.get(key) is not None]
        if tr:
            ax.plot([t[0] for t in tr], [t[1] for t in tr], lw=0.6, alpha=0.5, color="C0",
                    label="train (step)")
            ends: dict = {}
            for s, v, e in tr:
                acc = ends.setdefault(e, [0, 0.0, 0])
                acc[0], acc[1], acc[2] = max(acc[0], s), acc[1] + v, acc[2] + 1
            pts = sorted((s, tot / cnt) for s, tot, cnt in ends.values())
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", ms=3, lw=1.2, color="C0",
                    label="train (epoch mean)")
        if va:
            ax.plot([p[0] for p in va], [p[1] for p in va], "s-", ms=3.5, lw=1.2, color="C3",
                    label="held-out")
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    _save(fig, path, 100, title, fontsize=10)


def reliability_bars(res, path: str, title: str = "") -> None:
    """Save the metric reliability of a run (:class:`~camzoo.results.reliability.Reliability`)
    as one PNG: three panels of bars with their bootstrap intervals, inter-rater reliability
    (Krippendorff's alpha per metric, Krippendorff's 0.667 / 0.8 thresholds dashed),
    inter-method reliability (mean Spearman rho per metric) and internal consistency
    reliability (mean Spearman rho per metric pair of a construct)."""
    plt = _plt()
    panels = [
        ("inter-rater reliability", "Krippendorff's α", list(res.inter_rater.index),
         res.inter_rater["alpha"], res.inter_rater["lo"], res.inter_rater["hi"]),
        ("inter-method reliability", "mean Spearman ρ", list(res.inter_method.index),
         res.inter_method["rho"], res.inter_method["lo"], res.inter_method["hi"]),
        ("internal consistency reliability", "mean Spearman ρ",
         [f"{a} – {b}" for a, b in zip(res.internal_mean.metric_a, res.internal_mean.metric_b)],
         res.internal_mean["rho"], res.internal_mean["lo"], res.internal_mean["hi"]),
    ]
    width = max(4.0, 0.45 * max(len(p[2]) for p in panels) + 1.5)
    fig, axes = plt.subplots(1, 3, figsize=(3 * width, 4.2), squeeze=False)
    for ax, (name, ylabel, labels, v, lo, hi) in zip(axes[0], panels):
        v, lo, hi = (np.asarray(a, dtype=np.float64) for a in (v, lo, hi))
        x = np.arange(len(labels))
        if len(labels):
            ax.bar(x, np.nan_to_num(v), color=np.where(v >= 0, "C0", "C3"), alpha=0.8)
            ok = np.isfinite(lo) & np.isfinite(v)
            ax.errorbar(x[ok], v[ok], yerr=[v[ok] - lo[ok], hi[ok] - v[ok]], fmt="none", ecolor="k",
                        capsize=3, lw=1)
            ax.set_xticks(x, labels, rotation=60, ha="right", fontsize=7)
        else:
            ax.text(0.5, 0.5, "no metric pair of one construct", ha="center", va="center",
                    transform=ax.transAxes, fontsize=8)
            ax.set_xticks([])
        if name == "inter-rater reliability":
            for t in (0.667, 0.8):
                ax.axhline(t, color="gray", ls="--", lw=0.8)
        ax.axhline(0.0, color="k", lw=0.6)
        ax.set_ylim(-1.05, 1.05)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.set_title(name, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    _save(fig, path, 110, title, fontsize=10)
