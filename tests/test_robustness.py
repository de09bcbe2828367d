"""A long run survives its own failures (issue: fault isolation, invalid maps, checks before
anything is written, clear errors, a locked store). Tiny backbone, the six sample photos or a
few shared photos; every test here failed on the code before these changes."""
import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

import camzoo
from camzoo.bench import BenchConfig, Run, run
from camzoo.cli import main
from camzoo.explainers.base import EXPLAINERS, Explainer
from camzoo.models.testing import tiny_backbone
from camzoo.results import ResultStore, RunLock

from .conftest import REPO, SAMPLES

TINY = "py:camzoo.models.testing:tiny_backbone"
QUIET = dict(progress=False, figures=False)


def _bench(*args):
    return CliRunner().invoke(main, ["bench", "--backbone", TINY, "--weights", "random", "--no-progress", *args])


@contextlib.contextmanager
def registered(*classes):
    """Add test explainers to the global registry for the duration of a test."""
    for c in classes:
        EXPLAINERS.add(c.name, c)
    try:
        yield
    finally:
        for c in classes:
            EXPLAINERS._items.pop(c.name, None)


class Boom(Explainer):
    """Raises on every batch that holds the sample photo 'coffee' (unless BROKEN is False)."""

    name = "boom"
    defaults: dict = {}
    BROKEN = True
    calls = 0

    def forward_passes(self, model):
        return 0

    def _explain(self, model, x, y):
        Boom.calls += 1
        if Boom.BROKEN and bool((x[:, 0, 0, 0] == Boom.marker).any()):
            raise RuntimeError("boom on purpose")
        return torch.rand(x.shape[0], *x.shape[-2:], generator=torch.Generator().manual_seed(0))


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


class _Unsafe:
    """An object only ``weights_only=False`` could unpickle."""


def _marker_of(photo: str) -> float:
    from camzoo.data import sample_photos

    bb = tiny_backbone()
    return float(bb.preprocess(dict(sample_photos())[photo])[0, 0, 0])


# -- fault isolation ---------------------------------------------------------------------------
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
    assert AlwaysBoom.calls == 2  # not 6 (warm-up calls included: the warm-up raised)
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


def test_explain_checks_the_shape_with_a_message_naming_the_method():
    class Wrong(Explainer):
        name = "wrongshape"
        defaults: dict = {}

        def forward_passes(self, model):
            return 0

        def _explain(self, model, x, y):
            return torch.zeros(x.shape[0], 5, 5)

    with pytest.raises(ValueError, match=r"'wrongshape' returned maps of shape \(2, 5, 5\).*expected .*\(2, 32, 32\)"):
        Wrong().explain(tiny_backbone(), torch.zeros(2, 3, 32, 32))


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


# -- everything is checked before anything is written --------------------------------------------
def _labelled(tmp_path, rows, bom=False, extra=()):
    import shutil

    d = tmp_path / "data"
    d.mkdir()
    import csv as _csv

    src = list(_csv.DictReader(open(os.path.join(SAMPLES, "labels.csv"))))[:len(rows)]
    for s in src:
        shutil.copy(os.path.join(SAMPLES, s["file"]), d / s["file"])
    for e in extra:
        shutil.copy(os.path.join(SAMPLES, src[0]["file"]), d / e)
    text = "file,class_index\n" + "".join(f"{s['file']},{lab}\n" for s, lab in zip(src, rows))
    (d / "labels.csv").write_bytes(("\ufeff" if bom else "").encode() + text.encode())
    return d, src


@pytest.mark.parametrize("bad", [1000, -1])
def test_a_label_outside_the_classes_is_refused_at_start_with_file_and_line(tmp_path, bad):
    d, src = _labelled(tmp_path, [3, 5, bad])
    out = tmp_path / "run"
    res = _bench("--data", str(d), "--target", "gt", "--out", str(out))
    assert res.exit_code == 1 and f"labels.csv:4: class_index {bad}" in res.output, res.output
    assert "Traceback" not in res.output and not out.exists()


def test_labels_with_a_bom_are_read_and_unlisted_images_reported(tmp_path):
    d, src = _labelled(tmp_path, [3, 5], bom=True, extra=("zz_extra1.JPEG", "zz_extra2.JPEG"))
    res = _bench("--data", str(d), "--target", "gt", "--methods", "fakecam", "--metrics", "lcam",
                 "--out", str(tmp_path / "run"))
    assert res.exit_code == 0, res.output
    assert "warning: 2 image(s) in" in res.output and "zz_extra1.JPEG, zz_extra2.JPEG" in res.output
    with Run(str(tmp_path / "run")) as r:
        assert list(r.rows().c) == [3, 5]


@pytest.mark.parametrize("args,message", [
    (["--steps", "0"], "option steps must be >= 1"),
    (["--metric-opt", "lcam.nus=2"], "option nus takes fractions of pixels kept"),
    (["--device", "banana"], "device 'banana' is not a device"),
    (["--opt", "rise.n_masks=abc", "--methods", "rise"], "option n_masks expects an integer"),
    (["--limit", "0"], "nothing to evaluate"),
    (["--steps", "5000"], "more than the 1024 pixels"),
])
def test_config_errors_are_raised_before_the_run_directory_exists(tmp_path, args, message):
    out = tmp_path / "run"
    res = _bench(*args, "--out", str(out))
    assert res.exit_code != 0 and message in res.output, res.output
    assert "Traceback" not in res.output and not out.exists()


def test_resuming_with_the_default_layer_named_is_no_difference(tmp_path):
    out = tmp_path / "run"
    assert _bench("--methods", "gradcam", "--metrics", "lcam", "--limit", "2", "--out", str(out)).exit_code == 0
    res = _bench("--resume", "--out", str(out), "--layer", "features")
    assert res.exit_code == 0, res.output


def test_weights_files_are_refused_with_one_clear_message(tmp_path):
    import torchvision

    m = torchvision.models.resnet18(weights=None, num_classes=10)
    good = tmp_path / "r18.pt"
    (tmp_path / "corrupt.pt").write_bytes(b"this is not a pytorch file" * 20)
    torch.save({"state_dict": torchvision.models.resnet18(weights=None).state_dict()}, good)
    torch.save(m.state_dict(), tmp_path / "ten.pt")
    torch.save({"x.weight": torch.zeros(2), **{k: v for k, v in list(m.state_dict().items())[3:]}},
               tmp_path / "other.pt")

    torch.save({"a": _Unsafe()}, tmp_path / "pickle.pt")  # needs an unsafe load
    assert camzoo.load_backbone("resnet18", weights=str(good), device="cpu").weights_id.startswith("file:r18.pt#")
    for f, msg in (("corrupt.pt", "cannot read weights file"), ("pickle.pt", "not a file camzoo can load safely"),
                   ("ten.pt", "shape mismatch(es): fc.weight (file (10, 512), model (1000, 512))"),
                   ("other.pt", "missing key(s): conv1.weight, bn1.weight, bn1.bias")):
        res = _bench("--backbone", "resnet18", "--weights", str(tmp_path / f), "--out", str(tmp_path / f"o{f}"))
        assert res.exit_code == 1 and msg in res.output, (f, res.output)
        assert "weights_only=False" not in res.output and "Traceback" not in res.output
    res = _bench("--backbone", "resnet18", "--weights", str(tmp_path / "other.pt"), "--out", str(tmp_path / "o"))
    assert "1 unexpected key(s): x.weight" in res.output


def test_python_backbones_import_from_the_current_directory_with_clear_errors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mynets.py").write_text(textwrap.dedent("""
        from camzoo.models.testing import tiny_backbone

        def small():
            return tiny_backbone(seed=1)
        """))
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    res = CliRunner().invoke(main, ["bench", "--backbone", "py:mynets:small", "--weights", "random", "--methods", "fakecam",
                                    "--metrics", "lcam", "--limit", "1", "--out", "r", "--no-progress"])
    assert res.exit_code == 0, res.output
    for name, msg in (("py:nosuchmodule:f", "cannot import module 'nosuchmodule'"),
                      ("py:mynets:nothere", "module 'mynets' has no function 'nothere'")):
        res = CliRunner().invoke(main, ["bench", "--backbone", name, "--out", "r2"])
        assert res.exit_code == 1 and msg in res.output and "Traceback" not in res.output, res.output


def test_names_are_checked_and_plugins_never_replace_a_built_in(tmp_path, monkeypatch):
    from camzoo.registry import Registry

    with pytest.raises(ValueError, match="not allowed"):
        EXPLAINERS.add("../../escaped", Boom)
    (tmp_path / "camzoo_evil.py").write_text("from camzoo.explainers.fakecam import FakeCAM as Evil\n")
    info = tmp_path / "camzoo_evil-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: camzoo_evil\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[camzoo.explainers]\ngradcam = camzoo_evil:Evil\n"
                                           "../../escaped = camzoo_evil:Evil\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = Registry("explainer", "camzoo.explainers")
    from camzoo.explainers.gradient import GradCAM

    reg.add("gradcam", GradCAM)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        names = reg.names()
    msgs = " | ".join(str(x.message) for x in w)
    assert reg.get("gradcam") is GradCAM and "../../escaped" not in names
    assert "'gradcam' (camzoo_evil:Evil) is ignored" in msgs
    assert "camzoo.explainers.gradient.GradCAM" in msgs and "not allowed" in msgs


def test_special_files_are_reported_not_opened(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    import shutil

    shutil.copy(os.path.join(SAMPLES, "n01443537_goldfish.JPEG"), d / "a.JPEG")
    os.mkfifo(d / "p.jpg")
    done = {}

    def go():
        run(BenchConfig(backbone=TINY, weights="random", methods="fakecam", metrics="lcam", data=str(d),
                        out=str(tmp_path / "run"), **QUIET), echo=lambda s: None).close()
        done["ok"] = True

    t = threading.Thread(target=go, daemon=True)
    t.start()
    t.join(60)
    if t.is_alive():  # the FIFO was opened: unblock it so the test process can end
        with open(d / "p.jpg", "wb"):
            pass
        pytest.fail("the run blocked on a FIFO")
    assert done.get("ok")
    with Run(str(tmp_path / "run")) as r:
        err = r.errors()
        assert list(err.image_id) == ["p"] and "a FIFO, not a regular file (not opened)" in err.reason[0]
        assert len(r.rows()) == 1


# -- the store ----------------------------------------------------------------------------------
def test_a_locked_run_is_refused_and_a_dead_holders_lock_is_not_stale(tmp_path):
    out = tmp_path / "run"
    assert _bench("--methods", "fakecam", "--metrics", "lcam", "--limit", "2", "--out", str(out)).exit_code == 0
    with RunLock(str(out)):
        res = _bench("--resume", "--out", str(out))
    assert res.exit_code == 1 and "is in use by another camzoo process (it holds" in res.output, res.output
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from camzoo.results import RunLock
        lock = RunLock({str(out)!r}).acquire()
        print("locked", flush=True)
        time.sleep(60)
        """)], stdout=subprocess.PIPE, text=True, cwd=REPO,
        env={**os.environ, "PYTHONPATH": REPO})
    assert holder.stdout.readline().strip() == "locked"
    assert _bench("--resume", "--out", str(out)).exit_code == 1
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    res = _bench("--resume", "--out", str(out))
    assert res.exit_code == 0, res.output


def _comparable(r):
    return r.rows(curves=True).drop(columns=["seconds"]).sort_values(["method", "idx"]).reset_index(drop=True)


def test_a_full_disk_gives_one_message_and_resume_completes_identically(tmp_path, monkeypatch):
    # 257-point curves: every batch needs new pages of the store (a full disk shows at once)
    cfg = dict(backbone=TINY, weights="random", methods="gradcam,fakecam", steps=256, batch_size=2, **QUIET)
    ref = run(BenchConfig(out=str(tmp_path / "ref"), **cfg), echo=lambda s: None)
    calls = {"n": 0}
    original = ResultStore.write_batch

    def filling(self, *a, **k):  # the disk is full from the second batch on
        calls["n"] += 1
        if calls["n"] == 2:
            pages = self.conn.execute("PRAGMA page_count").fetchone()[0]
            self.conn.execute(f"PRAGMA max_page_count = {pages}")
        return original(self, *a, **k)

    monkeypatch.setattr(ResultStore, "write_batch", filling)
    out = tmp_path / "full"
    res = CliRunner().invoke(main, ["bench", "--backbone", TINY, "--weights", "random", "--methods", "gradcam,fakecam",
                                    "--steps", "256", "--batch-size", "2", "--out", str(out), "--no-progress"])
    assert res.exit_code == 1, res.output
    assert f"cannot write the result store (rows.sqlite) in {out}" in res.output
    assert "full" in res.output and "cannot rollback" not in res.output and "Traceback" not in res.output
    con = sqlite3.connect(out / "rows.sqlite")
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert con.execute("SELECT COUNT(*) FROM rows").fetchone()[0] == 4  # the first batch, whole
    con.close()
    monkeypatch.setattr(ResultStore, "write_batch", original)
    res = _bench("--resume", "--out", str(out))
    assert res.exit_code == 0, res.output
    with Run(str(out)) as r:
        pd.testing.assert_frame_equal(_comparable(r), _comparable(ref))


def test_map_and_figure_write_failures_are_errors(tmp_path, monkeypatch):
    import camzoo.results.plots as plots

    def no_space(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "save", no_space)
    res = _bench("--methods", "fakecam", "--metrics", "lcam", "--save-maps", "--out", str(tmp_path / "a"))
    assert res.exit_code == 1 and "cannot write the map maps/fakecam/" in res.output, res.output
    monkeypatch.undo()
    monkeypatch.setattr(plots, "bench_figures", no_space)
    res = _bench("--methods", "fakecam", "--metrics", "lcam", "--out", str(tmp_path / "b"))
    assert res.exit_code == 1 and "the figures in" in res.output and "No space left" in res.output
    assert (tmp_path / "b" / "table.md").is_file()


def test_table_never_creates_a_store_and_refuses_what_it_cannot_do(tmp_path):
    out = tmp_path / "run"
    assert _bench("--methods", "fakecam", "--metrics", "lcam", "--limit", "1", "--out", str(out)).exit_code == 0
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text((out / "config.json").read_text())
    res = CliRunner().invoke(main, ["table", str(empty)])
    assert res.exit_code == 1 and "rows.sqlite does not exist" in res.output
    assert not (empty / "rows.sqlite").exists()
    (empty / "rows.sqlite").write_bytes(b"garbage" * 100)
    res = CliRunner().invoke(main, ["table", str(empty)])
    assert res.exit_code == 1 and "is not a readable camzoo result store" in res.output, res.output
    res = CliRunner().invoke(main, ["table", str(out), "--per-image", "--format", "latex"])
    assert res.exit_code == 2 and "CSV only" in res.output
    assert CliRunner().invoke(main, ["table", str(out), "--per-image"]).output.startswith("method,")


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("id") / "run"
    r = run(BenchConfig(backbone="py:tests.helpers:tiny1000", weights="random", methods="gradcam,fakecam", data=SAMPLES,
                        limit=3, seed=1, steps=4, out=str(out), **QUIET), echo=lambda s: None)
    r.close()
    return str(out)


#: one change per BenchConfig field declared part of the run identity (tests/engine/test_config.py
#: checks that every such field is here), and the key the refusal must name
IDENTITY_CHANGES = [
    ({"backbone": "py:camzoo.models.testing:tiny_backbone"}, "backbone.name"),
    ({"weights": "TINY1000_FILE"}, "backbone.weights_id"),  # trained weights instead of random ones
    ({"layer": "nope"}, None),  # refused by the backbone before the identity check
    ({"methods": "gradcam,fakecam,gradcam++"}, "not in the stored run"),
    ({"limit": 2}, "data.manifest_hash"),
    ({"seed": 2}, "data.manifest_hash"),
    ({"data": os.path.join(os.path.dirname(SAMPLES), "imagenette-224")}, "data.manifest_hash"),
    ({"labels": "LABELS_FILE"}, "data.manifest_hash"),
    ({"devkit": "NO_DEVKIT"}, None),  # refused by the data layer: no such devkit
    ({"subset": "SUBSET_FILE"}, "data.manifest_hash"),
    ({"target": "gt"}, "target"),
    ({"options": {"gradcam": {"layer": "nope"}}}, None),
    ({"metric_options": {"lcam": {"nus": [0.5]}}}, "protocols.lcam.nus"),
    ({"metrics": "lcam"}, "protocols"),
    ({"steps": 5}, "protocols.rise.steps"),
    ({"amp": "bf16"}, "  amp: stored None, now 'bf16'"),  # the engine's own forwards
]


@pytest.mark.parametrize("change,key", IDENTITY_CHANGES)
def test_the_resume_identity_covers_every_key(small_run, change, key, tmp_path):
    if "data" in change and not os.path.isdir(change["data"]):
        pytest.skip("../shared/data/imagenette-224 is not here")
    from camzoo.engine.config import resume_config

    if change.get("weights") == "TINY1000_FILE":
        from tests.helpers import tiny1000

        change = {"weights": str(tmp_path / "tiny1000.pt")}
        torch.save(tiny1000().model.state_dict(), change["weights"])
    elif change.get("labels") == "LABELS_FILE":  # the same photos with other labels
        with open(os.path.join(SAMPLES, "labels.csv")) as f:
            rows = f.read().splitlines()
        (tmp_path / "labels.csv").write_text("\n".join([rows[0]] + [
            ",".join([r.split(",")[0], str((int(r.split(",")[1]) + 1) % 1000)]) for r in rows[1:]]) + "\n")
        change = {"labels": str(tmp_path / "labels.csv")}
    elif change.get("devkit") == "NO_DEVKIT":
        change = {"devkit": str(tmp_path / "no-devkit")}
    elif change.get("subset") == "SUBSET_FILE":  # two of the run's three images
        with Run(small_run) as r:
            keep = sorted(r.rows().image_id.unique())[:2]
        lines = [f"{os.path.basename(i)}.JPEG {int(r0.split(',')[1])}" for i in keep
                 for r0 in open(os.path.join(SAMPLES, "labels.csv")).read().splitlines()[1:]
                 if r0.split(",")[0].startswith(os.path.basename(i))]
        (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
        change = {"subset": str(tmp_path / "list.txt")}
    cfg = resume_config(small_run, change)
    with pytest.raises((ValueError, FileNotFoundError)) as e:
        run(cfg, echo=lambda s: None)
    if key is not None:
        assert "cannot resume" in str(e.value) and key in str(e.value), str(e.value)
    with Run(small_run) as r:
        assert len(r.rows()) == 6  # nothing was written


def test_a_batch_is_one_transaction(tmp_path, monkeypatch):
    """The rows of a batch and its forward counts are committed together: a failure while
    writing the counts leaves none of the batch's rows (in the store, and through the engine)."""
    original = ResultStore._create

    def create_with_trigger(self):
        original(self)
        self.conn.execute("CREATE TRIGGER no_counts BEFORE INSERT ON forwards BEGIN "
                          "SELECT RAISE(ABORT, 'injected failure'); END")

    monkeypatch.setattr(ResultStore, "_create", create_with_trigger)
    store = ResultStore(str(tmp_path / "s.sqlite"), ["O_100"], [])
    with pytest.raises(sqlite3.IntegrityError, match="injected failure"):
        store.write_batch([{"method": "m", "image_id": "a", "idx": 0, "classifier": "backbone",
                            "pred": 1, "c": 1, "Y": 0.5, "seconds": 0.1, "O_100": 0.2}], [],
                          {("m", "lcam"): 3})
    assert store.conn.execute("SELECT COUNT(*) FROM rows").fetchone()[0] == 0
    store.close()
    out = tmp_path / "run"
    with pytest.raises(sqlite3.IntegrityError, match="injected failure"):
        run(BenchConfig(backbone=TINY, weights="random", methods="gradcam", metrics="lcam", batch_size=2, limit=2,
                        out=str(out), **QUIET), echo=lambda s: None)
    con = sqlite3.connect(out / "rows.sqlite")
    assert con.execute("SELECT COUNT(*) FROM rows").fetchone()[0] == 0
    con.close()
