"""Crash-safe result store of a bench run: one SQLite file (``rows.sqlite``) in WAL mode.

Tables (schema in docs/bench.md):

- ``rows``: one row per (method, image_id) — primary key — with the image's class, Y, its map
  time, one REAL column per per-image metric value (the protocols' ``row_keys``) and one
  float32 blob per curve (``ins_curve``, ``del_curve``).
- ``errors``: unreadable images (image_id primary key, path, reason).
- ``failures``: (method, image_id) pairs a method could not evaluate: ``kind`` is ``error``
  (the explainer or a metric raised: exception type, message and traceback are kept),
  ``invalid`` (the map was not finite or not in [0,1]; never scored) or ``skipped`` (the method
  was stopped after failing on every one of its first batches). A resumed run retries them;
  a success deletes the record in the batch's transaction.
- ``forwards``: forward passes the engine made, per (method, family), summed over batches.
- ``meta``: key/value (schema version; the value and curve columns of ``rows``).

Every batch is written by :meth:`ResultStore.write_batch` in ONE transaction (rows, errors,
failures and forward counts together), so a process killed at any point leaves whole batches only; a
resumed run skips the stored (method, image) pairs and adds the rest.
"""
from __future__ import annotations

import json
import os
import sqlite3
from typing import Iterable, List, Mapping, Optional, Sequence, Set, Tuple

import numpy as np
import pandas as pd

#: 2 added the ``failures`` table (a version-1 store gets it when opened for writing)
SCHEMA_VERSION = 2
DB_NAME = "rows.sqlite"

#: identity / bookkeeping columns of every row, in order, with SQL types
BASE_COLUMNS: Tuple[Tuple[str, str], ...] = (
    ("method", "TEXT NOT NULL"),
    ("image_id", "TEXT NOT NULL"),
    ("idx", "INTEGER NOT NULL"),          # position in the run's manifest
    ("path", "TEXT"),                     # relative to the data root
    ("label", "INTEGER"),                 # ground truth (NULL when the data has none)
    ("classifier", "TEXT NOT NULL"),      # which classifier Y, c and the metrics refer to
    ("pred", "INTEGER NOT NULL"),         # that classifier's top-1 on the clean image
    ("c", "INTEGER NOT NULL"),            # the explained and evaluated class
    ("Y", "REAL NOT NULL"),               # softmax prob of c on the clean image
    ("seconds", "REAL NOT NULL"),         # map time per image (batch time / batch size)
)


def encode_curve(curve: Optional[np.ndarray]) -> Optional[bytes]:
    """float32 little-endian bytes of a 1-D curve (``None`` stays ``None``)."""
    return None if curve is None else np.asarray(curve, dtype="<f4").tobytes()


def decode_curve(blob: Optional[bytes]) -> Optional[np.ndarray]:
    """Inverse of :func:`encode_curve`."""
    return None if blob is None else np.frombuffer(blob, dtype="<f4").copy()


_FAILURES_DDL = ("CREATE TABLE IF NOT EXISTS failures (method TEXT NOT NULL, image_id TEXT NOT NULL, "
                 "idx INTEGER, path TEXT, kind TEXT NOT NULL, error TEXT, message TEXT, "
                 "traceback TEXT, PRIMARY KEY (method, image_id))")
#: columns of a failure record (see the module docstring)
FAILURE_COLUMNS = ("method", "image_id", "idx", "path", "kind", "error", "message", "traceback")


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class ResultStore:
    """The per-image result database of one run directory.

    Args:
        path: the ``.sqlite`` file (created with its tables when missing).
        value_columns: per-image scalar metric values (REAL columns), e.g. the protocols'
            ``row_keys`` (``O_100``, ``ad_100``, ..., ``coherency``, ``ins_auc``).
        curve_columns: per-image curves stored as float32 blobs (``ins_curve``, ``del_curve``).

    When the file exists, its stored columns are used; passing different ones raises
    ``ValueError`` (a resumed run must compute the same values).
    """

    def __init__(self, path: str, value_columns: Optional[Sequence[str]] = None,
                 curve_columns: Optional[Sequence[str]] = None, readonly: bool = False) -> None:
        self.path = os.fspath(path)
        self.readonly = readonly
        exists = os.path.isfile(self.path)
        if readonly and not exists:
            raise FileNotFoundError(f"{self.path} does not exist (the run has not stored any batch yet)")
        try:
            if readonly:  # never creates the file, never writes
                self.conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, isolation_level=None,
                                            timeout=60.0)
            else:
                # isolation_level=None: we issue BEGIN/COMMIT ourselves (one transaction per batch)
                self.conn = sqlite3.connect(self.path, isolation_level=None, timeout=60.0)
                self.conn.execute("PRAGMA journal_mode=WAL")
                self.conn.execute("PRAGMA synchronous=NORMAL")  # WAL+NORMAL: durable across crashes
            stored = self._meta("columns") if exists else None
        except sqlite3.DatabaseError as exc:
            raise ValueError(f"{self.path} is not a readable camzoo result store: {exc}") from None
        if stored is not None:
            cols = json.loads(stored)
            for given, key in ((value_columns, "values"), (curve_columns, "curves")):
                # same columns in another order is the same store (SQL inserts by name)
                if given is not None and sorted(given) != sorted(cols[key]):
                    raise ValueError(f"{self.path} stores {key} {cols[key]}; this run computes "
                                     f"{list(given)} (use a new --out, or the same metrics)")
            self.value_columns, self.curve_columns = list(cols["values"]), list(cols["curves"])
            if not readonly:
                self._migrate()
        else:
            if value_columns is None or readonly:
                raise ValueError(f"{self.path} is not a camzoo result store (no column list in it)")
            self.value_columns = list(value_columns)
            self.curve_columns = list(curve_columns or [])
            self._create()
        self.columns: List[Tuple[str, str]] = [
            *BASE_COLUMNS, *((n, "REAL") for n in self.value_columns),
            *((n, "BLOB") for n in self.curve_columns)]
        self.column_names = [c for c, _ in self.columns]

    # -- schema ------------------------------------------------------------------------
    def _meta(self, key: str) -> Optional[str]:
        try:
            r = self.conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        except sqlite3.OperationalError:
            return None
        return None if r is None else r[0]

    def _create(self) -> None:
        names = [c for c, _ in BASE_COLUMNS] + self.value_columns + self.curve_columns
        lower = [n.lower() for n in names]
        dup = sorted({n for n in names if lower.count(n.lower()) > 1})
        if dup:
            raise ValueError(f"duplicate result column(s) {dup} (SQLite names are case-insensitive)")
        cols = [*BASE_COLUMNS, *((n, "REAL") for n in self.value_columns),
                *((n, "BLOB") for n in self.curve_columns)]
        ddl = ", ".join(f"{_q(c)} {t}" for c, t in cols)
        c = self.conn
        c.execute("BEGIN IMMEDIATE")
        try:
            c.execute(f"CREATE TABLE IF NOT EXISTS rows ({ddl}, PRIMARY KEY (method, image_id))")
            c.execute("CREATE TABLE IF NOT EXISTS errors (image_id TEXT PRIMARY KEY, idx INTEGER, "
                      "path TEXT, reason TEXT NOT NULL)")
            c.execute("CREATE TABLE IF NOT EXISTS forwards (method TEXT NOT NULL, family TEXT NOT NULL, "
                      "forwards INTEGER NOT NULL, PRIMARY KEY (method, family))")
            c.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            c.execute(_FAILURES_DDL)
            c.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            c.execute("INSERT OR REPLACE INTO meta VALUES ('columns', ?)", (json.dumps(
                {"values": self.value_columns, "curves": self.curve_columns}),))
            c.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise

    def _migrate(self) -> None:
        """Bring an older store up to :data:`SCHEMA_VERSION` (adds tables, never drops data)."""
        if self._meta("schema_version") == str(SCHEMA_VERSION):
            return
        c = self.conn
        c.execute("BEGIN IMMEDIATE")
        try:
            c.execute(_FAILURES_DDL)
            c.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            c.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise

    def _rollback(self) -> None:
        # SQLite may already have rolled back (e.g. "database or disk is full"): a second
        # ROLLBACK would raise "cannot rollback - no transaction is active" over the real error
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")

    def _has_table(self, name: str) -> bool:
        return self.conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?",
                                 (name,)).fetchone() is not None

    # -- resume ------------------------------------------------------------------------
    def done_pairs(self) -> Set[Tuple[str, str]]:
        """The stored ``(method, image_id)`` pairs."""
        return set(self.conn.execute("SELECT method, image_id FROM rows").fetchall())

    def error_ids(self) -> Set[str]:
        """Image ids recorded as unreadable."""
        return {r[0] for r in self.conn.execute("SELECT image_id FROM errors")}

    def failed_pairs(self) -> Set[Tuple[str, str]]:
        """The ``(method, image_id)`` pairs recorded in ``failures``."""
        if not self._has_table("failures"):
            return set()
        return set(self.conn.execute("SELECT method, image_id FROM failures").fetchall())

    # -- merging -----------------------------------------------------------------------
    def replace_with(self, sources: Sequence["ResultStore"]) -> None:
        """Make this store the union of ``sources`` (the shard stores of one run), in ONE
        transaction: rows, unreadable images and failures are copied as stored (blobs
        untouched), forward counts summed per (method, family). What this store held before is
        replaced, so merging again gives the same store; a reader never sees half a merge.

        Raises ``ValueError`` when a source stores other columns, and
        ``sqlite3.IntegrityError`` when two sources hold the same (method, image) row (shards
        are disjoint: that is a bug).
        """
        names = self.column_names
        for src in sources:
            if sorted(src.column_names) != sorted(names):
                raise ValueError(f"{src.path} stores columns {src.column_names}; {self.path} "
                                 f"stores {names}: not shards of one run")
        cols = ", ".join(_q(n) for n in names)
        c = self.conn
        c.execute("BEGIN IMMEDIATE")
        try:
            for table in ("rows", "errors", "failures", "forwards"):
                c.execute(f"DELETE FROM {table}")
            for src in sources:
                c.executemany(f"INSERT INTO rows ({cols}) VALUES ({', '.join('?' * len(names))})",
                              src.conn.execute(f"SELECT {cols} FROM rows"))
                c.executemany("INSERT OR REPLACE INTO errors VALUES (?, ?, ?, ?)",
                              src.conn.execute("SELECT image_id, idx, path, reason FROM errors"))
                if src._has_table("failures"):
                    fc = ", ".join(FAILURE_COLUMNS)
                    c.executemany(f"INSERT INTO failures ({fc}) VALUES "
                                  f"({', '.join('?' * len(FAILURE_COLUMNS))})",
                                  src.conn.execute(f"SELECT {fc} FROM failures"))
                c.executemany("INSERT INTO forwards VALUES (?, ?, ?) ON CONFLICT(method, family) "
                              "DO UPDATE SET forwards = forwards + excluded.forwards",
                              src.conn.execute("SELECT method, family, forwards FROM forwards"))
            c.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise

    # -- writing -----------------------------------------------------------------------
    def write_batch(
        self,
        rows: Iterable[Mapping[str, object]],
        errors: Iterable[Tuple[str, int, str, str]] = (),
        forwards: Optional[Mapping[Tuple[str, str], int]] = None,
        failures: Iterable[Mapping[str, object]] = (),
    ) -> None:
        """Write one batch atomically (rows, errors, failures and forward counts in one
        transaction: a failure anywhere writes nothing of the batch).

        Args:
            rows: dicts keyed by column name (missing value/curve columns are NULL; curves may
                be numpy arrays, stored as float32 blobs). An existing (method, image_id) raises
                ``sqlite3.IntegrityError`` and nothing of the batch is written. A stored failure
                of the same pair is deleted (it was retried successfully).
            errors: ``(image_id, idx, path, reason)`` of unreadable images.
            forwards: ``{(method, family): count}`` added to the stored counts.
            failures: dicts keyed by :data:`FAILURE_COLUMNS` (missing keys are NULL); a stored
                failure of the same pair is replaced.
        """
        names = self.column_names
        curves = set(self.curve_columns)
        sql = (f"INSERT INTO rows ({', '.join(_q(n) for n in names)}) "
               f"VALUES ({', '.join('?' * len(names))})")
        values = []
        for r in rows:
            unknown = set(r) - set(names)
            if unknown:
                raise KeyError(f"unknown row column(s) {sorted(unknown)}; columns: {names}")
            v = []
            for n in names:
                x = r.get(n)
                if n in curves:
                    x = encode_curve(x)
                elif isinstance(x, (np.floating, np.integer, np.bool_)):
                    x = x.item()
                v.append(x)
            values.append(v)
        fails = [tuple(f.get(k) for k in FAILURE_COLUMNS) for f in failures]
        c = self.conn
        c.execute("BEGIN IMMEDIATE")
        try:
            c.executemany(sql, values)
            c.executemany("DELETE FROM failures WHERE method=? AND image_id=?",
                          [(v[0], v[1]) for v in values])
            c.executemany(f"INSERT OR REPLACE INTO failures VALUES ({', '.join('?' * len(FAILURE_COLUMNS))})",
                          fails)
            c.executemany("INSERT OR REPLACE INTO errors VALUES (?, ?, ?, ?)", list(errors))
            for (method, family), n in (forwards or {}).items():
                c.execute("INSERT INTO forwards VALUES (?, ?, ?) ON CONFLICT(method, family) "
                          "DO UPDATE SET forwards = forwards + excluded.forwards",
                          (method, family, int(n)))
            c.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise

    # -- reading -----------------------------------------------------------------------
    def rows(self, curves: bool = False) -> pd.DataFrame:
        """All per-image rows ordered by (method, idx); curves (numpy arrays) only if ``curves``."""
        cols = [n for n in self.column_names if curves or n not in self.curve_columns]
        q = f"SELECT {', '.join(_q(n) for n in cols)} FROM rows ORDER BY method, idx"
        df = pd.read_sql_query(q, self.conn)
        if curves:
            for n in self.curve_columns:
                df[n] = df[n].map(decode_curve)
        return df

    def errors(self) -> pd.DataFrame:
        """Unreadable images: ``image_id, idx, path, reason`` ordered by idx."""
        return pd.read_sql_query("SELECT * FROM errors ORDER BY idx, image_id", self.conn)

    def failures(self) -> pd.DataFrame:
        """Pairs a method could not evaluate (:data:`FAILURE_COLUMNS`), by method and idx;
        empty for a store written before failures were recorded."""
        if not self._has_table("failures"):
            return pd.DataFrame(columns=list(FAILURE_COLUMNS))
        return pd.read_sql_query("SELECT * FROM failures ORDER BY method, idx, image_id", self.conn)

    def forwards(self) -> pd.DataFrame:
        """Forward counts: ``method, family, forwards``."""
        return pd.read_sql_query("SELECT * FROM forwards ORDER BY method, family", self.conn)

    def curves(self, method: str, column: str) -> Optional[np.ndarray]:
        """float32 ``[N,L]`` curves of ``method`` in ``column`` (manifest order), or ``None``."""
        if column not in self.curve_columns:
            return None
        blobs = [r[0] for r in self.conn.execute(
            f"SELECT {_q(column)} FROM rows WHERE method=? AND {_q(column)} IS NOT NULL ORDER BY idx",
            (method,))]
        return np.stack([decode_curve(b) for b in blobs]) if blobs else None

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> "ResultStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
