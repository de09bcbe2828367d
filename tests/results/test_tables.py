"""Result tables: values and exports (CSV, Markdown, LaTeX) parse back, best / second marks per
column and per block with ties, compare stacks runs, LaTeX escapes every special character."""
import math
import os

import numpy as np
import pandas as pd
import pytest

from camzoo.bench import BenchConfig, run
from camzoo.results.tables import compare, marks, summary, to_latex, to_markdown
from tests.conftest import SAMPLES
from tests.helpers import TINY1000


def test_table_values_and_exports_parse_back(tiny_run):
    t = summary(tiny_run)
    rows = tiny_run.rows()
    df = t.df
    assert list(df.index) == ["gradcam", "fakecam"]
    assert list(df.columns) == ["AD(100%)↓", "IC(100%)↑", "AD(50%)↓", "IC(50%)↑", "AD(15%)↓", "IC(15%)↑",
                                "Ins↑", "Del↓", "Coherency↑", "Complexity↓", "ADCC↑", "#FW", "s/img"]
    g = rows[rows.method == "gradcam"]
    assert df.loc["gradcam", "AD(50%)↓"] == pytest.approx(g.ad_50.mean())
    assert df.loc["gradcam", "ADCC↑"] == pytest.approx(100 * g.adcc.mean())
    assert df.loc["gradcam", "Del↓"] == pytest.approx(100 * g.del_auc.mean())
    assert df.loc["fakecam", "#FW"] == 0 and df.loc["gradcam", "#FW"] == 1
    # CSV
    back = pd.read_csv(os.path.join(tiny_run.dir, "table.csv"))
    back = back[[c for c in back.columns if not c.endswith(("_lo", "_hi"))]]  # intervals: test_stats.py
    assert list(back.columns) == ["Backbone", "Method"] + list(df.columns)
    assert set(back["Backbone"]) == {f"{TINY1000} (random weights)"}  # the tiny CNN is untrained
    np.testing.assert_allclose(back.drop(columns=["Backbone", "Method"]).to_numpy(float), df.to_numpy(float),
                               rtol=1e-5)
    # Markdown: a pipe table, values at 2 decimals, marks and intervals stripped
    md = to_markdown(t)
    table_lines = [ln for ln in md.splitlines() if ln.startswith("|")]
    assert "0 unreadable image(s)" in md
    parsed = pd.read_csv(pd.io.common.StringIO("\n".join(table_lines)), sep="|", skipinitialspace=True)
    parsed = parsed.drop(columns=[c for c in parsed.columns if c.startswith("Unnamed")]).iloc[1:]
    parsed.columns = [c.strip() for c in parsed.columns]
    assert list(parsed.columns) == ["Method"] + list(df.columns)
    clean = parsed["ADCC↑"].str.replace(r"\*\*|</?u>| ± \S+| ≈", "", regex=True).astype(float).to_numpy()
    np.testing.assert_allclose(clean, df["ADCC↑"].round(2).to_numpy(), atol=1e-9)
    # LaTeX: one row per method with all columns; bold on the best, underline on the second
    tex = to_latex(t)
    body = tex.split("\\midrule")[1].split("\\bottomrule")[0].strip().splitlines()
    assert len(body) == 2
    cells = [ln.rstrip(" \\").split(" & ") for ln in body]
    assert all(len(c) == 1 + len(df.columns) for c in cells)
    header = tex.split("\\toprule")[1].split("\\midrule")[0]
    assert "ADCC$\\uparrow$" in header and "AD(100\\%)$\\downarrow$" in header
    j = list(df.columns).index("Complexity↓") + 1
    best = int(df["Complexity↓"].to_numpy().argmin())
    assert cells[best][j].startswith("$\\mathbf{") and cells[1 - best][j].startswith("$\\underline{")
    j = list(df.columns).index("#FW") + 1
    assert not any("\\mathbf" in c[j] or "\\underline" in c[j] for c in cells)  # #FW is not ranked
    assert "unreadable" in tex.split("\\bottomrule")[1]


def test_marks_ties_and_direction():
    from camzoo.results.tables import Table

    df = pd.DataFrame({"AD↓": [1.0, 2.0, 1.001, 3.0], "IC↑": [5.0, 5.0, 5.0, 5.0]},
                      index=pd.Index(list("abcd"), name="Method"))
    mk = marks(Table(df, {"AD↓": False, "IC↑": True}))
    assert list(mk["AD↓"]) == ["best", "second", "best", ""]  # equal at 2 decimals -> tie
    assert list(mk["IC↑"]) == ["best"] * 4


def test_compare_marks_best_and_second_within_each_block():
    from camzoo.results.tables import Table, marks, to_latex, to_markdown

    idx = pd.MultiIndex.from_tuples([("A", "m1"), ("A", "m2"), ("A", "m3"), ("B", "m1"), ("B", "m2")],
                                    names=["Backbone", "Method"])
    # block B is worse than block A everywhere: marks must still be given inside B
    df = pd.DataFrame({"AD(100%)↓": [10.0, 20.0, 30.0, 50.0, 40.0]}, index=idx)
    t = Table(df, {"AD(100%)↓": False})
    mk = marks(t)["AD(100%)↓"].tolist()
    assert mk == ["best", "second", "", "second", "best"]
    md = to_markdown(t)
    assert "| B | m2 | **40.00** |" in md and "| B | m1 | <u>50.00</u> |" in md
    tex = to_latex(t)
    assert r"m2 & $\mathbf{40.00}$" in tex and r"\multicolumn{2}{c}{\textit{B}}" in tex


def test_latex_escapes_every_special_character():
    from camzoo.results.tables import Table, to_latex

    df = pd.DataFrame({"A_B%↑": [1.0]}, index=pd.Index(["my_cam&v2#1"], name="Method"))
    tex = to_latex(Table(df, {"A_B%↑": True}, ["note: 50% of {x} ~ $y^2$ \\ z"]))
    assert r"my\_cam\&v2\#1" in tex and r"A\_B\%$\uparrow$" in tex
    assert (r"note: 50\% of \{x\} \textasciitilde{} \$y\textasciicircum{}2\$ \textbackslash{} z") in tex
    body = tex.replace(r"\&", "").replace(r"\%", "").replace(r"\#", "").replace(r"\$", "").replace(r"\_", "")
    assert "#" not in body and "%" not in body and "_" not in body


def test_compare_stacks_blocks(tiny_run, tmp_path):
    r2 = run(BenchConfig(backbone=TINY1000, weights="random", methods="fakecam", metrics="lcam", data=SAMPLES, limit=2,
                         out=str(tmp_path / "r2"), progress=False, figures=False), echo=lambda s: None)
    t = compare([tiny_run, r2])
    assert t.df.index.names == ["Backbone", "Method"]
    assert len(t.df) == 3
    assert math.isnan(t.df.iloc[2]["ADCC↑"])  # r2 has no adcc column
    tex = t.to("latex")
    assert tex.count("\\multicolumn{14}{c}") == 2
    back = pd.read_csv(pd.io.common.StringIO(t.to("csv")))
    assert list(back.columns[:2]) == ["Backbone", "Method"] and len(back) == 3
