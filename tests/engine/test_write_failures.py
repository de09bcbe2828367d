"""Failed writes: a full disk gives one message and the resumed run is identical, failed map and
figure writes are errors, and a batch's rows and forward counts are one transaction."""
import sqlite3

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from camzoo.bench import BenchConfig, Run, run
from camzoo.cli import main
from camzoo.results.store import ResultStore
from tests.helpers import QUIET, TINY
from tests.helpers import bench_cli as _bench


def _comparable(r):
    return r.rows(curves=True).drop(columns=["seconds"]).sort_values(["method", "idx"]).reset_index(drop=True)


@pytest.mark.slow
def test_a_full_disk_gives_one_message_and_resume_completes_identically(tmp_path, monkeypatch):
    # 257-point curves: every batch needs new pages of the store (a full disk shows at once)
    cfg = dict(backbone=TINY, weights="random", methods="gradcam,fakecam", metric_options={"rise": {"steps": 256}}, batch_size=2, **QUIET)
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
