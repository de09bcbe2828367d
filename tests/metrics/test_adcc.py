"""ADCC: Pearson's guard on constant full-size maps; Fake-CAM fools AD / IC but not ADCC on the
embedded Lite0 (the ADCC paper)."""
import os

import pytest
import torch

from camzoo.bench import BenchConfig, run
from tests.conftest import SAMPLES
from tests.helpers import sample_rows as _sample_rows


def test_pearson_guards_constant_full_size_maps():
    from camzoo.metrics.adcc import coherency, pearson

    g = torch.Generator().manual_seed(0)
    const = torch.full((3, 224, 224), 0.7)  # its float32 mean is not exactly 0.7
    other = torch.rand(3, 224, 224, generator=g)
    assert float((const.reshape(3, -1) - const.reshape(3, -1).mean(1, keepdim=True)).abs().max()) > 0
    torch.testing.assert_close(pearson(const, other), torch.zeros(3))
    torch.testing.assert_close(pearson(other, const, nan_value=-1.0), torch.full((3,), -1.0))
    torch.testing.assert_close(coherency(const, other), torch.full((3,), 0.5))
    # and a real correlation is still computed
    torch.testing.assert_close(pearson(other, 2 * other + 1), torch.ones(3), atol=1e-5, rtol=0)


@pytest.mark.slow
def test_fakecam_fools_ad_but_not_adcc(lite0, tmp_path):
    d = tmp_path / "sixteen"
    d.mkdir()
    rows = _sample_rows(16)
    with open(d / "labels.csv", "w") as f:
        f.write("file,class_index\n")
        for r in rows:
            f.write(f"{os.path.join(SAMPLES, r['file'])},{r['class_index']}\n")  # absolute paths
    r = run(BenchConfig(backbone=lite0, methods="fakecam,gradcam", metrics="lcam,adcc", data=str(d),
                        batch_size=16, eval_batch_size=48, out=str(tmp_path / "run"), progress=False,
                        figures=False), echo=lambda s: None)
    t = r.table()
    assert len(r.rows()) == 32
    assert t.loc["fakecam", "AD(100%)↓"] < 1.0
    assert t.loc["fakecam", "ADCC↑"] < 1.0
    assert t.loc["gradcam", "ADCC↑"] > 40.0
    assert t.loc["gradcam", "ADCC↑"] > t.loc["fakecam", "ADCC↑"] + 30
