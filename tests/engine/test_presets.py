"""Presets: ``quick`` / ``full`` applied alike by the API and the CLI, ``lcam-table1`` (the L-CAM
paper's Table 1 protocol in one option), ``--subset`` through the engine and the CLI, and
``camzoo compare --reference``."""
import json
import os

import pytest
from click.testing import CliRunner

from camzoo.cli import main
from camzoo.engine.config import PRESETS, BenchConfig, apply_preset
from tests.conftest import IMAGENETTE
from tests.helpers import TINY

TINY1000 = "py:tests.helpers:tiny1000"  # the tiny CNN with 1000 classes: ImageNet labels fit


def test_lcam_table1_fills_the_papers_protocol_per_backbone():
    vgg, picked = apply_preset(BenchConfig(backbone="vgg16", data="val", preset="lcam-table1"))
    assert vgg.methods == "gradcam,gradcam++,scorecam,rise" and vgg.metrics == "lcam"
    assert vgg.subset == "lcam-2000" and vgg.layer == "conv5" and vgg.target == "pred"
    assert vgg.options == {"scorecam": {"variant": "official"}, "rise": {"n_masks": 4000}}
    assert "--opt rise.n_masks=4000" in picked and "--subset lcam-2000" in picked
    rn, _ = apply_preset(BenchConfig(backbone="resnet50", data="val", preset="lcam-table1",
                                     options={"lcam-img": {"checkpoint": "heads/r50-img.pt"}}))
    assert rn.options["rise"] == {"n_masks": 8000} and rn.layer == "layer4"
    assert rn.methods == "gradcam,gradcam++,scorecam,rise,lcam-img"  # the learned head: checkpoint given
    own, _ = apply_preset(BenchConfig(backbone="resnet50", data="val", preset="lcam-table1", methods="rise",
                                      options={"rise": {"n_masks": 100}}, subset="mine.txt", metrics="all"))
    assert own.options == {"rise": {"n_masks": 100}} and own.methods == "rise"  # what the user gave wins
    assert own.subset == "mine.txt" and own.metrics == "all"
    assert apply_preset(vgg)[0] == vgg  # idempotent (a resumed run)
    with pytest.raises(ValueError, match="preset lcam-table1 needs --data"):
        apply_preset(BenchConfig(backbone="vgg16", preset="lcam-table1"))


def test_cli_choices_are_the_registries():
    from camzoo.results.reference import REFERENCES

    opts = {p.name: p for p in main.commands["bench"].params}
    assert list(opts["preset"].type.choices) == list(PRESETS)
    ref = {p.name: p for p in main.commands["compare"].params}["reference"]
    assert list(ref.type.choices) == list(REFERENCES)


@pytest.mark.skipif(not os.path.isdir(IMAGENETTE), reason="needs ../shared/data/imagenette-224")
def test_subset_lcam_2000_over_imagenette_then_compare_with_the_paper(tmp_path):
    runner = CliRunner()
    out = tmp_path / "run"
    base = ["bench", "--backbone", TINY1000, "--weights", "random", "--data", IMAGENETTE, "--preset",
            "lcam-table1", "--methods", "gradcam,fakecam", "--out", str(out), "--no-progress", "--device", "cpu"]
    r = runner.invoke(main, base)  # 1,993 of the 2,000 images are not there: refused, nothing written
    assert r.exit_code == 1 and "1993" in r.output and "--allow-missing" in r.output and "Traceback" not in r.output
    assert not out.exists()
    r = runner.invoke(main, base + ["--allow-missing"])
    assert r.exit_code == 0, r.output
    assert "subset lcam-2000: 7 of its 2000 images found" in r.output
    assert "the list lcam-2000 (7 of its 2000 images found; 1993 missing" in (out / "table.md").read_text()
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["data"]["n_images"] == 7 and cfg["data"]["subset"] == "lcam-2000"
    assert cfg["data"]["subset_listed"] == 2000 and cfg["data"]["subset_missing"] == 1993
    listed = {}
    with open(os.path.join(os.path.dirname(IMAGENETTE), "lcam-eval-2000", "Evaluation_2000.txt")) as f:
        for line in f:
            name, label = line.split()
            listed[name] = int(label)
    manifest = (out / "manifest.csv").read_text().splitlines()[1:]
    got = {os.path.basename(row.split(",")[2]): int(row.split(",")[3]) for row in manifest}
    assert len(got) == 7 and all(listed[n] == lab for n, lab in got.items())
    r = runner.invoke(main, ["compare", str(out), "--reference", "lcam-table1", "--reference-backbone", "vgg16",
                             "--resamples", "200"])
    assert r.exit_code == 0, r.output
    assert "| gradcam |" in r.output and "32.12" in r.output  # the paper's VGG-16 Grad-CAM AD(100%)
    assert "random weights" in r.output and "fakecam" in r.output  # not in the paper: a footnote
    r = runner.invoke(main, ["compare", str(out), "--reference", "lcam-table1"])
    assert r.exit_code == 1 and "vgg16, resnet50" in r.output


def test_the_api_applies_the_same_preset_as_the_cli():
    from camzoo.engine.config import BenchConfig, apply_preset

    cfg, picked = apply_preset(BenchConfig())
    assert cfg.preset == "quick" and cfg.metric_options["rise"] == {"steps": 16} and cfg.options["rise"] == {"n_masks": 64}
    assert "scorecam" not in cfg.methods.split(",") and "gradcam" in cfg.methods.split(",")
    assert apply_preset(cfg)[0] == cfg  # idempotent: a resumed run gets nothing new
    full, picked = apply_preset(BenchConfig(data="somewhere"))
    assert full.preset == "full" and full.metric_options == {} and not picked and "rise" not in full.options
    explicit, _ = apply_preset(BenchConfig(methods="all", metric_options={"rise": {"steps": 8}},
                                           options={"rise": {"n_masks": 9}}))
    assert explicit.methods == "all" and explicit.metric_options["rise"] == {"steps": 8} and explicit.options["rise"] == {"n_masks": 9}
    cli = BenchConfig.from_cli({"backbone": TINY, "options": ("rise.n_masks=5",),
                                "metric_options": ("lcam.nus=1,0.5",)})
    assert cli == BenchConfig(backbone=TINY, options={"rise": {"n_masks": 5}},
                              metric_options={"lcam": {"nus": [1, 0.5]}})
