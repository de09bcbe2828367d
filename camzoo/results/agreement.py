"""How far two runs of the same images agree: per-image rows column by column, and whether the
tables rank the methods the same way (e.g. a bf16 run against its fp32 twin).

:func:`row_agreement` matches rows by (method, image) and gives, per value column, the mean
and the largest absolute difference; :func:`ranking_agreement` orders the methods of each table
column of both runs (the column's arrow gives the direction) and says whether the orders are
equal; :func:`agreement_markdown` prints both.
"""
from __future__ import annotations

from typing import List

import numpy as np
import pandas as pd

from ..utils import markdown_table

#: columns that are not values (identity, bookkeeping, timing)
NOT_VALUES = ("method", "image_id", "idx", "path", "label", "classifier", "pred", "c", "seconds")


def row_agreement(a, b) -> pd.DataFrame:
    """Per value column of the rows both runs hold: ``mean_abs``, ``max_abs`` (curves: over
    every point), ``rows`` compared, and ``same_c`` (the share of rows explaining the same
    class).

    Args:
        a, b: :class:`~camzoo.bench.Run` objects of the same images and methods.
    """
    ra, rb = a.rows(curves=True), b.rows(curves=True)
    m = ra.merge(rb, on=["method", "image_id"], suffixes=("_a", "_b"))
    out = []
    for col in [c for c in ra.columns if c not in NOT_VALUES and c in rb.columns]:
        x, y = m[f"{col}_a"], m[f"{col}_b"]
        if x.map(lambda v: isinstance(v, np.ndarray)).any():
            d = np.concatenate([np.abs(np.asarray(p, np.float64) - np.asarray(q, np.float64))
                                for p, q in zip(x, y) if p is not None and q is not None] or [np.zeros(0)])
        else:
            d = (pd.to_numeric(x) - pd.to_numeric(y)).abs().dropna().to_numpy()
        out.append({"column": col, "mean_abs": float(d.mean()) if d.size else float("nan"),
                    "max_abs": float(d.max()) if d.size else float("nan"), "rows": len(m)})
    df = pd.DataFrame(out).set_index("column")
    df.attrs["same_c"] = float((m["c_a"] == m["c_b"]).mean()) if len(m) else float("nan")
    return df


def ranking_agreement(a, b, decimals: int = 2) -> pd.DataFrame:
    """Per table column with a direction (``↑`` / ``↓``): whether both runs rank the methods
    alike, comparing values at the tables' printed precision (``decimals``; ties share a rank),
    and each run's order, best first (``=`` joins ties)."""
    ta, tb = a.table(), b.table()
    rows = []
    for col in [c for c in ta.columns if c in tb.columns and str(c)[-1:] in ("↑", "↓")]:
        asc = str(col).endswith("↓")
        va = ta[col].astype(float).round(decimals)
        vb = tb[col].astype(float).round(decimals).reindex(va.index)
        same = va.rank(ascending=asc, method="min").equals(vb.rank(ascending=asc, method="min"))
        rows.append({"column": col, "same_order": bool(same), "order_a": _order(va, asc),
                     "order_b": _order(vb, asc)})
    return pd.DataFrame(rows).set_index("column")


def _order(v: pd.Series, ascending: bool) -> str:
    v = v.sort_values(ascending=ascending, kind="stable")
    out, prev = "", None
    for name, x in v.items():
        out += ("" if prev is None else (" = " if x == prev else " > ")) + str(name)
        prev = x
    return out


def agreement_markdown(a, b, name_a: str = "A", name_b: str = "B") -> str:
    """Both agreements as Markdown tables."""
    rows = row_agreement(a, b)
    ranks = ranking_agreement(a, b)
    lines: List[str] = [
        f"Per-image rows, {name_b} vs {name_a}: {int(rows['rows'].iloc[0]) if len(rows) else 0} "
        f"(method, image) rows; the same explained class in {100 * rows.attrs['same_c']:.1f} % of them.",
        ""]
    lines += markdown_table(["column", "mean abs diff", "max abs diff"],
                            [[c, f"{r.mean_abs:.3g}", f"{r.max_abs:.3g}"] for c, r in rows.iterrows()],
                            "lrr")
    lines += ["", f"Method rankings (best first), {name_a} / {name_b}:", ""]
    lines += markdown_table(["table column", "same order", "order"],
                            [[c, "yes" if r.same_order else "**no**",
                              r.order_a + ("" if r.same_order else f" / {r.order_b}")]
                             for c, r in ranks.iterrows()])
    return "\n".join(lines) + "\n"
