"""`camzoo bench --methods all` runs every registered explainer that needs no checkpoint -- the
whole CAM family and the controls included -- on a tiny CNN and on the embedded Lite0."""
import pytest
from click.testing import CliRunner

from camzoo.cli import main
from camzoo.engine.config import resolve_methods
from camzoo.results.run import Run
from tests.conftest import SAMPLES
from tests.helpers import TINY1000

#: the methods of issue 26 (pytorch-grad-cam's family and the controls)
NEW = {"hirescam", "gradcam-elementwise", "layercam", "eigencam", "eigengradcam", "ablationcam",
       "fullgrad", "kpcacam", "shapleycam", "finercam", "centre", "random"}


def _bench(out, *args):
    res = CliRunner().invoke(main, ["bench", "--methods", "all", "--no-progress", "--no-figures",
                                    "--out", str(out), *args])
    assert res.exit_code == 0, res.output
    return Run(str(out))


def test_all_holds_the_family_and_the_controls():
    assert NEW <= set(resolve_methods("all", {}))


def test_methods_all_on_a_tiny_cnn(tmp_path):
    r = _bench(tmp_path / "run", "--backbone", TINY1000, "--weights", "random", "--data", SAMPLES,
               "--limit", "2", "--opt", "rise.n_masks=8", "--metrics", "lcam,adcc")
    rows = r.rows()
    assert set(rows.method) == set(resolve_methods("all", {}))
    assert rows.groupby("method").size().eq(2).all()
    assert rows[["ad_100", "coherency"]].notna().all().all()


@pytest.mark.slow
def test_methods_all_on_lite0(tmp_path):
    """One photo, the 320 channels of Lite0's `blocks` (Score-CAM and Ablation-CAM: 321
    forwards per map), the lcam protocol."""
    r = _bench(tmp_path / "run", "--data", SAMPLES, "--limit", "1", "--layer", "blocks",
               "--opt", "rise.n_masks=16", "--metrics", "lcam")
    rows = r.rows()
    assert set(rows.method) == set(resolve_methods("all", {}))
    assert rows["ad_100"].notna().all()
    assert r.config["methods"]["ablationcam"]["forward_passes"] == 321


def test_methods_all_leaves_out_what_a_vision_transformer_refuses(tmp_path):
    """FullGrad is not defined on a transformer: `--methods all` leaves it out and says so;
    named, it is refused before anything is written."""
    vit = "py:camzoo.models.testing:tiny_vit"
    res = CliRunner().invoke(main, ["bench", "--backbone", vit, "--weights", "random", "--methods", "all",
                                    "--opt", "rise.n_masks=8", "--metrics", "lcam", "--limit", "1",
                                    "--no-progress", "--no-figures", "--out", str(tmp_path / "all")])
    assert res.exit_code == 0, res.output
    assert "--methods all: fullgrad left out (" in res.output
    rows = Run(str(tmp_path / "all")).rows()
    assert set(rows.method) == set(resolve_methods("all", {})) - {"fullgrad"}
    res = CliRunner().invoke(main, ["bench", "--backbone", vit, "--weights", "random", "--methods", "fullgrad",
                                    "--no-progress", "--out", str(tmp_path / "named")])
    assert res.exit_code == 1 and "fullgrad" in res.output and not (tmp_path / "named").exists()
