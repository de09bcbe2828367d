"""The result store in long form (schema 3): per-image values and curves per (method, image,
protocol, key) beside one bookkeeping row per (method, image); ``rows()`` still gives the wide
table of the stores before it; stores of schema 1 and 2 (the committed fixture run_v0
included) are read as they are and migrated, in one transaction, when written."""
import json
import os
import shutil
import sqlite3
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from camzoo.bench import Run
from camzoo.cli import main
from camzoo.results.store import ResultStore
from camzoo.results.store import BASE_COLUMNS, Layout, grown_layout

from tests.conftest import REPO
from tests.helpers import legacy_run as _legacy_run

LEGACY = os.path.join(REPO, "tests", "fixtures", "run_v0")
#: two protocols: "pa" (two values), "pb" (a value and a curve)
LAYOUT = {"pa": {"values": ["a_1", "a_2"], "curves": []}, "pb": {"values": ["b"], "curves": ["b_curve"]}}
#: the fixture's keys by protocol (its meta lists them in this order)
LEGACY_LAYOUT = {
    "lcam": {"values": [f"{k}_{n}" for n in (100, 50, 15) for k in ("O", "ad", "ic")], "curves": []},
    "adcc": {"values": ["adcc_O", "adcc_ad", "coherency", "complexity", "adcc"], "curves": []},
    "rise": {"values": ["ins_auc", "del_auc"], "curves": ["ins_curve", "del_curve"]},
}


def _row(method, image_id, idx, **values):
    return {"method": method, "image_id": image_id, "idx": idx, "path": f"{image_id}.png", "label": None,
            "classifier": "backbone", "pred": 1, "c": 1, "Y": 0.5, "seconds": 0.25, **values}


ROWS = [_row("m", "i0", 0, a_1=0.1, a_2=float("nan"), b=2.0, b_curve=np.array([1, 0.5, 0.0], np.float32)),
        _row("m", "i1", 1, a_1=0.3, a_2=0.4, b=None, b_curve=None),
        _row("n", "i0", 0, a_1=1.0, a_2=2.0, b=3.0, b_curve=np.array([0.25, 0.5], np.float32))]


def _wide_store(path, version, rows=ROWS, failures=()):
    """A store as schema 1 / 2 wrote it: one wide ``rows`` table (schema 2: and ``failures``
    keyed by (method, image_id))."""
    values, curves = ["a_1", "a_2", "b"], ["b_curve"]
    cols = [*BASE_COLUMNS, *((v, "REAL") for v in values), *((c, "BLOB") for c in curves)]
    con = sqlite3.connect(path)
    con.execute(f"CREATE TABLE rows ({', '.join(f'{n} {t}' for n, t in cols)}, PRIMARY KEY (method, image_id))")
    con.execute("CREATE TABLE errors (image_id TEXT PRIMARY KEY, idx INTEGER, path TEXT, reason TEXT NOT NULL)")
    con.execute("CREATE TABLE forwards (method TEXT NOT NULL, family TEXT NOT NULL, forwards INTEGER NOT NULL, "
                "PRIMARY KEY (method, family))")
    con.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    con.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(version),))
    con.execute("INSERT INTO meta VALUES ('columns', ?)", (json.dumps({"values": values, "curves": curves}),))
    if version >= 2:
        con.execute("CREATE TABLE failures (method TEXT NOT NULL, image_id TEXT NOT NULL, idx INTEGER, path TEXT, "
                    "kind TEXT NOT NULL, error TEXT, message TEXT, traceback TEXT, PRIMARY KEY (method, image_id))")
        con.executemany("INSERT INTO failures VALUES (?, ?, ?, ?, ?, ?, ?, ?)", failures)
    names = [n for n, _ in cols]
    for r in rows:
        con.execute(f"INSERT INTO rows VALUES ({', '.join('?' * len(names))})",
                    [r[n].tobytes() if isinstance(r.get(n), np.ndarray) else r.get(n) for n in names])
    con.execute("INSERT INTO forwards VALUES ('m', 'pa', 7)")
    con.commit()
    con.close()
    return path


def _tables(path):
    con = sqlite3.connect(path)
    try:
        return {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    finally:
        con.close()


# -- long form, read as the wide table ----------------------------------------------------------
def test_rows_of_the_long_form_are_the_wide_table_of_before(tmp_path):
    new = ResultStore(str(tmp_path / "new.sqlite"), protocols=LAYOUT)
    new.write_batch(ROWS)
    old = ResultStore(_wide_store(str(tmp_path / "old.sqlite"), 2), readonly=True)
    assert old.wide and not new.wide
    for curves in (False, True):
        a, b = new.rows(curves=curves), old.rows(curves=curves)
        pd.testing.assert_frame_equal(a.drop(columns=["b_curve"] if curves else []),
                                      b.drop(columns=["b_curve"] if curves else []))
        assert list(a.columns) == [n for n, _ in BASE_COLUMNS] + ["a_1", "a_2", "b"] + (["b_curve"] if curves else [])
    got = new.rows(curves=True).b_curve
    want = old.rows(curves=True).b_curve
    assert all((x is None and y is None) or np.array_equal(x, y) for x, y in zip(got, want))
    assert got[0].dtype == np.float32 and got[1] is None
    assert new.rows().a_2.isna().tolist() == [True, False, False]  # by method, idx: m/i0, m/i1, n/i0
    np.testing.assert_array_equal(new.curves("m", "b_curve"), [[1, 0.5, 0.0]])
    assert new.curves("m", "nope") is None
    # the values are stored once each, in long form, with their protocol
    long = new.conn.execute("SELECT method, image_id, protocol, key FROM metric_values ORDER BY 1, 2, 4").fetchall()
    assert len(long) == 9 and ("m", "i0", "pa", "a_1") in long and ("m", "i1", "pb", "b") in long
    assert new.conn.execute("PRAGMA table_info(rows)").fetchall()[-1][1] == "seconds"  # no value column
    new.close()
    old.close()


def test_a_row_stores_the_protocols_it_holds_and_keeps_the_bookkeeping(tmp_path):
    st = ResultStore(str(tmp_path / "s.sqlite"), protocols=LAYOUT)
    st.write_batch([_row("m", "i0", 0, a_1=0.5, a_2=0.25)], failures=[{
        "method": "m", "image_id": "i0", "protocol": "pb", "kind": "error", "error": "E", "message": "protocol pb: x"}])
    assert st.done_units() == {("m", "i0", "pa")}
    assert st.done_pairs() == set() and st.done_pairs(["pa"]) == {("m", "i0")}
    assert st.failed_units() == {("m", "i0", "pb")}
    assert st.rows().b.isna().all() and float(st.rows().a_1[0]) == 0.5
    # the missing protocol, later (a resume): the bookkeeping of the first write is kept,
    # the protocol's failure record goes
    st.write_batch([{**_row("m", "i0", 0, b=1.5), "seconds": 9.0}])
    assert st.done_pairs() == {("m", "i0")} and not len(st.failures())
    r = st.rows()
    assert len(r) == 1 and float(r.seconds[0]) == 0.25 and float(r.b[0]) == 1.5 and float(r.a_1[0]) == 0.5
    # a value stored twice is a bug: nothing of that batch is written
    with pytest.raises(sqlite3.IntegrityError):
        st.write_batch([_row("m", "i1", 1, a_1=1.0), _row("m", "i0", 0, a_1=2.0)])
    assert st.done_units() == {("m", "i0", "pa"), ("m", "i0", "pb")}
    # a failure of the map replaces the pair's records; a success of any protocol removes it
    st.write_batch([], failures=[{"method": "m", "image_id": "i1", "protocol": "pa", "kind": "error"}])
    st.write_batch([], failures=[{"method": "m", "image_id": "i1", "kind": "invalid"}])
    assert st.failed_units() == {("m", "i1", "")}
    st.write_batch([_row("m", "i1", 1, a_1=1.0)])
    assert not st.failed_units() and st.failed_pairs() == set()
    with pytest.raises(KeyError, match="unknown row column"):
        st.write_batch([_row("m", "i2", 2, zzz=1.0)])
    st.close()


def test_deleting_a_row_deletes_its_values(tmp_path):
    """What tests and users do to a store "as if killed before those rows": the values go too."""
    st = ResultStore(str(tmp_path / "s.sqlite"), protocols=LAYOUT)
    st.write_batch(ROWS)
    st.conn.execute("DELETE FROM rows WHERE idx >= 1")
    assert st.done_units() == {(m, "i0", p) for m in "mn" for p in ("pa", "pb")}
    assert st.conn.execute("SELECT COUNT(*) FROM metric_curves").fetchone()[0] == 2
    st.close()


def test_a_store_gains_protocols_and_refuses_other_keys(tmp_path):
    path = str(tmp_path / "s.sqlite")
    with ResultStore(path, protocols={"pa": LAYOUT["pa"]}) as st:
        st.write_batch([_row("m", "i0", 0, a_1=0.5, a_2=0.25)])
    with ResultStore(path, protocols=LAYOUT) as st:  # pb added
        assert st.protocols == ["pa", "pb"] and st.value_columns == ["a_1", "a_2", "b"]
        assert st.done_units() == {("m", "i0", "pa")}
        st.write_batch([_row("m", "i0", 0, b=1.0, b_curve=np.zeros(3))])
    with ResultStore(path, readonly=True) as st:  # recorded
        assert st.protocols == ["pa", "pb"] and st.curve_columns == ["b_curve"]
        assert st.done_pairs() == {("m", "i0")}
    with ResultStore(path, protocols={"pb": LAYOUT["pb"]}) as st:  # a writer of some: the others kept
        assert st.protocols == ["pa", "pb"]
    with pytest.raises(ValueError, match=r"protocol pa: the store holds \['a_1'\]"):
        ResultStore(path, protocols={"pa": {"values": ["a_1", "a_3"]}})
    with pytest.raises(ValueError, match="a_2 is stored .* but not computed"):
        ResultStore(path, protocols={"pa": {"values": ["a_1"]}, "pb": LAYOUT["pb"]})
    with pytest.raises(ValueError, match="stored by protocol pa but computed by pc"):
        ResultStore(path, protocols={"pc": {"values": ["a_1", "a_2"]}, "pb": LAYOUT["pb"]})
    with pytest.raises(ValueError, match="duplicate result column"):
        ResultStore(str(tmp_path / "d.sqlite"), protocols={"pa": {"values": ["x"]}, "pb": {"values": ["X"]}})
    # keys of unknown protocol get the protocols a writer names, in their stored order
    lay = grown_layout(Layout.unnamed(["b", "a_1", "a_2"], ["b_curve"]), Layout.of(LAYOUT), "s")
    assert lay.names == ["pb", "pa"] and lay.values == ["b", "a_1", "a_2"]


# -- stores written before the long form ---------------------------------------------------------
def test_the_legacy_fixture_is_read_as_it_is_and_migrated_in_one_transaction(tmp_path, monkeypatch):
    run = _legacy_run(tmp_path)
    db = str(run / "rows.sqlite")
    con = sqlite3.connect(db)
    wide = pd.read_sql_query("SELECT * FROM rows ORDER BY method, idx", con)
    fw = con.execute("SELECT * FROM forwards ORDER BY 1, 2").fetchall()
    con.close()
    with Run(str(run)) as r:
        before = r.rows(curves=True)
        assert r.store.schema == 1 and not len(r.failures()) and "protocol" in r.failures().columns
    assert list(before.columns) == list(wide.columns) and len(before) == 12
    pd.testing.assert_frame_equal(before.drop(columns=["ins_curve", "del_curve"]),
                                  wide.drop(columns=["ins_curve", "del_curve"]))
    assert all(np.array_equal(a, np.frombuffer(b, "<f4")) for a, b in zip(before.ins_curve, wide.ins_curve))
    # a failure during the migration leaves the store as it was (one transaction)
    original = ResultStore._write_meta

    def broken(self):
        raise RuntimeError("killed while migrating")

    monkeypatch.setattr(ResultStore, "_write_meta", broken)
    with pytest.raises(RuntimeError, match="killed while migrating"):
        ResultStore(db, protocols=LEGACY_LAYOUT)
    assert "metric_values" not in _tables(db) and "rows_wide" not in _tables(db)
    with Run(str(run)) as r:
        assert r.store.schema == 1
        _same_rows(r.rows(curves=True), before)
    monkeypatch.setattr(ResultStore, "_write_meta", original)
    with ResultStore(db, protocols=LEGACY_LAYOUT) as st:  # a resumed run opens it
        assert st.schema == 3 and st.protocols == ["lcam", "adcc", "rise"]
        assert st.done_pairs(["lcam", "adcc", "rise"]) == {(m, i) for m, i in zip(wide.method, wide.image_id)}
    assert {"metric_values", "metric_curves", "failures"} <= _tables(db) and "rows_wide" not in _tables(db)
    with Run(str(run)) as r:
        assert r.store.schema == 3 and r.store.value_columns == [k for p in LEGACY_LAYOUT.values() for k in p["values"]]
        _same_rows(r.rows(curves=True), before)
        assert [tuple(x) for x in r.forwards().itertuples(index=False)] == fw
        assert set(r.store.conn.execute("SELECT DISTINCT protocol FROM metric_values").fetchall()) == {
            ("lcam",), ("adcc",), ("rise",)}


def _same_rows(a, b):
    """Equal wide tables, curves element-wise."""
    curves = [c for c in a.columns if c.endswith("_curve")]
    assert list(a.columns) == list(b.columns)
    pd.testing.assert_frame_equal(a.drop(columns=curves), b.drop(columns=curves))
    for c in curves:
        assert all(np.array_equal(x, y) for x, y in zip(a[c], b[c])), c


def test_a_schema_2_store_with_failures_is_read_and_migrated(tmp_path):
    fail = ("m", "i2", 2, "i2.png", "error", "RuntimeError", "boom", "Traceback ...")
    db = _wide_store(str(tmp_path / "v2.sqlite"), 2, failures=[fail])
    with ResultStore(db, readonly=True) as st:
        before, f0 = st.rows(curves=True), st.failures()
        assert st.failed_units() == {("m", "i2", "")} and st.done_pairs() == {("m", "i0"), ("m", "i1"), ("n", "i0")}
    assert list(f0.columns)[:3] == ["method", "image_id", "protocol"] and list(f0.protocol) == [""]
    with ResultStore(db, protocols=LAYOUT) as st:
        _same_rows(st.rows(curves=True), before)
        pd.testing.assert_frame_equal(st.failures(), f0)
        assert st.done_units() == {(m, i, p) for m, i in (("m", "i0"), ("m", "i1"), ("n", "i0")) for p in ("pa", "pb")}
        st.write_batch([_row("m", "i2", 2, a_1=5.0, a_2=6.0, b=7.0)])  # the failed pair, retried
        assert not len(st.failures()) and len(st.rows()) == 4


def test_a_resumed_legacy_run_keeps_its_values_and_adds_the_missing_ones(tmp_path):
    run = _legacy_run(tmp_path)
    with Run(str(run)) as r:
        full = r.rows(curves=True)
    con = sqlite3.connect(run / "rows.sqlite")
    con.execute("DELETE FROM rows WHERE idx >= 4")  # as if killed after two batches of two
    con.commit()
    con.close()
    res = CliRunner().invoke(main, ["bench", "--resume", "--out", str(run), "--no-progress", "--no-figures"],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "2 image(s) to do (4 done" in res.output
    with Run(str(run)) as r:
        again = r.rows(curves=True)
        assert r.store.schema == 3
    kept = again.idx < 4
    _same_rows(again[kept].reset_index(drop=True), full[full.idx < 4].reset_index(drop=True))  # bit-identical
    values = [k for p in LEGACY_LAYOUT.values() for k in p["values"]]
    assert len(again) == 12 and again.loc[~kept, values].notna().all().all()


def test_replace_with_merges_stores_of_both_schemas(tmp_path):
    wide = ResultStore(_wide_store(str(tmp_path / "a.sqlite"), 2, rows=ROWS[:2],
                                   failures=[("m", "i9", 9, "i9.png", "error", "E", "x", None)]), readonly=True)
    long_path = str(tmp_path / "b.sqlite")
    with ResultStore(long_path, protocols=LAYOUT) as st:
        st.write_batch(ROWS[2:], forwards={("m", "pa"): 3}, failures=[
            {"method": "n", "image_id": "i1", "protocol": "pb", "kind": "error"}])
    long = ResultStore(long_path, readonly=True)
    with ResultStore(str(tmp_path / "merged.sqlite"), protocols=LAYOUT) as dst:
        dst.replace_with([wide, long])
        dst.replace_with([wide, long])  # again: the same store
        ref = ResultStore(str(tmp_path / "ref.sqlite"), protocols=LAYOUT)
        ref.write_batch(ROWS)
        _same_rows(dst.rows(curves=True), ref.rows(curves=True))
        assert dst.failed_units() == {("m", "i9", ""), ("n", "i1", "pb")}
        assert dst.forwards().forwards.tolist() == [10]
        assert set(dst.conn.execute("SELECT DISTINCT protocol FROM metric_values").fetchall()) == {("pa",), ("pb",)}
        ref.close()
    with pytest.raises(ValueError, match="not shards of one run"):
        with ResultStore(str(tmp_path / "other.sqlite"), protocols={"pa": LAYOUT["pa"]}) as dst:
            dst.replace_with([wide])
    wide.close()
    long.close()


def test_compare_runs_compares_a_run_of_before_with_one_of_after(tmp_path):
    old = _legacy_run(tmp_path)
    new = tmp_path / "new"
    shutil.copytree(old, new)
    ResultStore(str(new / "rows.sqlite"), protocols=LEGACY_LAYOUT).close()  # migrated to the long form
    assert "metric_values" in _tables(new / "rows.sqlite") and "metric_values" not in _tables(old / "rows.sqlite")

    def compare():
        return subprocess.run([sys.executable, "-m", "benchmarks.compare_runs", str(old), str(new)], cwd=REPO,
                              capture_output=True, text=True, timeout=120)

    r = compare()
    assert r.returncode == 0 and "SAME" in r.stdout and "ins_curve" in r.stdout, r.stdout + r.stderr
    con = sqlite3.connect(new / "rows.sqlite")
    con.execute("UPDATE metric_values SET value = value + 1 WHERE key = 'coherency' AND image_id = 'chelsea'")
    con.commit()
    con.close()
    r = compare()
    assert r.returncode == 1 and "DIFFERENT" in r.stdout
    assert [ln for ln in r.stdout.splitlines() if ln.startswith("coherency")][0].split()[-1] == "no"
