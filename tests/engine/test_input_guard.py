"""An explainer that changes the batch it was given (in place) fails alone: the engine restores the
batch, so the methods after it get the original images, and records the failure of that method."""
import pytest
import torch

import camzoo
from camzoo.bench import BenchConfig, Run, run
from camzoo.explainers.base import EXPLAINERS, Explainer
from tests.helpers import QUIET, TINY, assert_rows_close, comparable
from tests.helpers import bench_cli as _bench


class ZeroesInput(Explainer):
    """Changes its input in place: zeroes the images through ``x.mul_`` (``how="inplace"``,
    seen by torch's version counter) or through ``x.data`` (``how="data"``: a new version
    counter; only a checksum sees it), or shifts the classes (``how="classes"``); its maps are
    otherwise valid."""

    name = "zeroesinput"
    defaults = {"how": "inplace"}

    def forward_passes(self, model):
        return 0

    def _explain(self, model, x, y):
        how = self.options["how"]
        if how == "classes":
            y.add_(1)
        else:
            (x if how == "inplace" else x.data).mul_(0)
        return torch.rand(x.shape[0], *x.shape[-2:], generator=torch.Generator().manual_seed(0))


class DeclaredZeroesInput(ZeroesInput):
    """The same, declaring that it changes its input: it gets its own copy (no failure)."""

    name = "declaredzeroes"
    modifies_input = True


@pytest.fixture
def plugins(monkeypatch):
    monkeypatch.setattr(EXPLAINERS, "_items", dict(EXPLAINERS._items))
    camzoo.register_explainer(ZeroesInput)
    camzoo.register_explainer(DeclaredZeroesInput)


def _gradcam(r: Run):
    rows = comparable(r)
    return rows[rows.method == "gradcam"].reset_index(drop=True)


@pytest.mark.parametrize("how", ["inplace", "data", "classes"])
def test_a_method_changing_its_input_fails_alone_and_the_next_methods_get_the_original(
        tmp_path, plugins, how):
    common = ["--metrics", "lcam,adcc", "--batch-size", "4", "--max-failed-batches", "5"]
    res = _bench("--methods", "zeroesinput,gradcam", "--opt", f"zeroesinput.how={how}",
                 *common, "--out", str(tmp_path / "guarded"))
    assert res.exit_code == 3, res.output  # finished, with failures
    res = _bench("--methods", "gradcam", *common, "--out", str(tmp_path / "alone"))
    assert res.exit_code == 0, res.output
    with Run(str(tmp_path / "guarded")) as g, Run(str(tmp_path / "alone")) as a:
        # gradcam ran after the plugin on the same batches: its rows are exactly those of a run
        # without the plugin (O_100, ADCC, ... on the original images)
        assert len(_gradcam(g)) == 6
        assert_rows_close(_gradcam(g), _gradcam(a), atol=0)
        rows, fails = g.rows(), g.failures()
        assert not len(rows[rows.method == "zeroesinput"])  # never scored
        f = fails[fails.method == "zeroesinput"]
        assert len(f) == 6 and set(f.kind) == {"error"} and set(f.protocol) == {""}
        what = "classes" if how == "classes" else "images"
        assert all("zeroesinput modified its input" in m and what in m for m in f.message), set(f.message)
        assert not len(fails[fails.method == "gradcam"])


def test_a_method_declaring_that_it_changes_its_input_gets_a_copy(tmp_path, plugins):
    cfg = dict(backbone=TINY, weights="random", metrics="lcam,adcc", batch_size=4, **QUIET)
    g = run(BenchConfig(methods="declaredzeroes,gradcam", out=str(tmp_path / "declared"), **cfg),
            echo=lambda s: None)
    a = run(BenchConfig(methods="gradcam", out=str(tmp_path / "alone"), **cfg), echo=lambda s: None)
    assert not len(g.failures()) and len(g.rows()) == 12
    assert_rows_close(_gradcam(g), _gradcam(a), atol=0)


def test_a_protocol_s_re_explanation_is_checked_too(plugins):
    """The maps of other inputs (a protocol's ``E = x * V``) go through the same check; the
    classes, which may be the batch's, are restored."""
    from camzoo.engine.maps import InputModifiedError, explain_checked, make_methods
    from camzoo.models.testing import tiny_backbone

    bb = tiny_backbone()
    x = torch.randn(2, 3, 32, 32)
    c = torch.tensor([1, 2])
    m, = make_methods(bb, ["zeroesinput"], {"zeroesinput": {"how": "classes"}})
    with pytest.raises(InputModifiedError, match="zeroesinput modified its input .*classes"):
        explain_checked(m, x, c)
    assert c.tolist() == [1, 2]
    m, = make_methods(bb, ["declaredzeroes"], {})
    assert explain_checked(m, x, c).shape == (2, 32, 32) and bool(x.abs().sum() > 0)
