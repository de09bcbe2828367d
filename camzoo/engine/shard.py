"""Sharded bench runs: which images a process evaluates, where it stores them, and the merge.

A run of N shards evaluates manifest index ``i`` in shard ``i % N`` (a deterministic round
robin over the manifest order: balanced, and independent of timing or of what a resumed shard
still has to do). Shard r of N writes its own store ``rows.rank-<r>-of-<N>.sqlite`` (and
``timings.rank-<r>-of-<N>.json``) in the one run directory and holds its own lock
``.lock.rank-<r>-of-<N>``: shards never write the same file nor wait for each other, and no
row crosses the network. A shard comes from torchrun (``RANK`` / ``WORLD_SIZE``; the engine
then joins the process group, and the only collective it uses is a barrier) or from
``--shard I/N`` (job arrays: no torch.distributed at all); both take the same code path.

:func:`merge_shards` checks that every shard is complete -- each (method, image, protocol)
unit of its images stored or recorded as failed (the protocol, or the method's map), or the
image recorded as unreadable -- and writes the union into ``rows.sqlite`` (forward counts
summed; stores of any schema) in one transaction, plus ``timings.json`` (summed over the
shards). The tables and figures are written by :func:`camzoo.engine.runner.merge` on top of it.
"""
from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import sqlite3
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Mapping, Optional, Set, Tuple

from ..results.run import LOCK_NAME, MANIFEST_NAME, TIMINGS_NAME, RunLock, load_run_config
from ..results.store import DB_NAME, MAP, ResultStore
from ..utils import UserError, atomic_write

#: held for a moment while a process reads / writes ``config.json`` and ``manifest.csv``
CONFIG_LOCK = ".config.lock"
_SHARD_STORE = re.compile(r"^rows\.rank-(\d+)-of-(\d+)\.sqlite$")


@dataclass(frozen=True)
class Shard:
    """Which part of a run this process evaluates.

    Attributes:
        rank: the shard index ``r`` in ``[0, world)``.
        world: the number of shards N (1 = an unsharded run).
        distributed: True under torchrun (a torch.distributed process group exists).
    """

    rank: int = 0
    world: int = 1
    distributed: bool = False

    @property
    def name(self) -> str:
        """``rank-<r>-of-<N>``."""
        return f"rank-{self.rank}-of-{self.world}"

    @property
    def store_name(self) -> str:
        """``rows.sqlite`` unsharded, ``rows.rank-<r>-of-<N>.sqlite`` otherwise."""
        return DB_NAME if self.world == 1 else f"rows.{self.name}.sqlite"

    @property
    def lock_name(self) -> str:
        return LOCK_NAME if self.world == 1 else f"{LOCK_NAME}.{self.name}"

    @property
    def timings_name(self) -> str:
        return TIMINGS_NAME if self.world == 1 else f"timings.{self.name}.json"

    def owns(self, index: int) -> bool:
        """True when manifest index ``index`` belongs to this shard (``index % N == r``)."""
        return index % self.world == self.rank

    def rerun_hint(self, out: str) -> str:
        return f"camzoo bench --shard {self.rank}/{self.world} --resume --out {out}"


def parse_shard(text: str) -> Tuple[int, int]:
    """``"I/N"`` -> ``(I, N)`` with ``0 <= I < N``; ``ValueError`` naming the form otherwise."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not m:
        raise ValueError(f"--shard {text!r}: expected I/N, shard I (0-based) of N, e.g. 0/4")
    i, n = int(m.group(1)), int(m.group(2))
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"--shard {text}: I must be in 0..N-1 (shards are numbered from 0) and "
                         f"N >= 1; got I={i}, N={n}")
    return i, n


def resolve_shard(shard: Optional[str], env: Optional[Mapping[str, str]] = None) -> Shard:
    """This process's :class:`Shard`: from torchrun's ``RANK`` / ``WORLD_SIZE`` when
    ``WORLD_SIZE > 1``, else from ``shard`` (``"I/N"``), else the whole run."""
    env = os.environ if env is None else env
    world = int(env.get("WORLD_SIZE", "1") or 1)
    if world > 1:
        if shard is not None:
            raise ValueError(f"--shard {shard} is for runs without torchrun (job arrays); under "
                             f"torchrun each process's shard is its RANK of WORLD_SIZE={world}")
        return Shard(int(env.get("RANK", "0")), world, True)
    if shard is not None:
        i, n = parse_shard(shard)
        return Shard(i, n, False)
    return Shard()


def shard_stores(run_dir: str) -> List[str]:
    """File names of the shard stores present in ``run_dir`` (any world size)."""
    try:
        return sorted(f for f in os.listdir(run_dir) if _SHARD_STORE.match(f))
    except OSError:
        return []


class DamagedStoreError(UserError, ValueError):
    """A result store of a run that SQLite cannot read (a truncated or overwritten file)."""


def damaged_store(run_dir: str, name: str, exc: BaseException) -> DamagedStoreError:
    """The error for the store ``name`` of ``run_dir`` that cannot be read (``exc``): which
    file is damaged and what to do -- delete it and compute its part again (a shard's store:
    that shard with ``--resume``; the merged ``rows.sqlite`` of a sharded run: ``camzoo
    merge``, from the shard stores; the store of a one-process run: the run with ``--resume``)."""
    path = os.path.join(run_dir, name)
    files = f"{path} (and {name}-wal, {name}-shm beside it, if there)"
    m = _SHARD_STORE.match(name)
    if m:
        sh = Shard(int(m.group(1)), int(m.group(2)))
        what = f"the result store of shard {sh.rank}/{sh.world}"
        todo = (f"its rows cannot be recovered: delete {files}, rerun that shard ({sh.rerun_hint(run_dir)}: "
                f"it computes its images again), then camzoo merge {run_dir} if the last shard to "
                "finish did not merge")
    elif shard_stores(run_dir):
        what = "the merged store of a sharded run"
        todo = f"delete {files} and run camzoo merge {run_dir}: it is made again from the shard stores"
    else:
        what = "the run's result store"
        todo = (f"its rows cannot be recovered: delete {files} and rerun with --resume --out "
                f"{run_dir} (every image is computed again), or start a new run with another --out")
    return DamagedStoreError(f"{path} is damaged: {what} cannot be read ({exc}); {todo}")


def stored_methods(run_dir: str) -> Set[str]:
    """The methods with a stored row (some image evaluated) in any store of the run in
    ``run_dir`` (its ``rows.sqlite`` and the shards'); :class:`DamagedStoreError` when a store
    cannot be read."""
    found: Set[str] = set()
    for name in [DB_NAME] + shard_stores(run_dir):
        path = os.path.join(run_dir, name)
        if not os.path.isfile(path):
            continue
        with reading_store(run_dir, name):
            with ResultStore(path, readonly=True) as st:
                found |= {m for m, _ in st.done_pairs(protocols=[])}  # every bookkeeping row
    return found


@contextlib.contextmanager
def reading_store(run_dir: str, name: str) -> Iterator[None]:
    """Turn the error of the store ``name`` that cannot be read -- not an SQLite file, a
    corrupt page, an SQLite file that is no camzoo store -- into :func:`damaged_store`'s
    message. Other errors pass: a locked or busy database (``OperationalError``), a store of
    other protocols (``ValueError`` without an SQLite error behind it)."""
    try:
        yield
    except DamagedStoreError:
        raise
    except (ValueError, sqlite3.DatabaseError) as exc:
        cause = exc if isinstance(exc, sqlite3.DatabaseError) else exc.__context__
        sqlite_damage = (isinstance(cause, sqlite3.DatabaseError)
                         and not isinstance(cause, sqlite3.OperationalError))
        if not (sqlite_damage or "not a camzoo result store" in str(exc)):
            raise
        raise damaged_store(run_dir, name, exc) from None


def describe_world(world: int) -> str:
    return "one process" if world == 1 else f"{world} shards"


def check_world(old: Dict[str, Any], shard: Shard, out: str) -> None:
    """Refuse a process whose number of shards differs from the stored run's."""
    stored = int(old.get("world_size", 1))
    if stored == shard.world:
        return
    if stored == 1:
        how = f"resume it as one process: camzoo bench --resume --out {out}"
    else:
        how = (f"resume it with {stored} shards: torchrun --nproc_per_node {stored} -m camzoo "
               f"bench --resume --out {out}, or camzoo bench --shard I/{stored} --resume --out "
               f"{out} for each shard I that is not complete, then camzoo merge {out}")
    raise ValueError(f"cannot continue {out} as {describe_world(shard.world)}"
                     f"{'' if shard.world == 1 else f' (this is shard {shard.rank}/{shard.world})'}: "
                     f"it was run as {describe_world(stored)} and its images are split that way; "
                     f"{how}")


# -- completeness and merge ---------------------------------------------------------------------
def manifest_ids(run_dir: str) -> List[Tuple[int, str]]:
    """``(index, image_id)`` of every image in the run's ``manifest.csv``."""
    path = os.path.join(run_dir, MANIFEST_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{run_dir} has no {MANIFEST_NAME}")
    with open(path, newline="") as f:
        return [(int(r["index"]), r["image_id"]) for r in csv.DictReader(f)]


@dataclass
class ShardState:
    """How far one shard of a run has come.

    Attributes:
        shard: the shard.
        exists: its store file exists.
        expected: (method, image) pairs it owns.
        missing: pairs of a readable image with some protocol neither stored nor recorded as
            failed (for that protocol, or the method's map).
    """

    shard: Shard
    exists: bool
    expected: int
    missing: int

    @property
    def complete(self) -> bool:
        return self.exists and self.missing == 0

    def describe(self, out: str) -> str:
        what = ("missing (no store: the shard never stored a batch)" if not self.exists else
                f"incomplete ({self.missing} of {self.expected} (method, image) pairs not done)")
        return f"shard {self.shard.rank}/{self.shard.world} ({self.shard.store_name}): {what}; " \
               f"run: {self.shard.rerun_hint(out)}"


def read_config(run_dir: str) -> Dict[str, Any]:
    """The run's ``config.json``, its shape checked (:func:`~camzoo.results.run.load_run_config`)."""
    return load_run_config(run_dir)


def shard_states(run_dir: str, cfg: Optional[Dict[str, Any]] = None) -> List[ShardState]:
    """The :class:`ShardState` of every shard of the run in ``run_dir``."""
    cfg = read_config(run_dir) if cfg is None else cfg
    world = int(cfg.get("world_size", 1))
    methods, protocols = list(cfg["methods"]), list(cfg["protocols"])
    ids = manifest_ids(run_dir)
    out = []
    for r in range(world):
        sh = Shard(r, world)
        own = [i for idx, i in ids if sh.owns(idx)]
        path = os.path.join(run_dir, sh.store_name)
        if not os.path.isfile(path):
            out.append(ShardState(sh, False, len(own) * len(methods), len(own) * len(methods)))
            continue
        with reading_store(run_dir, sh.store_name), ResultStore(path, readonly=True) as st:
            settled = st.done_units(protocols) | st.failed_units()
            unreadable = st.error_ids()
        missing = sum(not _settled(settled, m, i, protocols) for i in own if i not in unreadable
                      for m in methods)
        out.append(ShardState(sh, True, len(own) * len(methods), missing))
    return out


def _settled(units: Set[Tuple[str, str, str]], method: str, image_id: str, protocols: List[str]) -> bool:
    """True when each protocol of (method, image) is stored or failed, or its map failed."""
    return (method, image_id, MAP) in units or all((method, image_id, p) in units for p in protocols)


def store_columns(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """The :class:`~camzoo.results.store.ResultStore` arguments of the run's merged store: its keys
    by protocol (``config.json``'s ``columns.protocols``), or for a run stored before those
    were recorded the plain column lists (the stores' own protocols are then kept)."""
    cols = cfg["columns"]
    if "protocols" in cols:
        return {"protocols": cols["protocols"]}
    return {"value_columns": cols["values"], "curve_columns": cols["curves"]}


class IncompleteShardsError(UserError):
    """A merge was asked for while some shards are missing or incomplete."""


def _sum_timings(parts: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    total: Dict[str, Any] = {"wall_s": {}, "cpu_s": {}, "scorer_forwards": {}}
    for t in parts.values():
        for key in total:
            for k, v in (t.get(key) or {}).items():
                total[key][k] = total[key].get(k, 0) + v
    total["shards"] = parts
    return total


def merge_shards(run_dir: str) -> List[ShardState]:
    """Merge the complete shards of the run in ``run_dir`` into ``rows.sqlite`` and
    ``timings.json`` (see the module docstring); returns the shard states.

    Holds the run lock (``.lock``) while it writes, so two merges never overlap. Raises
    :class:`IncompleteShardsError` naming every missing or incomplete shard and the command
    that completes it; ``ValueError`` for a run that is not sharded.
    """
    cfg = read_config(run_dir)
    world = int(cfg.get("world_size", 1))
    if world == 1:
        raise ValueError(f"{run_dir} is not a sharded run (it ran as one process): nothing to merge")
    states = shard_states(run_dir, cfg)
    bad = [s for s in states if not s.complete]
    if bad:
        raise IncompleteShardsError(
            f"cannot merge {run_dir}: {len(bad)} of {world} shard(s) not complete:\n  "
            + "\n  ".join(s.describe(run_dir) for s in bad)
            + f"\nthen run camzoo merge {run_dir}")
    with RunLock(run_dir):
        sources = [ResultStore(os.path.join(run_dir, s.shard.store_name), readonly=True) for s in states]
        try:
            with reading_store(run_dir, DB_NAME):
                dst = ResultStore(os.path.join(run_dir, DB_NAME), **store_columns(cfg))
            with dst:
                dst.replace_with(sources)
        finally:
            for s in sources:
                s.close()
        parts = {}
        for s in states:
            p = os.path.join(run_dir, s.shard.timings_name)
            if os.path.isfile(p):
                with open(p) as f:
                    parts[s.shard.name] = json.load(f)
        atomic_write(os.path.join(run_dir, TIMINGS_NAME), json.dumps(_sum_timings(parts), indent=2))
    return states
