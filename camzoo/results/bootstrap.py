"""Confidence intervals of a run's table cells, from its stored per-image values only.

**Confidence intervals** (:func:`bootstrap_ci`): a seeded bootstrap over images, BCa
(Efron 1987, "Better bootstrap confidence intervals", JASA 82:171) or percentile. The image
indices are drawn once (a seeded ``numpy.random.Generator``) and the *same* resampled image
sets are used for every column (every method and every metric), so intervals are
comparable; missing values (a method without a row for an image) are left out of that
column's resampled mean. For IC, whose per-image value is an indicator (0 or 100), the
interval is the one of a proportion over those indicators. A column with fewer than 2
values, or whose values are all equal, gets no interval (``NaN``, shown as ``—``), never a
zero-width one.
"""
from __future__ import annotations

from typing import Dict, Iterator, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
from scipy.stats import binomtest, norm

DEFAULT_RESAMPLES = 10_000
DEFAULT_SEED = 0
LEVEL = 0.95
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
        rows: stored per-image rows (:meth:`camzoo.bench.Run.rows`).
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
                   seed: int = DEFAULT_SEED, level: float = LEVEL, ci_method: str = "bca",
                   binary: Sequence[str] = ()) -> Tuple[pd.DataFrame, pd.DataFrame]:
    """``(lo, hi)``: the interval of every (method, column) cell of ``mats``
    (:func:`table_matrices`), DataFrames indexed by method with one column per matrix: one
    bootstrap over all columns at once, so every cell uses the same resampled images; the
    columns named in ``binary`` (0/100 values) get :func:`proportion_ci` instead."""
    cols = list(mats)
    if not cols:
        return pd.DataFrame(), pd.DataFrame()
    methods = list(mats[cols[0]].columns)
    allX = np.concatenate([mats[c].to_numpy(np.float64) for c in cols], axis=1)
    lo, hi = bootstrap_ci(allX, n_resamples, seed, level, ci_method)
    shape = lambda v: pd.DataFrame(v.reshape(len(cols), len(methods)).T, index=methods, columns=cols)  # noqa: E731
    lo, hi = shape(lo), shape(hi)
    for c in (c for c in cols if c in binary):
        for m in methods:
            lo.loc[m, c], hi.loc[m, c] = proportion_ci(mats[c][m].to_numpy(np.float64), level)
    return lo, hi


def proportion_ci(v: np.ndarray, level: float = LEVEL) -> Tuple[float, float]:
    """The exact (Clopper-Pearson) interval of the percentage of images whose 0/100 value is
    100, from ``scipy.stats.binomtest(...).proportion_ci(method="exact")``, in percent; it
    exists at 0 % and 100 % too (0 of 30: [0, 11.57]). NaN without a value."""
    v = v[np.isfinite(v)]
    if not len(v):
        return float("nan"), float("nan")
    ci = binomtest(int(np.sum(v > 0)), len(v)).proportion_ci(confidence_level=level, method="exact")
    return 100.0 * ci.low, 100.0 * ci.high


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

    One function on purpose: BCa needs each column's jackknife and its resampled means
    together, and every column is computed in one pass over the shared resamples.

    Why not ``scipy.stats.bootstrap(..., method="BCa")`` (which this equals within resampling
    noise, tested in tests/results/test_stats.py): a table needs the *same* resampled images
    for every cell while each cell leaves out its own missing images, and scipy resamples the
    rows of one array (a NaN would poison its mean, a per-column call would draw other
    resamples); here the resamples are counts ``[B, n]`` multiplied with the values, one
    matrix product for all cells, with each column's missing images masked out.
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


def intervals(run, metrics: Optional[Sequence[str]] = None, n_resamples: int = DEFAULT_RESAMPLES,
              seed: int = DEFAULT_SEED, level: float = LEVEL, ci_method: str = "bca") -> pd.DataFrame:
    """Mean and bootstrap interval of every (metric, method) of a run, in table units: columns
    ``metric, method, n, mean, lo, hi`` (the same resampled images for every cell)."""
    mats = table_matrices(run.rows(), run.specs(metrics), run.methods)
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
