"""Paired comparisons of methods on the images both have, from a run's stored values only.

**Paired tests** (:func:`wilcoxon_p`, :func:`holm`): the Wilcoxon signed-rank test of
``scipy.stats.wilcoxon`` (its defaults: two-sided, zero differences dropped, exact or normal
p-value by sample size) on the images both methods have, Holm's step-down correction
(Holm 1979, "A simple sequentially rejective multiple test procedure", Scand. J. Statist.
6:65) over the comparisons of a family.
**Images needed** (:func:`noether_n`): Noether's sample size for the signed-rank test
(Noether 1987, "Sample size determination for some common nonparametric tests", JASA
82:645), ``n = (z_{1-alpha/2} + z_{power})^2 / (3 (p' - 1/2)^2)`` with
``p' = P(D_i + D_j > 0)`` estimated from the observed paired differences (the effect size
of the signed-rank test).
"""
from __future__ import annotations

import math
import warnings
from typing import Optional, Sequence, Tuple

import numpy as np
import pandas as pd
from scipy.stats import norm, wilcoxon

from .bootstrap import (DEFAULT_RESAMPLES, DEFAULT_SEED, EQUAL_RTOL, LEVEL, bootstrap_ci,
                        per_image_matrix)

ALPHA = 0.05
POWER = 0.8


# -- paired tests ----------------------------------------------------------------------------
def paired(a: np.ndarray, b: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """The pairs of ``a`` and ``b`` (per-image values of two methods, same image order) where
    both are finite."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    return a[ok], b[ok]


def same_values(a: np.ndarray, b: np.ndarray) -> bool:
    """True when ``a`` and ``b`` are equal element-wise up to float32 rounding:
    ``max |a - b| <= EQUAL_RTOL * max(|a|, |b|)`` (the largest magnitude of either, so that
    noise around 0 on a 0-100 scale is noise too)."""
    if not len(a):
        return True
    scale = max(float(np.max(np.abs(a))), float(np.max(np.abs(b))))
    return bool(np.max(np.abs(a - b)) <= EQUAL_RTOL * scale)


def wilcoxon_p(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided p-value of ``scipy.stats.wilcoxon(a, b)`` (defaults) on the finite pairs.

    1.0 when every paired difference is 0 up to float32 rounding (:func:`same_values`; no
    evidence of a difference; scipy says 1.0 too, with a warning, for exact zeros); NaN with
    no pair.
    """
    a, b = paired(a, b)
    if len(a) == 0:
        return float("nan")
    if same_values(a, b):
        return 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", UserWarning)
        return float(wilcoxon(a, b).pvalue)


def holm(p: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (NaN entries stay NaN and are not counted).

    With the ``m`` finite p-values sorted, ``p_(1) <= ... <= p_(m)``: adjusted
    ``p~_(i) = max_{j <= i} min(1, (m - j + 1) p_(j))``. Reject at level alpha where
    ``p~ < alpha``; this controls the family-wise error rate.
    """
    p = np.asarray(p, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    idx = np.flatnonzero(np.isfinite(p))
    m = len(idx)
    if m == 0:
        return out
    order = idx[np.argsort(p[idx], kind="stable")]
    adj = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out[order] = np.maximum.accumulate(adj)
    return out


def walsh_positive(d: np.ndarray) -> float:
    """``p' = P(D_i + D_j > 0)`` estimated over the pairs ``i < j`` of the differences ``d``
    (a sum of exactly 0 counts 1/2); NaN with fewer than 2 differences. O(n log n)."""
    d = np.sort(np.asarray(d, dtype=np.float64))
    n = len(d)
    if n < 2:
        return float("nan")
    # for each i: j with d_j > -d_i, and d_j == -d_i; then remove i == j and double counting
    gt = n - np.searchsorted(d, -d, side="right")
    eq = np.searchsorted(d, -d, side="right") - np.searchsorted(d, -d, side="left")
    self_gt = (2 * d > 0).astype(np.int64)
    self_eq = (2 * d == 0).astype(np.int64)
    pos = (gt.sum() - self_gt.sum()) / 2.0
    ties = (eq.sum() - self_eq.sum()) / 2.0
    return float((pos + 0.5 * ties) / (n * (n - 1) / 2.0))


def noether_n(d: np.ndarray, alpha: float = ALPHA, power: float = POWER) -> float:
    """Images needed for a two-sided Wilcoxon signed-rank test at ``alpha`` to detect, with
    probability ``power``, an effect the size of the observed paired differences ``d``.

    Noether (1987): ``n = (z_{1-alpha/2} + z_{power})^2 / (3 (p' - 1/2)^2)``,
    ``p' =`` :func:`walsh_positive` of ``d``. ``inf`` when ``p' == 1/2`` (no effect), NaN
    with fewer than 2 differences. Returned rounded up to a whole number of images.
    """
    p1 = walsh_positive(d)
    if math.isnan(p1):
        return float("nan")
    if p1 == 0.5:
        return float("inf")
    z = norm.ppf(1 - alpha / 2) + norm.ppf(power)
    return float(math.ceil(z * z / (3.0 * (p1 - 0.5) ** 2)))


def pairwise_tests(X: pd.DataFrame, higher_is_better: bool = True,
                   n_resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED,
                   level: float = LEVEL, alpha: float = ALPHA, power: float = POWER,
                   ci_method: str = "bca") -> pd.DataFrame:
    """Every pair of methods (columns of ``X``, images x methods) compared on their paired
    per-image values.

    Returns:
        one row per pair ``(a, b)``, ``a`` before ``b`` in column order: ``n`` (paired images),
        ``mean_a``, ``mean_b``, ``diff`` (mean of ``a - b`` over the pairs), ``diff_lo`` /
        ``diff_hi`` (its bootstrap interval; the same resampled images for every pair),
        ``p`` (:func:`wilcoxon_p`), ``p_holm`` (:func:`holm` over all pairs of ``X``),
        ``better`` (the method with the better mean by the metric's direction, empty on a
        tie) and ``n_needed`` (:func:`noether_n` at ``alpha / number of pairs``, the
        Bonferroni level, conservative for Holm's first step).
    """
    methods = list(X.columns)
    A = X.to_numpy(np.float64)
    pairs = [(i, j) for i in range(len(methods)) for j in range(i + 1, len(methods))]
    if not pairs:
        return pd.DataFrame(columns=["a", "b", "n", "mean_a", "mean_b", "diff", "diff_lo", "diff_hi",
                                     "p", "p_holm", "better", "n_needed"])
    D = np.stack([A[:, i] - A[:, j] for i, j in pairs], axis=1)  # NaN where either is missing
    lo, hi = bootstrap_ci(D, n_resamples, seed, level, ci_method)
    recs = []
    for k, (i, j) in enumerate(pairs):
        a, b = paired(A[:, i], A[:, j])
        diff = float(np.mean(a - b)) if len(a) else float("nan")
        sign = 1.0 if higher_is_better else -1.0
        same = not len(a) or same_values(a, b)
        better = "" if same else methods[i] if sign * diff > 0 else methods[j]
        recs.append({"a": methods[i], "b": methods[j], "n": int(len(a)),
                     "mean_a": float(np.mean(a)) if len(a) else float("nan"),
                     "mean_b": float(np.mean(b)) if len(b) else float("nan"),
                     "diff": diff, "diff_lo": lo[k], "diff_hi": hi[k], "p": wilcoxon_p(a, b),
                     "better": better,
                     "n_needed": float("inf") if same and len(a) else
                     noether_n(a - b, alpha / len(pairs), power)})
    df = pd.DataFrame(recs)
    df.insert(df.columns.get_loc("p") + 1, "p_holm", holm(df["p"].to_numpy()))
    return df


def pairwise(run, metrics: Optional[Sequence[str]] = None, n_resamples: int = DEFAULT_RESAMPLES,
             seed: int = DEFAULT_SEED, level: float = LEVEL, alpha: float = ALPHA,
             power: float = POWER, ci_method: str = "bca") -> pd.DataFrame:
    """:func:`pairwise_tests` for each table metric of a :class:`~camzoo.bench.Run` (or only
    ``metrics``, by column name such as ``"ADCC"`` or ``"AD(100%)"``), in table units (the
    spec's scale); one row per (metric, pair), with a ``metric`` column (header with arrow)
    first. Holm's correction is applied within each metric."""
    frames = []
    rows = run.rows()
    for s in run.specs(metrics):
        X = s.scale * per_image_matrix(rows, s.key, run.methods)
        df = pairwise_tests(X, s.higher_is_better, n_resamples, seed, level, alpha, power, ci_method)
        df.insert(0, "metric", s.header)
        frames.append(df)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
