"""Paper-style tables of bench runs: CSV, Markdown and LaTeX (booktabs).

One row per method; columns AD(100%)↓, IC(100%)↑, AD(50%)↓, IC(50%)↑, AD(15%)↓, IC(15%)↑,
Ins↑, Del↓, Coherency↑, Complexity↓, ADCC↑ (only those of the protocols the run computed),
then #FW (the explainer's forward passes per map) and s/img (measured map time). Every
metric value is ``scale * mean over images`` of its per-image value, with the scale and
direction given by the protocol's :class:`~camzoo.metrics.MetricSpec` (all x100 / percent).
In LaTeX and Markdown the best value of each metric column is bold and the second best
underlined (compared at the printed precision; ties share the mark), like the papers.

Every metric cell also carries its 95 % confidence interval over images (a seeded bootstrap
of the stored per-image values, the same resampled images for every method: see
:mod:`camzoo.results.bootstrap`), shown as ``13.60 ± 2.10`` (half-width) in Markdown,
``$13.60_{\\pm 2.10}$`` in LaTeX and as ``<column>_lo`` / ``<column>_hi`` in CSV; ``—`` where
no interval can be claimed (fewer than 2 images, or every value equal). A method that is not
significantly different from the best of its column (paired Wilcoxon signed-rank test on
the per-image values, Holm-corrected over the methods compared with the best, alpha 0.05)
gets ``≈`` and a footnote.

Only methods compared on the same images compete: a method whose values of a column cover
fewer images than another method's (it failed on some) is never marked best, second or ``≈``
in that column, and a footnote says so (``boom: values on 2 of 6 images; not ranked``).
"""
from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Set, Tuple

import numpy as np
import pandas as pd

from ..models.weights import RANDOM_MARK, backbone_label, is_random
from ..utils import atomic_write, markdown_table
from . import bootstrap, paired

FORMATS = ("csv", "markdown", "latex")
FW_COL = "#FW"
TIME_COL = "s/img"
METHOD_COL = "Method"
BACKBONE_COL = "Backbone"
DECIMALS = 2
NEAR = "\u2248"  # ≈: not significantly different from the best
NO_CI = "\u2014"  # —: no interval claimed


@dataclass
class Table:
    """A summary table.

    Attributes:
        df: one row per method (index = method names, or (backbone, method) for
            :func:`compare`); float columns, headers with direction arrows.
        higher_is_better: ``{column: bool}`` for the metric columns (the ones that get marks).
        footnotes: lines printed under the table (image counts, unreadable images, failures).
        lo, hi: the confidence interval of every metric cell (same index and metric columns
            as ``df``; NaN where none is claimed); ``None`` for a table without intervals.
        p_best: Holm-adjusted p-value of the paired test of each metric cell against the
            best of its column (NaN for the best itself and for cells not tested); ``None``
            when not computed.
        ci_note: how the intervals were made (the legend line under the table).
        alpha: the level of the ``≈`` marker (``p_best >= alpha``).
        show_ci: render the intervals (``--no-ci`` turns them off).
        unmarked: index keys (methods, or (backbone, method) in :func:`compare`) that never
            compete for best or second: methods with an invalid map (see :func:`contenders`).
        n_images: images with a value, per metric cell (same index and metric columns as
            ``df``); a cell with fewer than the most of its column (within a backbone block)
            is not ranked. ``None``: not known (every cell competes).
    """

    df: pd.DataFrame
    higher_is_better: Dict[str, bool]
    footnotes: List[str] = field(default_factory=list)
    lo: Optional[pd.DataFrame] = None
    hi: Optional[pd.DataFrame] = None
    p_best: Optional[pd.DataFrame] = None
    ci_note: str = ""
    alpha: float = paired.ALPHA
    show_ci: bool = True
    unmarked: Set = field(default_factory=set)
    #: the backbone as tables name it (``"vgg16"``, ``"tiny (random weights)"``); a one-run
    #: table's CSV carries it as its first column (a compare table has it in its index)
    backbone: str = ""
    n_images: Optional[pd.DataFrame] = None
    #: metric columns of 0/1 values (``MetricSpec.binary``: IC): exact Clopper-Pearson
    #: intervals shown as ``[lo, hi]``, exact McNemar tests for the ``≈``
    binary: Set[str] = field(default_factory=set)

    def to(self, fmt: str) -> str:
        """Render as ``"csv"``, ``"markdown"`` or ``"latex"``."""
        if fmt == "csv":
            return to_csv(self)
        if fmt in ("markdown", "md"):
            return to_markdown(self)
        if fmt in ("latex", "tex"):
            return to_latex(self)
        raise ValueError(f"unknown table format {fmt!r}; valid: {', '.join(FORMATS)}")





def summary(run, ci: bool = True, n_resamples: int = bootstrap.DEFAULT_RESAMPLES,
            seed: int = bootstrap.DEFAULT_SEED, level: float = bootstrap.LEVEL, alpha: float = paired.ALPHA,
            ci_method: str = "bca", tests: bool = True) -> Table:
    """The table of one :class:`~camzoo.bench.Run` (methods in config order).

    Args:
        run: the run.
        ci: compute the confidence interval of every metric cell (``Table.lo`` / ``hi``).
        n_resamples, seed, level, ci_method: the bootstrap (:func:`bootstrap.bootstrap_ci`).
        alpha: level of the paired tests against the best of each column (the ``≈`` marker).
        tests: run those tests (``Table.p_best``).
    """
    rows = run.rows()
    specs = run.specs()
    methods = run.methods
    df, better = _method_means(run, rows, specs)
    n_images = _image_counts(run, rows, specs)
    bbn = run_backbone_label(run)
    fail_notes, unmarked = failure_notes(run)
    table = Table(df, better, _summary_notes(run, rows, bbn) + fail_notes, alpha=alpha,
                  unmarked=unmarked, backbone=bbn, n_images=n_images,
                  binary={s.header for s in specs if s.binary})
    table.footnotes += coverage_notes(table) + unscored_notes(table, rows.groupby("method").size())
    if not (ci or tests) or not specs:
        return table
    mats = bootstrap.table_matrices(rows, specs, methods)
    if ci:
        _add_intervals(table, mats, n_resamples, seed, level, ci_method)
    if tests:
        table.p_best = near_best_tests(table, mats)
    return table


def _method_means(run, rows: pd.DataFrame, specs) -> Tuple[pd.DataFrame, Dict[str, bool]]:
    """The values of :func:`summary`'s table (a row per method, in config order: the mean of
    each metric in table units, the forward passes and the mean seconds per image) and each
    metric column's direction (``True`` = higher is better)."""
    methods = run.methods
    data: Dict[str, List[float]] = {}
    better: Dict[str, bool] = {}
    grouped = rows.groupby("method", sort=False)
    for s in specs:
        col = s.header
        better[col] = s.higher_is_better
        vals = []
        for m in methods:
            v = grouped.get_group(m)[s.key] if m in grouped.groups else pd.Series(dtype=float)
            v = pd.to_numeric(v, errors="coerce").dropna()
            vals.append(float(s.scale * v.mean()) if len(v) else float("nan"))
        data[col] = vals
    data[FW_COL] = [float(run.config["methods"][m]["forward_passes"]) for m in methods]
    data[TIME_COL] = [float(grouped.get_group(m)["seconds"].mean()) if m in grouped.groups else float("nan")
                      for m in methods]
    return pd.DataFrame(data, index=pd.Index(methods, name=METHOD_COL)), better


def _image_counts(run, rows: pd.DataFrame, specs) -> pd.DataFrame:
    """Images with a value per (method, metric column) of :func:`summary`'s table."""
    methods = run.methods
    grouped = rows.groupby("method", sort=False)
    data = {s.header: [int(pd.to_numeric(grouped.get_group(m)[s.key], errors="coerce").notna().sum())
                       if m in grouped.groups else 0 for m in methods] for s in specs}
    return pd.DataFrame(data, index=pd.Index(methods, name=METHOD_COL), columns=[s.header for s in specs])


def _covered(table: Table, col: str) -> np.ndarray:
    """True per row where ``col``'s value covers as many images as the most of any method of
    its block (always True when the counts are not known)."""
    out = np.ones(len(table.df), dtype=bool)
    if table.n_images is None or col not in table.n_images.columns:
        return out
    n = table.n_images[col].reindex(table.df.index).fillna(0).to_numpy(float)
    for blk in _blocks(table.df):
        out[blk] = n[blk] >= n[blk].max()
    return out


def coverage_notes(table: Table) -> List[str]:
    """A footnote per method whose values of some metric column cover fewer images than
    another method's (those cells are not ranked: see :func:`contenders`)."""
    if table.n_images is None:
        return []
    cols = [c for c in table.df.columns if c in table.higher_is_better and c in table.n_images.columns]
    short: Dict = {}
    for col in cols:
        n = table.n_images[col].reindex(table.df.index).fillna(0)
        covered = _covered(table, col)
        for blk in _blocks(table.df):
            most = int(n[blk].max())
            for key, k, ok in zip(table.df.index[blk], n[blk], covered[blk]):
                if not ok and k > 0:
                    short.setdefault(key, {}).setdefault((int(k), most), []).append(col)
    notes = []
    for key, groups in short.items():
        name = " ".join(key) if isinstance(key, tuple) else key
        parts = [f"values on {k} of {most} images" + ("" if len(groups) == 1 and len(c) == len(cols)
                                                       else f" in {', '.join(c)}")
                 for (k, most), c in groups.items()]
        notes.append(f"{name}: {'; '.join(parts)}; not ranked (compared on fewer images than the "
                     "other methods).")
    return notes


def unscored_notes(table: Table, per_method: pd.Series) -> List[str]:
    """One footnote for the columns whose values cover fewer of a method's images than it has
    rows (``per_method``: rows per method): a protocol that scores only some images (the
    localization protocol: images with a box of the explained class)."""
    if table.n_images is None:
        return []
    short: Dict[Tuple[int, int], List[str]] = {}
    for m in table.df.index:
        total = int(per_method.get(m, 0))
        for col in [c for c in table.df.columns if c in table.n_images.columns]:
            k = int(table.n_images[col].get(m, 0))
            if 0 < k < total:
                short.setdefault((k, total), []).append(col)
    # one line per (k, n), columns once: the same images are unscored for every method
    lines = {f"{', '.join(dict.fromkeys(cols))}: means over the {k} of {n} images the protocol "
             "scored (no value for the others, e.g. no box of the explained class)"
             for (k, n), cols in short.items()}
    return sorted(lines)


def _summary_notes(run, rows: pd.DataFrame, bbn: str) -> List[str]:
    """:func:`summary`'s footnotes before the failure notes: images per method and the
    explained class, the image list used, random weights (first), and the methods evaluated
    on their own classifier; ``bbn``: the backbone label."""
    methods = run.methods
    counts = rows.groupby("method").size()
    ns = sorted({int(counts.get(m, 0)) for m in methods})
    target = "ground-truth class" if run.config.get("target") == "gt" else "the classifier's top-1 class"
    n_txt = f"{ns[0]}" if len(ns) == 1 else f"{ns[0]}-{ns[-1]}"
    notes = [f"{bbn}: means over {n_txt} images per method, explaining {target}; "
             f"{len(run.errors())} unreadable image(s) skipped."]
    d = run.config.get("data", {})
    if d.get("subset"):
        missing = int(d.get("subset_missing") or 0)
        notes.append(f"images: the list {os.path.basename(str(d['subset']))} ({int(d.get('subset_listed', 0)) - missing} "
                     f"of its {d.get('subset_listed')} images found" + (f"; {missing} missing, run with "
                     "--allow-missing" if missing else "") + ").")
    if is_random(run.config["backbone"].get("weights_id")):
        notes.insert(0, f"{RANDOM_MARK.upper()}: {run.config['backbone']['name']} was run untrained "
                        "(--weights random); these numbers say nothing about a trained classifier.")
    for m in methods:
        clf = run.config["methods"][m].get("classifier", {})
        if clf.get("key", "backbone") != "backbone":
            notes.append(f"{m}: evaluated on its own classifier {clf.get('name')} "
                         f"({clf.get('weights_id')}), not on {bbn}.")
    return notes


def _add_intervals(table: Table, mats: Dict[str, pd.DataFrame], n_resamples: int, seed: int,
                   level: float, ci_method: str) -> None:
    """Set ``table.lo`` / ``hi`` (the bootstrap interval of every metric cell, from the
    per-image ``mats``) and ``table.ci_note`` saying how they were computed."""
    lo, hi = bootstrap.cell_intervals(mats, n_resamples, seed, level, ci_method, binary=table.binary)
    table.lo, table.hi = lo.set_axis(table.df.index), hi.set_axis(table.df.index)
    kind = {"bca": "BCa", "percentile": "percentile"}[ci_method]
    table.ci_note = (f"\u00b1: half-width of the {100 * level:g} % {kind} bootstrap interval over "
                     f"images ({n_resamples:,} resamples, seed {seed}, the same resampled images "
                     f"for every method); {NO_CI}: no interval (fewer than 2 images or all "
                     "values equal)."
                     + (f" [lo, hi] in {', '.join(sorted(table.binary))}: the exact (Clopper-Pearson) "
                        f"{100 * level:g} % interval of the percentage of images."
                        if table.binary & set(mats) else ""))


def run_backbone_label(run) -> str:
    """The run's backbone as tables and figures name it, ``"(random weights)"`` appended when
    its weights were random."""
    b = run.config["backbone"]
    return backbone_label(b["name"], b.get("weights_id"))


def failure_notes(run) -> Tuple[List[str], Set[str]]:
    """Footnotes for the (method, image) pairs a method could not evaluate, and the methods
    that may not be marked best or second (those with any invalid map)."""
    fails = run.failures()
    if not len(fails):
        return [], set()
    n_images = int(run.config["data"]["n_images"]) - len(run.errors())
    notes, unmarked = [], set()
    for m in run.methods:
        f = fails[fails.method == m]
        if not len(f):
            continue
        # distinct images per kind (a map failure and protocol failures of one image count once)
        kinds = f.drop_duplicates(["image_id", "kind"]).kind.value_counts()
        protos = sorted({p for p in f.get("protocol", pd.Series(dtype=str)).fillna("") if p})
        parts = []
        if kinds.get("error", 0):
            parts.append(f"{int(kinds['error'])} of {n_images} images failed"
                         + (f" (protocol{'s' if len(protos) > 1 else ''} {', '.join(protos)})" if protos else ""))
        if kinds.get("invalid", 0):
            parts.append(f"{int(kinds['invalid'])} of {n_images} maps invalid (not finite or "
                         "outside [0,1]): left out of its means, never marked best")
            unmarked.add(m)
        if kinds.get("skipped", 0):
            parts.append(f"{int(kinds['skipped'])} of {n_images} images not evaluated (the method "
                         "was stopped after failing on its first batches)")
        notes.append(f"{m}: " + "; ".join(parts) + f" (see `camzoo errors {run.dir}`).")
    return notes, unmarked



def near_best_tests(table: Table, mats: Dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Holm-adjusted p-values of each contender against the best of its column.

    For every metric column, the reference is the contender marked best (:func:`marks`; of
    several tied at the printed precision, the one with the best unrounded mean); every
    pair of contenders is tested on the mean difference over the images both have (sign-flip
    permutation test; exact McNemar on 0/1 columns) and Holm's correction runs over **all**
    those pairs (:func:`paired.vs_best`), so the ``≈`` keeps its family-wise error although
    the best is chosen from the data (docs/stats.md).

    Args:
        table: a one-run table (no backbone blocks).
        mats: ``{column: images x methods}`` per-image values in table units.
    Returns:
        DataFrame like ``table.df``'s metric columns; NaN for the reference, for cells
        marked best (tied with it) and for non-contenders.
    """
    mk = marks(table)
    comp = contenders(table)
    out = pd.DataFrame(np.nan, index=table.df.index, columns=list(mats))
    for col, X in mats.items():
        best = [m for m in table.df.index if mk.loc[m, col] == "best"]
        if not best:
            continue
        sign = 1.0 if table.higher_is_better[col] else -1.0
        ref = max(best, key=lambda m: sign * float(table.df.loc[m, col]))
        family = [m for m in table.df.index if comp.loc[m, col]]
        p = paired.vs_best(X[family].to_numpy(), table.higher_is_better[col], best=family.index(ref),
                           binary=col in table.binary)
        others = [m for m in family if mk.loc[m, col] != "best"]
        out.loc[others, col] = [p[family.index(m)] for m in others]
    return out


def compare(runs: Sequence, **options) -> Table:
    """Stack runs (typically of different backbones) into one table, a block per run.

    The index is ``(backbone, method)``; columns are the union of the runs' columns in
    paper order; marks (best/second), intervals and tests are computed within each block.
    ``options`` go to :func:`summary`.
    """
    if not runs:
        raise ValueError("compare needs at least one run")
    tables = [summary(r, **options) for r in runs]
    cols: List[str] = []
    better: Dict[str, bool] = {}
    for t in tables:
        better.update(t.higher_is_better)
    metric_cols = [c for t in tables for c in t.df.columns if c in better]
    order = list(dict.fromkeys(metric_cols))
    # keep the paper order across runs: the first run's order, extended
    cols = order + [FW_COL, TIME_COL]
    frames = []
    names = []
    for r, t in zip(runs, tables):
        name = run_backbone_label(r)
        base, k = name, 2
        while name in names:
            name, k = f"{base} ({k})", k + 1
        names.append(name)
        df = t.df.reindex(columns=cols)
        df.index = pd.MultiIndex.from_product([[name], list(df.index)], names=[BACKBONE_COL, METHOD_COL])
        frames.append(df)
    notes = list(dict.fromkeys(n for t in tables for n in t.footnotes))
    mcols = [c for c in cols if c in better]

    def stack(attr):
        parts = [getattr(t, attr) for t in tables]
        if any(p is None for p in parts):
            return None
        return pd.concat([p.reindex(columns=mcols).set_axis(f.index, axis=0) for p, f in zip(parts, frames)])

    unmarked = {(name, m) for name, t in zip(names, tables) for m in t.unmarked}
    out = Table(pd.concat(frames), better, notes, stack("lo"), stack("hi"), stack("p_best"),
                tables[0].ci_note, tables[0].alpha, unmarked=unmarked, n_images=stack("n_images"),
                binary=set().union(*(t.binary for t in tables)))
    return out



# -- formatting --------------------------------------------------------------------------
def format_value(col: str, v: float) -> str:
    """A value of column ``col`` as the tables print it (``-`` for a missing one)."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if col == FW_COL:
        return f"{int(round(v))}"
    if col == TIME_COL:  # seconds, no scientific notation
        if 0 < v < 0.0005:
            return "<0.001"
        return f"{v:.0f}" if v >= 100 else f"{v:.2f}" if v >= 1 else f"{v:.3f}"
    return f"{v:.{DECIMALS}f}"


def _blocks(df: pd.DataFrame) -> List[np.ndarray]:
    """Boolean row masks of the backbone blocks of a :func:`compare` table (one block otherwise)."""
    if isinstance(df.index, pd.MultiIndex):
        return [df.index.get_level_values(0) == b for b in dict.fromkeys(df.index.get_level_values(0))]
    return [np.ones(len(df), dtype=bool)]


def contenders(table: Table) -> pd.DataFrame:
    """The cells that compete for best / second (and are tested against the best): bool, like
    ``table.df``, True for every metric cell with a value of a method not in
    ``table.unmarked`` whose values cover as many images as any method's of its column and
    block (``table.n_images``; a method that failed on some images is not ranked: its mean is
    over other images). The one place that decides it: :func:`marks`,
    :func:`near_best_tests` and :func:`near_best` all ask here."""
    df = table.df
    out = pd.DataFrame(False, index=df.index, columns=df.columns)
    # a method with an invalid map competes for nothing (its means leave images out)
    eligible = np.array([k not in table.unmarked for k in df.index], dtype=bool)
    for col in df.columns:
        if col in table.higher_is_better:
            out[col] = df[col].astype(float).notna().to_numpy() & eligible & _covered(table, col)
    return out


def marks(table: Table) -> pd.DataFrame:
    """``"best"``, ``"second"`` or ``""`` per cell (within each backbone block).

    Only :func:`contenders` are ranked. Values are compared at the printed precision (2
    decimals); a column whose printed values are all equal gets bold everywhere and no
    underline.
    """
    df = table.df
    comp = contenders(table)
    out = pd.DataFrame("", index=df.index, columns=df.columns)
    for col in df.columns:
        if col not in table.higher_is_better:
            continue
        sign = 1.0 if table.higher_is_better[col] else -1.0
        for blk in _blocks(df):
            vals = df.loc[blk, col].astype(float).round(DECIMALS)
            ok = comp.loc[blk, col]
            uniq = sorted({float(v) * sign for v, c in zip(vals, ok) if c}, reverse=True)
            if not uniq:
                continue
            for i, v, c in zip(vals.index, vals, ok):
                if not c:
                    continue
                if float(v) * sign == uniq[0]:
                    out.loc[i, col] = "best"
                elif len(uniq) > 1 and float(v) * sign == uniq[1]:
                    out.loc[i, col] = "second"
    return out


def near_best(table: Table) -> pd.DataFrame:
    """True for the :func:`contenders` cells not significantly different from the best of
    their column (``p_best >= alpha``); all False without tests."""
    out = pd.DataFrame(False, index=table.df.index, columns=table.df.columns)
    if table.p_best is not None:
        comp = contenders(table)
        for col in table.p_best.columns:
            ok = comp[col].to_numpy() if col in comp.columns else False
            out[col] = (table.p_best[col] >= table.alpha).to_numpy() & ok
    return out


def _half_width(table: Table, i: int, col: str):
    """The half-width of cell (row ``i``, ``col``); ``(lo, hi)`` for a 0/1 column (its exact
    interval is not symmetric); None = no interval claimed; NaN = the table has no intervals
    for this column."""
    if table.lo is None or col not in table.lo.columns:
        return float("nan")
    lo, hi = float(table.lo.iloc[i][col]), float(table.hi.iloc[i][col])
    if math.isnan(lo) or math.isnan(hi):
        return None
    return (lo, hi) if col in table.binary else (hi - lo) / 2.0


def legend(table: Table) -> List[str]:
    """The lines explaining the table's signs (intervals, ``≈``), shown under it."""
    out = []
    if table.show_ci and table.lo is not None and table.ci_note:
        out.append(table.ci_note)
    if near_best(table).to_numpy().any():
        out.append(f"{NEAR}: not significantly worse than the best of its column (paired test of "
                   f"the mean difference: sign-flip permutation test, exact McNemar for 0/1 columns; "
                   f"Holm-corrected over all pairs of the column's methods, alpha = {table.alpha:g}).")
    return out


def cells(table: Table, i: int, style, plain=str) -> List[str]:
    """The rendered value cells of row ``i``: ``style(value, half_width, mark, near)``
    renders a metric cell (``half_width``: float, None = no interval, NaN = not shown),
    ``plain(text)`` the others."""
    df = table.df
    mk, nb = marks(table), near_best(table)
    out = []
    for col in df.columns:
        v = df.iloc[i][col]
        s = format_value(col, v)
        if col in table.higher_is_better and s != "-":
            hw = _half_width(table, i, col) if table.show_ci else float("nan")
            s = style(s, hw, mk.iloc[i][col], bool(nb.iloc[i][col]))
        else:
            s = plain(s)
        out.append(s)
    return out


def to_csv(table: Table) -> str:
    """CSV with full-precision values (method / backbone columns first), each metric column
    followed by its interval ``<column>_lo``, ``<column>_hi`` (empty where none is claimed);
    no footnotes."""
    df = table.df.copy()
    if table.lo is not None and table.show_ci:
        cols = []
        for c in table.df.columns:
            cols.append(c)
            if c in table.lo.columns:
                df[f"{c}_lo"], df[f"{c}_hi"] = table.lo[c], table.hi[c]
                cols += [f"{c}_lo", f"{c}_hi"]
        df = df[cols]
    df = df.reset_index()
    if table.backbone and BACKBONE_COL not in df.columns:
        df.insert(0, BACKBONE_COL, table.backbone)
    buf = io.StringIO()
    df.to_csv(buf, index=False, float_format="%.6g")
    return buf.getvalue()


@dataclass(frozen=True)
class CellStyle:
    """How a format writes a metric cell: ``best`` / ``second`` wrap the value (``{}``),
    ``ci`` follows it with the half-width (``{}``), ``no_ci`` where no interval is claimed,
    ``near`` is the ``≈`` marker, ``wrap`` encloses the whole cell, ``interval`` follows the
    value with the ends of a 0/1 column's exact interval."""

    best: str
    second: str
    ci: str
    no_ci: str
    near: str
    wrap: str = "{}"
    interval: str = " [{}, {}]"

    def cell(self, s: str, hw, mark: str, near: bool) -> str:
        """The cell of printed value ``s``; ``hw``: half-width, ``(lo, hi)`` (a 0/1 column),
        None = no interval claimed, NaN = intervals not shown."""
        s = self.best.format(s) if mark == "best" else self.second.format(s) if mark == "second" else s
        if isinstance(hw, tuple):
            s += self.interval.format(*(f"{v:.{DECIMALS}f}" for v in hw))
        elif hw is None:
            s += self.no_ci
        elif not math.isnan(hw):
            s += self.ci.format(f"{hw:.{DECIMALS}f}")
        return self.wrap.format(s + (self.near if near else ""))


MARKDOWN = CellStyle("**{}**", "<u>{}</u>", " \u00b1 {}", f" \u00b1 {NO_CI}", f" {NEAR}")
LATEX = CellStyle(r"\mathbf{{{}}}", r"\underline{{{}}}", r"_{{\pm {}}}", r"_{\pm\textrm{---}}", r"^{\approx}",
                  "${}$", r"_{{[{}, {}]}}")


def to_markdown(table: Table) -> str:
    """A pipe table: ``value ± half-width``, best in **bold**, second <u>underlined</u>,
    ``≈`` = not significantly different from the best; legend and footnotes below."""
    df = table.df
    multi = isinstance(df.index, pd.MultiIndex)
    head = ([BACKBONE_COL] if multi else []) + [METHOD_COL] + list(df.columns)
    rows = [(list(key) if multi else [key]) + cells(table, i, MARKDOWN.cell)
            for i, key in enumerate(df.index)]
    lines = markdown_table(head, rows, "l" * (2 if multi else 1) + "r" * len(df.columns))
    for n in legend(table) + table.footnotes:
        lines.append("")
        lines.append(f"<sub>{n}</sub>")
    return "\n".join(lines) + "\n"


_TEX_ESC = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
            "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
            "\u2191": r"$\uparrow$", "\u2193": r"$\downarrow$", "\u00b1": r"$\pm$",
            "\u2248": r"$\approx$", "\u2014": "---", "\u2013": "--", "\u00a0": "~", "<": "$<$",
            ">": "$>$"}


def _tex(s: str) -> str:
    return "".join(_TEX_ESC.get(ch, ch) for ch in str(s))


def to_latex(table: Table) -> str:
    """A booktabs ``tabular``: each metric cell ``$13.60_{\\pm 2.10}$``, best bold
    (``\\mathbf``), second underlined, ``$^{\\approx}$`` = not significantly different from
    the best; a block per backbone (``\\multicolumn`` header rows) for :func:`compare` tables;
    legend and footnotes as last rows. Needs only ``\\usepackage{booktabs}``."""
    df = table.df
    multi = isinstance(df.index, pd.MultiIndex)
    ncol = 1 + len(df.columns)
    lines = [r"\begin{tabular}{l" + "r" * len(df.columns) + "}", r"\toprule",
             " & ".join([METHOD_COL] + [_tex(c) for c in df.columns]) + r" \\", r"\midrule"]
    prev = None
    for i, key in enumerate(df.index):
        if multi:
            block, method = key
            if block != prev:
                if prev is not None:
                    lines.append(r"\midrule")
                lines.append(rf"\multicolumn{{{ncol}}}{{c}}{{\textit{{{_tex(block)}}}}} \\")
                lines.append(r"\midrule")
                prev = block
        else:
            method = key
        lines.append(" & ".join([_tex(method)] + cells(table, i, LATEX.cell, _tex)) + r" \\")
    lines.append(r"\bottomrule")
    for n in legend(table) + table.footnotes:
        lines.append(rf"\multicolumn{{{ncol}}}{{l}}{{\footnotesize {_tex(n)}}} \\")
    lines.append(r"\end{tabular}")
    return "\n".join(lines) + "\n"


def per_image_csv(run) -> str:
    """The stored per-image rows (no curves) as CSV, ordered by method and manifest index."""
    buf = io.StringIO()
    run.rows().to_csv(buf, index=False, float_format="%.9g")
    return buf.getvalue()


def write_tables(run) -> str:
    """Write ``table.csv``, ``table.md``, ``table.tex`` and ``per_image.csv`` into the run
    directory; return the Markdown table."""
    t = summary(run)
    md = t.to("markdown")
    for name, text in (("table.csv", t.to("csv")), ("table.md", md), ("table.tex", t.to("latex")),
                       ("per_image.csv", per_image_csv(run))):
        atomic_write(os.path.join(run.dir, name), text)
    return md
