"""A camzoo run next to a table of published results.

``lcam-table1``: I. Gkartzonika, N. Gkalelis, V. Mezaris, "Learning Visual Explanations for
DCNN-Based Image Classifiers Using an Attention Mechanism", ECCV 2022 Workshops, Table 1:
AD / IC at ν = 100 %, 50 %, 15 % and #FW for Grad-CAM, Grad-CAM++, Score-CAM, RISE, L-CAM-Fm,
L-CAM-Img (and the ablation rows L-CAM-Fm*, L-CAM-Img*, L-CAM-Img†) on VGG-16 and ResNet-50,
over 2,000 ILSVRC-2012 validation images (the authors' ``Evaluation_2000.txt``), explaining
the classifier's top-1 class. The values, as printed, are package data
(``camzoo/results/references/lcam-table1.csv``, long form
``backbone,method,published_name,column,value``; see the README.md beside it).

:func:`compare_to_reference` gives, for every method of the run the reference has for the
run's backbone and every metric column both have: camzoo's mean and its bootstrap interval
(from :func:`camzoo.results.tables.summary`), the published value, the difference
``camzoo - published`` and whether the published value lies inside the interval; and #FW
side by side (no interval). The core is the pure :func:`reference_rows` over a
:class:`~camzoo.results.tables.Table` and the reference DataFrame.

Layout (:meth:`ReferenceTable.to`): one row per (method, column), in run order then paper
order, columns ``Method | Paper row | Column | camzoo | CI | Paper | camzoo − paper |
Paper in CI``, e.g. ``| gradcam | Grad-CAM | AD(100%)↓ | 33.10 | [30.20, 36.05] | 32.12 |
+0.98 | yes |``; ``—`` where no interval is claimed. CSV has the same rows at full precision
(``method, published_name, column, camzoo, lo, hi, published, diff, inside``). Footnotes say
which methods of the run the paper lacks, which published rows the run lacks ("published
only"), how the run's protocol differs from the paper's (weights, target, images), and the
documented reasons camzoo and the paper differ.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Dict, List, Mapping, Optional

import pandas as pd

from ..utils import markdown_table
from . import bootstrap
from .tables import FW_COL, NO_CI, Table, _tex, summary

#: reference name -> CSV file in ``camzoo/results/references/``
REFERENCES: Dict[str, str] = {"lcam-table1": "lcam-table1.csv"}

#: what each reference's numbers come from (the legend line under the table)
SOURCES: Dict[str, str] = {
    "lcam-table1": ("Gkartzonika et al., \"Learning Visual Explanations for DCNN-Based Image "
                    "Classifiers Using an Attention Mechanism\", ECCV 2022 Workshops, Table 1 "
                    "(2,000 ILSVRC-2012 val images of the authors' Evaluation_2000.txt, "
                    "explaining the top-1 class)"),
}

#: the data subset name camzoo records for the paper's 2,000 images (``config["data"]["subset"]``)
PAPER_SUBSET = "lcam-2000"
PAPER_TARGET = "pred"

REF_COLUMNS = ["backbone", "method", "published_name", "column", "value"]
ROW_COLUMNS = ["method", "published_name", "column", "camzoo", "lo", "hi", "published", "diff", "inside"]
ARROWS = ("\u2191", "\u2193")
FORMATS = ("markdown", "csv", "latex")


def load_reference(name: str) -> pd.DataFrame:
    """The published values of reference ``name`` (:data:`REFERENCES`): a DataFrame with
    columns ``backbone, method, published_name, column, value`` (value: float)."""
    if name not in REFERENCES:
        raise ValueError(f"unknown reference {name!r}; valid: {', '.join(sorted(REFERENCES))}")
    res = resources.files("camzoo.results").joinpath("references").joinpath(REFERENCES[name])
    with res.open("r", encoding="utf-8") as f:
        df = pd.read_csv(f, dtype={"backbone": str, "method": str, "published_name": str, "column": str})
    if list(df.columns) != REF_COLUMNS:
        raise ValueError(f"reference {name!r}: columns {list(df.columns)}, expected {REF_COLUMNS}")
    df["value"] = df["value"].astype(float)
    return df


def _bare(col: str) -> str:
    """A table header without its direction arrow: ``"AD(100%)↓"`` -> ``"AD(100%)"``."""
    return col[:-1] if col.endswith(ARROWS) else col


def _inside(lo: float, hi: float, value: float) -> str:
    if math.isnan(lo) or math.isnan(hi):
        return NO_CI
    return "yes" if lo <= value <= hi else "no"


def reference_rows(table: Table, ref: pd.DataFrame, backbone: str) -> pd.DataFrame:
    """The comparison rows of a one-run table against a reference (pure; no footnotes).

    Args:
        table: a :func:`~camzoo.results.tables.summary` table (index = method names, headers
            with arrows, ``#FW``); ``lo`` / ``hi`` may be ``None`` (no intervals).
        ref: a :func:`load_reference` DataFrame.
        backbone: the reference's backbone block to compare with (``"vgg16"``...).
    Returns:
        One row per (method, column) for the methods in both (table order) and the columns
        in both (in the order the reference lists them for the method; ``#FW`` included):
        ``method, published_name, column`` (bare, no arrow), ``camzoo`` (the table's mean),
        ``lo``, ``hi`` (its interval; NaN for none and for ``#FW``), ``published``, ``diff``
        (``camzoo - published``), ``inside`` (``"yes"`` / ``"no"``: whether
        ``lo <= published <= hi``; ``"—"`` without an interval).
    """
    block = ref[ref["backbone"] == backbone]
    by_bare = {_bare(c): c for c in table.df.columns if c in table.higher_is_better or c == FW_COL}
    out = []
    for m in table.df.index:
        mref = block[block["method"] == m]
        for col, pub, pub_name in zip(mref["column"], mref["value"], mref["published_name"]):
            if col not in by_bare:
                continue
            tcol = by_bare[col]
            mean = float(table.df.loc[m, tcol])
            lo = hi = float("nan")
            if tcol != FW_COL and table.lo is not None and tcol in table.lo.columns:
                lo, hi = float(table.lo.loc[m, tcol]), float(table.hi.loc[m, tcol])
            pub, pub_name = float(pub), str(pub_name)
            out.append({"method": m, "published_name": pub_name, "column": col, "camzoo": mean,
                        "lo": lo, "hi": hi, "published": pub, "diff": mean - pub,
                        "inside": _inside(lo, hi, pub)})
    return pd.DataFrame(out, columns=ROW_COLUMNS)


def _is_random(bb: Mapping[str, Any]) -> bool:
    """The run's backbone had random weights: ``random_weights`` set, a ``weights_id`` that
    says so (``"random"``, ``"random:seed0"``, ``"...|weights=random"``) or ``weights="random"``."""
    wid = str(bb.get("weights_id") or "")
    return (bool(bb.get("random_weights")) or wid.startswith("random") or wid.endswith("weights=random")
            or bb.get("weights") == "random")


def protocol_notes(config: Mapping[str, Any]) -> List[str]:
    """Footnotes for a run config whose setup is not the paper's: random weights, another
    target, other images (not the ``lcam-2000`` subset)."""
    notes = []
    bb = config.get("backbone", {})
    if _is_random(bb):
        notes.append(f"{bb.get('name')} has random weights in this run: the comparison with "
                     "published values is meaningless.")
    target = config.get("target", PAPER_TARGET)
    if target != PAPER_TARGET:
        notes.append(f"this run explains target {target!r} (the ground-truth class); the paper "
                     "explains the classifier's top-1 class (target 'pred').")
    data = config.get("data", {})
    subset = data.get("subset")
    if subset != PAPER_SUBSET:
        what = f"subset {subset!r}" if subset else "no named subset"
        notes.append(f"this run's images: {data.get('n_images', '?')} from {data.get('root')} "
                     f"({what}); the paper's: the 2,000 images of subset {PAPER_SUBSET!r}.")
    return notes


def expected_notes(rows: pd.DataFrame, backbone: str) -> List[str]:
    """The documented reasons camzoo's numbers and the paper's differ, for the methods in
    ``rows`` (a :func:`reference_rows` frame)."""
    ms = set(rows["method"])
    notes = []
    cams = [p for m, p in (("gradcam", "Grad-CAM"), ("gradcam++", "Grad-CAM++"), ("scorecam", "Score-CAM"))
            if m in ms]
    if cams:
        notes.append(f"{', '.join(cams)}: the paper used github.com/yiskw713/ScoreCAM; camzoo follows "
                     "the implementations listed in docs/explainers.md.")
    if "scorecam" in ms:
        notes.append("#FW: camzoo counts Score-CAM's clean forward too (K + 1); the paper prints K.")
    if "rise" in ms:
        notes.append("RISE masks are random: another mask draw moves RISE by its own sampling "
                     "noise, which the interval over images does not include.")
    if backbone == "vgg16" and ms & {"lcam-fm", "lcam-img"}:
        notes.append("the authors' VGG-16 L-CAM heads were trained at 100x / 200x the stated "
                     "learning rate 1e-4 (L_CAM_VGG16/my_optim.py: `if '' in name` is always "
                     "true, so every head weight gets lr*100 = 1e-2 and every bias lr*200 = 2e-2).")
    return notes


@dataclass
class ReferenceTable:
    """The comparison of a run with a reference.

    Attributes:
        df: :func:`reference_rows`' frame.
        footnotes: lines printed under the table.
        reference: the reference name.
        backbone: the reference block compared with.
        arrows: ``{bare column: header with arrow}`` for the metric columns (display only).
        legend: the line explaining the columns.
    """

    df: pd.DataFrame
    footnotes: List[str] = field(default_factory=list)
    reference: str = ""
    backbone: str = ""
    arrows: Dict[str, str] = field(default_factory=dict)
    legend: str = ""

    def to(self, fmt: str) -> str:
        """Render as ``"markdown"``, ``"csv"`` or ``"latex"``."""
        if fmt in ("markdown", "md"):
            return self._markdown()
        if fmt == "csv":
            buf = io.StringIO()
            self.df.to_csv(buf, index=False, float_format="%.6g")
            return buf.getvalue()
        if fmt in ("latex", "tex"):
            return self._latex()
        raise ValueError(f"unknown format {fmt!r}; valid: {', '.join(FORMATS)}")

    HEAD = ["Method", "Paper row", "Column", "camzoo", "CI", "Paper", "camzoo \u2212 paper", "Paper in CI"]

    def _cells(self) -> List[List[str]]:
        out = []
        for r in self.df.itertuples(index=False):
            fw = r.column == FW_COL
            mean = f"{r.camzoo:.0f}" if fw else f"{r.camzoo:.2f}"
            ci = NO_CI if (math.isnan(r.lo) or math.isnan(r.hi)) else f"[{r.lo:.2f}, {r.hi:.2f}]"
            diff = f"{r.diff:+.0f}" if fw else f"{r.diff:+.2f}"
            if math.isnan(r.camzoo):
                mean = diff = "-"
            out.append([r.method, r.published_name, self.arrows.get(r.column, r.column), mean, ci,
                        f"{r.published:g}", diff, r.inside])
        return out

    def _markdown(self) -> str:
        lines = [f"Reference {self.reference} ({self.backbone})", ""]
        lines += markdown_table(self.HEAD, self._cells(), "lllrrrrc")
        for n in ([self.legend] if self.legend else []) + self.footnotes:
            lines += ["", f"<sub>{n}</sub>"]
        return "\n".join(lines) + "\n"

    def _latex(self) -> str:
        n = len(self.HEAD)
        lines = [r"\begin{tabular}{lll" + "r" * 4 + "c}", r"\toprule",
                 " & ".join(_tex(h) for h in self.HEAD) + r" \\", r"\midrule"]
        lines += [" & ".join(_tex(c) for c in cells) + r" \\" for cells in self._cells()]
        lines.append(r"\bottomrule")
        for note in ([self.legend] if self.legend else []) + self.footnotes:
            lines.append(rf"\multicolumn{{{n}}}{{l}}{{\footnotesize {_tex(note)}}} \\")
        lines.append(r"\end{tabular}")
        return "\n".join(lines) + "\n"


def compare_to_reference(run, name: str = "lcam-table1", backbone: Optional[str] = None,
                         **summary_options) -> ReferenceTable:
    """A run next to the published values of reference ``name``.

    Args:
        run: a :class:`~camzoo.bench.Run`.
        name: a :data:`REFERENCES` name.
        backbone: the reference block to compare with; None = the run's backbone
            (``config["backbone"]["name"]``). Given explicitly, it overrides the run's name
            (e.g. a VGG-16 loaded as ``timm:vgg16`` or from a ``py:`` factory).
        summary_options: passed to :func:`~camzoo.results.tables.summary` (``ci``,
            ``n_resamples``, ``seed``, ``level``, ``ci_method``; ``tests`` defaults to False,
            the paired tests are not used here).
    Raises:
        ValueError: an unknown reference name (listing the valid ones), or a backbone the
            reference does not cover (listing those it covers).
    """
    ref = load_reference(name)
    bbn = backbone if backbone is not None else run.config["backbone"]["name"]
    covered = list(dict.fromkeys(ref["backbone"]))
    if bbn not in covered:
        raise ValueError(f"reference {name!r} has no values for backbone {bbn!r}; it covers: "
                         f"{', '.join(covered)} (pass backbone=... to compare a run of another "
                         "name with one of them)")
    opts = {"tests": False, **summary_options}
    table = summary(run, **opts)
    rows = reference_rows(table, ref, bbn)
    block = ref[ref["backbone"] == bbn]

    notes = list(table.footnotes)
    notes += protocol_notes(run.config)
    absent = [m for m in table.df.index if m not in set(block["method"])]
    if absent:
        notes.append(f"not in the paper's table: {', '.join(absent)}.")
    pub_only = [p for m, p in zip(block["method"], block["published_name"])
                if m not in set(table.df.index)]
    pub_only = list(dict.fromkeys(pub_only))
    if pub_only:
        marks = []
        if any(p.endswith("*") for p in pub_only):
            marks.append("*: trained with the cross-entropy loss only")
        if any(p.endswith("\u2020") for p in pub_only):
            marks.append("\u2020: VGG-16 7x7 pool5 features")
        notes.append(f"published only: {', '.join(pub_only)}" + (f" ({'; '.join(marks)})" if marks else "")
                     + ".")
    metric_rows = rows[rows["column"] != FW_COL]
    if len(rows) and not len(metric_rows):
        notes.append("this run has none of the paper's metric columns (bench with --metrics lcam).")
    notes += expected_notes(rows, bbn)

    level = opts.get("level", bootstrap.LEVEL)
    kind = {"bca": "BCa", "percentile": "percentile"}.get(opts.get("ci_method", "bca"), "")
    ci_txt = (f"CI: the {100 * level:g} % {kind} bootstrap interval over images of camzoo's mean "
              f"({opts.get('n_resamples', bootstrap.DEFAULT_RESAMPLES):,} resamples, seed "
              f"{opts.get('seed', bootstrap.DEFAULT_SEED)}); IC and other 0/1 columns: the exact "
              f"(Clopper-Pearson) interval of the percentage; {NO_CI}: no interval."
              if opts.get("ci", True) else f"{NO_CI}: intervals not computed.")
    legend = f"Paper: {SOURCES.get(name, name)}, as printed. {ci_txt}"
    arrows = {_bare(c): c for c in table.higher_is_better}
    return ReferenceTable(rows, notes, name, bbn, arrows, legend)
