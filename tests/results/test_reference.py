"""Published reference values (L-CAM paper, Table 1) and the comparison of a run with them."""
import io

import numpy as np
import pandas as pd
import pytest

from camzoo.bench import BenchConfig, run
from camzoo.explainers.base import list_explainers
from camzoo.metrics.protocol import table_metrics
from camzoo.results.reference import (PAPER_SUBSET, REFERENCES, ROW_COLUMNS, compare_to_reference,
                                      expected_notes, load_reference, protocol_notes, reference_rows)
from camzoo.results.tables import Table, summary

from ..conftest import SAMPLES
from ..helpers import TINY1000

COLS = ["AD(100%)", "IC(100%)", "AD(50%)", "IC(50%)", "AD(15%)", "IC(15%)", "#FW"]
VGG = ["gradcam", "gradcam++", "scorecam", "rise", "lcam-fm*", "lcam-fm", "lcam-img*", "lcam-img",
       "lcam-img-pool5"]
RESNET = VGG[:-1]


# -- the reference data -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def ref():
    return load_reference("lcam-table1")


def _value(ref, backbone, method, column):
    v = ref[(ref.backbone == backbone) & (ref.method == method) & (ref.column == column)].value
    assert len(v) == 1, (backbone, method, column)
    return float(v.iloc[0])


def test_table1_holds_17_methods_by_7_columns(ref):
    assert list(ref.columns) == ["backbone", "method", "published_name", "column", "value"]
    assert len(ref) == 17 * 7 and not ref.duplicated(["backbone", "method", "column"]).any()
    assert list(dict.fromkeys(ref.backbone)) == ["vgg16", "resnet50"]
    assert list(dict.fromkeys(ref[ref.backbone == "vgg16"].method)) == VGG
    assert list(dict.fromkeys(ref[ref.backbone == "resnet50"].method)) == RESNET
    for _, g in ref.groupby(["backbone", "method"]):
        assert list(g.column) == COLS and g.published_name.nunique() == 1
    assert ref.value.dtype == float and ref.value.notna().all()
    # the metric columns are the camzoo lcam protocol's headers without their arrows
    assert [s.column for s in table_metrics(["lcam"])] == COLS[:-1]
    # every method without a mark of its own is a camzoo explainer
    ours = {m for m in ref.method if not m.endswith("*") and m != "lcam-img-pool5"}
    assert ours == {"gradcam", "gradcam++", "scorecam", "rise", "lcam-fm", "lcam-img"}
    assert ours <= set(list_explainers())


def test_spot_checks_against_the_paper(ref):
    # values read by hand off Table 1 of the paper (VGG-16 upper half, ResNet-50 lower half)
    for bb, m, col, v in [("vgg16", "rise", "AD(100%)", 8.74),
                          ("resnet50", "lcam-img", "IC(100%)", 43.75),
                          ("vgg16", "scorecam", "#FW", 512),
                          ("resnet50", "scorecam", "#FW", 2048),
                          ("vgg16", "rise", "#FW", 4000),
                          ("resnet50", "rise", "#FW", 8000),
                          ("vgg16", "gradcam", "AD(15%)", 84.15),
                          ("vgg16", "gradcam++", "IC(50%)", 11.15),
                          ("vgg16", "lcam-fm", "AD(50%)", 47),
                          ("vgg16", "lcam-img-pool5", "AD(50%)", 37.37),
                          ("vgg16", "lcam-img*", "IC(15%)", 3),
                          ("resnet50", "gradcam", "AD(100%)", 13.61),
                          ("resnet50", "lcam-fm", "AD(15%)", 78.64),
                          ("resnet50", "lcam-img*", "IC(15%)", 2.25),
                          ("resnet50", "lcam-fm*", "AD(50%)", 32.18)]:
        assert _value(ref, bb, m, col) == v, (bb, m, col)
    names = dict(zip(ref.method, ref.published_name))
    assert names["lcam-img-pool5"] == "L-CAM-Img\u2020" and names["lcam-fm*"] == "L-CAM-Fm*"
    assert names["gradcam++"] == "Grad-CAM++"


def test_values_are_possible_for_2000_images(ref):
    ad = ref[ref.column.str.startswith("AD")].value
    ic = ref[ref.column.str.startswith("IC")].value
    assert ((0 <= ad) & (ad <= 100)).all() and ((0 <= ic) & (ic <= 100)).all()
    # IC counts images: with 2,000 images every value is a multiple of 100/2000 = 0.05
    np.testing.assert_allclose(ic * 20, np.round(ic * 20), atol=1e-9)
    fw = ref[ref.column == "#FW"].set_index(["backbone", "method"]).value
    assert (fw[fw.index.get_level_values(1).isin(["scorecam", "rise"])] > 1).all()
    assert (fw.drop(["scorecam", "rise"], level=1) == 1).all()


def test_unknown_reference_name(tiny_run):
    assert set(REFERENCES) == {"lcam-table1"}
    with pytest.raises(ValueError, match="unknown reference 'lcam-table2'.*valid: lcam-table1"):
        load_reference("lcam-table2")
    with pytest.raises(ValueError, match="valid: lcam-table1"):
        compare_to_reference(tiny_run, "nope", backbone="vgg16")


# -- the pure core on hand-made numbers --------------------------------------------------------
def _hand_table(with_ci=True):
    idx = pd.Index(["gradcam", "fakecam", "rise"], name="Method")
    df = pd.DataFrame({"AD(100%)\u2193": [30.0, 1.0, 10.0], "IC(100%)\u2191": [25.0, 90.0, 50.0],
                       "Ins\u2191": [60.0, 10.0, 70.0], "#FW": [1.0, 0.0, 4001.0], "s/img": [0.1, 0.0, 2.0]},
                      index=idx)
    better = {"AD(100%)\u2193": False, "IC(100%)\u2191": True, "Ins\u2191": True}
    if not with_ci:
        return Table(df, better)
    mcols = list(better)
    lo = pd.DataFrame({"AD(100%)\u2193": [29.0, 0.5, np.nan], "IC(100%)\u2191": [22.1, 85.0, 45.0],
                       "Ins\u2191": [55.0, 5.0, 65.0]}, index=idx)[mcols]
    hi = pd.DataFrame({"AD(100%)\u2193": [31.0, 1.5, np.nan], "IC(100%)\u2191": [28.0, 95.0, 51.2],
                       "Ins\u2191": [65.0, 15.0, 75.0]}, index=idx)[mcols]
    return Table(df, better, lo=lo, hi=hi)


def _hand_ref():
    rows = [("vgg16", "rise", "RISE", "IC(100%)", 51.3), ("vgg16", "rise", "RISE", "AD(100%)", 8.74),
            ("vgg16", "rise", "RISE", "#FW", 4000),
            ("vgg16", "gradcam", "Grad-CAM", "AD(100%)", 32.12),
            ("vgg16", "gradcam", "Grad-CAM", "IC(100%)", 22.1),
            ("vgg16", "gradcam", "Grad-CAM", "AD(50%)", 58.65), ("vgg16", "gradcam", "Grad-CAM", "#FW", 1),
            ("vgg16", "lcam-img", "L-CAM-Img", "AD(100%)", 12.96),
            ("resnet50", "gradcam", "Grad-CAM", "AD(100%)", 13.61),
            ("resnet50", "fakecam", "Fake", "AD(100%)", 1.0)]
    return pd.DataFrame(rows, columns=["backbone", "method", "published_name", "column", "value"])


def test_reference_rows_on_hand_made_numbers():
    rows = reference_rows(_hand_table(), _hand_ref(), "vgg16")
    assert list(rows.columns) == ROW_COLUMNS
    # table order of methods (gradcam, then rise; fakecam is not in the vgg16 block), reference
    # order of columns; AD(50%) (not in the table) and Ins (not in the reference) left out
    assert [(r.method, r.column) for r in rows.itertuples()] == [
        ("gradcam", "AD(100%)"), ("gradcam", "IC(100%)"), ("gradcam", "#FW"),
        ("rise", "IC(100%)"), ("rise", "AD(100%)"), ("rise", "#FW")]
    r = rows.set_index(["method", "column"])
    assert r.loc[("gradcam", "AD(100%)"), "diff"] == pytest.approx(30.0 - 32.12)
    assert r.loc[("gradcam", "AD(100%)"), "inside"] == "no"  # 32.12 > hi 31
    assert r.loc[("gradcam", "IC(100%)"), "inside"] == "yes"  # 22.1 == lo: inside (inclusive)
    assert r.loc[("gradcam", "IC(100%)"), "diff"] == pytest.approx(25.0 - 22.1)
    assert r.loc[("rise", "AD(100%)"), "inside"] == "\u2014"  # no interval claimed
    assert np.isnan(r.loc[("rise", "AD(100%)"), "lo"])
    assert r.loc[("rise", "IC(100%)"), "inside"] == "no"  # 51.3 > hi 51.2
    assert (r.loc[("rise", "IC(100%)"), ["camzoo", "lo", "hi", "published"]].tolist()
            == [50.0, 45.0, 51.2, 51.3])
    # #FW side by side, never an interval
    assert (r.loc[("rise", "#FW"), ["camzoo", "published", "diff", "inside"]].tolist()
            == [4001.0, 4000.0, 1.0, "\u2014"])
    assert np.isnan(r.loc[("rise", "#FW"), "lo"]) and np.isnan(r.loc[("gradcam", "#FW"), "hi"])
    assert set(r.published_name) == {"Grad-CAM", "RISE"}
    # the other backbone block
    rows = reference_rows(_hand_table(), _hand_ref(), "resnet50")
    assert [(r.method, r.column, r.published) for r in rows.itertuples()] == [
        ("gradcam", "AD(100%)", 13.61), ("fakecam", "AD(100%)", 1.0)]
    assert rows.inside.tolist() == ["no", "yes"]
    # a table without intervals: no flag anywhere
    rows = reference_rows(_hand_table(with_ci=False), _hand_ref(), "vgg16")
    assert len(rows) == 6 and (rows.inside == "\u2014").all() and rows.lo.isna().all()


def test_protocol_notes():
    base = {"backbone": {"name": "vgg16", "weights_id": "torchvision:vgg16-397923af.pth"}, "target": "pred",
            "data": {"subset": PAPER_SUBSET, "n_images": 2000, "root": "/data/val"}}
    assert protocol_notes(base) == []
    for bb in ({"random_weights": True}, {"weights_id": "random"}, {"weights_id": "random:seed0"},
               {"weights": "random"}):
        notes = protocol_notes({**base, "backbone": {**base["backbone"], **bb}})
        assert len(notes) == 1 and "random weights" in notes[0] and "meaningless" in notes[0], bb
    notes = protocol_notes({**base, "target": "gt"})
    assert len(notes) == 1 and "'gt'" in notes[0] and "top-1" in notes[0]
    notes = protocol_notes({**base, "data": {"n_images": 6, "root": "/x"}})
    assert len(notes) == 1 and "6 from /x" in notes[0] and PAPER_SUBSET in notes[0]
    notes = protocol_notes({**base, "data": {"subset": "other", "n_images": 50, "root": "/x"}})
    assert len(notes) == 1 and "'other'" in notes[0]


def test_expected_notes_name_only_the_methods_compared():
    def notes(methods, backbone="vgg16"):
        return " ".join(expected_notes(pd.DataFrame({"method": methods}), backbone))

    assert notes(["fakecam"]) == ""
    assert "my_optim.py" in notes(["lcam-img"]) and "1e-2" in notes(["lcam-fm"])
    assert "my_optim.py" not in notes(["lcam-img"], "resnet50")
    assert "RISE masks are random" in notes(["rise"]) and "yiskw713" not in notes(["rise"])
    assert "K + 1" in notes(["scorecam"]) and "Score-CAM" in notes(["scorecam"])
    assert notes(["gradcam"]).startswith("Grad-CAM: the paper used github.com/yiskw713/ScoreCAM")


# -- a (tiny, random-weight) bench run compared as if it were a VGG-16 run -----------------------
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("reference") / "run")
    # 40 images: enough for the tiny random network's AD / IC to vary (intervals exist); 1000
    # classes: the photos' ImageNet labels are classes of it
    return run(BenchConfig(backbone=TINY1000, weights="random", methods="gradcam,fakecam", metrics="lcam",
                           data=SAMPLES, limit=40, seed=2, out=out, progress=False, figures=False),
               echo=lambda s: None)


def test_compare_a_run_with_the_paper(tiny_run, ref):
    t = compare_to_reference(tiny_run, "lcam-table1", backbone="vgg16", n_resamples=2000, seed=5)
    s = summary(tiny_run, n_resamples=2000, seed=5, tests=False)
    assert t.backbone == "vgg16" and t.reference == "lcam-table1"
    assert [(r.method, r.column) for r in t.df.itertuples()] == [("gradcam", c) for c in COLS]
    assert s.lo is not None and s.lo.loc["gradcam"].notna().all()  # the run gives real intervals
    for r in t.df.itertuples():
        head = next(c for c in s.df.columns if c.rstrip("\u2191\u2193") == r.column)
        pub = _value(ref, "vgg16", "gradcam", r.column)
        assert r.published == pub
        assert r.camzoo == pytest.approx(float(s.df.loc["gradcam", head]))
        assert r.diff == pytest.approx(float(s.df.loc["gradcam", head]) - pub)
        if r.column == "#FW":
            assert r.camzoo == 1 and r.inside == "\u2014"
            continue
        lo, hi = float(s.lo.loc["gradcam", head]), float(s.hi.loc["gradcam", head])
        assert (r.lo, r.hi) == pytest.approx((lo, hi))
        assert r.inside == ("yes" if lo <= pub <= hi else "no")
    notes = " ".join(t.footnotes)
    assert "random weights" in notes and "meaningless" in notes
    assert "not in the paper's table: fakecam." in t.footnotes
    assert ("published only: Grad-CAM++, Score-CAM, RISE, L-CAM-Fm*, L-CAM-Fm, L-CAM-Img*, L-CAM-Img, "
            "L-CAM-Img\u2020") in notes
    assert "40 from" in notes and PAPER_SUBSET in notes  # not the paper's images
    assert "top-1" not in " ".join(protocol_notes(tiny_run.config))  # target pred: as the paper
    assert "my_optim" not in notes  # no L-CAM head compared
    # renderings
    back = pd.read_csv(io.StringIO(t.to("csv")))
    assert list(back.columns) == ROW_COLUMNS and len(back) == 7
    np.testing.assert_allclose(back["diff"], t.df["diff"], rtol=1e-5)
    md = t.to("markdown")
    body = [ln for ln in md.splitlines() if ln.startswith("| gradcam |")]
    assert len(body) == 7 and body[0].startswith("| gradcam | Grad-CAM | AD(100%)\u2193 | ")
    assert "published only" in md and "\\begin{tabular}" in t.to("latex")
    with pytest.raises(ValueError, match="valid: markdown"):
        t.to("html")


def test_a_backbone_the_reference_does_not_cover(tiny_run):
    with pytest.raises(ValueError, match=r"no values for backbone 'py:tests\.helpers:tiny1000.*covers: vgg16, resnet50"):
        compare_to_reference(tiny_run, "lcam-table1")
    with pytest.raises(ValueError, match="covers: vgg16, resnet50"):
        compare_to_reference(tiny_run, "lcam-table1", backbone="resnet18")
    # resnet50 is covered: the same run compared with the lower half
    t = compare_to_reference(tiny_run, "lcam-table1", backbone="resnet50", n_resamples=200)
    assert t.df.published.tolist() == [13.61, 38.1, 29.28, 23.05, 78.61, 3.4, 1.0]
    assert "L-CAM-Img\u2020" not in " ".join(t.footnotes)
