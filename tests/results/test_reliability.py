"""Metric reliability (Tomsett et al., AAAI 2020): Krippendorff's alpha (by hand, Krippendorff's
published worked example, the ``krippendorff`` package when installed), inter-rater,
inter-method and internal consistency reliability by hand, the bootstrap over images, the text,
the figure and ``camzoo stats --reliability`` on a small stored run."""
import os

import numpy as np
import pandas as pd
import pytest
import scipy.stats as ss
from click.testing import CliRunner

import camzoo
from camzoo.bench import BenchConfig, run
from camzoo.cli import main
from camzoo.metrics.protocol import MetricSpec
from camzoo.results import reliability as rel
from camzoo.results.formatting import format_reliability
from camzoo.results.plots import reliability_bars
from tests.conftest import SAMPLES

NAN = np.nan
#: Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", the worked example of
#: section C (4 observers A-D, 12 units, missing values), reused in sections D-F
KRIPPENDORFF_2011 = np.array([
    [1, 2, 3, 3, 2, 1, 4, 1, 2, NAN, NAN, NAN],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, NAN, 3],
    [NAN, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, NAN],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, NAN],
])


# -- Krippendorff's alpha -------------------------------------------------------------------------
def test_krippendorff_alpha_by_hand():
    # 3 coders rank 3 units: (1,2,3), (1,2,3), (2,1,3). Coincidences (each unit has 3 values,
    # an ordered pair adds 1/2): unit 1 {1,1,2}: o11 = 1, o12 = o21 = 1; unit 2 {2,2,1}: o22 = 1,
    # o12 = o21 = 1; unit 3 {3,3,3}: o33 = 3. n_c = 3 each, n = 9.
    # ordinal d2: 12 -> (3+3-3)^2 = 9, 23 -> 9, 13 -> (9-3)^2 = 36; observed sum o d2 = 4 * 9 = 36,
    # expected sum n_c n_k d2 = 2 * (9*9 + 9*36 + 9*9) = 972: alpha = 1 - 8 * 36 / 972 = 19/27.
    # interval d2 = 1, 1, 4: 1 - 8 * 4 / (2 * (9 + 36 + 9)) = 19/27; nominal: 1 - 8 * 4 / 54 = 11/27
    R = np.array([[1, 2, 3], [1, 2, 3], [2, 1, 3]], float)
    assert rel.krippendorff_alpha(R, "ordinal") == pytest.approx(19 / 27)
    assert rel.krippendorff_alpha(R, "interval") == pytest.approx(19 / 27)
    assert rel.krippendorff_alpha(R, "nominal") == pytest.approx(11 / 27)
    # two values only: every level gives the same alpha; coders (1,1),(1,2),(2,2) on 3 units
    # o11 = 2, o12 = o21 = 1, o22 = 2: nominal 1 - 5 * 2 / (2 * 9) = 4/9
    B = np.array([[1, 1, 2], [1, 2, 2]], float)
    for level in rel.LEVELS:
        assert rel.krippendorff_alpha(B, level) == pytest.approx(4 / 9)
    # the ordinal distance depends on the order of the values, not on their spacing
    assert rel.krippendorff_alpha(np.where(R == 3, 30.0, R), "ordinal") == pytest.approx(19 / 27)
    assert rel.krippendorff_alpha(np.where(R == 3, 30.0, R), "interval") != pytest.approx(19 / 27)
    # perfect agreement -> 1; nothing pairable, or one value only -> NaN (0 / 0)
    assert rel.krippendorff_alpha(np.array([[1, 2, 3], [1, 2, 3]], float)) == 1.0
    assert np.isnan(rel.krippendorff_alpha(np.array([[1, NAN], [NAN, 2]])))
    assert np.isnan(rel.krippendorff_alpha(np.ones((3, 4))))
    with pytest.raises(ValueError, match="ordinal"):
        rel.krippendorff_alpha(R, "ratio")


def test_krippendorff_alpha_reproduces_the_published_worked_example():
    # Krippendorff (2011), sections C-E: nominal alpha = 0.743, ordinal 0.815, interval 0.849
    assert round(rel.krippendorff_alpha(KRIPPENDORFF_2011, "nominal"), 3) == 0.743
    assert round(rel.krippendorff_alpha(KRIPPENDORFF_2011, "ordinal"), 3) == 0.815
    assert round(rel.krippendorff_alpha(KRIPPENDORFF_2011, "interval"), 3) == 0.849
    # and the 3-coder 15-unit example the `krippendorff` package tests against (its asserted
    # values: nominal 0.691358, interval 0.810845)
    W = np.array([[NAN, NAN, NAN, NAN, NAN, 3, 4, 1, 2, 1, 1, 3, 3, NAN, 3],
                  [1, NAN, 2, 1, 3, 3, 4, 3, NAN, NAN, NAN, NAN, NAN, NAN, NAN],
                  [NAN, NAN, 2, 1, 3, 4, 4, NAN, 2, 1, 1, 3, 3, NAN, 4]])
    assert round(rel.krippendorff_alpha(W, "nominal"), 6) == 0.691358
    assert round(rel.krippendorff_alpha(W, "interval"), 6) == 0.810845


def test_krippendorff_alpha_equals_the_krippendorff_package():
    kr = pytest.importorskip("krippendorff")
    rng = np.random.default_rng(5)
    for _ in range(60):
        D = rng.integers(1, 6, size=(int(rng.integers(2, 8)), int(rng.integers(2, 10)))).astype(float)
        D[rng.random(D.shape) < 0.2] = NAN
        if np.isnan(rel.krippendorff_alpha(D, "nominal")):
            continue
        for level in rel.LEVELS:
            assert rel.krippendorff_alpha(D, level) == pytest.approx(kr.alpha(D, level_of_measurement=level),
                                                                     abs=1e-10)


# -- the three coefficients by hand ------------------------------------------------------------------
def test_inter_rater_reliability_by_hand():
    # 3 images rank 3 methods (higher is better): image 3 swaps the first two -> the rankings
    # (1,2,3), (1,2,3), (2,1,3) of the hand-computed alpha above
    X = np.array([[9.0, 5.0, 1.0], [8.0, 6.0, 2.0], [5.0, 7.0, 0.0]])
    assert rel.inter_rater_reliability(X, True) == pytest.approx(19 / 27)
    # lower is better: the same values rank the other way round, same agreement
    assert rel.inter_rater_reliability(-X, False) == pytest.approx(19 / 27)
    # every image ranks the methods alike -> 1; an image without every method is left out
    Y = np.array([[3.0, 2.0, 1.0], [30.0, 20.0, 10.0], [NAN, 0.0, 5.0]])
    assert rel.inter_rater_reliability(Y, True) == 1.0


def test_inter_method_reliability_by_hand():
    # A ranks the 4 images 1,2,3,4; B 1,3,2,4 (rho = 1 - 6*2/(4*15) = 0.8); C reverses A
    X = np.array([[1, 10, 4], [2, 30, 3], [3, 20, 2], [4, 40, 1]], float)
    M = rel.inter_method_reliability(X)
    np.testing.assert_allclose(M, [[1, 0.8, -1], [0.8, 1, -0.8], [-1, -0.8, 1]], atol=1e-12)
    # equals scipy's Spearman (average ranks for ties) on the images every method has
    rng = np.random.default_rng(2)
    Z = np.column_stack([rng.normal(size=25), rng.integers(0, 4, 25), rng.normal(size=25)]).astype(float)
    Z[3, 1] = NAN
    ok = np.isfinite(Z).all(1)
    np.testing.assert_allclose(rel.inter_method_reliability(Z), ss.spearmanr(Z[ok]).statistic, atol=1e-12)
    # a method whose values are all equal (Fake-CAM's Complexity) has no correlation
    assert np.isnan(rel.inter_method_reliability(np.column_stack([X[:, 0], np.ones(4)]))[0, 1])


def test_internal_consistency_reliability_by_hand():
    # a method's values under X (higher is better) and Y (lower is better) on 4 images: the raw
    # Spearman rho is -0.8, the oriented one (higher = better for both) +0.8: they agree
    A = np.array([[1.0], [2.0], [3.0], [4.0]])
    B = np.array([[4.0], [3.0], [1.0], [2.0]])
    assert ss.spearmanr(A[:, 0], B[:, 0]).statistic == pytest.approx(-0.8)
    assert rel.internal_consistency_reliability(A, B, True, False)[0] == pytest.approx(0.8)
    assert rel.internal_consistency_reliability(A, B, True, True)[0] == pytest.approx(-0.8)
    # one value per method: two methods, each its own rho; a missing value drops the image
    A2 = np.column_stack([A[:, 0], [1.0, 2.0, 3.0, 4.0]])
    B2 = np.column_stack([B[:, 0], [1.0, 2.0, NAN, 3.0]])
    np.testing.assert_allclose(rel.internal_consistency_reliability(A2, B2, True, True), [-0.8, 1.0])


def test_the_bootstrap_recomputes_each_coefficient_on_the_resampled_images():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=20), rng.integers(0, 5, 20).astype(float)
    counts = next(rel.resample_counts(20, 5, seed=3)).astype(float)
    rho = rel._spearman(x, y, counts)
    for r in range(5):
        idx = np.repeat(np.arange(20), counts[r].astype(int))  # the drawn images, duplicates kept
        assert rho[r] == pytest.approx(ss.spearmanr(x[idx], y[idx]).statistic, abs=1e-12)
    # alpha: a resampled image is a rater given twice
    R = rel.rankings(rng.normal(size=(20, 4)) + np.arange(4), True)
    values, onehot = rel._value_counts(R)
    boot = rel._alpha_of_counts(np.einsum("ri,iuc->ruc", counts, onehot), values, "ordinal")
    for r in range(5):
        idx = np.repeat(np.arange(20), counts[r].astype(int))
        assert boot[r] == pytest.approx(rel.krippendorff_alpha(R[idx], "ordinal"), abs=1e-12)


# -- a run ----------------------------------------------------------------------------------------------
class _StubRun:
    """What :func:`reliability` reads of a run: methods, specs, rows."""

    def __init__(self, mats, specs):
        self.methods = list(next(iter(mats.values())).columns)
        self._specs = specs
        recs = []
        for i in range(len(next(iter(mats.values())))):
            for m in self.methods:
                recs.append({"image_id": f"im{i:03d}", "idx": i, "method": m,
                             **{s.key: mats[s.key].iloc[i][m] for s in specs}})
        self._rows = pd.DataFrame(recs)

    def specs(self, metrics=None):
        return [s for s in self._specs if not metrics or s.column in metrics]

    def rows(self):
        return self._rows


def _stub(n=40, seed=0):
    """3 methods on n images: AD at 100 / 50 % (lower is better, alike), insertion / deletion."""
    rng = np.random.default_rng(seed)
    hard = rng.normal(size=(n, 1))                      # image difficulty, shared by everything
    quality = np.array([[0.0, 1.0, 2.0]])               # a < b < c
    noise = lambda: rng.normal(scale=0.7, size=(n, 3))  # noqa: E731
    cols = ["a", "b", "c"]
    mats = {"ad_100": pd.DataFrame(50 + 10 * (hard - quality + noise()), columns=cols),
            "ad_50": pd.DataFrame(60 + 10 * (hard - quality + noise()), columns=cols),
            "ins_auc": pd.DataFrame(0.5 + 0.1 * (-hard + quality + noise()), columns=cols),
            "del_auc": pd.DataFrame(0.2 + 0.1 * (hard - quality + noise()), columns=cols)}
    specs = [MetricSpec("ad_100", "AD(100%)", False, 1.0, "-"), MetricSpec("ad_50", "AD(50%)", False, 1.0, "-"),
             MetricSpec("ins_auc", "Ins", True, 100.0, "-"), MetricSpec("del_auc", "Del", False, 100.0, "-")]
    return _StubRun(mats, specs), mats


def test_reliability_of_a_run_equals_the_coefficients_and_carries_intervals():
    stub, mats = _stub()
    res = rel.reliability(stub, n_resamples=400, seed=1)
    assert res.metrics == ["AD(100%)↓", "AD(50%)↓", "Ins↑", "Del↓"] and res.methods == ["a", "b", "c"]
    ad = mats["ad_100"].to_numpy()
    assert res.inter_rater.loc["AD(100%)↓", "alpha"] == pytest.approx(rel.inter_rater_reliability(ad, False))
    M = rel.inter_method_reliability(ad)
    pairs = res.inter_method_pairs[res.inter_method_pairs.metric == "AD(100%)↓"]
    np.testing.assert_allclose(pairs.rho, [M[0, 1], M[0, 2], M[1, 2]])
    assert res.inter_method.loc["AD(100%)↓", "rho"] == pytest.approx(np.mean([M[0, 1], M[0, 2], M[1, 2]]))
    # constructs found by row key: AD(100%) - AD(50%) and Ins - Del (oriented: both "good")
    assert res.constructs == {"AD (kept %)": ["AD(100%)↓", "AD(50%)↓"], "insertion / deletion": ["Ins↑", "Del↓"]}
    ic = res.internal.set_index(["metric_a", "method"])
    want = rel.internal_consistency_reliability(mats["ins_auc"].to_numpy(), mats["del_auc"].to_numpy(), True, False)
    np.testing.assert_allclose(ic.loc["Ins↑"].rho.to_numpy(), want)
    assert (want > 0).all()  # the same difficulty drives both: they agree once oriented
    # intervals: around the estimate, the same for the same seed, other for another seed
    for df, col in ((res.inter_rater, "alpha"), (res.inter_method, "rho"), (res.internal_mean, "rho")):
        assert (df.lo <= df[col]).all() and (df[col] <= df.hi).all() and (df.lo < df.hi).all(), df
    again = rel.reliability(stub, n_resamples=400, seed=1)
    pd.testing.assert_frame_equal(again.inter_rater, res.inter_rater)
    other = rel.reliability(stub, n_resamples=400, seed=2)
    assert not np.allclose(other.inter_rater.lo, res.inter_rater.lo)
    # each interval is the percentile interval of the coefficient recomputed on the same
    # resampled images (seeded counts), by scipy / the array functions
    small = rel.reliability(stub, n_resamples=60, seed=4)
    cnt = next(rel.resample_counts(40, 60, seed=4)).astype(int)
    draws = [np.repeat(np.arange(40), c) for c in cnt]
    ins, dl = mats["ins_auc"].to_numpy(), mats["del_auc"].to_numpy()
    q = lambda v: (np.quantile(v, 0.025), np.quantile(v, 0.975))  # noqa: E731
    got = small.inter_method_pairs.set_index(["metric", "a", "b"]).loc[("Ins↑", "a", "c")]
    assert (got.lo, got.hi) == pytest.approx(q([ss.spearmanr(ins[d, 0], ins[d, 2]).statistic for d in draws]))
    got = small.inter_rater.loc["Del↓"]
    assert (got.lo, got.hi) == pytest.approx(q([rel.inter_rater_reliability(dl[d], False) for d in draws]))
    got = small.internal.set_index(["metric_a", "method"]).loc[("Ins↑", "b")]
    assert (got.lo, got.hi) == pytest.approx(q([ss.spearmanr(ins[d, 1], -dl[d, 1]).statistic for d in draws]))
    # explicit constructs, by column name
    res2 = rel.reliability(stub, n_resamples=50, constructs={"drops": ["AD(100%)", "Del"]})
    assert list(res2.internal_mean.construct) == ["drops"]
    with pytest.raises(ValueError, match="construct"):
        rel.reliability(stub, n_resamples=50, constructs={"x": ["AD(100%)", "nope"]})


def test_format_and_figure(tmp_path):
    stub, _ = _stub(n=12)
    res = rel.reliability(stub, n_resamples=100)
    md = format_reliability(res)
    for heading in ("### Inter-rater reliability", "### Inter-method reliability",
                    "### Internal consistency reliability"):
        assert heading in md
    assert "| AD(100%)↓ |" in md and "Krippendorff" in md and "| insertion / deletion | Ins↑ – Del↓ |" in md
    csv = pd.read_csv(pd.io.common.StringIO(format_reliability(res, "csv")))
    assert set(csv.measure) == {"inter-rater", "inter-method (mean)", "inter-method", "internal consistency",
                                "internal consistency (mean)"}
    assert csv[csv.measure == "inter-rater"].value.tolist() == pytest.approx(res.inter_rater.alpha.tolist(), rel=1e-5)
    with pytest.raises(ValueError, match="csv"):
        format_reliability(res, "latex")
    p = str(tmp_path / "rel.png")
    reliability_bars(res, p, "title")
    assert os.path.getsize(p) > 0
    # no construct among the metrics: said in words, the figure's third panel empty
    only = rel.reliability(stub, ["AD(100%)", "Ins"], n_resamples=20)
    assert only.internal.empty and "No two metrics of one construct" in format_reliability(only)
    reliability_bars(only, p)


# -- the CLI on a small stored run -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_run(lite0, tmp_path_factory):
    """The embedded Lite0 on 4 real photos, Grad-CAM and Fake-CAM, lcam (AD / IC at 100, 50,
    15 %). (The tiny CNN's random weights give AD = 0 on every image: nothing to rank.)"""
    out = str(tmp_path_factory.mktemp("reliability") / "run")
    return run(BenchConfig(backbone=lite0, methods="gradcam,fakecam", metrics="lcam", data=SAMPLES, limit=4,
                           seed=3, out=out, progress=False, figures=False), echo=lambda s: None)


@pytest.mark.slow
def test_stats_cli_reliability_on_a_small_run(small_run):
    res = CliRunner().invoke(main, ["stats", small_run.dir, "--reliability", "--resamples", "200"])
    assert res.exit_code == 0, res.output
    for heading in ("### Inter-rater reliability", "### Inter-method reliability",
                    "### Internal consistency reliability"):
        assert heading in res.output
    assert "AD(100%)↓ – AD(50%)↓" in res.output and "IC(50%)↑ – IC(15%)↑" in res.output
    png = os.path.join(small_run.dir, "reliability.png")
    assert os.path.getsize(png) > 0 and png in res.output
    api = camzoo.stats.reliability(small_run, n_resamples=200)
    assert api.methods == ["gradcam", "fakecam"] and len(api.inter_rater) == 6
    assert (api.inter_rater.n_images == 4).all() and len(api.internal_mean) == 6
    # a trained classifier: AD(100%) ranks the methods on every image, alpha is a number
    assert np.isfinite(api.inter_rater.loc["AD(100%)↓", "alpha"])
    # the CLI's text is the API's
    assert camzoo.stats.format_reliability(api) in res.output
    res = CliRunner().invoke(main, ["stats", small_run.dir, "--reliability", "--metric", "AD(100%),AD(15%)",
                                    "--format", "csv", "--resamples", "50"])
    assert res.exit_code == 0, res.output
    back = pd.read_csv(pd.io.common.StringIO(res.output))
    assert set(back[back.measure == "inter-rater"].metric) == {"AD(100%)↓", "AD(15%)↓"}
    assert set(back[back.measure == "internal consistency"].method) == {"gradcam", "fakecam"}
    res = CliRunner().invoke(main, ["stats", small_run.dir, "--reliability", "--agreement"])
    assert res.exit_code == 2 and "one of them" in res.output
    res = CliRunner().invoke(main, ["stats", small_run.dir, "--reliability", "--metric", "nope"])
    assert res.exit_code == 1 and "Traceback" not in res.output and "AD(100%)" in res.output
