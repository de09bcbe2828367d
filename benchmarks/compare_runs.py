"""Are two bench runs the same? Compare their per-image rows, column by column.

    python -m benchmarks.compare_runs RUN_A RUN_B [--atol 0]     # from the repository root

Reads both ``rows.sqlite`` stores directly (no camzoo import, so RUN_A may come from another
version of the code: a store of schema 1 or 2 holds one wide ``rows`` table, one of schema 3
the bookkeeping in ``rows`` and the values and curves in long form in ``metric_values`` /
``metric_curves``; both are read as the wide table), matches rows by (method, image_id), and
prints for every column the largest absolute difference (curves element-wise). Timing columns
(``seconds``) are skipped.
Exit status 0 when every column is within ``--atol`` (default 0: bit-identical), 1 otherwise.
Used to show that the layered-package refactor left every number unchanged
(benchmarks/README.md).
"""
import argparse
import json
import os
import sqlite3
import sys

import numpy as np

TIMING = {"seconds"}


def wide_rows(con: sqlite3.Connection):
    """``(columns, {(method, image_id): {column: value}})`` of a store of any schema: the wide
    ``rows`` table as stored (schema 1, 2), or the bookkeeping ``rows`` joined with the long
    ``metric_values`` / ``metric_curves`` (schema 3; a value a pair lacks is None)."""
    cur = con.execute("SELECT * FROM rows ORDER BY method, image_id")
    cols = [d[0] for d in cur.description]
    rows = {(r[0], r[1]): dict(zip(cols, r)) for r in cur.fetchall()}
    tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if "metric_values" not in tables:
        return cols, rows
    meta = con.execute("SELECT value FROM meta WHERE key='columns'").fetchone()
    keys = [*json.loads(meta[0])["values"], *json.loads(meta[0])["curves"]] if meta else []
    for table, column in (("metric_values", "value"), ("metric_curves", "blob")):
        for m, i, k, v in con.execute(f"SELECT method, image_id, key, {column} FROM {table}"):
            if k not in keys:
                keys.append(k)
            if (m, i) in rows:
                rows[(m, i)][k] = v
    for r in rows.values():
        for k in keys:
            r.setdefault(k, None)
    return cols + keys, rows


def load(run: str):
    con = sqlite3.connect(f"file:{os.path.join(run, 'rows.sqlite')}?mode=ro", uri=True)
    cols, rows = wide_rows(con)
    fw = dict(((m, f), n) for m, f, n in con.execute("SELECT method, family, forwards FROM forwards"))
    con.close()
    return cols, rows, fw


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--atol", type=float, default=0.0)
    args = ap.parse_args()
    ca, ra, fa = load(args.a)
    cb, rb, fb = load(args.b)
    ok = True
    if set(ra) != set(rb):
        print(f"different (method, image) pairs: only in A {sorted(set(ra) - set(rb))[:5]}, "
              f"only in B {sorted(set(rb) - set(ra))[:5]}")
        ok = False
    if set(ca) != set(cb):
        print(f"different columns: only in A {sorted(set(ca) - set(cb))}, only in B {sorted(set(cb) - set(ca))}")
        ok = False
    keys = sorted(set(ra) & set(rb))
    print(f"{len(keys)} rows in both; methods: {', '.join(sorted({m for m, _ in keys}))}")
    print(f"{'column':14s} {'max |A-B|':>12s}  identical")
    for col in [c for c in ca if c in cb and c not in TIMING]:
        worst, same = 0.0, True
        for k in keys:
            a, b = ra[k][col], rb[k][col]
            if isinstance(a, bytes) or isinstance(b, bytes):
                va = np.frombuffer(a, "<f4") if a is not None else None
                vb = np.frombuffer(b, "<f4") if b is not None else None
                if va is None or vb is None or va.shape != vb.shape:
                    same, worst = same and va is vb, float("inf") if va is not vb else worst
                    continue
                d = float(np.max(np.abs(va.astype(np.float64) - vb))) if va.size else 0.0
                same &= bool(np.array_equal(va, vb))
            elif isinstance(a, (int, float)) and isinstance(b, (int, float)):
                d = abs(float(a) - float(b))
                same &= a == b
            else:
                d = 0.0 if a == b else float("inf")
                same &= a == b
            worst = max(worst, d)
        print(f"{col:14s} {worst:12.3g}  {'yes' if same else 'no'}")
        ok &= worst <= args.atol
    if fa != fb:
        print(f"forward counts differ: A {fa}, B {fb}")
        ok = False
    else:
        print(f"forward counts identical ({sum(fa.values())} images through the models)")
    print("SAME" if ok else "DIFFERENT")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
