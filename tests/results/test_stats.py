"""Statistics from stored per-image rows: bootstrap intervals (coverage, scipy, the same
resampled images for every method), Wilcoxon + Holm, Noether's sample size, metric agreement,
and the tables that carry them (± cells, ≈ markers, —, LaTeX, CSV _lo/_hi), the CLI."""
import os
import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
import scipy.stats as ss
from click.testing import CliRunner

import camzoo
from camzoo.bench import BenchConfig, run
from camzoo.cli import main
from camzoo.results import bootstrap, concordance, paired
from camzoo.results.tables import NEAR, Table, marks, near_best_tests, summary, to_csv, to_latex, to_markdown
from tests.conftest import SAMPLES
from tests.helpers import TINY1000


# -- bootstrap intervals ---------------------------------------------------------------------
@pytest.mark.parametrize("method", ["bca", "percentile"])
def test_intervals_cover_the_true_mean_in_about_95_percent_of_200_data_sets(method):
    rng = np.random.default_rng(12)
    # 200 simulated data sets of 40 images (columns; each its own data set): normal, mean 2
    X = rng.normal(2.0, 1.5, size=(40, 200))
    lo, hi = bootstrap.bootstrap_ci(X, n_resamples=2000, seed=1, method=method)
    cover = np.mean((lo <= 2.0) & (2.0 <= hi))
    assert 0.92 <= cover <= 0.98, cover
    # IC-like indicators (0 or 100 per image, true proportion 30 %): 120 images
    B = 100.0 * (rng.random((120, 200)) < 0.3)
    lo, hi = bootstrap.bootstrap_ci(B, n_resamples=2000, seed=2, method=method)
    cover = np.mean((lo <= 30.0) & (30.0 <= hi))
    assert 0.92 <= cover <= 0.98, cover


def test_intervals_match_scipy_bootstrap():
    rng = np.random.default_rng(3)
    x = rng.lognormal(0.0, 1.0, size=40)  # skewed: BCa (with its acceleration) and percentile differ
    for ours, theirs in (("bca", "BCa"), ("percentile", "percentile")):
        lo, hi = bootstrap.bootstrap_ci(x, n_resamples=20000, seed=0, method=ours)
        ref = ss.bootstrap((x,), np.mean, n_resamples=20000, method=theirs, random_state=0).confidence_interval
        width = ref.high - ref.low
        # different random resamples: agree within Monte Carlo error (a few % of the width)
        assert abs(lo[0] - ref.low) < 0.04 * width and abs(hi[0] - ref.high) < 0.04 * width, (lo, hi, ref)


def test_the_same_resampled_images_for_every_column_and_no_fake_zero_width_interval():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 3))
    B = bootstrap.bootstrap_means(X, 500, seed=7)
    # the means of the difference are the differences of the means: same images in every column
    np.testing.assert_allclose(bootstrap.bootstrap_means(X[:, :1] - X[:, 1:2], 500, seed=7)[:, 0],
                               B[:, 0] - B[:, 1], atol=1e-12)
    # a column's interval does not depend on the other columns
    lo3, hi3 = bootstrap.bootstrap_ci(X, 500, seed=7)
    lo1, hi1 = bootstrap.bootstrap_ci(X[:, 2], 500, seed=7)
    assert lo3[2] == pytest.approx(lo1[0], abs=1e-12) and hi3[2] == pytest.approx(hi1[0], abs=1e-12)
    # a resample is n draws with replacement: counts sum to n
    cnt = next(bootstrap.resample_counts(30, 10, seed=7))
    assert cnt.shape == (10, 30) and (cnt.sum(1) == 30).all()
    # missing values: the mean of the finite values of the resampled rows
    Y = X.copy()
    Y[::3, 0] = np.nan
    By = bootstrap.bootstrap_means(Y, 50, seed=7)
    c = next(bootstrap.resample_counts(30, 50, seed=7))[0]
    ok = np.isfinite(Y[:, 0])
    assert By[0, 0] == pytest.approx((c[ok] * Y[ok, 0]).sum() / c[ok].sum())
    # fewer than 2 values, or all equal (float32 noise included): no interval, never zero-width
    Z = np.array([[1.0, 5.0, 0.292398, 3.0], [np.nan, 5.0, 0.2923979, 4.0], [np.nan, 5.0, 0.292398, 3.5]])
    lo, hi = bootstrap.bootstrap_ci(Z, 200, seed=0)
    assert np.isnan(lo[:3]).all() and np.isnan(hi[:3]).all()
    assert lo[3] < hi[3]
    with pytest.raises(ValueError, match="percentile"):
        bootstrap.bootstrap_ci(X, method="studentized")


# -- paired tests ------------------------------------------------------------------------------
def test_wilcoxon_p_values_equal_scipys_and_holm_by_hand():
    rng = np.random.default_rng(5)
    for n, shift in ((8, 0.0), (25, 0.4), (60, 0.2), (300, 0.1)):
        a = rng.normal(size=n)
        b = a + shift + rng.normal(size=n)
        assert paired.wilcoxon_p(a, b) == ss.wilcoxon(a, b).pvalue
    a, b = rng.normal(size=20), rng.normal(size=20)
    a[3] = np.nan  # a missing value: the pair is left out
    assert paired.wilcoxon_p(a, b) == ss.wilcoxon(np.delete(a, 3), np.delete(b, 3)).pvalue
    assert paired.wilcoxon_p(np.ones(5), np.ones(5)) == 1.0
    # float32 noise (here around 0 on a 0-100 scale) is no difference: p = 1, like exact zeros
    noisy = np.array([0.0, 13.6123, 40.1, 0.0, 2.5])
    assert paired.wilcoxon_p(noisy, noisy + np.array([1e-5, -2e-5, 1e-5, 3e-6, 0])) == 1.0
    # Holm by hand: sorted 0.01, 0.03, 0.04, 0.2 (m = 4) -> 0.04, 0.09, max(0.09, 0.08), 0.2
    np.testing.assert_allclose(paired.holm([0.01, 0.04, 0.03, np.nan, 0.2]),
                               [0.04, 0.09, 0.09, np.nan, 0.2])
    assert paired.holm([0.5, 0.6])[1] == 1.0  # capped at 1


def test_noether_sample_size_gives_the_stated_power():
    rng = np.random.default_rng(9)
    d = rng.normal(0.3, 1.0, size=4000)  # effect d/sigma = 0.3
    # p' = P(D + D' > 0) = Phi(0.3 sqrt 2); estimated over the pairs i < j (checked by brute force)
    small = d[:300]
    brute = np.mean([small[i] + small[j] > 0 for i in range(300) for j in range(i + 1, 300)])
    assert paired.walsh_positive(small) == pytest.approx(brute, abs=1e-12)
    assert paired.walsh_positive(d) == pytest.approx(ss.norm.cdf(0.3 * np.sqrt(2)), abs=0.01)
    n = paired.noether_n(d, alpha=0.05, power=0.8)
    theory = (ss.norm.ppf(0.975) + ss.norm.ppf(0.8)) ** 2 / (3 * (ss.norm.cdf(0.3 * np.sqrt(2)) - 0.5) ** 2)
    assert abs(n - theory) <= 0.05 * theory  # ~97 images
    # the test at that n rejects in about 80 % of 200 simulated studies
    rej = np.mean([ss.wilcoxon(rng.normal(0.3, 1.0, size=int(n))).pvalue < 0.05 for _ in range(200)])
    assert 0.72 <= rej <= 0.9, (n, rej)
    assert paired.noether_n(np.array([1.0, -1.0])) == float("inf")
    assert np.isnan(paired.noether_n(np.array([1.0])))


def test_pairwise_tests_on_a_hand_built_matrix():
    rng = np.random.default_rng(1)
    base = rng.normal(size=50)
    X = pd.DataFrame({"a": base + 3.0, "b": base + rng.normal(0, 0.1, 50), "c": base.copy()})
    X.loc[X.index[0], "c"] = np.nan
    df = paired.pairwise_tests(X, higher_is_better=False, n_resamples=500, seed=0)
    assert list(zip(df.a, df.b)) == [("a", "b"), ("a", "c"), ("b", "c")]
    r = df.set_index(["a", "b"])
    assert r.loc[("a", "c"), "n"] == 49 and r.loc[("a", "b"), "n"] == 50
    assert r.loc[("a", "c"), "diff"] == pytest.approx(3.0)
    # a - c is 3 on every image: no interval is claimed
    assert np.isnan(r.loc[("a", "c"), "diff_lo"]) and r.loc[("a", "c"), "better"] == "c"
    assert r.loc[("a", "b"), "diff_lo"] < r.loc[("a", "b"), "diff"] < r.loc[("a", "b"), "diff_hi"]
    assert r.loc[("a", "b"), "better"] == "b"  # lower is better
    np.testing.assert_allclose(df.p_holm, paired.holm(df.p))
    # the p-value is the sign-flip permutation test of the mean difference (scipy's, 9999 draws)
    ref = ss.permutation_test((X.a.to_numpy(), X.b.to_numpy()), lambda x, y, axis: np.mean(x - y, axis=axis),
                              permutation_type="samples", vectorized=True, random_state=0).pvalue
    assert r.loc[("a", "b"), "p"] == pytest.approx(ref, abs=0.01)
    # the images needed: ((z_.9833 + z_.8) sd / mean)^2 of the b - c differences, by hand
    d = (X.b - X.c).dropna().to_numpy()
    z = ss.norm.ppf(1 - 0.05 / 3 / 2) + ss.norm.ppf(0.8)
    assert r.loc[("b", "c"), "n_needed"] == np.ceil((z * d.std(ddof=1) / d.mean()) ** 2) > 50


# -- agreement ---------------------------------------------------------------------------------
def test_rank_correlations_equal_scipys_and_kendalls_w_by_hand():
    rng = np.random.default_rng(4)
    A = rng.integers(0, 4, size=(30, 5)).astype(float)  # ties on purpose
    B = rng.normal(size=(30, 5))
    Ra, Rb = concordance.rankings(A, True), concordance.rankings(B, False)
    sp, kd = concordance.rank_spearman(Ra, Rb), concordance.rank_kendall(Ra, Rb)
    for i in range(30):
        if np.ptp(A[i]) == 0:
            assert np.isnan(sp[i]) and np.isnan(kd[i])
            continue
        assert sp[i] == pytest.approx(ss.spearmanr(-A[i], B[i]).statistic)
        assert kd[i] == pytest.approx(ss.kendalltau(-A[i], B[i]).statistic)
    assert list(concordance.rankings(np.array([[3.0, 1.0, 2.0]]), True)[0]) == [1, 3, 2]  # 1 = best
    for row in A:  # the ranks are scipy's average ranks of the scores
        np.testing.assert_array_equal(concordance.rankings(row[None], False)[0], ss.rankdata(row))
    # float32 noise is a tie (Grad-CAM = XGrad-CAM under a GAP head), a real difference is not
    assert list(concordance.rankings(np.array([[0.29239801, 0.2923980, 0.5]]), True)[0]) == [2.5, 2.5, 1]
    assert list(concordance.rankings(np.array([[0.2924, 0.2923, 0.5]]), True)[0]) == [2, 3, 1]
    # W: k raters in full agreement -> 1; two raters reversed -> 0; by hand with a tie
    R = np.array([[[1, 2, 3], [1, 2, 3], [1, 2, 3]], [[1, 2, 3], [3, 2, 1], [np.nan] * 3]], float)
    np.testing.assert_allclose(concordance.kendall_w(R), [1.0, 0.0])
    # raters (1,2,3) and (1.5,1.5,3): rank sums 2.5,3.5,6, S = 6.5; T = 2^3-2 = 6;
    # W = 12*6.5 / (4*24 - 2*6) = 78/84
    assert concordance.kendall_w(np.array([[[1, 2, 3], [1.5, 1.5, 3]]], float))[0] == pytest.approx(78 / 84)


def test_agreement_of_rows_built_by_hand():
    # Fake-CAM-like: best by AD (lower), worst by ADCC (higher) on every image; B and C swap
    ad = pd.DataFrame({"fake": [0.1, 0.2, 0.0], "b": [5, 6, 7.0], "c": [6, 5, 8.0]})
    adcc = pd.DataFrame({"fake": [0.3, 0.3, 0.3], "b": [80, 70, 60.0], "c": [70, 80, 50.0]})
    ag = concordance.agreement_of({"AD↓": ad, "ADCC↑": adcc}, {"AD↓": False, "ADCC↑": True})
    # image 0: AD ranks (fake, b, c) = (1, 2, 3), ADCC (3, 1, 2): rho = 1 - 6*6/(3*8) = -0.5;
    # image 1: (1, 3, 2) and (3, 2, 1): -0.5; image 2 as image 0. Kendall: -1/3 on each
    assert ag.spearman.loc["AD↓", "ADCC↑"] == pytest.approx(-0.5)
    assert ag.kendall.loc["AD↓", "ADCC↑"] == pytest.approx(-1 / 3)
    assert ag.mean_rank.loc["fake", "AD↓"] == 1 and ag.mean_rank.loc["fake", "ADCC↑"] == 3
    assert ag.table_rank.loc["fake", "AD↓"] == 1 and ag.table_rank.loc["fake", "ADCC↑"] == 3
    assert ag.spearman.loc["AD↓", "AD↓"] == 1.0 and ag.n_images.loc["AD↓", "ADCC↑"] == 3


@pytest.fixture(scope="module")
def lite0_run(lite0, tmp_path_factory):
    """The embedded Lite0 on 3 real photos: fakecam and gradcam, lcam + adcc metrics."""
    out = str(tmp_path_factory.mktemp("stats") / "run")
    return run(BenchConfig(backbone=lite0, methods="fakecam,gradcam", metrics="lcam,adcc", data=SAMPLES,
                           limit=3, seed=1, out=out, progress=False, figures=False), echo=lambda s: None)


@pytest.mark.slow
def test_on_a_real_run_ad_ranks_fakecam_first_and_adcc_last(lite0_run):
    ag = camzoo.stats.agreement(lite0_run, ["AD(100%)", "ADCC"])
    # per image: AD(100%) ranks Fake-CAM first, ADCC ranks it last -> Spearman -1 on 2 methods
    assert ag.spearman.loc["AD(100%)↓", "ADCC↑"] == -1.0
    assert ag.kendall.loc["AD(100%)↓", "ADCC↑"] == -1.0
    assert ag.mean_rank.loc["fakecam", "AD(100%)↓"] == 1 and ag.mean_rank.loc["fakecam", "ADCC↑"] == 2
    assert ag.n_images.loc["AD(100%)↓", "ADCC↑"] == 3
    assert ag.kendall_w == pytest.approx(0.0)  # two raters in exact disagreement
    res = CliRunner().invoke(main, ["stats", lite0_run.dir, "--agreement", "--metric", "AD(100%),ADCC"])
    assert res.exit_code == 0, res.output
    assert "| AD(100%)↓ | 1.00 | -1.00 |" in res.output
    assert os.path.getsize(os.path.join(lite0_run.dir, "agreement.png")) > 0


@pytest.mark.slow
def test_stats_cli_pairwise_and_api(lite0_run):
    df = camzoo.stats.pairwise(lite0_run, ["ADCC"], n_resamples=300)
    rows = lite0_run.rows()
    f, g = (rows[rows.method == m].set_index("image_id").adcc for m in ("fakecam", "gradcam"))
    r = df.iloc[0]
    assert (r.metric, r.a, r.b, r.n) == ("ADCC↑", "fakecam", "gradcam", 3)
    assert r["diff"] == pytest.approx(100 * (f - g).mean())
    assert r.p == ss.wilcoxon(100 * f, 100 * g.reindex(f.index)).pvalue and r.better == "gradcam"
    res = CliRunner().invoke(main, ["stats", lite0_run.dir, "--metric", "ADCC", "--format", "csv",
                                    "--resamples", "300"])
    assert res.exit_code == 0, res.output
    back = pd.read_csv(pd.io.common.StringIO(res.output))
    assert back.loc[0, "diff"] == pytest.approx(r["diff"], rel=1e-5)
    assert back.loc[0, "diff_lo"] == pytest.approx(r.diff_lo, rel=1e-5)
    res = CliRunner().invoke(main, ["stats", lite0_run.dir, "--metric", "nope"])
    assert res.exit_code != 0 and "ADCC" in res.output and "Traceback" not in res.output
    iv = camzoo.stats.intervals(lite0_run, ["ADCC"], n_resamples=300)
    assert list(iv.method) == ["fakecam", "gradcam"] and np.isnan(iv.lo[0])  # Fake-CAM's ADCC: constant
    assert iv.lo[1] <= iv["mean"][1] <= iv.hi[1] and iv.n[1] == 3


# -- tables: intervals, markers, LaTeX, CSV ----------------------------------------------------
def _hand_table():
    """Column X↑: a clearly best (b, c far below). Column Y↑: a and b tied (b is not
    significantly different), c clearly worse. 30 images."""
    rng = np.random.default_rng(2)
    e = lambda: rng.normal(0, 1, 30)
    X = pd.DataFrame({"a": 10 + e(), "b": 5 + e(), "c": 5 + e()})
    Y = pd.DataFrame({"a": 5 + e(), "b": 5 + e(), "c": 0 + e()})
    Y["b"] = Y["a"] - 0.05 + 0.5 * e()  # paired, a hair below a
    mats = {"X↑": X, "Y↑": Y}
    idx = pd.Index(["a", "b", "c"], name="Method")
    df = pd.DataFrame({k: v.mean().to_numpy() for k, v in mats.items()}, index=idx)
    df["#FW"] = [1.0, 0.0, 1.0]
    t = Table(df, {"X↑": True, "Y↑": True}, ["a footnote"])
    allX = np.concatenate([m.to_numpy() for m in mats.values()], axis=1)
    lo, hi = bootstrap.bootstrap_ci(allX, 1000, seed=0)
    t.lo = pd.DataFrame(lo.reshape(2, 3).T, index=idx, columns=list(mats))
    t.hi = pd.DataFrame(hi.reshape(2, 3).T, index=idx, columns=list(mats))
    t.ci_note = "± note"
    t.p_best = near_best_tests(t, mats)
    return t, mats


def test_markers_one_clearly_best_and_two_tied():
    t, mats = _hand_table()
    mk = marks(t)
    assert mk.loc["a", "X↑"] == "best" and mk.loc["a", "Y↑"] == "best" and mk.loc["b", "Y↑"] == "second"
    # X: b and c are significantly worse than a; Y: b is not, c is
    assert (t.p_best["X↑"].drop("a") < 0.05).all()
    assert t.p_best.loc["b", "Y↑"] >= 0.05 > t.p_best.loc["c", "Y↑"]
    assert np.isnan(t.p_best.loc["a", "X↑"])
    # the test of the mean difference, Holm over all three pairs of Y (a-b, a-c, b-c)
    Y = mats["Y↑"][["a", "b", "c"]].to_numpy()
    raw = paired.sign_flip_p(np.stack([Y[:, 0] - Y[:, 1], Y[:, 0] - Y[:, 2], Y[:, 1] - Y[:, 2]], axis=1))
    np.testing.assert_allclose(t.p_best.loc[["b", "c"], "Y↑"], paired.holm(raw)[:2])
    md = to_markdown(t)
    rows = {ln.split("|")[1].strip(): ln for ln in md.splitlines() if ln.startswith("| ") and "Method" not in ln}
    assert rows["b"].count(NEAR) == 1 and NEAR not in rows["a"] and NEAR not in rows["c"]
    hw = (t.hi.loc["a", "X↑"] - t.lo.loc["a", "X↑"]) / 2
    assert f"**{t.df.loc['a', 'X↑']:.2f}** ± {hw:.2f}" in rows["a"]
    assert "not significantly worse than the best" in md and "± note" in md and "a footnote" in md
    t.show_ci = False  # --no-ci: the markers stay, the intervals go
    md = to_markdown(t)
    assert "±" not in md and NEAR in md


def test_no_interval_is_shown_as_a_dash_and_latex_compiles_shape(tmp_path):
    t, _ = _hand_table()
    t.lo.loc["c", "X↑"] = np.nan  # e.g. all values equal
    t.hi.loc["c", "X↑"] = np.nan
    t.df.index = pd.Index(["a_1", "b&b", "c%"], name="Method")
    for f in (t.lo, t.hi, t.p_best):
        f.index = t.df.index
    md = to_markdown(t)
    assert re.search(r"\| c% \| [0-9.]+ ± — \|", md)
    tex = to_latex(t)
    body = tex.split("\\midrule")[1].split("\\bottomrule")[0].strip().splitlines()
    assert [ln.split(" & ")[0] for ln in body] == ["a\\_1", "b\\&b", "c\\%"]
    for ln in body:
        cells = ln.rstrip(" \\").split(" & ")
        assert len(cells) == 1 + len(t.df.columns)
        for c in cells[1:3]:  # metric cells: one math group, balanced braces
            assert c.startswith("$") and c.endswith("$") and c.count("$") == 2, c
            assert c.count("{") == c.count("}"), c
    assert "$\\mathbf{" in body[0] and "_{\\pm " in body[0]
    assert "_{\\pm\\textrm{---}}" in body[2]
    assert "^{\\approx}" in body[1]
    assert "≈" not in tex and "±" not in tex and "—" not in tex  # every sign as LaTeX
    if shutil.which("pdflatex"):
        doc = tmp_path / "t.tex"
        doc.write_text("\\documentclass{article}\\usepackage{booktabs}\\begin{document}\n" + tex
                       + "\\end{document}\n")
        res = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", doc.name],
                             cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stdout[-2000:]


def test_csv_lo_hi_columns_parse_back():
    t, _ = _hand_table()
    back = pd.read_csv(pd.io.common.StringIO(to_csv(t)))
    assert list(back.columns) == ["Method", "X↑", "X↑_lo", "X↑_hi", "Y↑", "Y↑_lo", "Y↑_hi", "#FW"]
    for c in ("X↑", "Y↑"):
        np.testing.assert_allclose(back[f"{c}_lo"], t.lo[c], rtol=1e-5)
        np.testing.assert_allclose(back[f"{c}_hi"], t.hi[c], rtol=1e-5)
        assert (back[f"{c}_lo"] <= back[c]).all() and (back[c] <= back[f"{c}_hi"]).all()


@pytest.mark.slow
def test_run_tables_carry_intervals_from_the_stored_rows(lite0_run):
    t = summary(lite0_run, n_resamples=500)
    rows = lite0_run.rows()
    g = 100 * rows[rows.method == "gradcam"].adcc.to_numpy()
    assert t.df.loc["gradcam", "ADCC↑"] == pytest.approx(g.mean())
    # the same resampled images as a direct call on the images x methods matrix
    X = 100 * bootstrap.per_image_matrix(rows, "adcc", ["fakecam", "gradcam"])
    lo, hi = bootstrap.bootstrap_ci(X.to_numpy(), 500, seed=0)
    assert t.lo.loc["gradcam", "ADCC↑"] == pytest.approx(lo[1]) and t.hi.loc["gradcam", "ADCC↑"] == pytest.approx(hi[1])
    # table.md written by the run has intervals; the CLI writes them, or not with --no-ci
    assert " ± " in open(os.path.join(lite0_run.dir, "table.md")).read()
    res = CliRunner().invoke(main, ["table", lite0_run.dir, "--no-ci"])
    assert res.exit_code == 0 and "±" not in res.output and "| gradcam |" in res.output
    res = CliRunner().invoke(main, ["compare", lite0_run.dir, lite0_run.dir, "--format", "csv", "--resamples", "200"])
    back = pd.read_csv(pd.io.common.StringIO(res.output))
    assert len(back) == 4 and "ADCC↑_lo" in back.columns
    # fewer than 2 images: no interval anywhere
    one = run(BenchConfig(backbone=TINY1000, weights="random", methods="fakecam,gradcam", metrics="lcam", data=SAMPLES, limit=1,
                          out=os.path.join(os.path.dirname(lite0_run.dir), "one"), progress=False,
                          figures=False), echo=lambda s: None)
    t1 = summary(one, n_resamples=100)
    ad = [c for c in t1.lo.columns if c.startswith("AD")]
    ic = [c for c in t1.lo.columns if c.startswith("IC")]
    assert t1.lo[ad].isna().all().all() and "± —" in to_markdown(t1)
    # a 0/1 column has its exact interval even on one image: 0 of 1 is [0, 97.5] %, 1 of 1 [2.5, 100]
    for c in ic:
        for m in t1.df.index:
            expect = (0.0, 97.5) if t1.df.loc[m, c] == 0 else (2.5, 100.0)
            assert (t1.lo.loc[m, c], t1.hi.loc[m, c]) == pytest.approx(expect)
