"""The engine's rows equal an independent per-image computation (fused or plain normalization, an
explainer's own classifier), with exact forward counts, the config, manifest and output files."""
import os

import numpy as np
import pandas as pd
import pytest
import torch

import camzoo
from camzoo.bench import BenchConfig, run
from camzoo.data.datasets import open_dataset
from camzoo.data.images import load_image
from camzoo.metrics.scorer import Scorer
from camzoo.metrics.adcc import adcc_scores
from camzoo.metrics.lcam_protocol import average_drop, masked_confidence
from camzoo.metrics.rise_protocol import auc, insertion_deletion
from camzoo.results.tables import summary
from tests.conftest import SAMPLES, STEPS
from tests.helpers import TINY1000


def test_engine_rows_equal_independent_per_image_computation(tiny_run):
    from camzoo.models.testing import tiny_backbone

    bb = tiny_backbone(num_classes=1000)  # tiny_run's backbone (the photos' labels are its classes)
    rows = tiny_run.rows(curves=True)
    ds = open_dataset(SAMPLES, limit=6, seed=3)
    assert len(rows) == 12 and set(rows.method) == {"gradcam", "fakecam"}
    assert list(rows[rows.method == "gradcam"].image_id) == [it.image_id for it in ds.items]
    nus = (1.0, 0.5, 0.15)
    for it in ds.items:
        x = bb.preprocess(load_image(it.path)).unsqueeze(0).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            p = torch.softmax(bb.model(x), 1)[0]
        c = torch.tensor([int(p.argmax())])
        Y = p[c]
        for method in ("gradcam", "fakecam"):
            ex = camzoo.get_explainer(method)
            V = ex.explain(bb, x, c)
            sc = Scorer(bb.model, 1)  # one image per forward: nothing shared with the engine
            O = masked_confidence(sc, bb.denormalize(x).clamp(0, 1), V, c, bb.normalize, nus)[0]
            ad = adcc_scores(sc, x, V, c, Y, lambda E, cc: ex.explain(bb, E, cc))
            cur = insertion_deletion(sc, x, V, c, STEPS)
            row = rows[(rows.method == method) & (rows.image_id == it.image_id)].iloc[0]
            assert row.c == int(c) and row.pred == int(c) and row.label == it.label
            assert row.Y == pytest.approx(float(Y), abs=1e-6)
            for j, L in enumerate(("100", "50", "15")):
                assert row[f"O_{L}"] == pytest.approx(float(O[j]), abs=1e-5)
                assert row[f"ad_{L}"] == pytest.approx(float(average_drop(Y, O[j:j + 1])), abs=1e-3)
                # IC is a strict comparison: check it against the stored O (ties are float noise)
                assert row[f"ic_{L}"] == (100.0 if row[f"O_{L}"] > row.Y else 0.0)
            for k_row, k in (("adcc_O", "O"), ("adcc_ad", "average_drop"), ("coherency", "coherency"),
                             ("complexity", "complexity"), ("adcc", "adcc")):
                assert row[k_row] == pytest.approx(float(ad[k]), abs=1e-5), (method, k)
            np.testing.assert_allclose(row.ins_curve, cur["insertion"][0].numpy(), atol=1e-5)
            np.testing.assert_allclose(row.del_curve, cur["deletion"][0].numpy(), atol=1e-5)
            assert row.ins_auc == pytest.approx(float(auc(cur["insertion"])[0]), abs=1e-5)
            assert row.del_auc == pytest.approx(float(auc(cur["deletion"])[0]), abs=1e-5)
            assert len(row.ins_curve) == STEPS + 1
    # Fake-CAM's complexity is (HW - 1) / HW exactly
    fk = rows[rows.method == "fakecam"]
    np.testing.assert_allclose(fk.complexity, 1 - 1 / 32 ** 2, atol=1e-6)


def test_lcam_fusion_only_for_a_plain_normalization(tmp_path):
    """The engine fuses lcam's masking and (x - mean) / std; a Backbone whose normalize is
    something else gets its own normalize called (equal rows either way)."""
    import dataclasses

    from camzoo.models.backbone import Backbone
    from camzoo.engine.runner import _mean_std
    from camzoo.models.testing import tiny_backbone

    bb = tiny_backbone(num_classes=1000)  # the photos' ImageNet labels are classes of it
    ms = _mean_std(bb)
    assert ms is not None and ms[0] is bb.mean and ms[1] is bb.std

    class Gamma(Backbone):  # not a per-channel affine map: fusing it would be wrong
        def normalize(self, x01):
            return super().normalize(x01.clamp(min=0).sqrt())

    gb = Gamma(**{f.name: getattr(bb, f.name) for f in dataclasses.fields(Backbone)})
    assert _mean_std(gb) is None
    r = run(BenchConfig(backbone=gb, methods="gradcam,fakecam", metrics="lcam", data=SAMPLES,
                        limit=3, seed=1, batch_size=3, eval_batch_size=4,
                        out=str(tmp_path / "gamma"), progress=False, figures=False),
            echo=lambda s: None)
    rows = r.rows()
    r.close()
    ds = open_dataset(SAMPLES, limit=3, seed=1)
    x = torch.stack([gb.preprocess(load_image(it.path)) for it in ds.items])
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        c = gb.model(x).argmax(1)
    for method in ("gradcam", "fakecam"):  # fakecam: a plateau of ties at every threshold
        V = camzoo.explain(method, gb, x, c)
        O = masked_confidence(Scorer(gb.model, 1), gb.denormalize(x).clamp(0, 1), V, c, gb.normalize)
        got = rows[rows.method == method].set_index("image_id").loc[[it.image_id for it in ds.items]]
        for j, L in enumerate(("100", "50", "15")):
            np.testing.assert_allclose(got[f"O_{L}"].to_numpy(), O[:, j].numpy(), atol=1e-5)


def test_forward_counts_are_exact(tiny_run):
    fw = {(r.method, r.family): r.forwards for r in tiny_run.forwards().itertuples()}
    n = 6
    expected = {("*", "clean"): n}
    for m in ("gradcam", "fakecam"):
        expected.update({(m, "lcam"): 3 * n, (m, "adcc"): n, (m, "insertion"): (STEPS + 1) * n,
                         (m, "deletion"): (STEPS + 1) * n})
    expected.update({("gradcam", "explain"): n, ("gradcam", "adcc_explain"): n})
    assert fw == expected
    cfg = tiny_run.config
    assert cfg["methods"]["gradcam"]["forward_passes"] == 1
    assert cfg["methods"]["fakecam"]["forward_passes"] == 0
    assert cfg["data"]["n_images"] == 6 and cfg["backbone"]["layer"] == "features"
    assert cfg["protocols"]["rise"]["options"]["steps"] == STEPS
    assert cfg["methods"]["gradcam"]["options"] == {"layer": None, "amp": None}
    assert cfg["torch_version"] == torch.__version__ and cfg["camzoo_version"] == camzoo.__version__
    # manifest lists the chosen files and hashes to the stored value
    man = pd.read_csv(os.path.join(tiny_run.dir, "manifest.csv"))
    assert list(man.image_id) == list(tiny_run.rows().query("method == 'fakecam'").image_id)
    for f in ("table.csv", "table.md", "table.tex", "per_image.csv", "curves.png", "grid.png"):
        assert os.path.getsize(os.path.join(tiny_run.dir, f)) > 0, f


def test_evaluated_backbone_is_used_for_y_and_metrics(tmp_path):
    from camzoo.explainers.base import EXPLAINERS, Explainer
    from camzoo.models.testing import tiny_backbone

    other = tiny_backbone(num_classes=1000, seed=5)

    class OwnClassifier(Explainer):
        name = "_test_own_classifier"
        defaults: dict = {}

        def forward_passes(self, model):
            return 1

        def evaluated_backbone(self, model):
            return other

        def _explain(self, model, x, y):
            return torch.linspace(0, 1, x.shape[-1] * x.shape[-2]).view(1, *x.shape[-2:]).expand(x.shape[0], -1, -1)

    EXPLAINERS.add(OwnClassifier.name, OwnClassifier)
    try:
        r = run(BenchConfig(backbone=TINY1000, weights="random", methods=f"{OwnClassifier.name},fakecam", metrics="lcam",
                            data=SAMPLES, limit=2, out=str(tmp_path / "run"), progress=False,
                            figures=False), echo=lambda s: None)
    finally:
        EXPLAINERS._items.pop(OwnClassifier.name)
    rows = r.rows()
    own = rows[rows.method == OwnClassifier.name]
    assert set(own.classifier) == {f"{OwnClassifier.name}:tiny"}
    assert set(rows[rows.method == "fakecam"].classifier) == {"backbone"}
    ds = open_dataset(SAMPLES, limit=2)
    x = torch.stack([other.preprocess(load_image(it.path)) for it in ds.items])
    with torch.inference_mode():
        p = torch.softmax(other.model(x), 1)
    np.testing.assert_allclose(own.Y.to_numpy(), p.max(1).values.numpy(), atol=1e-6)
    assert list(own.c) == p.argmax(1).tolist()
    fw = {(a.method, a.family): a.forwards for a in r.forwards().itertuples()}
    assert fw[(OwnClassifier.name, "clean")] == 2 and fw[("*", "clean")] == 2
    assert r.config["methods"][OwnClassifier.name]["classifier"]["key"] == f"{OwnClassifier.name}:tiny"
    assert f"{OwnClassifier.name}: evaluated on its own classifier tiny" in summary(r).to("markdown")
