"""Paper-style tables of bench runs: CSV, Markdown and LaTeX (booktabs).

One row per method; columns AD(100%)↓, IC(100%)↑, AD(50%)↓, IC(50%)↑, AD(15%)↓, IC(15%)↑,
Ins↑, Del↓, Coherency↑, Complexity↓, ADCC↑ (only those of the protocols the run computed),
then #FW (the explainer's forward passes per map) and s/img (measured map time). Every
metric value is ``scale * mean over images`` of its per-image value, with the scale and
direction given by the protocol's :class:`~camzoo.metrics.MetricSpec` (all x100 / percent).
In LaTeX and Markdown the best value of each metric column is bold and the second best
underlined (compared at the printed precision; ties share the mark), like the papers.
"""
from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass, field
from typing import Dict, List, Sequence, Set, Tuple

import numpy as np
import pandas as pd

from ..utils import atomic_write

FORMATS = ("csv", "markdown", "latex")
FW_COL = "#FW"
TIME_COL = "s/img"
METHOD_COL = "Method"
BACKBONE_COL = "Backbone"
DECIMALS = 2


@dataclass
class Table:
    """A summary table.

    Attributes:
        df: one row per method (index = method names, or (backbone, method) for
            :func:`compare`); float columns, headers with direction arrows.
        higher_is_better: ``{column: bool}`` for the metric columns (the ones that get marks).
        footnotes: lines printed under the table (image counts, unreadable images, failures).
        unmarked: index keys (methods, or (backbone, method) in :func:`compare`) never marked
            best or second: methods with an invalid map.
    """

    df: pd.DataFrame
    higher_is_better: Dict[str, bool]
    footnotes: List[str] = field(default_factory=list)
    unmarked: Set = field(default_factory=set)

    def to(self, fmt: str) -> str:
        """Render as ``"csv"``, ``"markdown"`` or ``"latex"``."""
        if fmt == "csv":
            return to_csv(self)
        if fmt in ("markdown", "md"):
            return to_markdown(self)
        if fmt in ("latex", "tex"):
            return to_latex(self)
        raise ValueError(f"unknown table format {fmt!r}; valid: {', '.join(FORMATS)}")


def _specs(run):
    from ..metrics.protocol import table_metrics

    protos = run.config["protocols"]
    return table_metrics(list(protos), {p: v["options"] for p, v in protos.items()})


def summary(run) -> Table:
    """The table of one :class:`~camzoo.results.Run` (methods in config order)."""
    rows = run.rows()
    errors = run.errors()
    specs = _specs(run)
    methods = run.methods
    data: Dict[str, List[float]] = {}
    better: Dict[str, bool] = {}
    grouped = rows.groupby("method", sort=False)
    for s in specs:
        col = f"{s.column}{s.arrow}"
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
    df = pd.DataFrame(data, index=pd.Index(methods, name=METHOD_COL))
    counts = rows.groupby("method").size()
    ns = sorted({int(counts.get(m, 0)) for m in methods})
    target = "ground-truth class" if run.config.get("target") == "gt" else "the classifier's top-1 class"
    n_txt = f"{ns[0]}" if len(ns) == 1 else f"{ns[0]}-{ns[-1]}"
    bbn = run.config["backbone"]["name"]
    notes = [f"{bbn}: means over {n_txt} images per method, explaining {target}; "
             f"{len(errors)} unreadable image(s) skipped."]
    for m in methods:
        clf = run.config["methods"][m].get("classifier", {})
        if clf.get("key", "backbone") != "backbone":
            notes.append(f"{m}: evaluated on its own classifier {clf.get('name')} "
                         f"({clf.get('weights_id')}), not on {bbn}.")
    fail_notes, unmarked = failure_notes(run)
    return Table(df, better, notes + fail_notes, unmarked=unmarked)


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
        kinds = f.kind.value_counts()
        parts = []
        if kinds.get("error", 0):
            parts.append(f"{int(kinds['error'])} of {n_images} images failed")
        if kinds.get("invalid", 0):
            parts.append(f"{int(kinds['invalid'])} of {n_images} maps invalid (not finite or "
                         "outside [0,1]): left out of its means, never marked best")
            unmarked.add(m)
        if kinds.get("skipped", 0):
            parts.append(f"{int(kinds['skipped'])} of {n_images} images not evaluated (the method "
                         "was stopped after failing on its first batches)")
        notes.append(f"{m}: " + "; ".join(parts) + f" (see `camzoo errors {run.dir}`).")
    return notes, unmarked


def compare(runs: Sequence) -> Table:
    """Stack runs (typically of different backbones) into one table, a block per run.

    The index is ``(backbone, method)``; columns are the union of the runs' columns in
    paper order; marks (best/second) are computed within each block.
    """
    if not runs:
        raise ValueError("compare needs at least one run")
    tables = [summary(r) for r in runs]
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
        name = r.config["backbone"]["name"]
        base, k = name, 2
        while name in names:
            name, k = f"{base} ({k})", k + 1
        names.append(name)
        df = t.df.reindex(columns=cols)
        df.index = pd.MultiIndex.from_product([[name], list(df.index)], names=[BACKBONE_COL, METHOD_COL])
        frames.append(df)
    notes = [n for t in tables for n in t.footnotes]
    unmarked = {(name, m) for name, t in zip(names, tables) for m in t.unmarked}
    return Table(pd.concat(frames), better, notes, unmarked=unmarked)


# -- formatting --------------------------------------------------------------------------
def _fmt(col: str, v: float) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if col == FW_COL:
        return f"{int(round(v))}"
    if col == TIME_COL:  # seconds, no scientific notation
        if 0 < v < 0.0005:
            return "<0.001"
        return f"{v:.0f}" if v >= 100 else f"{v:.2f}" if v >= 1 else f"{v:.3f}"
    return f"{v:.{DECIMALS}f}"


def marks(table: Table) -> pd.DataFrame:
    """``"best"``, ``"second"`` or ``""`` per cell (within each backbone block).

    Values are compared at the printed precision (2 decimals); NaN cells and the methods in
    ``table.unmarked`` get no mark; a column whose printed values are all equal gets bold
    everywhere and no underline.
    """
    df = table.df
    out = pd.DataFrame("", index=df.index, columns=df.columns)
    if isinstance(df.index, pd.MultiIndex):
        blocks = [df.index.get_level_values(0) == b for b in dict.fromkeys(df.index.get_level_values(0))]
    else:
        blocks = [np.ones(len(df), dtype=bool)]
    for col in df.columns:
        if col not in table.higher_is_better:
            continue
        sign = 1.0 if table.higher_is_better[col] else -1.0
        for blk in blocks:
            vals = df.loc[blk, col].astype(float).round(DECIMALS)
            # a method with an invalid map competes for no mark (its means leave images out)
            vals = vals[[k not in table.unmarked for k in vals.index]]
            uniq = sorted({float(v) * sign for v in vals if not math.isnan(v)}, reverse=True)
            if not uniq:
                continue
            idx = vals.index
            for i, v in zip(idx, vals):
                if math.isnan(v):
                    continue
                if float(v) * sign == uniq[0]:
                    out.loc[i, col] = "best"
                elif len(uniq) > 1 and float(v) * sign == uniq[1]:
                    out.loc[i, col] = "second"
    return out


def to_csv(table: Table) -> str:
    """CSV with full-precision values (method / backbone columns first); no footnotes."""
    df = table.df.reset_index()
    buf = io.StringIO()
    df.to_csv(buf, index=False, float_format="%.6g")
    return buf.getvalue()


def to_markdown(table: Table) -> str:
    """A pipe table: best in **bold**, second <u>underlined</u>; footnotes below."""
    df = table.df
    mk = marks(table)
    multi = isinstance(df.index, pd.MultiIndex)
    head = ([BACKBONE_COL] if multi else []) + [METHOD_COL] + list(df.columns)
    lines = ["| " + " | ".join(head) + " |",
             "|" + "|".join([":---"] * (2 if multi else 1) + ["---:"] * len(df.columns)) + "|"]
    for i, key in enumerate(df.index):
        cells = list(key) if multi else [str(key)]
        for col in df.columns:
            s = _fmt(col, df.iloc[i][col])
            m = mk.iloc[i][col]
            s = f"**{s}**" if m == "best" else f"<u>{s}</u>" if m == "second" else s
            cells.append(s)
        lines.append("| " + " | ".join(cells) + " |")
    for n in table.footnotes:
        lines.append("")
        lines.append(f"<sub>{n}</sub>")
    return "\n".join(lines) + "\n"


_TEX_ESC = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
            "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def _tex(s: str) -> str:
    s = "".join(_TEX_ESC.get(ch, ch) for ch in str(s))
    return s.replace("\u2191", r"$\uparrow$").replace("\u2193", r"$\downarrow$")


def to_latex(table: Table) -> str:
    """A booktabs ``tabular``: best bold, second underlined; a block per backbone
    (``\\multicolumn`` header rows) for :func:`compare` tables; footnotes as a last row."""
    df = table.df
    mk = marks(table)
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
        cells = [_tex(method)]
        for col in df.columns:
            s = _fmt(col, df.iloc[i][col])
            m = mk.iloc[i][col]
            s = rf"\textbf{{{s}}}" if m == "best" else rf"\underline{{{s}}}" if m == "second" else s
            cells.append(s)
        lines.append(" & ".join(cells) + r" \\")
    lines.append(r"\bottomrule")
    for n in table.footnotes:
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
