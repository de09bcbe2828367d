"""Error rate and power of the tables' "≈ best" marker, by simulation (issue 24; docs/stats.md).

A table of k methods on n images; the marker is computed as the tables compute it
(:func:`camzoo.results.paired.vs_best`: the best by its mean, every pair tested on the mean
difference, Holm over all pairs) and, for comparison, as camzoo computed it before (Wilcoxon
of the best against each other, Holm over those k-1 tests).

- **Family-wise error** (the null: k interchangeable methods): the share of tables in which
  some method loses its ≈. Promised: <= alpha = 5 %.
- **Power**: one method worse than the others by ``--effect`` noise standard deviations
  (continuous) or a success rate lower by ``--effect`` / 4 (0/1 columns, e.g. 50 % vs 42.5 %
  at the default 0.3); the share of tables in which that method loses its ≈ (the rest equal).

    python -m benchmarks.studies.marker_error --tables 2000 --images 30
"""
from __future__ import annotations

import numpy as np

from benchmarks._common import Report, machine, parser
from camzoo.results import paired

ALPHA = 0.05


def table(rng: np.random.Generator, k: int, n: int, binary: bool, effect: float) -> np.ndarray:
    """``[n, k]``: a shared per-image level plus noise (continuous) or coins x 100 (0/1); the
    last method worse by ``effect`` (0: the null)."""
    if binary:
        p = np.full(k, 0.5)
        p[-1] -= effect / 4
        return 100.0 * (rng.random((n, k)) < p)
    X = rng.normal(size=(n, 1)) + rng.normal(size=(n, k))
    X[:, -1] -= effect
    return X


def loses(X: np.ndarray, binary: bool, old: bool) -> np.ndarray:
    """Which methods lose their ≈ (bool ``[k]``)."""
    if old:
        best = int(np.argmax(X.mean(axis=0)))
        others = [j for j in range(X.shape[1]) if j != best]
        p = paired.holm([paired.wilcoxon_p(X[:, best], X[:, j]) for j in others])
        out = np.zeros(X.shape[1], bool)
        out[others] = p < ALPHA
        return out
    return np.nan_to_num(paired.vs_best(X, True, binary=binary, n_resamples=999), nan=1.0) < ALPHA


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--tables", type=int, default=2000)
    ap.add_argument("--images", type=int, default=30)
    ap.add_argument("--effect", type=float, default=0.8)
    ap.add_argument("--ks", default="3,6,10")
    a = ap.parse_args()
    r = Report()
    r.say(f"{machine()}; {a.tables} tables of {a.images} images per cell; effect {a.effect}")
    r.say("| k | column | marker | family-wise error (null) | power (one method worse) |")
    r.say("|---:|:---|:---|---:|---:|")
    for k in (int(v) for v in a.ks.split(",")):
        for binary in (False, True):
            for old in (False, True):
                rng = np.random.default_rng(k * 10 + binary)
                fwe = np.mean([loses(table(rng, k, a.images, binary, 0.0), binary, old).any()
                               for _ in range(a.tables)])
                power = np.mean([loses(table(rng, k, a.images, binary, a.effect), binary, old)[-1]
                                 for _ in range(a.tables)])
                r.say(f"| {k} | {'0/1' if binary else 'continuous'} | "
                      f"{'former (Wilcoxon, Holm over k-1)' if old else 'camzoo (mean, Holm over all pairs)'} | "
                      f"{100 * fwe:.1f} % | {100 * power:.1f} % |")


if __name__ == "__main__":
    main()
