"""Do the metrics of a run rank the methods alike? From its stored values only.

**Metric agreement** (:func:`agreement`; in the spirit of Tomsett et al., AAAI 2020, whose own
reliability measures are in :mod:`.reliability`): per image,
each metric ranks the methods (1 = best, ties averaged); Spearman and Kendall (tau-b)
correlations of the rankings of two metrics, averaged over images; overall agreement of
all metrics by Kendall's coefficient of concordance W with the tie correction (Kendall &
Babington Smith 1939, "The problem of m rankings", Ann. Math. Statist. 10:275), per image
and averaged.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np
import pandas as pd

from .bootstrap import EQUAL_RTOL, per_image_matrix


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
    """:class:`Agreement` of the table metrics of a :class:`~camzoo.bench.Run` (or those
    named), over the images every method has."""
    specs = run.specs(metrics)
    if len(run.methods) < 2:
        raise ValueError("agreement ranks methods; the run has only one")
    rows = run.rows()
    mats = {s.header: per_image_matrix(rows, s.key, run.methods) for s in specs}
    return agreement_of(mats, {s.header: s.higher_is_better for s in specs})
