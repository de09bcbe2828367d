"""Run directories written before the layered package: read by ``camzoo table``, resumed with the
rows they would have had (tests/fixtures/run_v0)."""
import os
import sqlite3

import numpy as np
from click.testing import CliRunner

import camzoo
from camzoo.cli import main
from tests.conftest import REPO
from tests.helpers import legacy_run as _legacy_run

LEGACY = os.path.join(REPO, "tests", "fixtures", "run_v0")


def _rows(run):
    with camzoo.bench.Run(str(run)) as r:
        return r.rows(curves=True).drop(columns=["seconds"]).sort_values(["method", "idx"]).reset_index(drop=True)


def test_a_legacy_run_is_read_by_table(tmp_path):
    run = _legacy_run(tmp_path)
    res = CliRunner().invoke(main, ["table", str(run)])
    assert res.exit_code == 0, res.output
    rows = _rows(run)
    g = rows[rows.method == "gradcam"]
    line = [ln for ln in res.output.splitlines() if ln.startswith("| gradcam |")][0]
    assert f"{100 * g.adcc.mean():.2f}" in line and f"{g.ad_100.mean():.2f}" in line
    res = CliRunner().invoke(main, ["table", str(run), "--format", "latex"])
    assert res.exit_code == 0 and r"\toprule" in res.output


def test_a_legacy_run_is_resumed_with_the_rows_it_would_have_had(tmp_path):
    run = _legacy_run(tmp_path)
    full = _rows(run)
    con = sqlite3.connect(run / "rows.sqlite")
    con.execute("DELETE FROM rows WHERE idx >= 4")  # as if killed after two batches of two
    con.commit()
    con.close()
    assert len(_rows(run)) == 8
    res = CliRunner().invoke(main, ["bench", "--resume", "--out", str(run), "--no-progress"],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "2 image(s) to do (4 done" in res.output
    again = _rows(run)
    assert len(again) == len(full) == 12
    for col in full.columns:
        if col.endswith("_curve"):
            for a, b in zip(full[col], again[col]):
                np.testing.assert_allclose(a, b, rtol=0, atol=2e-6)
        elif full[col].dtype.kind == "f":
            # the legacy rows were computed on another CPU: float32 rounding of the
            # probabilities (~1e-7) differs by instruction set, and AD / IC (in per cent) divide
            # differences of close probabilities (seen: 3e-5 on an AD of 0.045 on AVX-512)
            np.testing.assert_allclose(full[col], again[col], rtol=0, atol=1e-4, err_msg=col)
        else:
            assert list(full[col]) == list(again[col]), col
