"""Paired comparisons of methods on the images both have, from a run's stored values only.

**Paired tests** (:func:`pair_p_values`): every test compares what a table's bold compares,
the *mean* over images. A continuous column gets the paired sign-flip permutation test of the
mean difference (Fisher 1935; exact over all ``2^n`` sign vectors when ``2^n`` is at most
:data:`PERMUTATIONS`, else :data:`PERMUTATIONS` seeded random ones: Phipson & Smyth 2010's
``(1 + hits) / (1 + B)``); it is exact when the paired differences are symmetric about 0 under
the null, as when two methods are interchangeable on each image. A 0/1 column (a
:class:`~camzoo.metrics.protocol.MetricSpec` with ``binary``, e.g. IC) gets the exact
McNemar test, ``scipy.stats.binomtest`` on the discordant images (the same sign-flip test,
enumerated). Holm's step-down correction (Holm 1979, "A simple sequentially rejective
multiple test procedure", Scand. J. Statist. 6:65) runs over **all** ``k(k-1)/2`` pairs of a
column, which controls the family-wise error of every pairwise claim at once, so also of
"worse than the best" although the best is chosen from the same data (:func:`vs_best`).
:func:`wilcoxon_p` (``scipy.stats.wilcoxon``) stays as a reference for readers who want the
signed-rank test.
**Images needed** (:func:`images_needed`): the normal-approximation sample size of a
two-sided test of the mean paired difference, ``n = ((z_{1-alpha/2} + z_{power}) sd(d) /
mean(d))^2`` (Cohen's ``d_z`` effect size, observed), at the Bonferroni level over a column's
pairs. :func:`noether_n` (Noether 1987, for the signed-rank test) stays beside
:func:`wilcoxon_p`.
"""
from __future__ import annotations

import math
import warnings
from typing import Optional, Sequence, Tuple

import numpy as np
import pandas as pd
from scipy.stats import binomtest, norm, wilcoxon

from .bootstrap import (DEFAULT_RESAMPLES, DEFAULT_SEED, EQUAL_RTOL, LEVEL, bootstrap_ci,
                        per_image_matrix)

ALPHA = 0.05
POWER = 0.8
#: random sign vectors of the permutation test (all of them when 2^n is not more)
PERMUTATIONS = 9999


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


def sign_flips(n: int, n_resamples: int = PERMUTATIONS, seed: int = DEFAULT_SEED) -> Tuple[np.ndarray, bool]:
    """The sign vectors of a paired permutation test of ``n`` differences: ``(S [B, n] of
    +-1 float64, exact)``; all ``2^n`` of them (``exact``) when ``2^n <= n_resamples``, else
    ``n_resamples`` drawn by a seeded ``numpy.random.Generator``."""
    if n <= 30 and 2 ** n <= n_resamples:
        codes = np.arange(2 ** n)[:, None] >> np.arange(n)[None, :]
        return 1.0 - 2.0 * (codes & 1), True
    rng = np.random.default_rng(seed)
    return rng.choice(np.array([-1.0, 1.0]), size=(int(n_resamples), n)), False


def sign_flip_p(D: np.ndarray, n_resamples: int = PERMUTATIONS, seed: int = DEFAULT_SEED) -> np.ndarray:
    """Two-sided p-values of the paired sign-flip permutation test of the mean difference,
    one per column of ``D`` ``[n, P]`` (paired differences; NaN = a missing pair, left out).

    One set of sign vectors serves every column (one matrix product; each column's p-value is
    a valid permutation p-value on its own, and Holm needs no independence). A column whose
    differences are all 0 up to float32 rounding gets 1.0; one without a pair NaN. This is
    scipy.stats.permutation_test's ``permutation_type="samples"`` test with the mean
    difference as statistic (tested against it), written as a product so that the ``k(k-1)/2``
    pairs of a table column cost one BLAS call instead of one scipy call each.
    """
    D = np.asarray(D, dtype=np.float64)
    if D.ndim == 1:
        D = D[:, None]
    ok = np.isfinite(D)
    Dz = np.where(ok, D, 0.0)
    S, exact = sign_flips(D.shape[0], n_resamples, seed)
    obs = np.abs(Dz.sum(axis=0))
    scale = np.abs(Dz).max(axis=0, initial=0.0)
    hits = (np.abs(S @ Dz) >= obs - 1e-9 * np.maximum(scale, 1e-300) * D.shape[0]).sum(axis=0)
    p = hits / len(S) if exact else (1.0 + hits) / (1.0 + len(S))
    p = np.minimum(p, 1.0)
    zero = np.abs(Dz).max(axis=0, initial=0.0) <= EQUAL_RTOL * np.nanmax(np.abs(D), axis=0, initial=0.0)
    p[zero] = 1.0
    p[ok.sum(axis=0) == 0] = np.nan
    return p


def mcnemar_p(a: np.ndarray, b: np.ndarray) -> float:
    """Exact two-sided McNemar p-value of two paired 0/1 columns (any two levels: the larger
    is "1"): ``scipy.stats.binomtest`` of the images where ``a`` beats ``b`` among the
    discordant ones, at 1/2; 1.0 without a discordant image, NaN without a pair."""
    a, b = paired(a, b)
    if not len(a):
        return float("nan")
    up, down = int(np.sum(a > b)), int(np.sum(a < b))
    return 1.0 if up + down == 0 else float(binomtest(up, up + down, 0.5).pvalue)


def pair_p_values(X: np.ndarray, binary: bool = False, n_resamples: int = PERMUTATIONS,
                  seed: int = DEFAULT_SEED) -> Tuple[list, np.ndarray, np.ndarray]:
    """Every pair of the columns of ``X`` ``[n images, k methods]`` tested on the mean
    difference (sign-flip permutation test; exact McNemar when ``binary``), Holm-adjusted over
    all ``k(k-1)/2`` pairs.

    Returns:
        ``(pairs, p, p_holm)``: ``pairs`` the ``(i, j)`` with ``i < j`` in column order, and
        their raw and adjusted p-values (float64 ``[k(k-1)/2]``).
    """
    X = np.asarray(X, dtype=np.float64)
    k = X.shape[1]
    pairs = [(i, j) for i in range(k) for j in range(i + 1, k)]
    if not pairs:
        return pairs, np.zeros(0), np.zeros(0)
    if binary:
        p = np.array([mcnemar_p(X[:, i], X[:, j]) for i, j in pairs])
    else:
        p = sign_flip_p(np.stack([X[:, i] - X[:, j] for i, j in pairs], axis=1), n_resamples, seed)
    return pairs, p, holm(p)


def vs_best(X: np.ndarray, higher_is_better: bool, best: Optional[int] = None, binary: bool = False,
            n_resamples: int = PERMUTATIONS, seed: int = DEFAULT_SEED) -> np.ndarray:
    """Holm-adjusted p-value of each method against the best, within the family of all pairs.

    Args:
        X: ``[n images, k methods]`` per-image values (NaN: missing).
        higher_is_better: the column's direction.
        best: the reference column; default: the best mean (by the direction).
        binary, n_resamples, seed: see :func:`pair_p_values`.
    Returns:
        float64 ``[k]``: the adjusted p-value of the pair (best, j); NaN for the best. A method
        is "not significantly worse than the best" (the tables' ``≈``) where it is >= alpha:
        since every pair is in the Holm family, the chance that any method of a column of
        interchangeable methods loses its ``≈`` is at most alpha, whichever is picked as best.
    """
    X = np.asarray(X, dtype=np.float64)
    if best is None:
        means = np.nanmean(np.where(np.isfinite(X), X, np.nan), axis=0)
        best = int(np.nanargmax(means if higher_is_better else -means))
    pairs, _, p_holm = pair_p_values(X, binary, n_resamples, seed)
    out = np.full(X.shape[1], np.nan)
    for (i, j), q in zip(pairs, p_holm):
        if best in (i, j):
            out[j if i == best else i] = q
    return out


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


def images_needed(d: np.ndarray, alpha: float = ALPHA, power: float = POWER) -> float:
    """Images needed for a two-sided test of the mean of the paired differences ``d`` at
    ``alpha`` to detect, with probability ``power``, an effect the size of the observed one:
    ``ceil(((z_{1-alpha/2} + z_{power}) sd(d) / mean(d))^2)`` (normal approximation; sd with
    ``ddof=1``). ``inf`` when the mean difference is 0, NaN with fewer than 2 differences."""
    d = np.asarray(d, dtype=np.float64)
    d = d[np.isfinite(d)]
    if len(d) < 2:
        return float("nan")
    mean, sd = float(np.mean(d)), float(np.std(d, ddof=1))
    if mean == 0.0:
        return float("inf")
    z = norm.ppf(1 - alpha / 2) + norm.ppf(power)
    return float(max(2, math.ceil((z * sd / mean) ** 2)))


def pairwise_tests(X: pd.DataFrame, higher_is_better: bool = True,
                   n_resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED,
                   level: float = LEVEL, alpha: float = ALPHA, power: float = POWER,
                   ci_method: str = "bca", binary: bool = False) -> pd.DataFrame:
    """Every pair of methods (columns of ``X``, images x methods) compared on their paired
    per-image values.

    Returns:
        one row per pair ``(a, b)``, ``a`` before ``b`` in column order: ``n`` (paired images),
        ``mean_a``, ``mean_b``, ``diff`` (mean of ``a - b`` over the pairs), ``diff_lo`` /
        ``diff_hi`` (its bootstrap interval; the same resampled images for every pair),
        ``p`` (:func:`pair_p_values`: the sign-flip permutation test of the mean difference,
        or exact McNemar when ``binary``), ``p_holm`` (Holm over all pairs of ``X``, the
        family of the tables' ``≈``), ``better`` (the method with the better mean by the
        metric's direction, empty on a tie) and ``n_needed`` (:func:`images_needed` at
        ``alpha / number of pairs``, the Bonferroni level, conservative for Holm's first step).
    """
    methods = list(X.columns)
    A = X.to_numpy(np.float64)
    pairs = [(i, j) for i in range(len(methods)) for j in range(i + 1, len(methods))]
    if not pairs:
        return pd.DataFrame(columns=["a", "b", "n", "mean_a", "mean_b", "diff", "diff_lo", "diff_hi",
                                     "p", "p_holm", "better", "n_needed"])
    D = np.stack([A[:, i] - A[:, j] for i, j in pairs], axis=1)  # NaN where either is missing
    lo, hi = bootstrap_ci(D, n_resamples, seed, level, ci_method)
    _, p, p_holm = pair_p_values(A, binary, seed=seed)
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
                     "diff": diff, "diff_lo": lo[k], "diff_hi": hi[k], "p": p[k], "p_holm": p_holm[k],
                     "better": better,
                     "n_needed": float("inf") if same and len(a) else
                     images_needed(a - b, alpha / len(pairs), power)})
    return pd.DataFrame(recs)


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
        df = pairwise_tests(X, s.higher_is_better, n_resamples, seed, level, alpha, power, ci_method,
                            binary=s.binary)
        df.insert(0, "metric", s.header)
        frames.append(df)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
