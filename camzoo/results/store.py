"""Crash-safe result store of a bench run: one SQLite file (``rows.sqlite``), in WAL mode while a
writer has it open (a rollback-journal file, without ``-wal`` / ``-shm``, once it is closed).

Tables (schema version 3; docs/bench.md):

- ``rows``: one row per (method, image_id) -- primary key -- with the pair's bookkeeping
  (:data:`BASE_COLUMNS`: manifest position, path, label, classifier, its top-1, the explained
  class ``c``, ``Y`` and the map time). Deleting a row deletes its values and curves (a trigger).
- ``metric_values``: per-image values in long form, ``(method, image_id, protocol, key,
  value)``, primary key (method, image_id, key): ``key`` is one of the protocol's ``row_keys``
  (not named ``values``: an SQL keyword).
- ``metric_curves``: per-image curves likewise, ``(method, image_id, protocol, key, blob)``,
  float32 little-endian blobs (the protocols' ``curve_keys``).
- ``errors``: unreadable images (image_id primary key, path, reason).
- ``failures``: what a method could not evaluate, per (method, image_id, protocol): protocol
  ``''`` is the map itself (``kind`` ``error``: the explainer raised; ``invalid``: the map was
  not finite or not in [0,1], never scored; ``skipped``: the method was stopped after failing
  on each of its first batches), a protocol's name is that protocol on that map (``error``,
  or ``skipped`` once the protocol was stopped for the method). Exception type, message and
  traceback are kept. A resumed run retries them; a success deletes the record.
- ``forwards``: forward passes the engine made, per (method, family), summed over batches;
  an image's clean forward counts once, also when a resumed run retries its pairs.
- ``meta``: key/value: ``schema_version``, and ``columns``: the value and curve keys in table
  order, and by protocol (:class:`Layout`).

A (method, image, protocol) *unit* is stored when its values are (:meth:`done_units`); every
batch is written by :meth:`ResultStore.write_batch` in ONE transaction (bookkeeping, values,
curves, errors, failures and forward counts together), so a process killed at any point leaves
whole batches only, and a resumed run computes exactly the units that are missing.
:meth:`ResultStore.rows` returns the wide table (one row per pair, one column per key), as
stores of schema 1 and 2 held it; those are read as they are and migrated to schema 3 in one
transaction when a process opens them for writing (a resumed run, a merge).
"""
from __future__ import annotations

import json
import os
import sqlite3
from dataclasses import dataclass
from typing import (Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Set,
                    Tuple)

import numpy as np
import pandas as pd

#: 2 added the ``failures`` table; 3 the long form (``metric_values``, ``metric_curves``,
#: per-protocol failures); older stores are read as they are and migrated when written
SCHEMA_VERSION = 3
DB_NAME = "rows.sqlite"
#: the protocol of keys whose protocol is not known (a store written before schema 3, or
#: through plain column lists): a writer that names the protocols assigns them
UNNAMED = "*"
#: the ``failures.protocol`` of a failure of the map itself (every protocol of the pair)
MAP = ""

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
BASE_NAMES: Tuple[str, ...] = tuple(n for n, _ in BASE_COLUMNS)

#: columns of a failure record (see the module docstring)
FAILURE_COLUMNS = ("method", "image_id", "protocol", "idx", "path", "kind", "error", "message",
                   "traceback")
_FAILURES_DDL = ("CREATE TABLE IF NOT EXISTS failures (method TEXT NOT NULL, image_id TEXT NOT NULL, "
                 "protocol TEXT NOT NULL DEFAULT '', idx INTEGER, path TEXT, kind TEXT NOT NULL, "
                 "error TEXT, message TEXT, traceback TEXT, PRIMARY KEY (method, image_id, protocol))")
_LONG_DDL = ("CREATE TABLE IF NOT EXISTS {table} (method TEXT NOT NULL, image_id TEXT NOT NULL, "
             "protocol TEXT NOT NULL, key TEXT NOT NULL, {value}, PRIMARY KEY (method, image_id, key))")
_CASCADE_DDL = ("CREATE TRIGGER IF NOT EXISTS rows_delete_values AFTER DELETE ON rows BEGIN "
                "DELETE FROM metric_values WHERE method = OLD.method AND image_id = OLD.image_id; "
                "DELETE FROM metric_curves WHERE method = OLD.method AND image_id = OLD.image_id; END")
_ADD_FORWARDS = ("INSERT INTO forwards VALUES (?, ?, ?) ON CONFLICT(method, family) "
                 "DO UPDATE SET forwards = forwards + excluded.forwards")


def encode_curve(curve: Optional[np.ndarray]) -> Optional[bytes]:
    """float32 little-endian bytes of a 1-D curve (``None`` stays ``None``)."""
    return None if curve is None else np.asarray(curve, dtype="<f4").tobytes()


def decode_curve(blob: Optional[bytes]) -> Optional[np.ndarray]:
    """Inverse of :func:`encode_curve` (anything but bytes, e.g. a missing curve, is ``None``)."""
    return np.frombuffer(blob, dtype="<f4").copy() if isinstance(blob, (bytes, bytearray, memoryview)) else None


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _sql(x: Any) -> Any:
    """A value as sqlite3 takes it (numpy scalars become Python numbers)."""
    return x.item() if isinstance(x, (np.floating, np.integer, np.bool_)) else x


@dataclass(frozen=True)
class Layout:
    """Which per-image values and curves a store holds, by protocol, in table order.

    Attributes:
        protocols: ``(protocol, value keys, curve keys)`` per protocol. :data:`UNNAMED` groups
            keys whose protocol is not known.
    """

    protocols: Tuple[Tuple[str, Tuple[str, ...], Tuple[str, ...]], ...] = ()

    @classmethod
    def of(cls, spec: Mapping[str, Mapping[str, Sequence[str]]]) -> "Layout":
        """From ``{protocol: {"values": [...], "curves": [...]}}`` (config.json's form)."""
        return cls(tuple((p, tuple(k.get("values", ())), tuple(k.get("curves", ())))
                         for p, k in spec.items()))

    @classmethod
    def unnamed(cls, values: Sequence[str], curves: Sequence[str] = ()) -> "Layout":
        """Plain column lists, their protocol unknown."""
        return cls(((UNNAMED, tuple(values), tuple(curves)),))

    def to_json(self) -> Dict[str, Dict[str, List[str]]]:
        return {p: {"values": list(v), "curves": list(c)} for p, v, c in self.protocols}

    @property
    def names(self) -> List[str]:
        """Protocols holding at least one key, in order."""
        return [p for p, v, c in self.protocols if v or c]

    @property
    def values(self) -> List[str]:
        """Every value key, in table order."""
        return [k for _, v, _ in self.protocols for k in v]

    @property
    def curves(self) -> List[str]:
        """Every curve key, in table order."""
        return [k for _, _, c in self.protocols for k in c]

    def keys_of(self, protocol: str) -> Tuple[str, ...]:
        """The value and curve keys of ``protocol`` (empty when it is not held)."""
        return next((v + c for p, v, c in self.protocols if p == protocol), ())

    def owner(self) -> Dict[str, str]:
        """key -> its protocol."""
        return {k: p for p, v, c in self.protocols for k in (*v, *c)}

    def check(self) -> None:
        """Refuse a key held twice, or named like a bookkeeping column (SQLite names are
        case-insensitive, so are these)."""
        names = [*BASE_NAMES, *self.values, *self.curves]
        lower = [n.lower() for n in names]
        dup = sorted({n for n in names if lower.count(n.lower()) > 1})
        if dup:
            raise ValueError(f"duplicate result column(s) {dup} (SQLite names are case-insensitive)")


def grown_layout(stored: Layout, given: Layout, where: str) -> Layout:
    """The layout a writer computing ``given`` leaves in a store holding ``stored``.

    Every protocol of ``given`` must hold in the store all of its keys (a stored protocol) or
    none (an added one); a stored key must belong to the same protocol, and a stored key of an
    unnamed or a given protocol must be computed by ``given``. ``given`` keys of
    :data:`UNNAMED` accept any stored owner. Unchanged stores keep their layout; a store whose
    keys get their protocols named keeps its column order; a grown one takes ``given``'s
    order, then the stored protocols ``given`` does not compute.

    Raises ``ValueError`` naming what differs (another protocol option is another run).
    """
    owner_s, owner_g = stored.owner(), given.owner()
    problems = []
    for k, sp in owner_s.items():
        gp = owner_g.get(k)
        if gp is None and (sp == UNNAMED or sp in given.names):
            problems.append(f"{k} is stored ({sp if sp != UNNAMED else 'protocol unknown'}) but not computed")
        elif gp not in (None, UNNAMED) and sp not in (UNNAMED, gp):
            problems.append(f"{k} is stored by protocol {sp} but computed by {gp}")
    for p, v, c in given.protocols:
        held = [k for k in (*v, *c) if k in owner_s]
        if p != UNNAMED and held and len(held) != len(v) + len(c):
            problems.append(f"protocol {p}: the store holds {held} of its keys {[*v, *c]}")
    if problems:
        raise ValueError(f"{where} stores values {stored.values} and curves {stored.curves}; this run "
                         f"computes {given.values} and {given.curves}: " + "; ".join(problems)
                         + " (use a new --out, or the same metrics)")
    added = [p for p, v, c in given.protocols if (v or c) and not any(k in owner_s for k in (*v, *c))]
    named = {k: gp for k, gp in owner_g.items() if gp != UNNAMED and owner_s.get(k) == UNNAMED}
    if added:
        kept = [(p, tuple(k for k in v if k not in owner_g), tuple(k for k in c if k not in owner_g))
                for p, v, c in stored.protocols if p not in given.names]
        return Layout(tuple(t for t in (*given.protocols, *kept) if t[1] or t[2]))
    if named:
        return _name_keys(stored, named)
    return stored


def _name_keys(stored: Layout, named: Mapping[str, str]) -> Layout:
    """``stored`` with its unnamed keys given the protocols in ``named``, in stored key order
    (protocols ordered by their first key)."""
    groups: Dict[str, Tuple[List[str], List[str]]] = {}
    for p, v, c in stored.protocols:
        for kind, keys in ((0, v), (1, c)):
            for k in keys:
                owner = named.get(k, p) if p == UNNAMED else p
                groups.setdefault(owner, ([], []))[kind].append(k)
    return Layout(tuple((p, tuple(v), tuple(c)) for p, (v, c) in groups.items()))


def _given_layout(value_columns: Optional[Sequence[str]], curve_columns: Optional[Sequence[str]],
                  protocols: Optional[Mapping[str, Mapping[str, Sequence[str]]]]) -> Optional[Layout]:
    if protocols is not None:
        if value_columns is not None or curve_columns is not None:
            raise ValueError("give the store's protocols or plain column lists, not both")
        return Layout.of(protocols)
    if value_columns is None and curve_columns is None:
        return None
    return Layout.unnamed(list(value_columns or []), list(curve_columns or []))


class ResultStore:
    """The per-image result database of one run directory.

    Args:
        path: the ``.sqlite`` file (created with its tables when missing).
        value_columns, curve_columns: plain lists of the per-image scalar values (e.g.
            ``O_100``, ``coherency``, ``ins_auc``) and curves (``ins_curve``), their protocol
            unknown; or
        protocols: ``{protocol: {"values": [...], "curves": [...]}}`` in table order (what the
            engine gives: the protocols' ``row_keys`` / ``curve_keys``).
        readonly: never create nor write (a missing file raises ``FileNotFoundError``).

    When the file exists, its stored layout is used; a writer may add protocols (their
    values are then stored beside the others: :func:`grown_layout`), and refused with
    ``ValueError`` when a stored protocol's keys differ. A store of schema 1 or 2 opened for
    writing is migrated to schema 3 first, in one transaction.
    """

    def __init__(self, path: str, value_columns: Optional[Sequence[str]] = None,
                 curve_columns: Optional[Sequence[str]] = None, readonly: bool = False, *,
                 protocols: Optional[Mapping[str, Mapping[str, Sequence[str]]]] = None) -> None:
        self.path = os.fspath(path)
        self.readonly = readonly
        given = _given_layout(value_columns, curve_columns, protocols)
        exists = os.path.isfile(self.path)
        if readonly and not exists:
            raise FileNotFoundError(f"{self.path} does not exist (the run has not stored any batch yet)")
        try:
            self.conn = self._connect(readonly)
            stored = self._meta("columns") if exists else None
            schema = int(self._meta("schema_version") or 1) if stored is not None else SCHEMA_VERSION
        except sqlite3.DatabaseError as exc:
            raise ValueError(f"{self.path} is not a readable camzoo result store: {exc}") from None
        self.schema = schema
        try:
            self._open(stored, given)
        except BaseException:
            self.conn.close()
            raise

    def _open(self, stored: Optional[str], given: Optional[Layout]) -> None:
        """Create the tables of a new store, or take the stored layout (grown by ``given``)
        and, for writing, bring the store up to date (:meth:`_upgrade`)."""
        if stored is None:
            if given is None or self.readonly:
                raise ValueError(f"{self.path} is not a camzoo result store (no column list in it)")
            given.check()
            self.layout = given
            self._create()
            return
        old = _stored_layout(json.loads(stored))
        self.layout = old if given is None or self.readonly else grown_layout(old, given, self.path)
        self.layout.check()
        if not self.readonly:
            self._upgrade(old)

    def _connect(self, readonly: bool) -> sqlite3.Connection:
        if readonly:  # never creates the file, never writes
            return sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, isolation_level=None, timeout=60.0)
        # isolation_level=None: we issue BEGIN/COMMIT ourselves (one transaction per batch)
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=60.0)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")  # WAL+NORMAL: durable across crashes
        return conn

    # -- the columns, as before the long form ---------------------------------------------
    @property
    def value_columns(self) -> List[str]:
        """Every per-image value key, in table order (the wide table's REAL columns)."""
        return self.layout.values

    @property
    def curve_columns(self) -> List[str]:
        """Every curve key, in table order."""
        return self.layout.curves

    @property
    def columns(self) -> List[Tuple[str, str]]:
        """The wide table's columns with their SQL types (:meth:`rows`)."""
        return [*BASE_COLUMNS, *((n, "REAL") for n in self.value_columns),
                *((n, "BLOB") for n in self.curve_columns)]

    @property
    def column_names(self) -> List[str]:
        return [c for c, _ in self.columns]

    @property
    def protocols(self) -> List[str]:
        """The protocols whose values the store holds (or will hold), in table order."""
        return self.layout.names

    # -- schema ------------------------------------------------------------------------
    def _meta(self, key: str) -> Optional[str]:
        try:
            r = self.conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        except sqlite3.OperationalError:
            return None
        return None if r is None else r[0]

    def _create_tables(self) -> None:
        """Every table of schema 3 that is missing (inside the caller's transaction)."""
        c = self.conn
        ddl = ", ".join(f"{_q(n)} {t}" for n, t in BASE_COLUMNS)
        c.execute(f"CREATE TABLE IF NOT EXISTS rows ({ddl}, PRIMARY KEY (method, image_id))")
        c.execute(_LONG_DDL.format(table="metric_values", value="value REAL"))
        c.execute(_LONG_DDL.format(table="metric_curves", value="blob BLOB"))
        c.execute(_CASCADE_DDL)
        c.execute("CREATE TABLE IF NOT EXISTS errors (image_id TEXT PRIMARY KEY, idx INTEGER, "
                  "path TEXT, reason TEXT NOT NULL)")
        c.execute("CREATE TABLE IF NOT EXISTS forwards (method TEXT NOT NULL, family TEXT NOT NULL, "
                  "forwards INTEGER NOT NULL, PRIMARY KEY (method, family))")
        c.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        c.execute(_FAILURES_DDL)

    def _write_meta(self) -> None:
        lay = self.layout
        self.conn.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        self.conn.execute("INSERT OR REPLACE INTO meta VALUES ('columns', ?)", (json.dumps(
            {"values": lay.values, "curves": lay.curves, "protocols": lay.to_json()}),))

    def _create(self) -> None:
        self._transaction(lambda: (self._create_tables(), self._write_meta()))

    def _upgrade(self, stored: Layout) -> None:
        """Migrate a schema 1 or 2 store (:meth:`_migrate`) and record a grown or named
        layout, in one transaction; nothing to do for an unchanged schema 3 store."""
        if self.schema == SCHEMA_VERSION and self.layout == stored:
            return

        def upgrade() -> None:
            if self.schema < SCHEMA_VERSION:
                self._migrate(stored)
            else:
                self._name_stored(stored)
            self._write_meta()

        self._transaction(upgrade)
        self.schema = SCHEMA_VERSION

    def _migrate(self, stored: Layout) -> None:
        """Schema 1 / 2 -> 3 (inside the caller's transaction): the wide ``rows`` table becomes
        ``rows`` (bookkeeping) + ``metric_values`` + ``metric_curves`` (every stored value,
        NULLs included: those pairs were stored with all their values), failures get the
        protocol ``''`` (the method on that image), nothing is lost."""
        c = self.conn
        owner = self.layout.owner()
        c.execute("ALTER TABLE rows RENAME TO rows_wide")
        if self._has_table("failures"):
            c.execute("ALTER TABLE failures RENAME TO failures_v2")
        self._create_tables()
        base = ", ".join(_q(n) for n in BASE_NAMES)
        c.execute(f"INSERT INTO rows ({base}) SELECT {base} FROM rows_wide")
        for table, keys in (("metric_values", stored.values), ("metric_curves", stored.curves)):
            for k in keys:
                c.execute(f"INSERT INTO {table} SELECT method, image_id, ?, ?, {_q(k)} FROM rows_wide",
                          (owner.get(k, UNNAMED), k))
        if self._has_table("failures_v2"):
            old = [n for n in FAILURE_COLUMNS if n != "protocol"]
            c.execute(f"INSERT INTO failures ({', '.join(old)}, protocol) SELECT {', '.join(old)}, '' "
                      "FROM failures_v2")
            c.execute("DROP TABLE failures_v2")
        c.execute("DROP TABLE rows_wide")

    def _name_stored(self, stored: Layout) -> None:
        """Give stored values of unnamed protocol the protocol the layout now names."""
        owner_s, owner = stored.owner(), self.layout.owner()
        for k, p in owner.items():
            if owner_s.get(k) == UNNAMED and p != UNNAMED:
                for table in ("metric_values", "metric_curves"):
                    self.conn.execute(f"UPDATE {table} SET protocol=? WHERE protocol=? AND key=?",
                                      (p, UNNAMED, k))

    def _transaction(self, work) -> None:
        c = self.conn
        c.execute("BEGIN IMMEDIATE")
        try:
            work()
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

    @property
    def wide(self) -> bool:
        """True for a store of schema 1 or 2 (one wide ``rows`` table), read as it is."""
        return self.schema < SCHEMA_VERSION

    # -- resume ------------------------------------------------------------------------
    def done_units(self, protocols: Optional[Sequence[str]] = None) -> Set[Tuple[str, str, str]]:
        """The stored ``(method, image_id, protocol)`` units. A schema 1 / 2 store held every
        protocol of a stored pair: each pair counts for every one of ``protocols`` (default:
        the stored ones)."""
        if self.wide:
            names = list(protocols) if protocols is not None else self.protocols
            return {(m, i, p) for m, i in self.conn.execute("SELECT method, image_id FROM rows") for p in names}
        return set(self.conn.execute("SELECT DISTINCT method, image_id, protocol FROM metric_values UNION "
                                     "SELECT DISTINCT method, image_id, protocol FROM metric_curves"))

    def done_pairs(self, protocols: Optional[Sequence[str]] = None) -> Set[Tuple[str, str]]:
        """The ``(method, image_id)`` pairs whose values of every one of ``protocols`` (default:
        the stored ones) are stored."""
        names = [p for p in (self.protocols if protocols is None else protocols) if p]
        pairs = set(self.conn.execute("SELECT method, image_id FROM rows").fetchall())
        if self.wide or not names:
            return pairs
        units = self.done_units()
        return {(m, i) for m, i in pairs if all((m, i, p) in units for p in names)}

    def error_ids(self) -> Set[str]:
        """Image ids recorded as unreadable."""
        return {r[0] for r in self.conn.execute("SELECT image_id FROM errors")}

    def stored_pairs(self) -> Set[Tuple[str, str]]:
        """The ``(method, image_id)`` pairs of some written batch: those with a bookkeeping row
        or a failure record (the batch's forward counts were written with them)."""
        return set(self.conn.execute("SELECT method, image_id FROM rows").fetchall()) | self.failed_pairs()

    def failed_pairs(self) -> Set[Tuple[str, str]]:
        """The ``(method, image_id)`` pairs with a record in ``failures`` (any protocol)."""
        return {(m, i) for m, i, _ in self.failed_units()}

    def failed_units(self) -> Set[Tuple[str, str, str]]:
        """``(method, image_id, protocol)`` of every failure record (protocol ``''``: the map)."""
        if not self._has_table("failures"):
            return set()
        if self.wide:
            return {(m, i, MAP) for m, i in self.conn.execute("SELECT method, image_id FROM failures")}
        return set(self.conn.execute("SELECT method, image_id, protocol FROM failures"))

    # -- merging -----------------------------------------------------------------------
    def replace_with(self, sources: Sequence["ResultStore"]) -> None:
        """Make this store the union of ``sources`` (the shard stores of one run, of any
        schema), in ONE transaction: bookkeeping, values, curves (blobs untouched),
        unreadable images and failures are copied as stored, forward counts summed per
        (method, family). What this store held before is replaced, so merging again gives the
        same store; a reader never sees half a merge.

        Raises ``ValueError`` when a source stores other keys, and
        ``sqlite3.IntegrityError`` when two sources hold the same (method, image) row (shards
        are disjoint: that is a bug).
        """
        keys = sorted(self.value_columns + self.curve_columns)
        for src in sources:
            if sorted(src.value_columns + src.curve_columns) != keys:
                raise ValueError(f"{src.path} stores columns {src.column_names}; {self.path} "
                                 f"stores {self.column_names}: not shards of one run")
        owner = self.layout.owner()
        base = ", ".join(_q(n) for n in BASE_NAMES)

        def copy() -> None:
            c = self.conn
            for table in ("metric_values", "metric_curves", "rows", "errors", "failures", "forwards"):
                c.execute(f"DELETE FROM {table}")
            for src in sources:
                c.executemany(f"INSERT INTO rows ({base}) VALUES ({', '.join('?' * len(BASE_NAMES))})",
                              src.conn.execute(f"SELECT {base} FROM rows"))
                c.executemany("INSERT INTO metric_values VALUES (?, ?, ?, ?, ?)", src.long_form("values", owner))
                c.executemany("INSERT INTO metric_curves VALUES (?, ?, ?, ?, ?)", src.long_form("curves", owner))
                c.executemany("INSERT OR REPLACE INTO errors VALUES (?, ?, ?, ?)",
                              src.conn.execute("SELECT image_id, idx, path, reason FROM errors"))
                c.executemany(f"INSERT INTO failures ({', '.join(FAILURE_COLUMNS)}) "
                              f"VALUES ({', '.join('?' * len(FAILURE_COLUMNS))})", src.failure_records())
                c.executemany(_ADD_FORWARDS, src.conn.execute("SELECT method, family, forwards FROM forwards"))

        self._transaction(copy)

    def long_form(self, kind: str, owner: Optional[Mapping[str, str]] = None) -> Iterator[Tuple[Any, ...]]:
        """``(method, image_id, protocol, key, value or blob)`` of every stored value
        (``kind="values"``) or curve (``"curves"``), of any schema; a key of unknown protocol
        gets its protocol from ``owner`` when it names one."""
        owner = owner or {}
        if not self.wide:
            table = "metric_values" if kind == "values" else "metric_curves"
            for m, i, p, k, v in self.conn.execute(f"SELECT * FROM {table}"):
                yield m, i, owner.get(k, p) if p == UNNAMED else p, k, v
            return
        for k in (self.value_columns if kind == "values" else self.curve_columns):
            for m, i, v in self.conn.execute(f"SELECT method, image_id, {_q(k)} FROM rows"):
                yield m, i, owner.get(k, UNNAMED), k, v

    def failure_records(self) -> Iterator[Tuple[Any, ...]]:
        """Every failure record as a :data:`FAILURE_COLUMNS` tuple, of any schema (a schema 2
        record is the map's: protocol ``''``)."""
        if not self._has_table("failures"):
            return iter(())
        if self.wide:
            old = ", ".join(n for n in FAILURE_COLUMNS if n != "protocol")
            return ((*r[:2], MAP, *r[2:]) for r in self.conn.execute(f"SELECT {old} FROM failures"))
        return self.conn.execute(f"SELECT {', '.join(FAILURE_COLUMNS)} FROM failures")

    # -- writing -----------------------------------------------------------------------
    def write_batch(
        self,
        rows: Iterable[Mapping[str, object]],
        errors: Iterable[Tuple[str, int, str, str]] = (),
        forwards: Optional[Mapping[Tuple[str, str], int]] = None,
        failures: Iterable[Mapping[str, object]] = (),
    ) -> None:
        """Write one batch atomically (bookkeeping, values, curves, errors, failures and
        forward counts in one transaction: a failure anywhere writes nothing of the batch).

        Args:
            rows: dicts keyed by column name (:data:`BASE_COLUMNS` and value / curve keys;
                curves may be numpy arrays, stored as float32 blobs). A row stores the values
                of each protocol it holds a key of (that protocol's missing keys are NULL) and
                leaves the other protocols of the pair missing. A stored bookkeeping row of
                the pair is kept (a resumed run adding a protocol); a stored value of the same
                (method, image_id, key) raises ``sqlite3.IntegrityError`` and nothing of the
                batch is written. Stored failures of the written units (and of the pair's map)
                are deleted: they were retried successfully.
            errors: ``(image_id, idx, path, reason)`` of unreadable images.
            forwards: ``{(method, family): count}`` added to the stored counts.
            failures: dicts keyed by :data:`FAILURE_COLUMNS` (missing keys are NULL, a missing
                ``protocol`` is ``''``: the map); a stored failure of the same unit is
                replaced, and a failure of the map replaces every record of its pair.
        """
        if self.readonly:
            raise ValueError(f"{self.path} is open read-only")
        base, values, curves, units = self._long_rows(rows)
        fails = [tuple(f.get(k) if k != "protocol" else (f.get(k) or MAP) for k in FAILURE_COLUMNS)
                 for f in failures]
        names = ", ".join(_q(n) for n in BASE_NAMES)

        def write() -> None:
            c = self.conn
            c.executemany(f"INSERT INTO rows ({names}) VALUES ({', '.join('?' * len(BASE_NAMES))}) "
                          "ON CONFLICT(method, image_id) DO NOTHING", base)
            c.executemany("INSERT INTO metric_values VALUES (?, ?, ?, ?, ?)", values)
            c.executemany("INSERT INTO metric_curves VALUES (?, ?, ?, ?, ?)", curves)
            c.executemany("DELETE FROM failures WHERE method=? AND image_id=? AND protocol IN (?, '')", units)
            c.executemany("DELETE FROM failures WHERE method=? AND image_id=? AND protocol=''",
                          [(b[0], b[1]) for b in base])
            c.executemany("DELETE FROM failures WHERE method=? AND image_id=?",
                          [f[:2] for f in fails if f[2] == MAP])
            c.executemany(f"INSERT OR REPLACE INTO failures ({', '.join(FAILURE_COLUMNS)}) "
                          f"VALUES ({', '.join('?' * len(FAILURE_COLUMNS))})", fails)
            c.executemany("INSERT OR REPLACE INTO errors VALUES (?, ?, ?, ?)", list(errors))
            c.executemany(_ADD_FORWARDS, [(m, f, int(n)) for (m, f), n in (forwards or {}).items()])

        self._transaction(write)

    def _long_rows(self, rows: Iterable[Mapping[str, object]]):
        """Row dicts -> (bookkeeping tuples, value tuples, curve tuples, written units)."""
        known = {*BASE_NAMES, *self.value_columns, *self.curve_columns}
        base, values, curves, units = [], [], [], []
        for r in rows:
            unknown = set(r) - known
            if unknown:
                raise KeyError(f"unknown row column(s) {sorted(unknown)}; columns: {self.column_names}")
            m, i = r.get("method"), r.get("image_id")
            base.append(tuple(_sql(r.get(n)) for n in BASE_NAMES))
            for p, v, c in self.layout.protocols:
                if any(k in r for k in (*v, *c)):
                    values += [(m, i, p, k, _sql(r.get(k))) for k in v]
                    curves += [(m, i, p, k, encode_curve(r.get(k))) for k in c]
                    units.append((m, i, p))
        return base, values, curves, units

    # -- reading -----------------------------------------------------------------------
    def rows(self, curves: bool = False) -> pd.DataFrame:
        """All per-image rows ordered by (method, idx): the bookkeeping columns, then one
        column per value key (float, NaN where missing) in table order, then with ``curves``
        one column per curve key (numpy arrays, None where missing)."""
        if self.wide:
            cols = [n for n in self.column_names if curves or n not in self.curve_columns]
            df = pd.read_sql_query(f"SELECT {', '.join(_q(n) for n in cols)} FROM rows ORDER BY method, idx",
                                   self.conn)
        else:
            base = pd.read_sql_query(f"SELECT {', '.join(_q(n) for n in BASE_NAMES)} FROM rows "
                                     "ORDER BY method, idx", self.conn)
            parts = [base, self._wide("metric_values", "value", self.value_columns, len(base), base)]
            if curves:
                parts.append(self._wide("metric_curves", "blob", self.curve_columns, len(base), base))
            df = pd.concat(parts, axis=1)
        for n in self.value_columns:
            df[n] = pd.to_numeric(df[n], errors="coerce").astype(float)
        if curves:
            for n in self.curve_columns:
                df[n] = df[n].map(decode_curve).astype(object)
        return df

    def _wide(self, table: str, column: str, keys: Sequence[str], n: int, base: pd.DataFrame) -> pd.DataFrame:
        """One column per key of ``table``, aligned with the rows of ``base``."""
        long = pd.read_sql_query(f"SELECT method, image_id, key, {column} AS v FROM {table}", self.conn)
        if len(long):
            wide = long.pivot(index=["method", "image_id"], columns="key", values="v")
            at = pd.MultiIndex.from_frame(base[["method", "image_id"]])
            wide = wide.reindex(index=at, columns=list(keys)).reset_index(drop=True)
        else:
            wide = pd.DataFrame(index=range(n), columns=list(keys), dtype=object)
        return wide.astype(object) if column == "blob" else wide

    def errors(self) -> pd.DataFrame:
        """Unreadable images: ``image_id, idx, path, reason`` ordered by idx."""
        return pd.read_sql_query("SELECT * FROM errors ORDER BY idx, image_id", self.conn)

    def failures(self) -> pd.DataFrame:
        """Failure records (:data:`FAILURE_COLUMNS`; protocol ``''``: the map itself) by method,
        idx, image and protocol; empty for a store written before failures were recorded."""
        if not self._has_table("failures"):
            return pd.DataFrame(columns=list(FAILURE_COLUMNS))
        if self.wide:
            old = [n for n in FAILURE_COLUMNS if n != "protocol"]
            df = pd.read_sql_query(f"SELECT {', '.join(old)} FROM failures ORDER BY method, idx, image_id",
                                   self.conn)
            df.insert(2, "protocol", MAP)
            return df
        return pd.read_sql_query(f"SELECT {', '.join(FAILURE_COLUMNS)} FROM failures "
                                 "ORDER BY method, idx, image_id, protocol", self.conn)

    def forwards(self) -> pd.DataFrame:
        """Forward counts: ``method, family, forwards``."""
        return pd.read_sql_query("SELECT * FROM forwards ORDER BY method, family", self.conn)

    def curves(self, method: str, column: str) -> Optional[np.ndarray]:
        """float32 ``[N,L]`` curves of ``method`` in ``column`` (manifest order), or ``None``."""
        if column not in self.curve_columns:
            return None
        if self.wide:
            q = (f"SELECT {_q(column)} FROM rows WHERE method=? AND {_q(column)} IS NOT NULL ORDER BY idx",
                 (method,))
        else:
            q = ("SELECT c.blob FROM metric_curves c JOIN rows r ON r.method = c.method AND "
                 "r.image_id = c.image_id WHERE c.method=? AND c.key=? AND c.blob IS NOT NULL "
                 "ORDER BY r.idx", (method, column))
        blobs = [r[0] for r in self.conn.execute(*q)]
        return np.stack([decode_curve(b) for b in blobs]) if blobs else None

    def close(self) -> None:
        """Close the connection. A writer that is the last connection to the file leaves it in
        rollback-journal mode (the WAL checkpointed into it, ``-wal`` and ``-shm`` removed): a
        read-only reader of a WAL file creates both and, unable to checkpoint, leaves them
        (every finished run kept them); of a rollback-journal file it creates nothing, needs no
        write access to the folder, and the next writer turns WAL on again (:meth:`_connect`).
        With another connection open the file stays in WAL mode (no waiting: busy timeout 0)."""
        if not self.readonly:
            try:
                if not self.conn.in_transaction:
                    self.conn.execute("PRAGMA busy_timeout=0")
                    self.conn.execute("PRAGMA journal_mode=DELETE")
            except sqlite3.Error:
                pass  # a reader has it open, or the connection is closed already
        self.conn.close()

    def __enter__(self) -> "ResultStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _stored_layout(cols: Mapping[str, Any]) -> Layout:
    """The layout in ``meta.columns``: by protocol (schema 3), else the plain lists."""
    if "protocols" in cols:
        return Layout.of(cols["protocols"])
    return Layout.unnamed(cols.get("values", []), cols.get("curves", []))
