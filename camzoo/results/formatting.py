"""Text renderings of a run's statistics (:mod:`.paired`, :mod:`.concordance`,
:mod:`.reliability`): Markdown (through :func:`camzoo.utils.markdown_table`) and CSV. Nothing
here computes a statistic."""
from __future__ import annotations

from typing import List

import numpy as np
import pandas as pd

from ..utils import markdown_table
from .bootstrap import LEVEL
from .concordance import Agreement
from .paired import ALPHA, POWER
from .reliability import ALPHA_RELIABLE, ALPHA_TENTATIVE, Reliability

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
               f"for every pair). p: two-sided paired sign-flip permutation test of the mean "
               f"difference (exact McNemar test for 0/1 columns such as IC); Holm: adjusted over "
               f"all pairs of the metric (the tables' ≈ uses the same family); better in bold where "
               f"the adjusted p < {alpha:g}. Images needed: normal-approximation sample size of a "
               f"test of the mean difference to detect the observed effect with power {power:g} at "
               f"the Bonferroni level alpha/pairs (conservative for Holm).</sub>")
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
            f"(Tomsett et al.'s reliability measures: camzoo stats --reliability). Averages over {n_txt} images "
            f"(an image whose ranking is constant under a metric is left out of that pair).</sub>"]
    return "\n".join(out) + "\n"


def _ci(lo: float, hi: float, d: int = 2) -> str:
    return "—" if lo is None or not np.isfinite(lo) else f"[{lo:.{d}f}, {hi:.{d}f}]"


def format_reliability(res: Reliability, fmt: str = "markdown") -> str:
    """:class:`~camzoo.results.reliability.Reliability` as text: ``"csv"`` (one long table:
    ``measure, metric, metric_b, method, method_b, value, lo, hi, n_images``, every
    coefficient) or ``"markdown"`` (a section per measure, named as in Tomsett et al. 2020:
    inter-rater, inter-method and internal consistency reliability)."""
    if fmt == "csv":
        recs = [{"measure": "inter-rater", "metric": m, "value": r.alpha, "lo": r.lo, "hi": r.hi,
                 "n_images": r.n_images} for m, r in res.inter_rater.iterrows()]
        recs += [{"measure": "inter-method (mean)", "metric": m, "value": r.rho, "lo": r.lo, "hi": r.hi,
                  "n_images": r.n_images} for m, r in res.inter_method.iterrows()]
        recs += [{"measure": "inter-method", "metric": r.metric, "method": r.a, "method_b": r.b,
                  "value": r.rho, "lo": r.lo, "hi": r.hi, "n_images": r.n_images}
                 for r in res.inter_method_pairs.itertuples()]
        recs += [{"measure": "internal consistency", "metric": r.metric_a, "metric_b": r.metric_b,
                  "method": r.method, "value": r.rho, "lo": r.lo, "hi": r.hi, "n_images": r.n_images}
                 for r in res.internal.itertuples()]
        recs += [{"measure": "internal consistency (mean)", "metric": r.metric_a, "metric_b": r.metric_b,
                  "value": r.rho, "lo": r.lo, "hi": r.hi} for r in res.internal_mean.itertuples()]
        cols = ["measure", "metric", "metric_b", "method", "method_b", "value", "lo", "hi", "n_images"]
        return pd.DataFrame(recs, columns=cols).to_csv(index=False, float_format="%.6g")
    if fmt not in ("markdown", "md"):
        raise ValueError(f"unknown stats format {fmt!r}; valid: {', '.join(STATS_FORMATS)}")
    pct = f"{100 * res.level:g} %"
    out = [f"### Inter-rater reliability (Krippendorff's α, {res.level_of_measurement}; each image a rater "
           f"ranking the {len(res.methods)} methods)", ""]
    out += markdown_table(["metric", "α", f"{pct} CI", "images"],
                          [[m, _num(r.alpha, 3), _ci(r.lo, r.hi, 3), int(r.n_images)]
                           for m, r in res.inter_rater.iterrows()], "lrrr")
    out += ["", f"<sub>α = 1: every image ranks the methods alike; 0: agreement at chance level. "
                f"Krippendorff (2004): α ≥ {ALPHA_RELIABLE:.3f} reliable, ≥ {ALPHA_TENTATIVE:.3f} tentative "
                f"conclusions.</sub>", ""]
    out += ["### Inter-method reliability (Spearman's ρ across images between the methods' values)", ""]
    out += markdown_table(["metric", "mean ρ", f"{pct} CI", "min", "max", "images"],
                          [[m, _num(r.rho), _ci(r.lo, r.hi), _num(r["min"]), _num(r["max"]), int(r.n_images)]
                           for m, r in res.inter_method.iterrows()], "lrrrrr")
    npairs = len(res.methods) * (len(res.methods) - 1) // 2
    out += ["", f"<sub>Mean over the {npairs} method pair{'s' if npairs != 1 else ''} (min / max: the extreme pairs; every pair "
                f"with its interval in the CSV): does the metric rank the images alike whichever "
                f"method made the maps?</sub>", ""]
    out += ["### Internal consistency reliability (Spearman's ρ across images between metrics of one "
            "construct, per method)", ""]
    if res.internal.empty:
        out += ["No two metrics of one construct (AD at several kept fractions, IC at several kept "
                "fractions, insertion / deletion, ROAD MoRF / LeRF) among the metrics compared.", ""]
    else:
        rows = []
        for r in res.internal_mean.itertuples():
            g = res.internal[(res.internal.metric_a == r.metric_a) & (res.internal.metric_b == r.metric_b)]
            per = g.set_index("method").rho
            rows.append([r.construct, f"{r.metric_a} – {r.metric_b}"] + [_num(per.get(m)) for m in res.methods]
                        + [_num(r.rho), _ci(r.lo, r.hi)])
        out += markdown_table(["construct", "metrics"] + list(res.methods) + ["mean ρ", f"{pct} CI"], rows,
                              "ll" + "r" * (len(res.methods) + 2))
        out += ["", "<sub>Both metrics oriented so that higher = better: ρ > 0 means they agree on "
                    "which images a method explains well.</sub>", ""]
    out += [f"<sub>Tomsett et al., *Sanity checks for saliency metrics*, AAAI 2020. Intervals: "
            f"percentile bootstrap over images, {res.n_resamples} resamples, seed {res.seed} (the "
            f"same resampled images for every coefficient).</sub>"]
    return "\n".join(out) + "\n"
