"""A run directory as the engine leaves it, and :class:`Run`, its reader.

Files (see docs/bench.md): ``config.json`` (everything the run depends on), ``manifest.csv``
(the images, in order), ``rows.sqlite`` (the per-image :class:`~camzoo.results.store.ResultStore`),
``timings.json``, the tables (``table.{csv,md,tex}``, ``per_image.csv``) and figures.
"""
from __future__ import annotations

import errno
import json
import os
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import pandas as pd

from ..registry import file_name
from ..utils import UserError
from .store import DB_NAME, ResultStore

CONFIG_NAME = "config.json"
MANIFEST_NAME = "manifest.csv"
TIMINGS_NAME = "timings.json"
LOCK_NAME = ".lock"


class RunLockedError(UserError):
    """Another process holds the run directory's lock."""


class DamagedConfigError(UserError, ValueError):
    """A run's ``config.json`` that is not what camzoo wrote: invalid JSON, not a JSON object,
    a key its readers need missing or of the wrong type (:func:`load_run_config`)."""


#: the top-level keys of every ``config.json`` camzoo has written, which its readers need
RUN_KEYS = ("backbone", "methods", "protocols", "target", "data", "bench_config")
#: ``bench_config`` fields holding a whole number or null (the engine reads them with ``int()``;
#: tests/results/test_damaged_config.py keeps this equal to BenchConfig's integer options)
BENCH_INT_FIELDS = ("limit", "seed", "batch_size", "eval_batch_size", "grid_images",
                    "max_failed_batches", "workers", "steps")
_OBJ, _STR, _NULL, _INT, _NUM = (dict,), (str,), (type(None),), (int,), (int, float)
#: the shape the readers of ``config.json`` rely on: ``(key path, JSON types, required)``, a
#: ``*`` standing for every entry of an object; a required key must be there when its parent
#: is (a top-level key when the reader asks for it: ``load_run_config(require=...)``)
CONFIG_SHAPE: Tuple[Tuple[str, Tuple[type, ...], bool], ...] = (
    ("backbone", _OBJ, True), ("backbone.name", _STR, True),
    ("backbone.layer", _STR + _NULL, True), ("backbone.weights_id", _STR + _NULL, True),
    ("methods", _OBJ, True), ("methods.*", _OBJ, True), ("methods.*.options", _OBJ, True),
    ("methods.*.classifier", _OBJ, True), ("methods.*.forward_passes", _NUM, True),
    ("protocols", _OBJ, True), ("protocols.*", _OBJ, True), ("protocols.*.options", _OBJ, True),
    ("target", _STR, True),
    ("data", _OBJ, True), ("data.n_images", _INT, True), ("data.manifest_hash", _STR, True),
    ("bench_config", _OBJ, True),
    *((f"bench_config.{k}", _INT + _NULL, False) for k in BENCH_INT_FIELDS),
    ("columns", _OBJ, False), ("world_size", _INT, False), ("shards", _OBJ, False),
    ("resumed", (list,), False),
)
_KIND = {dict: "an object", list: "a list", str: "a string", int: "a whole number",
         float: "a number", bool: "true/false", type(None): "null"}


def load_run_config(run_dir: str, require: Sequence[str] = RUN_KEYS) -> Dict[str, Any]:
    """The ``config.json`` of run directory ``run_dir``, its shape checked: the one reader of
    that file (:class:`Run`, a resume, a merge).

    Args:
        run_dir: the run directory.
        require: the top-level keys the caller needs (default: every run's, :data:`RUN_KEYS`).
            Keys present are checked against :data:`CONFIG_SHAPE` whether required or not.
    Raises:
        FileNotFoundError: ``run_dir`` has no ``config.json``.
        DamagedConfigError: (a ``ValueError``) one message naming the file, what is wrong
            (invalid JSON at line N, not a JSON object, a key missing or of the wrong type) and
            what to do.
    """
    path = os.path.join(os.fspath(run_dir), CONFIG_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{run_dir} is not a camzoo run (no {CONFIG_NAME})")
    with open(path, "rb") as f:
        data = f.read()
    try:
        cfg = json.loads(data.decode("utf-8"))
        problem = config_problem(cfg, require)
    except UnicodeDecodeError as exc:
        problem = f"not UTF-8 text (byte {exc.start})"
    except json.JSONDecodeError as exc:
        problem = f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
    except RecursionError:
        problem = "JSON nested too deeply"
    if problem:
        raise DamagedConfigError(f"{path} is damaged: {problem}; restore it from a backup, or start "
                                 "a new run with another --out")
    return cfg


def config_problem(cfg: Any, require: Sequence[str] = RUN_KEYS) -> Optional[str]:
    """What is wrong with a parsed ``config.json`` (see :func:`load_run_config`), or None."""
    if not isinstance(cfg, dict):
        return f"not a JSON object (it holds {_KIND.get(type(cfg), 'a value')})"
    for k in require:
        if k not in cfg:
            return f"missing key {k!r}"
    for path, types, required in CONFIG_SHAPE:
        *parents, key = path.split(".")
        for where, parent in _entries(cfg, parents, ""):
            name = f"{where}.{key}" if where else key
            if not isinstance(parent, dict):
                continue  # reported at the parent's own entry
            if key == "*":
                items = list(parent.items())
            elif key in parent:
                items = [(key, parent[key])]
            else:
                if required and (parents or key in require):
                    return f"missing key {name!r}"
                continue
            for k, v in items:
                if not isinstance(v, types) or (isinstance(v, bool) and bool not in types):
                    what = " or ".join(_KIND[t] for t in types)
                    return (f"{where + '.' if where else ''}{k} should be {what}, not "
                            f"{json.dumps(v)[:60]}")
                if path == "world_size" and v < 1:
                    return f"world_size should be a whole number >= 1, not {v}"
    return None


def _entries(obj: Any, parts: Sequence[str], where: str) -> Iterator[Tuple[str, Any]]:
    """``(key path, value)`` of the objects at ``parts`` (``*``: every entry) below ``obj``."""
    if not parts:
        yield where, obj
        return
    if not isinstance(obj, dict):
        return
    head, rest = parts[0], parts[1:]
    for k in (obj if head == "*" else [head] if head in obj else []):
        yield from _entries(obj[k], rest, f"{where}.{k}" if where else k)


class _Replaced(Exception):
    """The lock file was unlinked (and maybe recreated) by its last holder before our flock."""


class RunLock:
    """An exclusive lock on a run directory, held while a process writes to it.

    A :class:`filelock.FileLock` on ``<dir>/<name>`` (an OS lock: ``flock`` on POSIX,
    ``msvcrt`` on Windows), so the OS releases it when the holder exits, however it exits (a
    ``SIGKILL`` included), and a stale lock file never blocks a later ``--resume``.

    The holder unlinks the file on release, while still holding it (a finished run keeps no
    lock files; a killed holder leaves its file, which is harmless). That is safe because each
    acquisition checks, with the flock held, that the path still names the locked file
    (filelock's ``on_acquired`` hook, filelock >= 4.0), and otherwise lets it go and takes the
    path's file: a waiter that locked the file just unlinked never holds it, so two processes
    never hold two files of one name. Where the check did not run (an older filelock, which
    ignores the hook; filelock's soft lock on a filesystem without ``flock``), the file is kept.

    Args:
        run_dir: the run directory.
        name: the lock file: ``.lock`` for the run (a single-process run, a merge), one per
            shard store (``.lock.rank-<r>-of-<n>``: shards never block each other), and
            ``.config.lock``, held for a moment while a process reads and writes
            ``config.json`` / ``manifest.csv`` (``wait=True``).
        wait: block until the lock is free instead of refusing.
    """

    def __init__(self, run_dir: str, name: str = LOCK_NAME, wait: bool = False) -> None:
        import filelock

        self.path = os.path.join(run_dir, name)
        self._timeout = -1 if wait else 0
        self._verified = False  # the held file was checked to be the path's: unlink it on release
        try:
            self._lock = filelock.FileLock(self.path, timeout=self._timeout, on_acquired=self._check_inode)
            self._checking = True
        except TypeError:  # a filelock without the hook that rejects it
            self._plain_lock()

    def _plain_lock(self) -> None:
        import filelock

        self._lock = filelock.FileLock(self.path, timeout=self._timeout)
        self._checking = False

    def _check_inode(self, fd: int) -> None:
        """With the flock on ``fd`` held: refuse it unless ``self.path`` still names its file."""
        try:
            same = os.path.samestat(os.fstat(fd), os.lstat(self.path))
        except FileNotFoundError:
            same = False
        if not same:
            raise _Replaced(self.path)  # filelock lets it go and closes fd; acquire() retries
        self._verified = True

    def acquire(self) -> "RunLock":
        """Take the lock; with ``wait=False`` (the default) a held lock raises
        :class:`RunLockedError` naming the run directory, with ``wait=True`` it blocks until free."""
        import filelock

        tries = 0
        while True:
            self._verified = False
            try:
                self._lock.acquire()
                return self
            except _Replaced:
                continue  # a fresh open of the path, on the file now there
            except filelock.Timeout:  # (an OSError: caught first)
                # once more without waiting: filelock gives up on a file unlinked between its
                # open and its flock (the holder had just released); the path's file may be free
                tries += 1
                if self._timeout < 0 or tries > 1:
                    break
            except OSError as exc:
                # no flock on this filesystem: filelock's soft lock (a marker file) has no
                # descriptor to check, and filelock refuses it with the hook
                if exc.errno != errno.ENOSYS or not self._checking:
                    raise
                self._plain_lock()
        raise RunLockedError(
            f"{os.path.dirname(self.path)} is in use by another camzoo process (it holds "
            f"{self.path}); wait for it to finish, or stop it, before writing to this run")

    def release(self) -> None:
        if self._lock.is_locked:
            if self._verified:  # still held: a waiter that locks this file finds it gone, retries
                try:
                    os.unlink(self.path)
                except OSError:
                    pass
            self._verified = False
            self._lock.release(force=True)

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def map_path(run_dir: str, kind: str, method: str, image_id: str) -> str:
    """Where a run keeps one map: ``<run_dir>/<kind>/<method>/<image_id>.npy``.

    ``kind`` is ``"maps"`` (``--save-maps``, float32) or ``"grid"`` (the figure's maps,
    float16). A family member's name becomes a file name (``blur:gradcam`` -> ``blur@gradcam``:
    on Windows a ``:`` would write an alternate data stream). Image ids keep their ``/`` folders; a ``..`` or ``.`` part (an id made from a
    path outside the data folder) becomes ``_up_`` / ``_``, so every file stays inside
    ``run_dir``.
    """
    parts = [{"..": "_up_", ".": "_", "": "_"}.get(p, p) for p in image_id.replace("\\", "/").split("/")]
    return os.path.join(run_dir, kind, file_name(method), *parts[:-1], parts[-1] + ".npy")


class Run:
    """A run directory: its config, result store and derived tables.

    Attributes:
        dir: the run directory.
        config: the parsed ``config.json``.
        store: the :class:`~camzoo.results.store.ResultStore` of ``rows.sqlite``, read-only (a
            directory without one raises ``FileNotFoundError``; none is created).
        timings: engine seconds per part of the last (resumed) process (``timings.json``;
            of a merged sharded run: summed over the shards, each shard's under ``shards``).

    Args:
        path: the run directory.
        store: the store file in it: ``rows.sqlite`` (default), or one shard's
            ``rows.rank-<r>-of-<n>.sqlite`` (a shard before the merge).
    """

    def __init__(self, path: str, store: str = DB_NAME) -> None:
        self.dir = os.fspath(path)
        self.config: Dict[str, Any] = load_run_config(self.dir)
        self.store = ResultStore(os.path.join(self.dir, store), readonly=True)
        tpath = os.path.join(self.dir, TIMINGS_NAME)
        self.timings: Dict[str, Any] = {}
        if os.path.isfile(tpath):
            with open(tpath) as f:
                self.timings = json.load(f)

    def __repr__(self) -> str:
        return f"Run({self.dir!r})"

    @property
    def methods(self) -> List[str]:
        """Method names in config order."""
        return list(self.config["methods"])

    def rows(self, curves: bool = False) -> pd.DataFrame:
        """Per-image rows (one per method and image), see :meth:`ResultStore.rows`."""
        return self.store.rows(curves=curves)

    def errors(self) -> pd.DataFrame:
        """Unreadable images with the reason."""
        return self.store.errors()

    def forwards(self) -> pd.DataFrame:
        """Forward passes the engine made, per method and family."""
        return self.store.forwards()

    def failures(self) -> pd.DataFrame:
        """What a method could not evaluate, per (method, image, protocol) (protocol ``''``:
        the map itself): kind ``error`` / ``invalid`` / ``skipped``, exception type, message,
        traceback (see :mod:`camzoo.results.store`)."""
        return self.store.failures()

    def specs(self, metrics: Optional[Sequence[str]] = None) -> list:
        """The :class:`~camzoo.metrics.protocol.MetricSpec` of every table column of the run (its
        protocols with their stored options, in table order), or only those of ``metrics`` named
        by column header without the arrow, with it, or row key (case-insensitive)."""
        from ..metrics.protocol import PROTOCOLS, table_metrics

        protos = self.config["protocols"]
        # as they were in effect: options a protocol added since take the run's value
        specs = table_metrics(list(protos), {p: PROTOCOLS.get(p).stored_options(v["options"])
                                             for p, v in protos.items()})
        if not metrics:
            return specs
        out = []
        for name in metrics:
            low = name.strip().lower()
            hit = [s for s in specs if low in (s.column.lower(), s.header.lower(), s.key.lower())]
            if not hit:
                raise ValueError(f"the run has no metric {name!r}; metrics: "
                                 + ", ".join(s.column for s in specs))
            out += [s for s in hit if s not in out]
        return out

    def table(self) -> pd.DataFrame:
        """The summary table's means (one row per method), see
        :func:`camzoo.results.tables.summary` (which also gives their intervals)."""
        from .tables import summary

        return summary(self, ci=False, tests=False).df

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> "Run":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
