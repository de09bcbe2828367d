"""The model-randomization sanity check (Adebayo et al. 2018): block lists, seeded re-init on
copies (the user's model untouched), the similarity measures, Fake-CAM stays at 1, Grad-CAM
falls, on the tiny model and on the embedded Lite0."""
import os

import numpy as np
import pandas as pd
import pytest
import scipy.stats as ss
import torch
from click.testing import CliRunner

import camzoo
from camzoo.cli import main
from camzoo.metrics.similarity import (SIMILARITIES, average_ranks, hog_similarity, map_similarities,
                                       rank_correlation, ssim)
from camzoo.models.surgery import clone_backbone, randomization_blocks, reinit_backbone, reinit_modules
from camzoo.models.testing import TinyCNN, tiny_backbone
from tests.conftest import SAMPLES
from tests.helpers import TINY


def _state(bb):
    return {k: v.detach().clone() for k, v in bb.model.state_dict().items()}


def test_block_lists_per_family():
    import timm
    import torchvision

    assert randomization_blocks(TinyCNN()) == [["fc"], ["body.2"], ["body.0"]]
    with torch.device("meta"):  # structure only: no weights allocated
        r18_model, lite_model, vgg_model = (torchvision.models.resnet18(), timm.create_model("tf_efficientnet_lite0"),
                                            torchvision.models.vgg16())
    r18 = randomization_blocks(r18_model)
    assert r18[0] == ["fc"] and r18[1] == ["layer4.1"] and r18[-2] == ["layer1.0"]
    assert r18[-1] == ["conv1", "bn1"] and len(r18) == 10
    lite = randomization_blocks(lite_model)
    assert lite == [["classifier"], ["conv_head", "bn2"]] + [[f"blocks.{i}"] for i in range(6, -1, -1)] \
        + [["conv_stem", "bn1"]]
    vgg = randomization_blocks(vgg_model)
    convs = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
    assert vgg == [["classifier.6"], ["classifier.3"], ["classifier.0"]] + [[f"features.{i}"] for i in convs[::-1]]


def test_reinit_modules_is_seeded_touches_only_its_blocks_and_not_the_global_rng():
    bb = tiny_backbone()
    before = _state(bb)
    a, b = clone_backbone(bb), clone_backbone(bb)
    torch.manual_seed(123)
    g0 = torch.rand(3)
    torch.manual_seed(123)
    reinit_modules(a, ["fc"], seed=5)
    assert torch.equal(torch.rand(3), g0)  # the global RNG is as it was
    reinit_modules(b, ["fc"], seed=5)
    sa, sb = _state(a), _state(b)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)  # same seed, same weights
    assert not torch.equal(sa["fc.weight"], before["fc.weight"])
    assert all(torch.equal(sa[k], before[k]) for k in sa if not k.startswith("fc."))
    assert all(torch.equal(v, before[k]) for k, v in _state(bb).items())  # the original: untouched
    # reinit_backbone is reinit_modules of the whole model (same draws as before the refactor)
    c, d = clone_backbone(bb), clone_backbone(bb)
    reinit_backbone(c, 3)
    torch.manual_seed(3)
    ref = TinyCNN()
    assert torch.equal(c.model.fc.weight, ref.fc.weight) and torch.equal(c.model.body[0].bias, ref.body[0].bias)
    with pytest.raises(AttributeError):
        reinit_modules(d, ["nope"], 0)


def test_similarity_measures_against_references():
    from skimage.feature import hog
    from skimage.metrics import structural_similarity

    g = torch.Generator().manual_seed(0)
    A = (torch.rand(3, 48, 48, generator=g) * 8).round() / 8  # ties on purpose
    B = (A + 0.5 * torch.rand(3, 48, 48, generator=g)).clamp(0, 1)
    r = rank_correlation(A, B)
    for i in range(3):
        assert float(r[i]) == pytest.approx(ss.spearmanr(A[i].flatten(), B[i].flatten()).statistic, abs=1e-12)
        assert float(ssim(A, B)[i]) == pytest.approx(structural_similarity(A[i].double().numpy(), B[i].double().numpy(),
                                                                           data_range=1.0))
        fa, fb = (hog(m[i].double().numpy(), orientations=9, pixels_per_cell=(16, 16), cells_per_block=(2, 2))
                  for m in (A, B))
        assert float(hog_similarity(A, B)[i]) == pytest.approx(ss.pearsonr(fa, fb).statistic, abs=1e-10)
    x = torch.tensor([[3.0, 1, 1, 2, 3, 3]])
    assert average_ranks(x).tolist() == [list(ss.rankdata(x[0]) - 1)]
    # signed maps: abs changes the ranking
    S = torch.tensor([[[-2.0, 1.0], [0.5, 3.0]]])
    T = torch.tensor([[[2.0, 1.0], [0.5, 3.0]]])
    assert float(rank_correlation(S, T)) < 1.0 and float(rank_correlation(S, T, absolute=True)) == pytest.approx(1.0)
    # constant maps: two constant maps are identical (1); constant vs structured: 0
    C, D = torch.zeros(1, 32, 32), torch.full((1, 32, 32), 0.5)
    sims = map_similarities(C, D)
    assert float(sims["spearman"]) == 1.0 and float(sims["hog"]) == 1.0
    sims = map_similarities(C, A[:1, :32, :32])
    assert float(sims["spearman"]) == 0.0 and float(sims["hog"]) == 0.0
    # Fake-CAM's map against itself: every measure exactly 1
    F = torch.ones(2, 64, 64)
    F[:, 0, 0] = 0
    for k, v in map_similarities(F, F.clone()).items():
        assert torch.allclose(v, torch.ones(2, dtype=torch.float64)), k


@pytest.mark.parametrize("mode", ["cascading", "independent"])
def test_tiny_model_fakecam_stays_at_1_gradcam_falls_model_untouched(mode, tmp_path):
    bb = tiny_backbone()
    before = _state(bb)
    res = camzoo.sanity.run(bb, "fakecam,gradcam", SAMPLES, limit=4, mode=mode, out=str(tmp_path),
                            progress=False, grid_images=1)
    assert all(torch.equal(v, before[k]) for k, v in _state(bb).items())  # the user's model
    assert res.blocks == ["fc", "body.2", "body.0"]
    rows = res.rows
    assert len(rows) == 4 * 2 * 4 and set(rows.step) == {0, 1, 2, 3}
    fake = rows[rows.method == "fakecam"]
    for s in SIMILARITIES:
        np.testing.assert_allclose(fake[s], 1.0, atol=1e-9)
    gc = res.summary("spearman")["gradcam"]
    assert gc.iloc[0] == pytest.approx(1.0)
    assert (gc.iloc[1:] < 0.9).all(), gc
    for f in ("csv", "plot_spearman", "plot_ssim", "plot_hog", "grid"):
        assert os.path.getsize(res.files[f]) > 0
    back = pd.read_csv(res.files["csv"])
    assert list(back.columns[:6]) == ["step", "block", "mode", "image_id", "method", "class"]
    assert set(back.block) == {"original", "fc", "body.2", "body.0"} and (back["mode"] == mode).all()


def test_explained_class_is_the_trained_models_at_every_step():
    bb = tiny_backbone()
    res = camzoo.sanity.run(bb, "gradcam", SAMPLES, limit=3, progress=False, figures=False)
    x = torch.stack([bb.preprocess(camzoo.data.datasets.open_dataset(SAMPLES, limit=3).load(it))
                     for it in camzoo.data.datasets.open_dataset(SAMPLES, limit=3).items])
    pred = bb.model(x).argmax(1).tolist()
    for step, g in res.rows.groupby("step"):
        assert g["class"].tolist() == pred, step


@pytest.mark.slow
def test_lite0_gradcam_falls_fakecam_stays(lite0):
    before = _state(lite0)
    # the top three blocks (the head); the whole cascade runs in benchmarks/README.md
    res = camzoo.sanity.run(lite0, "fakecam,gradcam", SAMPLES, limit=2, seed=4, max_blocks=3,
                            progress=False, figures=False)
    assert all(torch.equal(v, before[k]) for k, v in _state(lite0).items())
    assert res.blocks == ["classifier", "conv_head+bn2", "blocks.6"]
    fake = res.rows[res.rows.method == "fakecam"]
    np.testing.assert_allclose(fake[list(SIMILARITIES)].to_numpy(), 1.0, atol=1e-9)
    sp = res.summary("spearman")["gradcam"]
    assert sp.iloc[0] == pytest.approx(1.0)
    assert (sp.iloc[1:] < 0.6).all(), sp  # randomizing the logits already changes Grad-CAM
    assert (res.summary("ssim")["gradcam"].iloc[1:] < 0.8).all()


def test_sanity_cli(tmp_path):
    out = str(tmp_path / "s")
    res = CliRunner().invoke(main, ["sanity", "--backbone", TINY, "--weights", "random", "--methods", "fakecam,gradcam", "--data", SAMPLES,
                                    "--limit", "2", "--max-blocks", "2", "--out", out, "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "| → body.2 | 1.000 |" in res.output and os.path.isfile(os.path.join(out, "sanity_cascade.png"))
    assert set(pd.read_csv(os.path.join(out, "sanity.csv")).block) == {"original", "fc", "body.2"}
    res = CliRunner().invoke(main, ["sanity", "--backbone", TINY, "--weights", "random", "--methods", "nope", "--out", out])
    assert res.exit_code != 0 and "gradcam" in res.output and "Traceback" not in res.output
