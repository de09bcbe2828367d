"""A run goes on past a failing method, stops a method that fails on its first batches, never
scores an invalid map, and joins its loading thread on every exit path."""
import threading

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import camzoo
from camzoo.bench import BenchConfig, Run, run
from camzoo.cli import main
from camzoo.explainers.base import Explainer
from camzoo.results.store import ResultStore
from tests.helpers import QUIET, TINY, Boom, registered
from tests.helpers import bench_cli as _bench
from tests.helpers import marker_of as _marker_of


class AlwaysBoom(Explainer):
    name = "alwaysboom"
    defaults: dict = {}
    calls = 0

    def forward_passes(self, model):
        return 0

    def _explain(self, model, x, y):
        AlwaysBoom.calls += 1
        raise ValueError("never works")


class BadMaps(Explainer):
    """NaN for image 0, +Inf for image 1, a negative value for image 2, valid for the rest."""

    name = "badmaps"
    defaults: dict = {}

    def forward_passes(self, model):
        return 0

    def _explain(self, model, x, y):
        V = torch.ones(x.shape[0], *x.shape[-2:])  # keeps all: the best AD/IC, were it scored
        V[:, 0, 0] = 0.0
        bad = {0: float("nan"), 1: float("inf"), 2: -0.5}
        for i in range(x.shape[0]):
            k = int(round(float(x[i, 0, 1, 1]) * 1e4)) % 6
            if k in bad:
                V[i, 3, 3] = bad[k]
        return V


def test_a_failing_method_is_recorded_and_the_run_goes_on(tmp_path):
    Boom.marker, Boom.BROKEN = _marker_of("coffee"), True
    out = tmp_path / "run"
    with registered(Boom):
        res = _bench("--methods", "boom,fakecam", "--steps", "4", "--batch-size", "3", "--out", str(out))
        assert res.exit_code == 3, res.output  # finished, with errors
        assert "boom: 3 of 6 images failed (see `camzoo errors" in res.output
        r = Run(str(out))
        rows, fails = r.rows(), r.failures()
        assert len(rows[rows.method == "fakecam"]) == 6 and len(rows[rows.method == "boom"]) == 3
        assert len(fails) == 3 and set(fails.kind) == {"error"} and set(fails.error) == {"RuntimeError"}
        assert "coffee" in set(fails.image_id) and all("boom on purpose" in t for t in fails.traceback)
        r.close()
        err = CliRunner().invoke(main, ["errors", str(out), "--traceback"])
        assert err.exit_code == 0 and "error       boom coffee: RuntimeError: boom on purpose" in err.output
        assert "Traceback" in err.output
        # a subset of the stored methods may be resumed (nothing to do for fakecam)
        res = _bench("--resume", "--out", str(out), "--methods", "fakecam")
        assert res.exit_code == 3, res.output  # boom's failures are still recorded
        # fixed: --resume retries the failed pairs, and the run is complete
        Boom.BROKEN = False
        res = _bench("--resume", "--out", str(out))
        assert res.exit_code == 0, res.output
    with Run(str(out)) as r:
        assert len(r.rows()) == 12 and not len(r.failures())
        assert "failed" not in (out / "table.md").read_text()


def test_a_method_failing_on_its_first_batches_is_stopped(tmp_path):
    AlwaysBoom.calls = 0
    with registered(AlwaysBoom):
        r = run(BenchConfig(backbone=TINY, weights="random", methods="alwaysboom,fakecam", metrics="lcam", batch_size=1,
                            max_failed_batches=2, out=str(tmp_path / "run"), **QUIET),
                echo=lambda s: None)
    f = r.failures()
    # 2, not 6 (warm-up calls included: the warm-up raised), and the probe of the estimate
    assert AlwaysBoom.calls == 3
    assert sorted(f.kind.value_counts().items()) == [("error", 2), ("skipped", 4)]
    assert all("stopped after failing on each of its first 2 batches" in m
               for m in f[f.kind == "skipped"].message)
    assert len(r.rows()) == 6  # fakecam complete
    assert "4 of 6 images not evaluated" in camzoo.results.tables.summary(r).to("markdown")


def test_invalid_maps_are_never_scored_nor_marked_best(tmp_path):
    out = tmp_path / "run"
    with registered(BadMaps):
        r = run(BenchConfig(backbone=TINY, weights="random", methods="badmaps,gradcam", metrics="lcam",
                            out=str(out), **QUIET), echo=lambda s: None)
    rows, f = r.rows(), r.failures()
    bad = f[f.method == "badmaps"]
    n_bad = len(bad)
    assert n_bad >= 1 and set(bad.kind) == {"invalid"}
    assert len(rows[rows.method == "badmaps"]) == 6 - n_bad
    assert all(("NaN" in m) or ("Inf" in m) or ("min -0.5" in m) for m in bad.message)
    assert np.isfinite(rows.select_dtypes("number").to_numpy()).all()
    md = camzoo.results.tables.summary(r).to("markdown")
    line = [ln for ln in md.splitlines() if ln.startswith("| badmaps |")][0]
    assert "**" not in line and "<u>" not in line  # its AD(100%) ~0 would be best otherwise
    assert f"badmaps: {n_bad} of 6 maps invalid" in md


def test_the_loading_thread_is_joined_on_every_exit_path(tmp_path, monkeypatch):
    def threads():
        return [t for t in threading.enumerate() if t.name == "camzoo-prefetch" and t.is_alive()]

    with registered(AlwaysBoom):
        run(BenchConfig(backbone=TINY, weights="random", methods="alwaysboom", metrics="lcam", batch_size=1,
                        out=str(tmp_path / "a"), **QUIET), echo=lambda s: None)
    assert not threads()

    def broken_write(self, *a, **k):
        raise KeyboardInterrupt  # the user stops the run in the middle

    monkeypatch.setattr(ResultStore, "write_batch", broken_write)
    with pytest.raises(KeyboardInterrupt):
        run(BenchConfig(backbone=TINY, weights="random", methods="fakecam", metrics="lcam", batch_size=1,
                        out=str(tmp_path / "b"), **QUIET), echo=lambda s: None)
    assert not threads()
