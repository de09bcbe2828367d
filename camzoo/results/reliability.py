"""How reliable are the metrics of a run? From its stored per-image values only.

Tomsett, Harborne, Chakraborty, Gurram, Preece, "Sanity checks for saliency metrics", AAAI
2020 (arXiv:1912.01451) carry three reliability measures of psychometric testing over to
saliency metrics (a reliable metric is not necessarily valid, but a valid one must be
reliable):

- **inter-rater reliability** (:func:`inter_rater_reliability`): does a metric rank the
  methods the same way on every image? Each image is a *rater* that ranks the methods (1 =
  best by the metric's direction, ties averaged); agreement of the raters by Krippendorff's
  alpha (:func:`krippendorff_alpha`, ordinal by default);
- **inter-method reliability** (:func:`inter_method_reliability`): does a metric rank the
  *images* the same way whichever method made the maps? Spearman's rho, across images,
  between the metric's per-image values of two methods (every pair of methods; summarized
  by the mean over the pairs);
- **internal consistency reliability** (:func:`internal_consistency_reliability`): do two
  metrics meant to measure the same thing agree? Spearman's rho, across images, between the
  per-image values of the two metrics, for each method (values oriented so that higher =
  better for both, so a positive rho means the metrics agree on which images a method
  explains well). The constructs camzoo groups (:data:`CONSTRUCTS`): AD at every kept
  fraction, IC at every kept fraction, insertion vs deletion, ROAD MoRF vs LeRF.

Every coefficient gets a percentile bootstrap interval over images: the images are resampled
(:func:`camzoo.results.bootstrap.resample_counts`, a seeded ``numpy.random.Generator``; the
*same* resamples for every coefficient), and each coefficient is recomputed on each
resample (a resampled image counts as often as it was drawn: a rater given twice, an
observation given twice in the ranks of Spearman's rho).

Krippendorff's alpha follows Krippendorff's definition through the coincidence matrix
(K. Krippendorff, "Computing Krippendorff's Alpha-Reliability", 2011): for unit ``u`` with
``m_u >= 2`` values, every ordered pair of its values (c, k) adds ``1 / (m_u - 1)`` to
``o_ck``; ``n_c = sum_k o_ck``, ``n = sum_c n_c``;
``alpha = 1 - (n - 1) sum_ck o_ck d2_ck / sum_ck n_c n_k d2_ck`` with the squared
difference ``d2`` of the level of measurement: nominal ``[c != k]``, ordinal
``(sum_{g=c..k} n_g - (n_c + n_k) / 2)^2`` (which is the squared difference of the two
values' mid-ranks in the pooled values), interval ``(c - k)^2``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from itertools import combinations
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from .bootstrap import DEFAULT_SEED, LEVEL, per_image_matrix, resample_counts
from .concordance import rankings

#: bootstrap resamples of the reliability intervals (each recomputes every coefficient)
DEFAULT_RESAMPLES = 1000
#: levels of measurement of :func:`krippendorff_alpha`
LEVELS = ("nominal", "ordinal", "interval")
#: Krippendorff's (2004) thresholds: alpha >= 0.800 reliable, >= 0.667 tentative conclusions
ALPHA_RELIABLE, ALPHA_TENTATIVE = 0.800, 0.667
#: metrics meant to measure the same thing (internal consistency): name -> pattern of the row
#: keys (``MetricSpec.key``) of its members; a construct with 2 or more members in a run is used
CONSTRUCTS: Dict[str, str] = {
    "AD (kept %)": r"ad_\d+",
    "IC (kept %)": r"ic_\d+",
    "insertion / deletion": r"ins_auc|del_auc",
    "ROAD MoRF / LeRF": r"road_morf|road_lerf",
}


# -- Krippendorff's alpha -----------------------------------------------------------------------
def _value_counts(data: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Reliability data ``[coders, units]`` (NaN = missing) -> ``(values, onehot)``: the
    sorted distinct values ``[C]`` and ``onehot [coders, units, C]`` (1 where the coder gave
    the unit that value)."""
    D = np.asarray(data, dtype=np.float64)
    ok = np.isfinite(D)
    values = np.unique(D[ok])
    onehot = np.zeros(D.shape + (len(values),))
    if len(values):
        idx = np.searchsorted(values, np.where(ok, D, values[0]))
        np.put_along_axis(onehot, idx[..., None], ok[..., None].astype(np.float64), axis=-1)
    return values, onehot


def _alpha_of_counts(N: np.ndarray, values: np.ndarray, level: str) -> np.ndarray:
    """Krippendorff's alpha from value counts per unit.

    Args:
        N: ``[..., units, C]``: how many (pairable or not) values ``values[c]`` each unit got;
            leading axes are batches (bootstrap resamples).
        values: the ``C`` sorted values.
        level: ``nominal``, ``ordinal`` or ``interval``.
    Returns:
        float ``[...]``; NaN where no unit has 2 values or every pairable value is the same.
    """
    if level not in LEVELS:
        raise ValueError(f"unknown level of measurement {level!r}; valid: {', '.join(LEVELS)}")
    N = np.asarray(N, dtype=np.float64)
    m = N.sum(-1)                                           # values per unit
    w = np.where(m >= 2, 1.0 / np.maximum(m - 1.0, 1.0), 0.0)
    # coincidences: o_ck = sum_u (N_uc N_uk - [c == k] N_uc) / (m_u - 1)
    o = np.einsum("...u,...uc,...uk->...ck", w, N, N)
    o -= np.einsum("...u,...uc->...c", w, N)[..., None] * np.eye(N.shape[-1])
    nc = o.sum(-1)
    n = nc.sum(-1)
    if level == "nominal":
        d2 = np.broadcast_to(1.0 - np.eye(len(values)), o.shape)
    elif level == "interval":
        d2 = np.broadcast_to((values[:, None] - values[None, :]) ** 2, o.shape)
    else:  # ordinal: squared difference of the mid-ranks of the pooled pairable values
        mid = np.cumsum(nc, axis=-1) - nc / 2.0
        d2 = (mid[..., :, None] - mid[..., None, :]) ** 2
    obs = (o * d2).sum((-2, -1))
    exp = (nc[..., :, None] * nc[..., None, :] * d2).sum((-2, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        a = 1.0 - (n - 1.0) * obs / exp
    return np.where(exp > 0, a, np.nan)


def krippendorff_alpha(data, level: str = "ordinal") -> float:
    """Krippendorff's alpha of reliability data.

    Args:
        data: ``[coders, units]`` (Krippendorff's layout: one row per coder / rater, one
            column per unit rated); NaN = missing. Values are numbers (ordinal: only their
            order counts).
        level: ``"nominal"``, ``"ordinal"`` or ``"interval"`` (the squared difference of
            two values, see the module docstring).
    Returns:
        alpha: 1 = perfect agreement, 0 = agreement at chance level, negative = systematic
        disagreement; NaN when no unit has two values or all pairable values are equal.
    """
    values, onehot = _value_counts(data)
    if not len(values):
        return float("nan")
    return float(_alpha_of_counts(onehot.sum(0), values, level))


# -- Spearman's rho over (resampled) images -----------------------------------------------------
def _resampled_ranks(x: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Average ranks of the values ``x [n]`` in each resample given as ``counts [R, n]`` (how
    often each value was drawn): ``[R, n]``, the rank each value has among the drawn values
    (a value drawn c times occupies c consecutive ranks; equal values share their mean)."""
    order = np.argsort(x, kind="stable")
    xs = x[order]
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    group = np.cumsum(np.r_[True, xs[1:] != xs[:-1]]) - 1      # tie group of each sorted value
    G = np.add.reduceat(counts[:, order], starts, axis=1)       # draws per tie group
    before = np.cumsum(G, axis=1) - G
    rs = (before + (G + 1.0) / 2.0)[:, group]
    out = np.empty_like(rs)
    out[:, order] = rs
    return out


def _spearman(a: np.ndarray, b: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Spearman's rho of ``a`` and ``b`` (``[n]``, paired by image) in each resample ``counts
    [R, n]``: the Pearson correlation of their average ranks among the drawn images, each
    image weighted by its count. Images where either value is missing are left out; NaN where
    a resample has fewer than 3 drawn images or a constant side."""
    ok = np.isfinite(a) & np.isfinite(b)
    R = counts.shape[0]
    if ok.sum() < 3:
        return np.full(R, np.nan)
    c = counts[:, ok].astype(np.float64)
    return _weighted_pearson(_resampled_ranks(a[ok], c), _resampled_ranks(b[ok], c), c)


def _weighted_pearson(ra: np.ndarray, rb: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Pearson correlation of ranks ``ra``, ``rb`` ``[R, n]`` with weights (draw counts) ``c``
    ``[R, n]``; NaN where fewer than 3 images are drawn or a side is constant."""
    W = c.sum(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        da = ra - (c * ra).sum(1, keepdims=True) / W
        db = rb - (c * rb).sum(1, keepdims=True) / W
        saa, sbb, sab = (c * da * da).sum(1), (c * db * db).sum(1), (c * da * db).sum(1)
        # the ranks are half-integers, exact in float64: a constant side has exactly zero variance
        r = sab / np.sqrt(saa * sbb)
    return np.where((saa > 0) & (sbb > 0) & (np.count_nonzero(c, 1) >= 3), np.clip(r, -1, 1), np.nan)


# -- the three coefficients ---------------------------------------------------------------------
def inter_rater_reliability(X, higher_is_better: bool, level: str = "ordinal") -> float:
    """Inter-rater reliability of one metric: Krippendorff's alpha of the per-image rankings of
    the methods, the images as raters.

    Args:
        X: the metric's per-image values ``[images, methods]``; an image without a value for
            every method is left out.
        higher_is_better: the metric's direction (rank 1 = best).
        level: of :func:`krippendorff_alpha` (the ranks are ordinal data).
    """
    R = rankings(np.asarray(X, dtype=np.float64), higher_is_better)
    return krippendorff_alpha(R, level)


def inter_method_reliability(X) -> np.ndarray:
    """Inter-method reliability of one metric: Spearman's rho, across images, between the
    metric's per-image values of every pair of methods.

    Args:
        X: ``[images, methods]``; only the images with a value for every method are used.
    Returns:
        ``[methods, methods]`` (diagonal 1; NaN where a method's values are constant).
    """
    X = np.asarray(X, dtype=np.float64)
    X = X[np.isfinite(X).all(1)]
    k = X.shape[1]
    one = np.ones((1, X.shape[0]))
    M = np.eye(k)
    for i, j in combinations(range(k), 2):
        M[i, j] = M[j, i] = _spearman(X[:, i], X[:, j], one)[0]
    return M


def internal_consistency_reliability(A, B, higher_a: bool, higher_b: bool) -> np.ndarray:
    """Internal consistency of two metrics meant to measure the same thing: per method,
    Spearman's rho across images between their per-image values, both oriented so that
    higher = better (a positive rho: the two metrics agree on which images the method
    explains well).

    Args:
        A, B: the two metrics' values ``[images, methods]`` (same images and methods).
        higher_a, higher_b: their directions.
    Returns:
        ``[methods]``; over the images where both metrics have a value.
    """
    A = np.asarray(A, dtype=np.float64) * (1.0 if higher_a else -1.0)
    B = np.asarray(B, dtype=np.float64) * (1.0 if higher_b else -1.0)
    one = np.ones((1, A.shape[0]))
    return np.array([_spearman(A[:, j], B[:, j], one)[0] for j in range(A.shape[1])])


# -- a run ------------------------------------------------------------------------------------------
@dataclass
class Reliability:
    """The reliability of the metrics of a run (Tomsett et al. 2020), with bootstrap intervals.

    Attributes:
        metrics: the metric columns (headers with arrows), in table order.
        methods: the run's methods.
        inter_rater: indexed by metric: ``alpha`` (Krippendorff's, of the per-image method
            rankings), ``lo``, ``hi`` (its interval), ``n_images``.
        inter_method: indexed by metric: ``rho`` (mean over the method pairs of Spearman's
            rho across images), ``lo``, ``hi``, ``min`` / ``max`` (of the pairs),
            ``n_images``.
        inter_method_pairs: one row per (metric, method pair): ``metric, a, b, rho, lo, hi,
            n_images``.
        internal: one row per (metric pair of a construct, method): ``construct, metric_a,
            metric_b, method, rho, lo, hi, n_images``.
        internal_mean: one row per metric pair: ``construct, metric_a, metric_b, rho`` (mean
            over the methods), ``lo``, ``hi``.
        level_of_measurement: of the alpha (``"ordinal"``).
        n_resamples, seed, level: of the bootstrap (percentile intervals over images).
    """

    metrics: List[str]
    methods: List[str]
    inter_rater: pd.DataFrame
    inter_method: pd.DataFrame
    inter_method_pairs: pd.DataFrame
    internal: pd.DataFrame
    internal_mean: pd.DataFrame
    level_of_measurement: str = "ordinal"
    n_resamples: int = DEFAULT_RESAMPLES
    seed: int = DEFAULT_SEED
    level: float = LEVEL
    constructs: Dict[str, List[str]] = field(default_factory=dict)


def _interval(boot: np.ndarray, point: float, level: float) -> Tuple[float, float]:
    """Percentile interval of the finite resampled values (NaN without a point estimate or
    with fewer than 2 finite resampled values)."""
    b = boot[np.isfinite(boot)]
    if not np.isfinite(point) or len(b) < 2:
        return float("nan"), float("nan")
    q = (1.0 - level) / 2.0
    return float(np.quantile(b, q)), float(np.quantile(b, 1.0 - q))


def _nanmean_rows(V: np.ndarray) -> np.ndarray:
    """Mean of each row's finite values (NaN for a row without any); ``V [..., k]``."""
    ok = np.isfinite(V)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(ok.any(-1), np.where(ok, V, 0.0).sum(-1) / ok.sum(-1), np.nan)


def construct_pairs(specs, constructs: Optional[Dict[str, Sequence[str]]] = None) -> Dict[str, list]:
    """The metrics of ``specs`` grouped by construct: ``{name: [spec, ...]}`` with 2 or more
    members each. ``constructs`` maps a name to its metrics (headers, columns or keys);
    default: :data:`CONSTRUCTS` (patterns of row keys)."""
    out: Dict[str, list] = {}
    if constructs is None:
        for name, pat in CONSTRUCTS.items():
            members = [s for s in specs if re.fullmatch(pat, s.key)]
            if len(members) >= 2:
                out[name] = members
        return out
    for name, metrics in constructs.items():
        low = [m.strip().lower() for m in metrics]
        members = [s for s in specs if {s.key.lower(), s.column.lower(), s.header.lower()} & set(low)]
        if len(members) != len(low):
            raise ValueError(f"construct {name!r}: every metric must be one of the run's "
                             f"{', '.join(s.column for s in specs)}; got {', '.join(metrics)}")
        if len(members) >= 2:
            out[name] = members
    return out


def reliability(run, metrics: Optional[Sequence[str]] = None, n_resamples: int = DEFAULT_RESAMPLES,
                seed: int = DEFAULT_SEED, level: float = LEVEL, level_of_measurement: str = "ordinal",
                constructs: Optional[Dict[str, Sequence[str]]] = None) -> Reliability:
    """:class:`Reliability` of the table metrics of a :class:`~camzoo.bench.Run` (or those
    named).

    Args:
        run: the run.
        metrics: table columns (``"ADCC"``, ``"AD(100%)"``, ...) [default: every one].
        n_resamples: bootstrap resamples of the images (the same for every coefficient).
        seed: their seed.
        level: coverage of the percentile intervals.
        level_of_measurement: of Krippendorff's alpha (the rankings are ordinal).
        constructs: metrics meant to measure the same thing, ``{name: [metric, ...]}``
            [default: :data:`CONSTRUCTS` found among ``metrics``].
    """
    if level_of_measurement not in LEVELS:
        raise ValueError(f"unknown level of measurement {level_of_measurement!r}; valid: {', '.join(LEVELS)}")
    if int(n_resamples) < 2:
        raise ValueError(f"n_resamples must be >= 2; got {n_resamples}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1); got {level}")
    specs = run.specs(metrics)
    methods = list(run.methods)
    if len(methods) < 2:
        raise ValueError("reliability compares methods; the run has only one")
    rows = run.rows()
    mats = {s.header: per_image_matrix(rows, s.key, methods).to_numpy(np.float64) for s in specs}
    n = next(iter(mats.values())).shape[0] if mats else 0
    if n < 3:
        raise ValueError(f"reliability needs at least 3 images; the run has {n}")
    counts = np.concatenate(list(resample_counts(n, int(n_resamples), seed))).astype(np.float64)
    one = np.ones((1, n))

    # inter-rater: Krippendorff's alpha of the rankings, images as raters
    ir = []
    for s in specs:
        R = rankings(mats[s.header], s.higher_is_better)
        values, onehot = _value_counts(R)
        if len(values):
            point = float(_alpha_of_counts(onehot.sum(0), values, level_of_measurement))
            boot = _alpha_of_counts(np.einsum("ri,iuc->ruc", counts, onehot), values, level_of_measurement)
        else:
            point, boot = float("nan"), np.full(len(counts), np.nan)
        lo, hi = _interval(boot, point, level)
        ir.append({"metric": s.header, "alpha": point, "lo": lo, "hi": hi,
                   "n_images": int(np.isfinite(R).all(1).sum())})
    inter_rater = pd.DataFrame(ir).set_index("metric")

    # inter-method: Spearman across images between every pair of methods, per metric
    pairs, im = [], []
    for s in specs:
        X = mats[s.header]
        full = np.isfinite(X).all(1)
        # the images every method has; each method's ranks computed once for all its pairs
        c1, cb = one[:, full], counts[:, full]
        r1 = [_resampled_ranks(X[full, j], c1) for j in range(len(methods))] if full.sum() >= 3 else None
        rb = [_resampled_ranks(X[full, j], cb) for j in range(len(methods))] if full.sum() >= 3 else None
        pts, bts = [], []
        for i, j in combinations(range(len(methods)), 2):
            if r1 is None:
                p, b = float("nan"), np.full(len(counts), np.nan)
            else:
                p = float(_weighted_pearson(r1[i], r1[j], c1)[0])
                b = _weighted_pearson(rb[i], rb[j], cb)
            lo, hi = _interval(b, p, level)
            pairs.append({"metric": s.header, "a": methods[i], "b": methods[j], "rho": p, "lo": lo,
                          "hi": hi, "n_images": int(full.sum())})
            pts.append(p)
            bts.append(b)
        point = float(_nanmean_rows(np.array(pts)))
        lo, hi = _interval(_nanmean_rows(np.stack(bts, 1)), point, level)
        fin = [p for p in pts if np.isfinite(p)]
        im.append({"metric": s.header, "rho": point, "lo": lo, "hi": hi,
                   "min": min(fin) if fin else float("nan"), "max": max(fin) if fin else float("nan"),
                   "n_images": int(full.sum())})
    inter_method = pd.DataFrame(im).set_index("metric")
    inter_method_pairs = pd.DataFrame(pairs, columns=["metric", "a", "b", "rho", "lo", "hi", "n_images"])

    # internal consistency: Spearman across images between the metrics of a construct, per method
    groups = construct_pairs(specs, constructs)
    ic, icm = [], []
    for name, members in groups.items():
        for sa, sb in combinations(members, 2):
            A = mats[sa.header] * (1.0 if sa.higher_is_better else -1.0)
            B = mats[sb.header] * (1.0 if sb.higher_is_better else -1.0)
            pts, bts = [], []
            for j, m in enumerate(methods):
                p = float(_spearman(A[:, j], B[:, j], one)[0])
                b = _spearman(A[:, j], B[:, j], counts)
                lo, hi = _interval(b, p, level)
                ic.append({"construct": name, "metric_a": sa.header, "metric_b": sb.header, "method": m,
                           "rho": p, "lo": lo, "hi": hi,
                           "n_images": int((np.isfinite(A[:, j]) & np.isfinite(B[:, j])).sum())})
                pts.append(p)
                bts.append(b)
            point = float(_nanmean_rows(np.array(pts)))
            lo, hi = _interval(_nanmean_rows(np.stack(bts, 1)), point, level)
            icm.append({"construct": name, "metric_a": sa.header, "metric_b": sb.header, "rho": point,
                        "lo": lo, "hi": hi})
    internal = pd.DataFrame(ic, columns=["construct", "metric_a", "metric_b", "method", "rho", "lo", "hi",
                                         "n_images"])
    internal_mean = pd.DataFrame(icm, columns=["construct", "metric_a", "metric_b", "rho", "lo", "hi"])
    return Reliability([s.header for s in specs], methods, inter_rater, inter_method, inter_method_pairs,
                       internal, internal_mean, level_of_measurement, int(n_resamples), int(seed), level,
                       {k: [s.header for s in v] for k, v in groups.items()})
