"""A store that can grow (issue 22): a finished run gains a protocol (``--resume --metrics
+NAME``) and computes only its values; a protocol that raises costs only its own values; a
resumed run computes exactly the (method, image, protocol) units that are missing. Tiny
backbone (1000 classes: the photos' labels are classes of it) on random weights, a few
shared photos."""
import json
import os

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from camzoo.bench import BenchConfig, Run, run
from camzoo.cli import main
from camzoo.data.datasets import open_dataset
from camzoo.data.images import load_image
from camzoo.engine.config import resolve_protocols
from camzoo.metrics.protocol import MetricSpec, Protocol
from camzoo.metrics.protocol import PROTOCOLS
from camzoo.models.testing import tiny_backbone
from camzoo.results.store import ResultStore

from tests.conftest import SAMPLES
from tests.helpers import TINY1000

COMMON = ["--backbone", TINY1000, "--weights", "random", "--data", SAMPLES, "--limit", "4", "--methods",
          "gradcam,fakecam", "--batch-size", "2", "--no-progress", "--no-figures"]
ADCC_KEYS = ["adcc_O", "adcc_ad", "coherency", "complexity", "adcc"]


def _bench(*args):
    return CliRunner().invoke(main, ["bench", *args], catch_exceptions=False)


def _rows(out):
    with Run(str(out)) as r:
        return r.rows(curves=True)


def _forwards(out):
    with Run(str(out)) as r:
        f = r.forwards()
    return {(m, fam): int(n) for m, fam, n in f.itertuples(index=False)}


@pytest.fixture(scope="module")
def lcam_run(tmp_path_factory):
    """A finished run of the lcam protocol only (4 photos, two batches of two)."""
    out = tmp_path_factory.mktemp("grow") / "lcam"
    res = _bench(*COMMON, "--metrics", "lcam", "--out", str(out))
    assert res.exit_code == 0, res.output
    return out


def _copy_run(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


# -- a finished run gains a protocol -------------------------------------------------------------
def test_a_finished_run_gains_a_protocol_and_computes_only_its_values(lcam_run, tmp_path):
    out = _copy_run(lcam_run, tmp_path / "grown")
    before, fw0 = _rows(out), _forwards(out)
    assert "adcc" not in before.columns
    res = _bench("--resume", "--out", str(out), "--metrics", "+adcc", "--no-progress", "--no-figures")
    assert res.exit_code == 0, res.output
    assert "adding protocol(s) adcc" in res.output and "missing protocols only: adcc" in res.output
    after = _rows(out)
    # the stored values and bookkeeping are untouched (bit-identical; even the map times)
    pd.testing.assert_frame_equal(after[list(before.columns)], before)
    # adcc's values appear for every (method, image), in table columns after lcam's
    assert list(after.columns) == list(before.columns) + ADCC_KEYS
    assert after[ADCC_KEYS].notna().all().all() and len(after) == 8
    # ... equal to those of a run that had both protocols from the start
    ref = tmp_path / "both"
    assert _bench(*COMMON, "--metrics", "lcam,adcc", "--out", str(ref)).exit_code == 0
    both = _rows(ref)
    np.testing.assert_allclose(after[ADCC_KEYS].to_numpy(float), both[ADCC_KEYS].to_numpy(float),
                               rtol=0, atol=1e-6)
    # forwards: adcc's counted as in that run, lcam's unchanged; the maps were made again for
    # the added protocol (and their clean forwards, counted once per image)
    fw, fw_ref = _forwards(out), _forwards(ref)
    for key, n in fw_ref.items():
        if key[1].startswith("adcc"):
            assert fw[key] == n, key
        elif key[1] in ("lcam", "clean"):
            assert fw[key] == fw0[key] == n, key
        else:
            assert fw[key] == 2 * fw0[key], key
    cfg = json.loads((out / "config.json").read_text())
    assert list(cfg["protocols"]) == ["lcam", "adcc"] and cfg["bench_config"]["metrics"] == "lcam,adcc"
    assert "Coherency" in (out / "table.md").read_text() and "ADCC" in (out / "table.md").read_text()
    # nothing is left to do: resumed again (no --metrics: the stored ones), nothing is computed
    res = _bench("--resume", "--out", str(out), "--no-progress", "--no-figures")
    assert res.exit_code == 0 and "to do" not in res.output, res.output
    assert _forwards(out) == fw


def test_the_stored_set_named_again_plus_more_also_adds(lcam_run, tmp_path):
    out = _copy_run(lcam_run, tmp_path / "named")
    res = _bench("--resume", "--out", str(out), "--metrics", "lcam,adcc", "--no-progress", "--no-figures")
    assert res.exit_code == 0, res.output
    assert _rows(out)[ADCC_KEYS].notna().all().all()


def test_what_a_growing_resume_refuses(lcam_run, tmp_path):
    out = _copy_run(lcam_run, tmp_path / "refused")
    res = CliRunner().invoke(main, ["bench", "--resume", "--out", str(out), "--metrics", "adcc"])
    assert res.exit_code == 1 and "protocols: lcam stored but not in this run" in res.output, res.output
    res = CliRunner().invoke(main, ["bench", "--resume", "--out", str(out), "--metrics", "+adcc",
                                    "--metric-opt", "lcam.nus=0.5"])
    assert res.exit_code == 1 and "protocols.lcam.nus" in res.output, res.output
    res = CliRunner().invoke(main, ["bench", *COMMON, "--metrics", "+adcc", "--out", str(tmp_path / "new")])
    assert res.exit_code == 1 and "+NAME adds protocols to a stored run" in res.output, res.output
    assert not (tmp_path / "new").exists()
    assert resolve_protocols("+adcc,rise", ["lcam"]) == ["lcam", "rise", "adcc"]
    with Run(str(out)) as r:  # nothing was written
        assert list(r.config["protocols"]) == ["lcam"] and "adcc" not in r.rows().columns


def test_a_kill_while_growing_leaves_whole_batches_and_a_resume_completes(lcam_run, tmp_path, monkeypatch):
    out = _copy_run(lcam_run, tmp_path / "killed")
    original, calls = ResultStore.write_batch, {"n": 0}

    def killed_at_the_second_batch(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # as if the process died here
        return original(self, *a, **k)

    monkeypatch.setattr(ResultStore, "write_batch", killed_at_the_second_batch)
    res = _bench("--resume", "--out", str(out), "--metrics", "+adcc", "--no-progress", "--no-figures")
    assert res.exit_code == 1 and "Aborted" in res.output, res.output  # click's word for an interrupt
    monkeypatch.setattr(ResultStore, "write_batch", original)
    with ResultStore(str(out / "rows.sqlite"), readonly=True) as st:
        units = st.done_units()
    # the first batch (2 images x 2 methods) has its adcc values, the second none
    assert sorted(u for u in units if u[2] == "adcc") == sorted(
        (m, i, "adcc") for m in ("gradcam", "fakecam") for i in _ids(out)[:2])
    res = _bench("--resume", "--out", str(out), "--no-progress", "--no-figures")
    assert res.exit_code == 0, res.output
    assert "bench: 2 method(s) x 2 image(s) to do (2 done" in res.output
    ref = _copy_run(lcam_run, tmp_path / "whole")
    assert _bench("--resume", "--out", str(ref), "--metrics", "+adcc", "--no-progress", "--no-figures").exit_code == 0
    a, b = _rows(out), _rows(ref)
    pd.testing.assert_frame_equal(a.drop(columns="seconds"), b.drop(columns="seconds"))
    assert _forwards(out) == _forwards(ref)


def _ids(out):
    return list(pd.read_csv(out / "manifest.csv").sort_values("index").image_id)


# -- a failing protocol costs its own values only ------------------------------------------------
class Flaky(Protocol):
    """One forward per image (family ``flaky``), then raises on every batch holding the image
    whose first normalized pixel is ``marker`` (while ``broken``); counts the images it
    evaluates."""

    name = "flaky"
    summary = "a test protocol that fails on one image"
    source = "a test"
    in_all = False
    order = 50.0
    broken, marker, seen = True, None, []

    def metrics(self, **opts):
        return [MetricSpec("flaky_mean", "Flaky", False, 100.0, self.source)]

    def evaluate(self, inputs, **opts):
        Flaky.seen += [float(v) for v in inputs.x[:, 0, 0, 0]]
        inputs.scorer.probs(inputs.x, inputs.c, "flaky")
        if Flaky.broken and bool((inputs.x[:, 0, 0, 0] == Flaky.marker).any()):
            raise RuntimeError("flaky on purpose")
        return {"flaky_mean": inputs.V.float().mean(dim=(1, 2))}


@pytest.fixture
def flaky(monkeypatch):
    monkeypatch.setattr(PROTOCOLS, "_items", dict(PROTOCOLS._items))
    PROTOCOLS.add("flaky", Flaky())
    item = open_dataset(SAMPLES, limit=4).items[2]  # in the second batch of two
    Flaky.marker = float(tiny_backbone(num_classes=1000).preprocess(load_image(item.path))[0, 0, 0])
    Flaky.broken, Flaky.seen = True, []
    return item.image_id


def test_a_failing_protocol_keeps_the_other_protocols_values(flaky, tmp_path):
    out = tmp_path / "run"
    res = _bench(*COMMON, "--metrics", "lcam,flaky", "--out", str(out))
    assert res.exit_code == 3, res.output  # finished, with failures
    rows = _rows(out)
    # every lcam value is there; flaky's are missing for the failing batch (2 images x 2 methods)
    assert len(rows) == 8 and rows.filter(like="ad_").notna().all().all()
    assert rows.flaky_mean.isna().sum() == 4
    with Run(str(out)) as r:
        f = r.failures()
    assert len(f) == 4 and set(f.protocol) == {"flaky"} and set(f.kind) == {"error"}
    assert set(f.message) == {"protocol flaky: flaky on purpose"} and flaky in set(f.image_id)
    # the forwards of the failed batch are not stored (they are made again by the resume)
    assert {k: n for k, n in _forwards(out).items() if k[1] == "flaky"} == {("gradcam", "flaky"): 2,
                                                                            ("fakecam", "flaky"): 2}
    err = CliRunner().invoke(main, ["errors", str(out)])
    assert f"gradcam {flaky}: RuntimeError: protocol flaky: flaky on purpose" in err.output, err.output
    # fixed: the resume computes flaky on the failed images only; lcam's values are kept
    lcam_fw = {k: n for k, n in _forwards(out).items() if k[1] == "lcam"}
    Flaky.broken, Flaky.seen = False, []
    res = _bench("--resume", "--out", str(out), "--no-progress", "--no-figures")
    assert res.exit_code == 0, res.output
    # 2 images x 2 methods, not 8; and 2 more: the estimate's probe (first 2 images, one method)
    assert len(Flaky.seen) == 6
    again = _rows(out)
    pd.testing.assert_frame_equal(again.drop(columns="flaky_mean"), rows.drop(columns="flaky_mean"))
    assert again.flaky_mean.notna().all()
    assert {k: n for k, n in _forwards(out).items() if k[1] == "lcam"} == lcam_fw
    assert {k: n for k, n in _forwards(out).items() if k[1] == "flaky"} == {("gradcam", "flaky"): 4,
                                                                            ("fakecam", "flaky"): 4}
    with Run(str(out)) as r:
        assert not len(r.failures())


def test_a_protocol_failing_on_its_first_batches_is_stopped_the_method_goes_on(flaky, tmp_path):
    class Always(Flaky):
        def evaluate(self, inputs, **opts):
            Flaky.seen.append(inputs.x.shape[0])
            raise ValueError("never works")

    PROTOCOLS.add("flaky", Always(), overwrite=True)
    r = run(BenchConfig(backbone=TINY1000, weights="random", data=SAMPLES, limit=4, methods="fakecam",
                        metrics="lcam,flaky", batch_size=1, max_failed_batches=2, out=str(tmp_path / "run"),
                        progress=False, figures=False), echo=lambda s: None)
    f = r.failures()
    # stopped after its first two batches (and one call of the estimate's probe, before the run)
    assert len(Flaky.seen) == 3
    assert sorted(f.kind.value_counts().items()) == [("error", 2), ("skipped", 2)]
    assert set(f.protocol) == {"flaky"}
    assert all("protocol flaky was stopped after failing on each of its first 2 batches" in m
               for m in f[f.kind == "skipped"].message)
    rows = r.rows()
    assert len(rows) == 4 and rows.filter(like="ad_").notna().all().all()  # lcam on every image
    r.close()


def test_a_sharded_run_gains_a_protocol_shard_by_shard(lcam_run, tmp_path):
    out = str(tmp_path / "sharded")
    for k in (0, 1):
        assert _bench(*COMMON, "--metrics", "lcam", "--shard", f"{k}/2", "--out", out).exit_code == 0
    res = _bench("--shard", "0/2", "--resume", "--out", out, "--metrics", "+adcc", "--no-progress", "--no-figures")
    assert res.exit_code == 0, res.output
    # shard 1 lacks the added protocol: not complete, and named with the command completing it
    assert "other shard(s) not complete yet" in res.output
    res = CliRunner().invoke(main, ["merge", out])
    assert res.exit_code == 1 and "shard 1/2 (rows.rank-1-of-2.sqlite): incomplete (4 of 4" in res.output, res.output
    res = _bench("--shard", "1/2", "--resume", "--out", out, "--no-progress", "--no-figures")
    assert res.exit_code == 0 and "merging" in res.output, res.output
    one = _copy_run(lcam_run, tmp_path / "one")
    assert _bench("--resume", "--out", str(one), "--metrics", "+adcc", "--no-progress", "--no-figures").exit_code == 0
    a = _rows(out).drop(columns="seconds")
    b = _rows(one).drop(columns="seconds")
    assert list(a.columns) == list(b.columns)
    np.testing.assert_allclose(a[ADCC_KEYS].to_numpy(float), b[ADCC_KEYS].to_numpy(float), rtol=0, atol=1e-6)


def test_a_resume_without_metrics_computes_the_stored_protocols(tmp_path):
    """A run stored with ``metrics=all`` resumes with the protocols it stores, not with what
    ``all`` means once another plugin protocol is installed."""
    import json

    from camzoo.engine.config import resume_config

    (tmp_path / "config.json").write_text(json.dumps({
        "bench_config": {"backbone": "efficientnet_lite0", "metrics": "all"},
        "protocols": {"lcam": {"options": {}}, "adcc": {"options": {}}}}))
    assert resume_config(str(tmp_path), {}).metrics == "lcam,adcc"
    assert resume_config(str(tmp_path), {"metrics": "+road"}).metrics == "+road"


def test_failure_footnotes_count_images_once_and_name_the_protocols():
    from types import SimpleNamespace

    import pandas as pd

    from camzoo.results.tables import failure_notes

    fails = pd.DataFrame({"method": ["m"] * 3, "image_id": ["a", "a", "b"], "protocol": ["lcam", "adcc", "adcc"],
                          "kind": ["error"] * 3})
    run = SimpleNamespace(failures=lambda: fails, errors=lambda: pd.DataFrame(), methods=["m"], dir="RUN",
                          config={"data": {"n_images": 4}})
    notes, unmarked = failure_notes(run)
    assert notes == ["m: 2 of 4 images failed (protocols adcc, lcam) (see `camzoo errors RUN`)."]
    assert unmarked == set()
