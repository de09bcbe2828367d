"""The tables' "≈ best" marker keeps its error rate although the best is chosen from the data.

Under the global null (every method interchangeable on every image), a table whose method
loses its ≈ claims a difference that is not there. With the marker of
:func:`camzoo.results.paired.vs_best` (Holm over all pairs, a test of the mean) that happens
in at most alpha = 5 % of tables, up to Monte-Carlo error, for k = 3, 6 and 10 methods, for
continuous and for 0/1 columns. The former marker (the best against each other by Wilcoxon,
Holm over those k-1 tests only) fails the same check (strict xfail below): about 14 % of
tables at k = 10 (issue 24)."""
import numpy as np
import pytest

from camzoo.results import paired

TABLES = 400
IMAGES = 30
ALPHA = 0.05
#: alpha plus 2.5 Monte-Carlo standard errors of a rate of alpha over TABLES tables
LIMIT = ALPHA + 2.5 * np.sqrt(ALPHA * (1 - ALPHA) / TABLES)


def null_table(rng, k: int, binary: bool) -> np.ndarray:
    """``[IMAGES, k]`` values of k interchangeable methods: a shared per-image level plus
    independent noise (continuous), or independent fair coins x 100 (IC-like 0/1 column)."""
    if binary:
        return 100.0 * (rng.random((IMAGES, k)) < 0.5)
    return rng.normal(size=(IMAGES, 1)) + rng.normal(size=(IMAGES, k))


def new_marker_loses(X: np.ndarray, binary: bool) -> bool:
    p = paired.vs_best(X, higher_is_better=True, binary=binary, n_resamples=999)
    return bool(np.nanmin(p) < ALPHA)


def old_marker_loses(X: np.ndarray, binary: bool) -> bool:
    best = int(np.argmax(X.mean(axis=0)))
    p = [paired.wilcoxon_p(X[:, best], X[:, j]) for j in range(X.shape[1]) if j != best]
    return bool(np.nanmin(paired.holm(p)) < ALPHA)


def error_rate(marker, k: int, binary: bool) -> float:
    rng = np.random.default_rng(1000 * k + binary)
    return float(np.mean([marker(null_table(rng, k, binary), binary) for _ in range(TABLES)]))


@pytest.mark.parametrize("binary", [False, True], ids=["continuous", "binary"])
@pytest.mark.parametrize("k", [3, 6, 10])
def test_the_near_best_marker_keeps_its_family_wise_error_under_the_null(k, binary):
    rate = error_rate(new_marker_loses, k, binary)
    assert rate <= LIMIT, f"k={k}: {rate:.3f} of null tables lost an ≈ (limit {LIMIT:.3f})"


@pytest.mark.xfail(strict=True, reason="the former marker (best vs each other, Holm over k-1) "
                                       "does not account for choosing the best")
def test_the_former_marker_fails_the_same_check():
    assert error_rate(old_marker_loses, 10, False) <= LIMIT


def test_the_marker_still_finds_a_real_difference():
    """Power is reported, not asserted, in docs/stats.md; this only guards against a marker
    that never fires: a method 1.5 noise sd worse on 30 images loses its ≈."""
    rng = np.random.default_rng(0)
    X = null_table(rng, 6, False)
    X[:, 5] -= 1.5
    p = paired.vs_best(X, higher_is_better=True)
    assert p[5] < ALPHA


def test_sign_flip_p_is_scipys_permutation_test_and_mcnemar_is_exact():
    import scipy.stats as ss

    rng = np.random.default_rng(1)
    a = rng.normal(size=12)
    b = a + rng.normal(0.3, 1, size=12)
    ref = ss.permutation_test((a, b), lambda x, y, axis: np.mean(x - y, axis=axis),
                              permutation_type="samples", n_resamples=np.inf, vectorized=True).pvalue
    assert paired.sign_flip_p((a - b)[:, None])[0] == pytest.approx(ref, abs=1e-12)  # 2^12 exact
    # 7 images where A is 1 and B 0, 1 the other way, 22 concordant: exact p = 2 P(Bin(8, .5) <= 1)
    a = np.array([1] * 7 + [0] + [1] * 10 + [0] * 12, float)
    b = np.array([0] * 7 + [1] + [1] * 10 + [0] * 12, float)
    assert paired.mcnemar_p(a, b) == pytest.approx(2 * 9 / 256)
    assert paired.mcnemar_p(a, a) == 1.0
