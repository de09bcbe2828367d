"""Figures: map overlays and explanation grids, bench curves (insertion / deletion, ROAD), the
sanity check's lines, training curves, reliability bars, the agreement heatmap (matplotlib,
Agg backend).

Every figure is drawn with matplotlib's constrained layout, and titles are wrapped to the width
they have (measured with the font's metrics), so no title, label or tick label is cut at the
figure's edge (``tests/results/test_plots.py`` draws each figure and checks that every drawn
text lies inside it). Tick labels are plain numbers: no offset (``+2.6e1``) and no scientific
notation on the curves' axes.
"""
from __future__ import annotations

import functools
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

#: the colour map of every saliency overlay (and of the grid's colour bar)
CMAP = "jet"


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _subplots(nrows: int, ncols: int, figsize: Tuple[float, float], **kw):
    """``plt.subplots`` with constrained layout (labels and titles get the room they need)."""
    return _plt().subplots(nrows, ncols, figsize=figsize, squeeze=False, layout="constrained", **kw)


@functools.lru_cache(maxsize=None)
def _measure(dpi: float):
    """An Agg renderer at ``dpi``, to measure texts with."""
    from matplotlib.backends.backend_agg import RendererAgg

    return RendererAgg(1, 1, dpi)


def _text_width(s: str, fontsize: float, dpi: float) -> float:
    """Width in inches of one line ``s`` at ``fontsize`` points (matplotlib's default font) when
    drawn at ``dpi`` (glyph hinting makes small text up to 10 % wider at some resolutions than at
    others: measure at the one the figure is saved at)."""
    from matplotlib.font_manager import FontProperties

    w, _, _ = _measure(float(dpi)).get_text_width_height_descent(s, FontProperties(size=fontsize),
                                                                  ismath=False)
    return w / dpi


def _wrap(text: str, width_in: float, fontsize: float, dpi: float) -> str:
    """``text`` with line breaks (at spaces; inside a word only where the word alone is too wide)
    so that no line is wider than ``width_in`` inches at ``fontsize``, drawn at ``dpi``."""
    out: List[str] = []
    for para in str(text).split("\n"):
        line = ""
        for word in para.split():
            cand = f"{line} {word}" if line else word
            if _text_width(cand, fontsize, dpi) <= width_in:
                line = cand
                continue
            if line:
                out.append(line)
            line = word
            while len(line) > 1 and _text_width(line, fontsize, dpi) > width_in:
                k = len(line) - 1
                while k > 1 and _text_width(line[:k], fontsize, dpi) > width_in:
                    k -= 1
                out.append(line[:k])
                line = line[k:]
        out.append(line)
    return "\n".join(out)


def _short(s: str, n: int) -> str:
    """``s`` cut to ``n`` characters in the middle (``abc…xyz``), whole when it fits."""
    s = str(s)
    if len(s) <= n:
        return s
    head = (n - 1) // 2
    return s[:head] + "…" + s[len(s) - (n - 1 - head):]


def _save(fig, path: str, dpi: int = 110, suptitle: Optional[str] = None, fontsize: int = 9) -> None:
    """Title (optional, wrapped to the figure's width), layout (tight, unless the figure has its
    own), write ``path``, close the figure."""
    fig.set_dpi(dpi)  # texts measured and laid out at the resolution of the file
    if suptitle:
        fig.suptitle(_wrap(suptitle, fig.get_figwidth() - 0.3, fontsize, dpi), fontsize=fontsize)
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    _done(fig, path)


def _done(fig, path: str) -> None:
    """Close the figure just saved to ``path`` (tests replace this to inspect it as saved)."""
    _plt().close(fig)


def _plain_ticks(ax) -> None:
    """Plain tick labels on both axes of ``ax``: no offset, no scientific notation."""
    from matplotlib.ticker import ScalarFormatter

    for axis in (ax.xaxis, ax.yaxis):
        fmt = ScalarFormatter(useOffset=False)
        fmt.set_scientific(False)
        axis.set_major_formatter(fmt)


def overlay(image01: np.ndarray, saliency: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend a ``[H,W]`` map in [0,1] (jet colour map) over an ``[H,W,3]`` image in [0,1]."""
    from matplotlib import colormaps

    heat = colormaps[CMAP](np.clip(saliency, 0, 1))[..., :3]
    return np.clip((1 - alpha) * image01 + alpha * heat, 0, 1)


def _bare(ax) -> None:
    """No ticks, no frame; the axis labels stay (the grid's row labels are y labels)."""
    ax.set_xticks([])
    ax.set_yticks([])
    for s in ax.spines.values():
        s.set_visible(False)


def _saliency_colorbar(fig, axes, label: str = "saliency", **kw):
    """One colour bar of the jet map's [0,1] scale of the overlays: beside ``axes`` (a list; ``kw``
    as ``Figure.colorbar``'s) or in ``axes`` (one Axes)."""
    from matplotlib.axes import Axes
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    where = {"cax": axes} if isinstance(axes, Axes) else {"ax": axes, "pad": 0.02, **kw}
    cb = fig.colorbar(ScalarMappable(norm=Normalize(0.0, 1.0), cmap=CMAP), **where,
                      ticks=[0, 0.25, 0.5, 0.75, 1])
    cb.set_label(label, fontsize=8)
    cb.ax.tick_params(labelsize=7)
    return cb


def explanation_grid(
    image01: np.ndarray,
    maps: Sequence[np.ndarray],
    titles: Sequence[str],
    path: str,
    suptitle: Optional[str] = None,
    *,
    colorbar: bool = True,
) -> None:
    """Save a one-row figure: the input, then one overlay per map with its title (wrapped to the
    panel's width), and the colour bar of the maps' [0,1] scale (``colorbar``).

    Args:
        image01: ``[H,W,3]`` image in [0,1]; maps: ``[H,W]`` maps in [0,1]; titles: one per map.
        path: image file to write (PNG, or any format matplotlib writes, by its extension).
        suptitle: the figure's title (wrapped to the figure's width).
    """
    n = len(maps) + 1
    cell = 2.3
    fig, axes = _subplots(1, n, (cell * n + (0.8 if colorbar else 0.0), cell + 0.9))
    axes = axes[0]
    axes[0].imshow(image01)
    axes[0].set_title("input", fontsize=8)
    for ax, m, t in zip(axes[1:], maps, titles):
        ax.imshow(overlay(image01, np.asarray(m, dtype=np.float32)))
        ax.set_title(_wrap(t, cell - 0.15, 7, 110), fontsize=7)
    for ax in axes:
        ax.axis("off")
    if colorbar and len(maps):
        _saliency_colorbar(fig, list(axes), shrink=0.9, aspect=0.9 * cell / 0.13)
    _save(fig, path, 110, suptitle)


# -- bench figures ---------------------------------------------------------------------------
def mean_curves(curves: dict, path: str, steps_label: str = "fraction of pixels", title: str = "") -> None:
    """Save one figure with the mean insertion (left) and deletion (right) curve per method.

    Args:
        curves: ``{method: {"insertion": [N,L], "deletion": [N,L]}}`` float arrays of softmax
            probabilities in [0,1] (either key may be missing); the legend gives each curve's
            area x100 (trapezoid over ``[0,1]``).
        path: PNG file to write.
        steps_label: the x axis' label; title: the figure's title (wrapped).
    """
    fig, axes = _subplots(1, 2, (10, 4))
    for ax, kind in zip(axes[0], ("insertion", "deletion")):
        for method, cs in curves.items():
            c = cs.get(kind)
            if c is None or len(c) == 0:
                continue
            mean = np.asarray(c, dtype=np.float64).mean(axis=0)
            t = np.linspace(0.0, 1.0, len(mean))
            area = (mean.sum() - mean[0] / 2 - mean[-1] / 2) / max(len(mean) - 1, 1)
            ax.plot(t, mean, label=f"{method} ({100 * area:.1f})", lw=1.4)
        ax.set_title(f"{kind} (mean over images; AUC x100)", fontsize=9)
        ax.set_xlabel(steps_label)
        ax.set_ylabel("softmax probability of c")
        ax.set_xlim(0, 1)
        ax.set_ylim(bottom=0)
        _plain_ticks(ax)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    _save(fig, path, 110, title or None)


def road_mean_curves(curves: dict, path: str, title: str = "",
                     ylabel: str = "accuracy (top-1 is still c)", *,
                     fractions: Optional[Sequence[float]] = None) -> None:
    """Save the mean ROAD curves per method: MoRF (left: most relevant pixels removed first, lower
    is better) and LeRF (right: least relevant first, higher is better), against the fraction of
    pixels removed (and imputed). The legend gives each method's mean over the fractions x100,
    the table's ROAD-MoRF / ROAD-LeRF value.

    Args:
        curves: ``{method: {"morf": [N,P], "lerf": [N,P]}}`` float arrays in [0,1] (accuracy:
            1 where ``c`` is still the top-1 class; or the softmax probability of ``c``), one
            column per removal fraction; either key may be missing. The mean is over images
            (NaN ignored).
        path: PNG file to write.
        title: the figure's title (wrapped); ylabel: the y axis' label (the curves' scale).
        fractions: the P removal fractions in (0,1) (a run's ``road`` option ``fractions``);
            default: the protocol's default fractions (0.1 .. 0.9) when P is 9, else P evenly
            spaced fractions ``k / (P + 1)``.
    """
    from ..metrics.road.curves import DEFAULT_FRACTIONS

    fig, axes = _subplots(1, 2, (10, 4), sharey=True)
    ticks: Optional[np.ndarray] = None
    for ax, kind, what in zip(axes[0], ("morf", "lerf"),
                              ("MoRF: most relevant pixels removed first", "LeRF: least relevant pixels "
                               "removed first")):
        for method, cs in curves.items():
            c = cs.get(kind)
            if c is None or len(c) == 0:
                continue
            c = np.asarray(c, dtype=np.float64)
            mean = np.nanmean(c.reshape(len(c), -1), axis=0)
            P = len(mean)
            if fractions is not None:
                if len(fractions) != P:
                    raise ValueError(f"road_mean_curves: {len(fractions)} fractions for curves of "
                                     f"{P} points ({method}, {kind})")
                x = np.asarray(fractions, dtype=np.float64)
            elif P == len(DEFAULT_FRACTIONS):
                x = np.asarray(DEFAULT_FRACTIONS, dtype=np.float64)
            else:
                x = np.arange(1, P + 1) / (P + 1)
            ticks = x
            ax.plot(x, mean, marker="o", ms=3, lw=1.4, label=f"{method} ({100 * float(np.mean(mean)):.1f})")
        better = "lower" if kind == "morf" else "higher"
        ax.set_title(_wrap(f"{what}\n(mean over images; {better} is better; legend: mean x100)", 4.4, 9, 110),
                     fontsize=9)
        ax.set_xlabel("fraction of pixels removed")
        ax.set_xlim(0, 1)
        ax.set_ylim(-0.02, 1.02)
        _plain_ticks(ax)
        if ticks is not None and len(ticks) <= 12:
            ax.set_xticks(ticks, [f"{f:g}" for f in ticks], fontsize=8)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    axes[0][0].set_ylabel(ylabel)
    _save(fig, path, 110, title or None)


#: the overlay grid's measures in inches: a cell's width, the gap between cells, the margin
GRID_CELL, GRID_GAP, GRID_MARGIN = 1.6, 0.05, 0.06
#: the grid's resolution (dots per inch): a 224-pixel image fills its cell
GRID_DPI = 150
#: title font sizes (points) of the grid: the figure's title, the column titles, the row labels
GRID_TITLE_FS, GRID_COL_FS, GRID_ROW_FS = 11, 9, 8


def _grid_figure(images01: Sequence[np.ndarray], maps: Sequence[Sequence[Optional[np.ndarray]]],
                 row_titles: Sequence[str], col_titles: Sequence[str], colorbar_label: str = "saliency",
                 title: str = ""):
    """The figure of :func:`overlay_grid` (not saved; ``title`` only reserves the room of the
    title :func:`_save` adds).

    Laid out by hand in inches (a layout engine leaves the row labels of fixed-aspect image axes
    a few pixels short): the row labels' measured width, then the columns of cells, then the
    colour bar with its ticks and label; the title's lines and the column titles above."""
    from matplotlib.layout_engine import PlaceHolderLayoutEngine

    n, m = len(images01), len(col_titles)
    cw = GRID_CELL
    h0, w0 = (np.shape(images01[0])[:2] if n else (1, 1))
    ch = cw * h0 / max(w0, 1)
    line = lambda fs: fs * 1.2 / 72  # noqa: E731 (matplotlib's line spacing)
    row_titles = [str(row_titles[i]) if i < len(row_titles) else "" for i in range(n)]
    label_w = max((_text_width(s, GRID_ROW_FS, GRID_DPI) for t in row_titles for s in t.split("\n")),
                  default=0.0)
    label_w += 6 / 72 if label_w else 0.0  # the label's pad
    heads = ["input", *(_wrap(t, cw - 0.1, GRID_COL_FS, GRID_DPI) for t in col_titles)]
    head_h = max(h.count("\n") + 1 for h in heads) * line(GRID_COL_FS) + 6 / 72  # + title pad
    tick_w = _text_width("0.75", 7, GRID_DPI) + 7 / 72  # colour bar: tick length + pad + tick label
    bar_w = 0.15 + 0.13 + tick_w + 4 / 72 + line(8)  # gap, bar, ticks, label pad, label
    W = 2 * GRID_MARGIN + label_w + (m + 1) * cw + m * GRID_GAP + bar_w
    grid_h = n * ch + max(n - 1, 0) * GRID_GAP
    lines = _wrap(title, W - 0.3, GRID_TITLE_FS, GRID_DPI).count("\n") + 1 if title else 0
    rest = 2 * GRID_MARGIN + grid_h + head_h + (lines * line(GRID_TITLE_FS) + 0.06 if lines else 0.0)
    H = rest / (0.98 if lines else 1.0)  # the title hangs from 98 % of the height
    fig = _plt().figure(figsize=(W, H))
    fig.set_layout_engine(PlaceHolderLayoutEngine(adjust_compatible=False, colorbar_gridspec=False))

    def rect(x, y, w, h):  # inches from the bottom left -> figure fraction
        return [x / W, y / H, w / W, h / H]

    x_grid = GRID_MARGIN + label_w
    top = GRID_MARGIN + grid_h
    for i, img in enumerate(images01):
        row = maps[i] if i < len(maps) else []
        y = top - (i + 1) * ch - i * GRID_GAP
        for j in range(m + 1):
            ax = fig.add_axes(rect(x_grid + j * (cw + GRID_GAP), y, cw, ch))
            _bare(ax)
            v = None if j == 0 else (row[j - 1] if j - 1 < len(row) else None)
            if j == 0:
                ax.imshow(img)
            elif v is not None:
                ax.imshow(overlay(img, np.asarray(v, dtype=np.float32)))
            else:
                ax.text(0.5, 0.5, "no map", ha="center", va="center", fontsize=GRID_ROW_FS, color="0.5",
                        transform=ax.transAxes)
            if i == 0:
                ax.set_title(heads[j], fontsize=GRID_COL_FS)
            if j == 0:  # left-aligned at the figure's margin
                ax.set_ylabel(row_titles[i], rotation=0, ha="left", va="center", fontsize=GRID_ROW_FS)
                ax.yaxis.set_label_coords(-label_w / cw, 0.5)
    if n:  # at most three rows tall, centred on the rows
        bh = min(n, 3) * ch + (min(n, 3) - 1) * GRID_GAP
        cax = fig.add_axes(rect(x_grid + (m + 1) * cw + m * GRID_GAP + 0.15, top - grid_h / 2 - bh / 2,
                                0.13, bh))
        _saliency_colorbar(fig, cax, colorbar_label)
    return fig


def overlay_grid(images01: Sequence[np.ndarray], maps: Sequence[Sequence[Optional[np.ndarray]]],
                 row_titles: Sequence[str], col_titles: Sequence[str], path: str, title: str = "", *,
                 colorbar_label: str = "saliency") -> None:
    """Save a grid: one row per image (the input, then one overlay per column), the column
    titles above the first row, each row's title left of it (e.g. image id, explained class and
    its probability, ground truth), and one colour bar of the maps' [0,1] jet scale.

    Args:
        images01: ``[H,W,3]`` images in [0,1].
        maps: ``maps[i][j]`` = ``[H,W]`` map in [0,1] of image i by method j (None or missing =
            an empty cell saying "no map").
        row_titles: one per image (lines split by ``\\n``); col_titles: one per method.
        path: image file to write (PNG, or any format matplotlib writes, by its extension).
        title: the figure's title (e.g. the backbone).
        colorbar_label: the colour bar's label.
    """
    fig = _grid_figure(images01, maps, row_titles, col_titles, colorbar_label, title)
    _save(fig, path, GRID_DPI, title or None, fontsize=GRID_TITLE_FS)


def _class_name(names: Sequence[str], k) -> Optional[str]:
    """The short name of class ``k`` (its first synonym, at most 22 characters), or None when
    ``k`` is no class (missing, NaN, negative)."""
    try:
        k = int(k)
    except (TypeError, ValueError, OverflowError):
        return None
    if k < 0:
        return None
    name = str(names[k]) if k < len(names) else f"class {k}"
    return _short(name.split(",")[0].strip(), 22)


def grid_row_label(image_id: str, c, Y, label=None, pred=None, class_names: Sequence[str] = ()) -> str:
    """A grid row's label: the image id (file name, shortened in the middle), the explained
    class with the model's softmax probability of it, the top-1 class when it is another, and
    the ground truth (``true: ?`` when unknown)::

        n01440764_10026.JPEG
        explained: tench (p=0.93)
        true: tench
    """
    lines = [_short(str(image_id).replace("\\", "/").rsplit("/", 1)[-1], 26)]
    name = _class_name(class_names, c)
    if name is not None:
        p = f" (p={float(Y):.2f})" if Y is not None and np.isfinite(float(Y)) else ""
        lines.append(f"explained: {name}{p}")
    top = _class_name(class_names, pred)
    if top is not None and name is not None and int(pred) != int(c):
        lines.append(f"top-1: {top}")
    lines.append(f"true: {_class_name(class_names, label) or '?'}")
    return "\n".join(lines)


def _road_curves(run) -> Tuple[Dict[str, dict], str]:
    """A run's ROAD curves ``{method: {"morf", "lerf"}}``: accuracy when stored, else
    probability, and the y label of that scale (empty dict: no ROAD curves)."""
    from ..metrics.road.curves import ACC_CURVES, PROB_CURVES

    for cols, ylabel in ((ACC_CURVES, "accuracy (top-1 is still c)"),
                         (PROB_CURVES, "softmax probability of c")):
        out = {}
        for m in run.methods:
            cs = {k: run.store.curves(m, col) for k, col in zip(("morf", "lerf"), cols)}
            cs = {k: v for k, v in cs.items() if v is not None}
            if cs:
                out[m] = cs
        if out:
            return out, ylabel
    return {}, ""


def _road_fractions(run) -> Optional[List[float]]:
    """The removal fractions of a run's ``road`` protocol (its stored options), or None."""
    opts = ((run.config.get("protocols") or {}).get("road") or {}).get("options") or {}
    fr = opts.get("fractions")
    return [float(f) for f in fr] if fr else None


def bench_figures(run, ds, bb, n_images: int = 4) -> List[str]:
    """Write the figures of a bench run into its directory; return the written paths.

    - ``curves.png``: mean insertion / deletion curves (when the run has them);
    - ``road.png``: mean ROAD MoRF / LeRF curves against the run's removal fractions (when the
      run has ROAD curves): accuracy when stored, else the probability of ``c``;
    - ``grid.png``: the overlays of every method for the images whose grid maps the runner
      kept (``<run>/grid/<method>/<image_id>.npy``, the first ``grid_images`` readable
      images), at most ``n_images`` of them, in manifest order; each row labelled with the image
      id, the explained class and the backbone's probability of it, the top-1 class when it is
      another, and the ground truth; one colour bar.
    """
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
    road, ylabel = _road_curves(run)
    if road:
        p = os.path.join(run.dir, "road.png")
        road_mean_curves(road, p, title=title, ylabel=ylabel, fractions=_road_fractions(run))
        written.append(p)
    grid = _grid_png(run, ds, bb, n_images, title)
    if grid:
        written.append(grid)
    return written


def _grid_png(run, ds, bb, n_images: int, title: str) -> Optional[str]:
    """``grid.png`` of :func:`bench_figures` (its path), or None when there is nothing to show."""
    from .run import map_path

    if not (n_images > 0 and ds is not None and bb is not None and os.path.isdir(os.path.join(run.dir, "grid"))):
        return None
    shown = []
    for it in ds.items:  # the images with grid maps, in manifest order
        files = [map_path(run.dir, "grid", m, it.image_id) for m in run.methods]
        if any(os.path.isfile(f) for f in files):
            shown.append((it, files))
            if len(shown) == n_images:
                break
    rows = run.rows()
    if len(rows):  # one row per image, the benchmarked backbone's (a method may have its own)
        own = rows["classifier"] != "backbone" if "classifier" in rows.columns else False
        rows = (rows.assign(_own=own).sort_values("_own", kind="stable")
                .drop_duplicates("image_id").set_index("image_id"))
    imgs, maps, titles = [], [], []
    for it, files in shown:
        imgs.append(bb.picture(ds.load(it)))
        maps.append([np.load(f).astype(np.float32) if os.path.isfile(f) else None for f in files])
        if it.image_id in rows.index:
            r = rows.loc[it.image_id]
            titles.append(grid_row_label(it.image_id, r["c"], r["Y"], r.get("label"), r.get("pred"),
                                         bb.class_names))
        else:
            titles.append(grid_row_label(it.image_id, None, None, it.label, None, bb.class_names))
    if not imgs:
        return None
    p = os.path.join(run.dir, "grid.png")
    overlay_grid(imgs, maps, titles, run.methods, p, title=title)
    return p


def agreement_heatmap(matrix, path: str, title: str = "") -> None:
    """Save a heatmap of a square correlation matrix (a DataFrame, values in [-1,1], index =
    columns = metric names; NaN cells blank) with the values written in the cells, its colour
    bar and ``title`` (wrapped to the figure's width)."""
    M = np.asarray(matrix, dtype=np.float64)
    names = list(matrix.columns)
    n = len(names)
    fig, axes = _subplots(1, 1, (max(4.0, 1.6 + 0.62 * n), max(3.2, 1.4 + 0.55 * n)))
    ax = axes[0][0]
    im = ax.imshow(np.ma.masked_invalid(M), cmap="coolwarm", vmin=-1, vmax=1)
    ax.set_xticks(range(n), names, rotation=60, ha="right", rotation_mode="anchor", fontsize=7)
    ax.set_yticks(range(n), names, fontsize=7)
    for i in range(n):
        for j in range(n):
            if np.isfinite(M[i, j]):
                ax.text(j, i, f"{M[i, j]:.2f}", ha="center", va="center", fontsize=6)
    cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    cb.ax.tick_params(labelsize=7)
    _save(fig, path, 120, title or None, fontsize=8)


def similarity_curves(curves: dict, steps: Sequence[str], path: str, title: str = "",
                      ylabel: str = "similarity") -> None:
    """Save the sanity check's line plot (Adebayo et al. 2018, Fig. 3 style): similarity to the
    trained model's map (y) against the randomized block (x), one line per method (mean, and
    +-1 std shaded), the legend right of the plot, ``title`` wrapped to the figure's width.

    Args:
        curves: ``{method: (mean [S], std [S])}`` over images, one value per step.
        steps: the S step labels (``original``, then the blocks).
    """
    fig, axes = _subplots(1, 1, (max(6.0, 0.55 * len(steps) + 3.2), 4.2))
    ax = axes[0][0]
    x = np.arange(len(steps))
    for method, (mean, std) in curves.items():
        mean, std = np.asarray(mean, dtype=np.float64), np.asarray(std, dtype=np.float64)
        ax.plot(x[: len(mean)], mean, marker="o", ms=3, lw=1.4, label=method)
        ax.fill_between(x[: len(mean)], mean - std, mean + std, alpha=0.15)
    ax.axhline(0.0, color="k", lw=0.6, alpha=0.5)
    ax.set_xticks(x, steps, rotation=60, ha="right", rotation_mode="anchor", fontsize=7)
    ax.set_ylim(-1.05, 1.05)
    ax.set_ylabel(ylabel)
    ax.set_xlabel("randomized block (from the logits down)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    _save(fig, path, 110, title or None)


def training_curves(rows: Sequence[dict], path: str, title: str = "") -> None:
    """Save the curves of a training log (:mod:`camzoo.train.records`) as one PNG.

    One panel per logged quantity: the per-step training values (thin line), their mean per
    epoch (dots at each epoch's last step) and the held-out value of each epoch (squares),
    against the global step. Quantities logged only on the held-out split (e.g. ``ad100``,
    ``ic100``) get a panel of their own. Tick labels are plain numbers (no offset, no
    scientific notation).

    Args:
        rows: dicts with ``epoch``, ``step``, ``split`` (``"train"`` / ``"val"``) and numbers.
        path: PNG file to write.
        title: figure title (wrapped to the figure's width).
    """
    skip = {"epoch", "step", "split", "lr"}
    keys: List[str] = []
    for r in rows:
        for k, v in r.items():
            if k not in skip and k not in keys and isinstance(v, (int, float)):
                keys.append(k)
    n = max(len(keys), 1)
    ncol = min(3, n)
    nrow = (n + ncol - 1) // ncol
    fig, axes = _subplots(nrow, ncol, (4.2 * ncol, 2.9 * nrow + 0.3))
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
        ax.set_title(_wrap(key, 3.9, 9, 100), fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        _plain_ticks(ax)
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
    reliability (mean Spearman rho per metric pair of a construct); ``title`` wrapped to the
    figure's width."""
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
    fig, axes = _subplots(1, 3, (3 * width, 4.6))
    for ax, (name, ylabel, labels, v, lo, hi) in zip(axes[0], panels):
        v, lo, hi = (np.asarray(a, dtype=np.float64) for a in (v, lo, hi))
        x = np.arange(len(labels))
        if len(labels):
            ax.bar(x, np.nan_to_num(v), color=np.where(v >= 0, "C0", "C3"), alpha=0.8)
            ok = np.isfinite(lo) & np.isfinite(v)
            ax.errorbar(x[ok], v[ok], yerr=[v[ok] - lo[ok], hi[ok] - v[ok]], fmt="none", ecolor="k",
                        capsize=3, lw=1)
            ax.set_xticks(x, labels, rotation=60, ha="right", rotation_mode="anchor", fontsize=7)
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
        ax.set_title(_wrap(name, width - 0.6, 9, 110), fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    _save(fig, path, 110, title, fontsize=10)
