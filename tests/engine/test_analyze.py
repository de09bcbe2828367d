"""``camzoo analyze`` on real photos with a label changed on purpose: the misclassified image,
its pair of maps (ground truth vs predicted class) with their similarity and category, the
per-class table, the figures and the report."""
import csv
import os

import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from camzoo.bench import BenchConfig, run
from camzoo.cli import main
from camzoo.engine.analyze import MULTI, NONE, RELATED, _categories, analyze
from camzoo.explainers.base import explain
from camzoo.metrics.lcam_protocol import keep_mask
from camzoo.metrics.stability import iou
from tests.conftest import SAMPLES

PHOTOS = {"n01443537_goldfish.JPEG": 1, "n01484850_great_white_shark.JPEG": 2,
          "n01514668_cock.JPEG": 7, "n01518878_ostrich.JPEG": 9}
CHANGED = ("n01514668_cock", 8)  # labelled "hen": Lite0 says "cock"


@pytest.fixture(scope="module")
def labelled_run(lite0, tmp_path_factory):
    d = tmp_path_factory.mktemp("analyze")
    with open(d / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "class_index"])
        for name, c in PHOTOS.items():
            os.symlink(os.path.join(os.path.abspath(SAMPLES), name), d / name)  # no copy
            w.writerow([name, CHANGED[1] if name.startswith(CHANGED[0]) else c])
    return run(BenchConfig(backbone="efficientnet_lite0", methods="fakecam,gradcam", metrics="lcam",
                           data=str(d), out=str(d / "run"), device="cpu", progress=False, figures=False),
               echo=lambda s: None)


@pytest.mark.slow
def test_the_changed_label_gives_a_pair_of_maps_and_a_category(labelled_run, lite0):
    res = analyze(labelled_run, echo=lambda s: None)
    mis = res.misclassified
    assert res.n_images == 4 and res.accuracy == pytest.approx(0.75)
    assert set(mis.image_id) == {CHANGED[0]} and list(mis.method) == ["fakecam", "gradcam"]
    g = mis.set_index("method")
    assert (g.label == 8).all() and (g.pred == 7).all()
    assert g.loc["gradcam", "label_name"] == "hen" and g.loc["gradcam", "pred_name"] == "cock"
    assert g.loc["gradcam", "label_wnid"] == "n01514859" and g.loc["gradcam", "pred_wnid"] == "n01514668"
    # Fake-CAM ignores the class: identical maps, IoU 1, no vote
    assert g.loc["fakecam", "iou"] == 1.0 and not g.loc["fakecam", "class_dependent"]
    assert g.loc["fakecam", "category"] == NONE
    # Grad-CAM's two maps, recomputed independently: IoU of the top-15 % regions
    it = labelled_run.rows().query("method == 'gradcam' and image_id == @CHANGED[0]")
    from camzoo.data.images import load_image

    x = lite0.preprocess(load_image(os.path.join(SAMPLES, CHANGED[0] + ".JPEG")))[None]
    Vg, Vp = (explain("gradcam", lite0, x, torch.tensor([c])) for c in (8, 7))
    ref = float(iou(keep_mask(Vg, 0.15), keep_mask(Vp, 0.15))[0])
    assert g.loc["gradcam", "iou"] == pytest.approx(ref, abs=1e-3)
    assert g.loc["gradcam", "spearman"] < 1.0 and g.loc["gradcam", "class_dependent"]
    cat = RELATED if ref >= 0.5 else MULTI
    assert g.loc["gradcam", "category"] == cat and (mis.image_category == cat).all()
    # per-class table from the stored rows: the "hen" class has the one wrong image
    pc = res.per_class.set_index("class")
    assert pc.loc[8, "accuracy"] == 0.0 and pc.loc[8, "n"] == 1 and pc.loc[1, "accuracy"] == 1.0
    assert pc.loc[8, "class_name"] == "hen"
    assert pc.loc[8, "gradcam:AD(100%)↓"] == pytest.approx(float(it.ad_100.iloc[0]))
    # files: the figure, the CSVs and a report linking the figure
    report = open(res.files["report"]).read()
    fig = g.loc["gradcam", "figure"]
    assert fig and os.path.getsize(os.path.join(os.path.dirname(res.files["report"]), fig)) > 0
    assert f"]({fig})" in report and "hen" in report and cat in report
    back = pd.read_csv(res.files["misclassified"])
    assert len(back) == 2 and set(back.category) == {NONE, cat}


@pytest.mark.slow
def test_analyze_cli_and_errors(labelled_run, tmp_path):
    out = str(tmp_path / "a")
    res = CliRunner().invoke(main, ["analyze", labelled_run.dir, "--methods", "gradcam", "--out", out,
                                    "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "accuracy 0.750, 1 misclassified" in res.output and os.path.isfile(os.path.join(out, "report.md"))
    res = CliRunner().invoke(main, ["analyze", labelled_run.dir, "--methods", "nope"])
    assert res.exit_code != 0 and "fakecam" in res.output and "Traceback" not in res.output
    # a run without labels is refused with a clear message
    nolab = run(BenchConfig(backbone="py:camzoo.models.testing:tiny_backbone", weights="random", methods="fakecam", metrics="lcam",
                            limit=1, out=str(tmp_path / "nolab"), progress=False, figures=False),
                echo=lambda s: None)
    res = CliRunner().invoke(main, ["analyze", nolab.dir])
    assert res.exit_code != 0 and "ground-truth labels" in res.output


def test_category_rule_on_hand_built_pairs():
    df = pd.DataFrame({"image_id": ["a"] * 4 + ["b"] * 3,
                       "method": ["fake", "m1", "m2", "m3", "fake", "m1", "m2"],
                       "iou": [1.0, 0.2, 0.6, 0.7, 1.0, 0.4, 0.55],
                       "class_dependent": [False, True, True, True, False, True, True]})
    out = _categories(df, 0.5)
    assert list(out.category) == [NONE, MULTI, RELATED, RELATED, NONE, MULTI, RELATED]
    # image a: median IoU of the class-dependent methods 0.6 -> related; b: 0.475 -> multi-object
    assert out.groupby("image_id").image_category.first().to_dict() == {"a": RELATED, "b": MULTI}
    only_fake = _categories(df[df.method == "fake"].copy(), 0.5)
    assert set(only_fake.image_category) == {NONE}
