"""Statistics of a run, computed from its stored per-image rows only (nothing here changes a
stored value): bootstrap confidence intervals, paired tests, sample sizes, metric agreement.

- **Confidence intervals** (:func:`bootstrap_ci`): a seeded bootstrap over images, BCa
  (Efron 1987, "Better bootstrap confidence intervals", JASA 82:171) or percentile. The image
  indices are drawn once (a seeded ``numpy.random.Generator``) and the *same* resampled image
  sets are used for every column (every method and every metric), so intervals are
  comparable; missing values (a method without a row for an image) are left out of that
  column's resampled mean. For IC, whose per-image value is an indicator (0 or 100), the
  interval is the one of a proportion over those indicators. A column with fewer than 2
  values, or whose values are all equal, gets no interval (``NaN``, shown as ``—``), never a
  zero-width one.
- **Paired tests** (:func:`wilcoxon_p`, :func:`holm`): the Wilcoxon signed-rank test of
  ``scipy.stats.wilcoxon`` (its defaults: two-sided, zero differences dropped, exact or normal
  p-value by sample size) on the images both methods have, Holm's step-down correction
  (Holm 1979, "A simple sequentially rejective multiple test procedure", Scand. J. Statist.
  6:65) over the comparisons of a family.
- **Images needed** (:func:`noether_n`): Noether's sample size for the signed-rank test
  (Noether 1987, "Sample size determination for some common nonparametric tests", JASA
  82:645), ``n = (z_{1-alpha/2} + z_{power})^2 / (3 (p' - 1/2)^2)`` with
  ``p' = P(D_i + D_j > 0)`` estimated from the observed paired differences (the effect size
  of the signed-rank test).
- **Metric agreement** (:func:`agreement`; Tomsett, Harborne, Chakraborty, Gurram, Preece,
  "Sanity checks for saliency metrics", AAAI 2020, "inter-method reliability"): per image,
  each metric ranks the methods (1 = best, ties averaged); Spearman and Kendall (tau-b)
  correlations of the rankings of two metrics, averaged over images; overall agreement of
  all metrics by Kendall's coefficient of concordance W with the tie correction (Kendall &
  Babington Smith 1939, "The problem of m rankings", Ann. Math. Statist. 10:275), per image
  and averaged.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
from scipy.stats import norm, wilcoxon

DEFAULT_RESAMPLES = 10_000
DEFAULT_SEED = 0
LEVEL = 0.95
ALPHA = 0.05
POWER = 0.8
CI_METHODS = ("bca", "percentile")
#: values count as equal (no interval, no difference, a tie) when they differ by at most this
#: fraction of their magnitude: the rounding noise of float32 forwards (two explainers that
#: make the same map, e.g. Grad-CAM and XGrad-CAM under a GAP head, differ by ~1e-6 in AD)
EQUAL_RTOL = 1e-5
#: resamples drawn (and multiplied) at once: bounds memory to CHUNK x images counts
CHUNK = 1000


# -- per-image matrices ----------------------------------------------------------------------
def per_image_matrix(rows: pd.DataFrame, key: str, methods: Sequence[str]) -> pd.DataFrame:
    """The per-image values of one row key, images x methods.

    Args:
        rows: stored per-image rows (:meth:`camzoo.results.Run.rows`).
        key: a value column (``ad_100``, ``adcc``, ...).
        methods: the columns, in this order.
    Returns:
        float DataFrame indexed by image id (manifest order), one column per method; NaN where
        a method has no (numeric) value for an image.
    """
    if key not in rows.columns:
        raise KeyError(f"the run stores no per-image value {key!r}; values: "
                       f"{', '.join(c for c in rows.columns if c not in ('method', 'image_id'))}")
    r = rows[["image_id", "idx", "method", key]].copy()
    r[key] = pd.to_numeric(r[key], errors="coerce")
    order = r.drop_duplicates("image_id").sort_values(["idx", "image_id"])["image_id"].tolist()
    wide = r.pivot_table(index="image_id", columns="method", values=key, aggfunc="first", dropna=False)
    return wide.reindex(index=order, columns=list(methods)).astype(float)


def table_matrices(rows: pd.DataFrame, specs, methods: Sequence[str]) -> Dict[str, pd.DataFrame]:
    """``{spec.header: images x methods}`` per-image values in table units (``spec.scale``
    applied), in ``specs`` order, methods in the given order."""
    return {s.header: s.scale * per_image_matrix(rows, s.key, methods) for s in specs}


def cell_intervals(mats: Dict[str, pd.DataFrame], n_resamples: int = DEFAULT_RESAMPLES,
                   seed: int = DEFAULT_SEED, level: float = LEVEL,
                   ci_method: str = "bca") -> Tuple[pd.DataFrame, pd.DataFrame]:
    """``(lo, hi)``: the bootstrap interval of every (method, column) cell of ``mats``
    (:func:`table_matrices`), DataFrames indexed by method with one column per matrix; one
    bootstrap over all columns at once, so every cell uses the same resampled images."""
    cols = list(mats)
    if not cols:
        return pd.DataFrame(), pd.DataFrame()
    methods = list(mats[cols[0]].columns)
    allX = np.concatenate([mats[c].to_numpy(np.float64) for c in cols], axis=1)
    lo, hi = bootstrap_ci(allX, n_resamples, seed, level, ci_method)
    shape = lambda v: pd.DataFrame(v.reshape(len(cols), len(methods)).T, index=methods, columns=cols)  # noqa: E731
    return shape(lo), shape(hi)


# -- bootstrap -------------------------------------------------------------------------------
def resample_counts(n: int, n_resamples: int, seed: int = DEFAULT_SEED,
                    chunk: int = CHUNK) -> Iterator[np.ndarray]:
    """The bootstrap resamples of ``n`` images as counts, chunk by chunk.

    Resample ``b`` draws ``n`` image indices uniformly with replacement from a
    ``numpy.random.default_rng(seed)``; it is returned as how many times each image was drawn.
    The same ``(n, n_resamples, seed)`` always gives the same resamples, whatever columns they
    are applied to.

    Yields:
        int64 ``[r, n]`` (``r <= chunk``), each row summing to ``n``.
    """
    rng = np.random.default_rng(int(seed))
    done = 0
    while done < n_resamples:
        r = min(chunk, n_resamples - done)
        idx = rng.integers(0, n, size=(r, n))
        flat = idx + (np.arange(r) * n)[:, None]
        yield np.bincount(flat.ravel(), minlength=r * n).reshape(r, n)
        done += r


def bootstrap_means(X: np.ndarray, n_resamples: int = DEFAULT_RESAMPLES,
                    seed: int = DEFAULT_SEED) -> np.ndarray:
    """Means of every column of ``X`` over the same bootstrap resamples of its rows.

    Args:
        X: float ``[n, k]`` (rows = images); NaN = missing (left out of that column's mean).
        n_resamples, seed: see :func:`resample_counts`.
    Returns:
        float64 ``[n_resamples, k]``; NaN where a resample drew no finite value of a column.
    """
    X = np.asarray(X, dtype=np.float64)
    ok = np.isfinite(X)
    Xz, W = np.where(ok, X, 0.0), ok.astype(np.float64)
    out = []
    for cnt in resample_counts(X.shape[0], n_resamples, seed):
        c = cnt.astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            out.append((c @ Xz) / (c @ W))
    return np.concatenate(out) if out else np.empty((0, X.shape[1]))


def bootstrap_ci(X: np.ndarray, n_resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED,
                 level: float = LEVEL, method: str = "bca") -> Tuple[np.ndarray, np.ndarray]:
    """Bootstrap confidence interval of the mean of every column of ``X``.

    Args:
        X: float ``[n, k]`` (rows = images, columns = methods / metrics / paired
            differences); NaN = missing.
        n_resamples: bootstrap resamples (the same resampled rows for every column).
        seed: seed of the resamples.
        level: coverage, e.g. 0.95.
        method: ``"bca"`` (bias-corrected and accelerated, the jackknife acceleration of
            each column's mean) or ``"percentile"``. A BCa column whose bias correction is
            undefined (every resampled mean on one side of the estimate) falls back to the
            percentile interval.
    Returns:
        ``(lo, hi)`` float64 ``[k]``; NaN for a column with fewer than 2 finite values or
        whose finite values are all equal, up to float32 rounding (:data:`EQUAL_RTOL`): no
        interval is claimed.
    """
    if method not in CI_METHODS:
        raise ValueError(f"unknown interval method {method!r}; valid: {', '.join(CI_METHODS)}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1); got {level}")
    if int(n_resamples) < 2:
        raise ValueError(f"n_resamples must be >= 2; got {n_resamples}")
    X = np.asarray(X, dtype=np.float64)
    if X.ndim == 1:
        X = X[:, None]
    n, k = X.shape
    lo, hi = np.full(k, np.nan), np.full(k, np.nan)
    ok = np.isfinite(X)
    cnt = ok.sum(0)
    with np.errstate(invalid="ignore"):
        vmax = np.where(ok, X, -np.inf).max(0) if n else np.full(k, -np.inf)
        vmin = np.where(ok, X, np.inf).min(0) if n else np.full(k, np.inf)
    scale = np.maximum(np.abs(vmax), np.abs(vmin))
    valid = (cnt >= 2) & (vmax - vmin > EQUAL_RTOL * scale)
    if not valid.any():
        return lo, hi
    cols = np.flatnonzero(valid)
    Xv = X[:, cols]
    B = bootstrap_means(Xv, int(n_resamples), seed)
    a_lo, a_hi = (1 - level) / 2, 1 - (1 - level) / 2
    q_lo = np.full(len(cols), a_lo)
    q_hi = np.full(len(cols), a_hi)
    if method == "bca":
        okv = np.isfinite(Xv)
        m = okv.sum(0)
        S = np.where(okv, Xv, 0.0).sum(0)
        theta = S / m
        Bf = np.where(np.isfinite(B), B, np.nan)
        nb = np.isfinite(Bf).sum(0)
        below = (np.nan_to_num(Bf, nan=np.inf) < theta).sum(0)
        at_or_below = (np.nan_to_num(Bf, nan=np.inf) <= theta).sum(0)
        p0 = (below + at_or_below) / (2.0 * nb)
        z0 = norm.ppf(p0)
        # jackknife of the mean: leave image i out of its column (missing values stay out)
        jk = np.where(okv, (S - np.where(okv, Xv, 0.0)) / np.maximum(m - 1, 1), np.nan)
        d = np.nanmean(jk, axis=0) - jk
        num = np.nansum(d ** 3, axis=0)
        den = 6.0 * np.nansum(d ** 2, axis=0) ** 1.5
        with np.errstate(invalid="ignore", divide="ignore"):
            acc = np.where(den > 0, num / den, 0.0)
        zl, zh = norm.ppf(a_lo), norm.ppf(a_hi)
        finite = np.isfinite(z0)
        z = np.where(finite, z0, 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            bl = norm.cdf(z + (z + zl) / (1 - acc * (z + zl)))
            bh = norm.cdf(z + (z + zh) / (1 - acc * (z + zh)))
        use = finite & np.isfinite(bl) & np.isfinite(bh)
        q_lo, q_hi = np.where(use, bl, a_lo), np.where(use, bh, a_hi)
    for j, c in enumerate(cols):
        b = B[:, j]
        b = b[np.isfinite(b)]
        lo[c] = np.quantile(b, q_lo[j])
        hi[c] = np.quantile(b, q_hi[j])
    return lo, hi


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


def run_specs(run) -> list:
    """The :class:`~camzoo.metrics.MetricSpec` of every table column of a run (its protocols
    with their stored options, in table order)."""
    from ..metrics.protocol import table_metrics

    protos = run.config["protocols"]
    return table_metrics(list(protos), {p: v["options"] for p, v in protos.items()})


def _specs(run, metrics: Optional[Sequence[str]] = None):
    """The run's table specs, optionally only those named (column header without the arrow,
    with it, or the row key; case-insensitive)."""
    specs = run_specs(run)
    if not metrics:
        return specs
    out = []
    for name in metrics:
        low = name.strip().lower()
        hit = [s for s in specs if low in (s.column.lower(), s.header.lower(), s.key.lower())]
        if not hit:
            raise ValueError(f"the run has no metric {name!r}; metrics: "
                             + ", ".join(s.column for s in specs))
        out += [s for s in hit if s not in out]
    return out


def pairwise(run, metrics: Optional[Sequence[str]] = None, n_resamples: int = DEFAULT_RESAMPLES,
             seed: int = DEFAULT_SEED, level: float = LEVEL, alpha: float = ALPHA,
             power: float = POWER, ci_method: str = "bca") -> pd.DataFrame:
    """:func:`pairwise_tests` for each table metric of a :class:`~camzoo.results.Run` (or only
    ``metrics``, by column name such as ``"ADCC"`` or ``"AD(100%)"``), in table units (the
    spec's scale); one row per (metric, pair), with a ``metric`` column (header with arrow)
    first. Holm's correction is applied within each metric."""
    frames = []
    rows = run.rows()
    for s in _specs(run, metrics):
        X = s.scale * per_image_matrix(rows, s.key, run.methods)
        df = pairwise_tests(X, s.higher_is_better, n_resamples, seed, level, alpha, power, ci_method)
        df.insert(0, "metric", s.header)
        frames.append(df)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def intervals(run, metrics: Optional[Sequence[str]] = None, n_resamples: int = DEFAULT_RESAMPLES,
              seed: int = DEFAULT_SEED, level: float = LEVEL, ci_method: str = "bca") -> pd.DataFrame:
    """Mean and bootstrap interval of every (metric, method) of a run, in table units: columns
    ``metric, method, n, mean, lo, hi`` (the same resampled images for every cell)."""
    mats = table_matrices(run.rows(), _specs(run, metrics), run.methods)
    if not mats:
        return pd.DataFrame(columns=["metric", "method", "n", "mean", "lo", "hi"])
    lo, hi = cell_intervals(mats, n_resamples, seed, level, ci_method)
    recs = []
    for col, M in mats.items():
        for m in run.methods:
            v = M[m].to_numpy(np.float64)
            v = v[np.isfinite(v)]
            recs.append({"metric": col, "method": m, "n": int(len(v)),
                         "mean": float(v.mean()) if len(v) else float("nan"),
                         "lo": lo.loc[m, col], "hi": hi.loc[m, col]})
    return pd.DataFrame(recs)


# -- agreement of metrics (Tomsett et al. 2020) -------------------------------------------
def rankings(X: np.ndarray, higher_is_better: bool) -> np.ndarray:
    """Per-image ranks of the methods: ``X`` ``[n, m]`` -> float ``[n, m]``, 1 = best by the
    metric's direction; values equal up to float32 rounding (:data:`EQUAL_RTOL` times the
    image's largest magnitude; e.g. Grad-CAM and XGrad-CAM under a global-average-pooling
    head, which make the same map) are ties and get their average rank; an image with a
    missing value gets a row of NaN (it is not ranked)."""
    X = np.asarray(X, dtype=np.float64)
    n, m = X.shape
    score = np.where(np.isfinite(X), -X if higher_is_better else X, 0.0)  # low score = best
    order = np.argsort(score, axis=1, kind="stable")
    s = np.take_along_axis(score, order, axis=1)
    step = np.diff(s, axis=1) > EQUAL_RTOL * np.abs(s).max(axis=1, keepdims=True)
    pos = np.broadcast_to(np.arange(m), (n, m))
    edge = np.ones((n, 1), dtype=bool)
    # first and last sorted position of each tie group
    first = np.maximum.accumulate(np.where(np.hstack([edge, step]), pos, 0), axis=1)
    last = np.minimum.accumulate(np.where(np.hstack([step, edge]), pos, m - 1)[:, ::-1], axis=1)[:, ::-1]
    R = np.empty((n, m))
    np.put_along_axis(R, order, (first + last) / 2.0 + 1.0, axis=1)
    R[~np.isfinite(X).all(axis=1)] = np.nan
    return R


def rank_spearman(R1: np.ndarray, R2: np.ndarray) -> np.ndarray:
    """Per-image Spearman correlation of two rankings ``[n, m]`` (the Pearson correlation of
    the average ranks); NaN where either ranking is constant or missing."""
    a = R1 - R1.mean(axis=1, keepdims=True)
    b = R2 - R2.mean(axis=1, keepdims=True)
    den = np.sqrt((a * a).sum(1) * (b * b).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (a * b).sum(1) / den
    return np.where(den > 0, np.clip(r, -1, 1), np.nan)


def rank_kendall(R1: np.ndarray, R2: np.ndarray) -> np.ndarray:
    """Per-image Kendall tau-b of two rankings ``[n, m]`` (equals ``scipy.stats.kendalltau``);
    NaN where either ranking is constant or missing."""
    iu, ju = np.triu_indices(R1.shape[1], 1)
    s1 = np.sign(R1[:, iu] - R1[:, ju])
    s2 = np.sign(R2[:, iu] - R2[:, ju])
    den = np.sqrt((s1 * s1).sum(1) * (s2 * s2).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        t = (s1 * s2).sum(1) / den
    return np.where(den > 0, np.clip(t, -1, 1), np.nan)


def kendall_w(R: np.ndarray) -> np.ndarray:
    """Kendall's W per image with the tie correction.

    Args:
        R: ranks ``[n, k, m]``: n images, k raters (metrics), m objects (methods); NaN rows
            are left out of their image.
    Returns:
        float ``[n]`` in [0,1]: ``W = 12 S / (k^2 (m^3 - m) - k sum_j T_j)`` with ``S`` the
        sum of squared deviations of the methods' rank sums from their mean and
        ``T_j = sum (t^3 - t)`` over the tie groups of rater ``j``; NaN when fewer than 2
        raters rank the image or every ranking is constant.
    """
    n, _, m = R.shape
    out = np.full(n, np.nan)
    for i in range(n):
        Ri = R[i][np.isfinite(R[i]).all(axis=1)]
        k = Ri.shape[0]
        if k < 2 or m < 2:
            continue
        T = 0.0
        for row in Ri:
            _, cnt = np.unique(row, return_counts=True)
            T += float((cnt ** 3 - cnt).sum())
        den = k * k * (m ** 3 - m) - k * T
        if den <= 0:
            continue
        s = Ri.sum(0)
        out[i] = 12.0 * float(((s - s.mean()) ** 2).sum()) / den
    return out


@dataclass
class Agreement:
    """How far the metrics of a run agree on the ranking of its methods.

    Attributes:
        metrics: the metric columns compared (headers with arrows), in table order.
        methods: the ranked methods.
        spearman: metrics x metrics, per-image Spearman correlation of the two rankings,
            averaged over the images where both are defined.
        kendall: the same with Kendall's tau-b.
        n_images: metrics x metrics, the images each average is over.
        mean_rank: methods x metrics, mean per-image rank (1 = best).
        kendall_w: Kendall's W of all metrics, per image then averaged.
        n_w: images W is averaged over.
        table_rank: methods x metrics, the rank of each method by the metric's mean over
            images (the ranking a results table shows; 1 = best).
        table_spearman: metrics x metrics, Spearman correlation of those table rankings.
    """

    metrics: List[str]
    methods: List[str]
    spearman: pd.DataFrame
    kendall: pd.DataFrame
    n_images: pd.DataFrame
    mean_rank: pd.DataFrame
    kendall_w: float
    n_w: int
    table_rank: Optional[pd.DataFrame] = None
    table_spearman: Optional[pd.DataFrame] = None


def agreement_of(mats: Dict[str, pd.DataFrame], higher: Dict[str, bool]) -> Agreement:
    """:class:`Agreement` of per-image matrices ``{metric: images x methods}`` (same images
    and methods, any order of images; rows aligned by image id) with their directions."""
    names = list(mats)
    if not names:
        raise ValueError("no metrics to compare")
    ids = mats[names[0]].index
    methods = list(mats[names[0]].columns)
    R = {k: rankings(mats[k].reindex(ids).to_numpy(np.float64), higher[k]) for k in names}
    sp = pd.DataFrame(np.nan, index=names, columns=names)
    kd = sp.copy()
    nn = pd.DataFrame(0, index=names, columns=names)
    for a in names:
        for b in names:
            rs, rk = rank_spearman(R[a], R[b]), rank_kendall(R[a], R[b])
            ok = np.isfinite(rs)
            nn.loc[a, b] = int(ok.sum())
            if ok.any():
                sp.loc[a, b] = float(rs[ok].mean())
                kd.loc[a, b] = float(rk[ok].mean())
    mr = pd.DataFrame({k: np.nanmean(R[k], axis=0) if np.isfinite(R[k]).any() else np.nan
                       for k in names}, index=pd.Index(methods, name="Method"))
    W = kendall_w(np.stack([R[k] for k in names], axis=1))
    okw = np.isfinite(W)
    # the rankings of the means (what a table shows), over the same images as the per-image ones
    means = np.stack([np.nanmean(mats[k].reindex(ids).to_numpy(np.float64), axis=0) for k in names])
    TR = np.stack([rankings(means[i][None], higher[k])[0] for i, k in enumerate(names)])
    tr = pd.DataFrame(TR.T, index=pd.Index(methods, name="Method"), columns=names)
    ts = pd.DataFrame([[float(rank_spearman(TR[i][None], TR[j][None])[0]) for j in range(len(names))]
                       for i in range(len(names))], index=names, columns=names)
    return Agreement(names, methods, sp, kd, nn, mr, float(W[okw].mean()) if okw.any() else float("nan"),
                     int(okw.sum()), tr, ts)


def agreement(run, metrics: Optional[Sequence[str]] = None) -> Agreement:
    """:class:`Agreement` of the table metrics of a :class:`~camzoo.results.Run` (or those
    named), over the images every method has."""
    specs = _specs(run, metrics)
    if len(run.methods) < 2:
        raise ValueError("agreement ranks methods; the run has only one")
    rows = run.rows()
    mats = {s.header: per_image_matrix(rows, s.key, run.methods) for s in specs}
    return agreement_of(mats, {s.header: s.higher_is_better for s in specs})


# -- rendering -------------------------------------------------------------------------------
STATS_FORMATS = ("markdown", "csv")


def _p(p: float) -> str:
    return "-" if p is None or not np.isfinite(p) else "<1e-4" if p < 1e-4 else f"{p:.4f}"


def _num(v: float, d: int = 2) -> str:
    return "-" if v is None or not np.isfinite(v) else f"{v:.{d}f}"


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
        k = len(g)
        out.append(f"### {metric}\n")
        out.append(f"| A | B | images | A − B | {100 * level:g} % CI | p | p (Holm, {k}) | better "
                   f"| images needed |")
        out.append("|:---|:---|---:|---:|---:|---:|---:|:---|---:|")
        for _, r in g.iterrows():
            ci = "—" if not np.isfinite(r.diff_lo) else f"[{r.diff_lo:.2f}, {r.diff_hi:.2f}]"
            sig = r.p_holm < alpha if np.isfinite(r.p_holm) else False
            better = (f"**{r.better}**" if sig else r.better) or "-"
            need = "-" if not np.isfinite(r.n_needed) and not np.isinf(r.n_needed) else \
                "∞" if np.isinf(r.n_needed) else f"{int(r.n_needed)}"
            out.append(f"| {r.a} | {r.b} | {r.n} | {_num(r['diff'])} | {ci} | {_p(r.p)} | "
                       f"{_p(r.p_holm)} | {better} | {need} |")
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
        lines = ["| | " + " | ".join(M.columns) + " |", "|:---|" + "---:|" * len(M.columns)]
        for i in M.index:
            lines.append(f"| {i} | " + " | ".join(_num(M.loc[i, c], d) for c in M.columns) + " |")
        return lines

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
