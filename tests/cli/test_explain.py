"""``camzoo explain``: odd and corrupt images, the sample photos, ``--target`` (a target-dependent
map follows it), a ``py:`` backbone, unknown names."""
import numpy as np
import pytest
import torch
from click.testing import CliRunner

import camzoo
from camzoo.cli import main
from camzoo.models.testing import tiny_backbone
from tests.helpers import TINY
from tests.helpers import write_odd_images as _write_odd_images


def test_explain_cli_odd_and_corrupt_images(tmp_path):
    good = _write_odd_images(tmp_path)
    out = tmp_path / "out"
    files = [str(tmp_path / f) for f in good] + [str(tmp_path / "corrupt.jpg")]
    res = CliRunner().invoke(main, ["explain", *files, "--methods", "gradcam,fakecam", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "corrupt.jpg" in res.output and "cannot read image" in res.output
    assert f"wrote {len(good)} image(s)" in res.output
    for f in good:
        stem = f.rsplit(".", 1)[0]
        assert (out / f"{stem}.png").stat().st_size > 1000
        v = np.load(out / stem / "gradcam.npy")
        assert v.shape == (224, 224) and v.dtype == np.float32 and 0 <= v.min() and v.max() <= 1


def test_explain_cli_sample_photos_and_targets(tmp_path):
    out = tmp_path / "o"
    res = CliRunner().invoke(main, ["explain", "--methods", "fakecam", "--out", str(out), "--target", "285"])
    assert res.exit_code == 0, res.output
    assert {p.name for p in out.glob("*.png")} == {f"{n}.png" for n in
                                                     ("chelsea", "coffee", "rocket", "astronaut", "camera", "motorcycle_left")}
    res = CliRunner().invoke(main, ["explain", "--methods", "fakecam", "--out", str(out), "--target", "1000"])
    assert res.exit_code != 0 and "out of range" in res.output
    res = CliRunner().invoke(main, ["explain", "--methods", "nosuch", "--out", str(out)])
    assert res.exit_code != 0 and "available:" in res.output and "gradcam" in res.output
    res = CliRunner().invoke(main, ["explain", "--layer", "conv9", "--methods", "gradcam", "--out", str(out)])
    assert res.exit_code != 0 and "blocks, conv_head" in res.output
    res = CliRunner().invoke(main, ["explain", "--backbone", "lenet", "--out", str(out)])
    assert res.exit_code != 0 and "efficientnet_lite0" in res.output


@pytest.mark.slow
def test_explain_cli_target_changes_a_target_dependent_map(tmp_path, lite0):
    out = tmp_path / "o"
    res = CliRunner().invoke(main, ["explain", "--methods", "gradcam", "--target", "285", "--out", str(out),
                                    "--device", "cpu"])
    assert res.exit_code == 0, res.output
    v = np.load(out / "chelsea" / "gradcam.npy")
    x = lite0.preprocess(camzoo.data.images.sample_photos()[0][1])[None]
    want = camzoo.explain("gradcam", lite0, x, torch.tensor([285]))[0].numpy()
    top1 = camzoo.explain("gradcam", lite0, x)[0].numpy()
    np.testing.assert_allclose(v, want, atol=2e-5)
    assert int(lite0.model(x).argmax()) != 285 and np.abs(want - top1).max() > 0.2


def test_explain_takes_a_python_backbone(tmp_path):
    res = CliRunner().invoke(main, ["explain", "--backbone", TINY, "--weights", "random", "--methods", "gradcam,fakecam",
                                    "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    v = np.load(tmp_path / "chelsea" / "gradcam.npy")
    bb = tiny_backbone()
    x = bb.preprocess(camzoo.data.images.sample_photos()[0][1])[None]
    np.testing.assert_allclose(v, camzoo.explain("gradcam", bb, x)[0].numpy(), atol=1e-6)
