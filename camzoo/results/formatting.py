"""Text renderings of a run's statistics (:mod:`.paired`, :mod:`.concordance`): Markdown
(through :func:`camzoo.utils.markdown_table`) and CSV. Nothing here computes a statistic."""
from __future__ import annotations

from typing import List

import numpy as np
import pandas as pd

from ..utils import markdown_table
from .bootstrap import LEVEL
from .concordance import Agreement
from .paired import ALPHA, POWER

STATS_FORMATS = ("markdown", "csv")


def _p(p: float) -> str:
    return "-" if p is None or not np.isfinite(p) else "<1e-4" if p < 1e-4 else f"{p:.4f}"


def _num(v: float, d: int = 2) -> str:
    return "-" if v is None or not np.isfinite(v) else f"{v:.{d}f}"


def _pairwise_cells(r: pd.Series, alpha: float) -> List[str]:
    """The Markdown cells of one row of :func:`pairwise`: A, B, images, A - B, its interval,
    p, Holm-adjusted p, the better method (bold where significant at ``alpha``), the images
    needed."""
    ci = "—" if not np.isfinite(r.diff_lo) else f"[{r.diff_lo:.2f}, {r.diff_hi:.2f}]"
    sig = r.p_holm < alpha if np.isfinite(r.p_holm) else False
    better = (f"**{r.better}**" if sig else r.better) or "-"
    need = "-" if not np.isfinite(r.n_needed) and not np.isinf(r.n_needed) else \
        "∞" if np.isinf(r.n_needed) else f"{int(r.n_needed)}"
    return [r.a, r.b, r.n, _num(r["diff"]), ci, _p(r.p), _p(r.p_holm), better, need]


def format_pairwise(df: pd.DataFrame, fmt: str = "markdown", level: float = LEVEL,
                    alpha: float = ALPHA, power: float = POWER) -> str:
    """:func:`pairwise` as text: ``"csv"`` (every column, full precision) or ``"markdown"``
    (a table per metric: A - B with its interval, p, Holm-adjusted p, the better method and
    the images needed)."""
    if fmt == "csv":
        return df.to_csv(index=False, float_format="%.6g")
    if fmt not in ("markdown", "md"):
        raise ValueError(f"unknown stats format {fmt!r}; valid: {', '.join(STATS_FORMATS)}")
    out = []
    for metric, g in df.groupby("metric", sort=False):
        out.append(f"### {metric}\n")
        head = ["A", "B", "images", "A − B", f"{100 * level:g} % CI", "p", f"p (Holm, {len(g)})",
                "better", "images needed"]
        out += markdown_table(head, [_pairwise_cells(r, alpha) for _, r in g.iterrows()],
                              "llrrrrrlr")
        out.append("")
    out.append(f"<sub>A − B: mean paired difference over the images both methods have, in table "
               f"units, with its {100 * level:g} % BCa bootstrap interval (the same resampled images "
               f"for every pair). p: Wilcoxon signed-rank test (scipy, two-sided); Holm: adjusted "
               f"over the pairs of the metric; better in bold where the adjusted p < {alpha:g}. "
               f"Images needed: Noether's (1987) sample size for the signed-rank test to detect "
               f"the observed effect with power {power:g} at the Bonferroni level alpha/pairs "
               f"(conservative for Holm).</sub>")
    return "\n".join(out) + "\n"


def format_agreement(ag: Agreement, fmt: str = "markdown") -> str:
    """:class:`Agreement` as text: ``"csv"`` (the Spearman, Kendall and image-count matrices
    in long form, and the mean ranks) or ``"markdown"``."""
    if fmt == "csv":
        long = pd.DataFrame([{"metric_a": a, "metric_b": b, "spearman": ag.spearman.loc[a, b],
                              "kendall": ag.kendall.loc[a, b], "n_images": int(ag.n_images.loc[a, b])}
                             for a in ag.metrics for b in ag.metrics])
        ranks = ag.mean_rank.reset_index().melt(id_vars="Method", var_name="metric",
                                                value_name="mean_rank")
        return (long.to_csv(index=False, float_format="%.6g") + "\n"
                + ranks.to_csv(index=False, float_format="%.6g"))
    if fmt not in ("markdown", "md"):
        raise ValueError(f"unknown stats format {fmt!r}; valid: {', '.join(STATS_FORMATS)}")

    def matrix(M: pd.DataFrame, d: int = 2) -> List[str]:
        return markdown_table([""] + list(M.columns),
                              [[i] + [_num(M.loc[i, c], d) for c in M.columns] for i in M.index],
                              "l" + "r" * len(M.columns))

    out = ["### Spearman correlation of the method rankings (per image, averaged)", ""]
    out += matrix(ag.spearman)
    out += ["", "### Kendall's tau-b of the method rankings (per image, averaged)", ""]
    out += matrix(ag.kendall)
    out += ["", "### Mean per-image rank of each method (1 = best)", ""]
    out += matrix(ag.mean_rank)
    if ag.table_rank is not None:
        out += ["", "### Rank of each method by the metric's mean (the table's ranking)", ""]
        out += matrix(ag.table_rank, 1)
        out += ["", "### Spearman correlation of the table rankings", ""]
        out += matrix(ag.table_spearman)
    n_lo, n_hi = int(ag.n_images.to_numpy().min()), int(ag.n_images.to_numpy().max())
    n_txt = f"{n_lo}" if n_lo == n_hi else f"{n_lo}-{n_hi}"
    out += ["", f"Kendall's W (concordance of all {len(ag.metrics)} metrics; Kendall & Babington "
                f"Smith 1939, tie-corrected, per image then averaged over {ag.n_w} images): "
                f"**{_num(ag.kendall_w, 3)}**", "",
            f"<sub>Per image, each metric ranks the {len(ag.methods)} methods (1 = best by its "
            f"direction, ties averaged); two metrics agree when their rankings correlate "
            f"(Tomsett et al., AAAI 2020, inter-method reliability). Averages over {n_txt} images "
            f"(an image whose ranking is constant under a metric is left out of that pair).</sub>"]
    return "\n".join(out) + "\n"
