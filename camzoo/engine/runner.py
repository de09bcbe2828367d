"""The evaluation engine: every explainer x every metric protocol over a dataset, crash-safe.

``run(BenchConfig(...)) -> Run`` in three steps:

1. :func:`camzoo.engine.plan.prepare` resolves the config (preset, names, options, data,
   backbone, methods) and writes or checks ``config.json`` -- everything that can be refused
   is refused there;
2. :class:`Runner` loops over the batches of :func:`camzoo.engine.maps.iterate_maps` (one
   clean forward per classifier, each method's maps once) and evaluates each selected
   protocol the store lacks on those maps (one unit per method, protocol and batch, each
   isolated) through one counting :class:`~camzoo.metrics.Scorer` per method; each batch's
   values, failures, unreadable images and forward counts go to the run's SQLite store in one
   transaction (see :mod:`camzoo.results.store`), so a killed run resumes exactly, and a
   finished one can gain a protocol (``--metrics +NAME``);
3. :func:`finish` writes the tables (:mod:`camzoo.results.tables`) and figures
   (:mod:`camzoo.results.plots`) into the run directory.

The engine knows no protocol by name: columns, options and shorthands come from the
protocols' own declarations. See docs/bench.md.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import json
import os
import time
import traceback
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from ..data.datasets import Dataset, open_dataset
from ..metrics.protocol import PROTOCOLS, MetricInputs
from ..metrics.scorer import Scorer
from ..models.backbone import Backbone
from ..models.zoo import load_backbone
from ..explainers.base import describe_invalid, valid_maps
from ..results.run import CONFIG_NAME, Run, RunLock, RunLockedError, map_path
from ..results.store import DB_NAME, ResultStore
from ..utils import UserError, atomic_write, forward_meter
from .accel import ieee_fp32
from .config import BenchConfig
from .estimate import Estimate, WorkMeter, estimate, lacking
from .maps import MAIN_VIEW, MapBatch, MapMethod, Maps, explain_checked, iterate_maps, same_normalization
from .plan import Echo, Plan, prepare, writing
from .probe import probe
from .shard import (CONFIG_LOCK, Shard, merge_shards, read_config, reading_store, resolve_shard,
                    shard_states)
from .timing import Clock


def _mean_std(clf: Backbone) -> Optional[Tuple[Tensor, Tensor]]:
    """``(mean, std)`` when ``clf.normalize`` is the plain per-channel ``(x - mean) / std``
    (lets the lcam protocol fuse its masking and normalization), else None."""
    return (clf.mean, clf.std) if type(clf).normalize is Backbone.normalize else None


#: seconds a torchrun rank may wait at the final barrier for the slowest rank (a day: shards
#: are balanced, but a long study's ranks may finish hours apart)
BARRIER_TIMEOUT_S = 24 * 3600.0


def run(config: BenchConfig, echo: Echo = print) -> Optional[Run]:
    """Run (or resume) a benchmark; returns the finished :class:`~camzoo.bench.Run`.

    Before evaluating, it prints the plan (methods, images, forwards per image per method and
    protocol) and the time estimated from a short probe on this device
    (:mod:`camzoo.engine.estimate`). With ``config.dry_run`` it prints only that and returns
    None: nothing is created or written.

    The config's preset is applied first (see :mod:`camzoo.engine.config`), so
    ``run(BenchConfig())`` is what a bare ``camzoo bench`` runs. Raises ``ValueError`` for
    bad names/options (listing the valid ones), ``FileExistsError`` when ``out`` already holds
    a run and ``resume`` is False. Unreadable images do not raise: they go to the ``errors``
    table.

    Sharded (:mod:`camzoo.engine.shard`): under torchrun (``WORLD_SIZE > 1``) each rank joins
    the process group (gloo on CPU, NCCL on ``cuda:LOCAL_RANK``), evaluates its shard into
    its own store, waits at a barrier for the others, and rank 0 merges the shards and writes
    the tables; it returns the merged run, the other ranks their shard's. With
    ``config.shard = "I/N"`` (no torch.distributed), the process evaluates shard I and, if it
    is the last one to complete, merges; otherwise it returns its shard's run and
    :func:`merge` (``camzoo merge RUN``) does it later.
    """
    shard = resolve_shard(config.shard)
    if not shard.distributed:
        return _run(config, echo, shard, None)
    from ..train.loop import distributed

    with distributed(config.device, timeout=BARRIER_TIMEOUT_S) as dev:
        return _run(config, echo, shard, dev)


def _run(config: BenchConfig, echo: Echo, shard: Shard, device: Optional[torch.device]) -> Optional[Run]:
    base = echo
    if shard.world > 1:
        echo = lambda s: base(f"[shard {shard.rank}/{shard.world}] {s}")  # noqa: E731
        if shard.distributed and shard.rank != 0:
            config = dataclasses.replace(config, progress=False)  # one set of bars per node's log
    plan = prepare(config, echo, shard, device)
    with ieee_fp32(plan.device, plan.config.amp):  # fp32 means IEEE fp32; restored afterwards
        if plan.lock is None:
            _dry_run(plan, echo)
            return None
        return _evaluate(plan, echo, base, shard)


def _dry_run(plan: Plan, echo: Echo) -> None:
    """The plan and its estimate of a ``dry_run`` plan; nothing is written (a resumed run's
    store is read only, to count what it lacks)."""
    layout = plan.cfg["columns"]["protocols"]
    path = os.path.join(plan.out, plan.shard.store_name)
    store = (ResultStore(path, readonly=True) if os.path.isfile(path)
             else ResultStore(":memory:", protocols=layout))
    try:
        Runner(plan, store).loop(echo)
    finally:
        store.close()
    echo(f"dry run: nothing was written; run the same command without --dry-run to start it "
         f"(-> {plan.out})")


def _evaluate(plan: Plan, echo: Echo, base: Echo, shard: Shard) -> Run:
    """The prepared run: the loop into this process's store, then the tables (one process) or
    the shards' barrier and merge (torchrun, job arrays)."""
    try:
        layout = plan.cfg["columns"]["protocols"]
        with reading_store(plan.out, shard.store_name):  # a damaged store: which, and what to do
            store = writing(plan.out, "the result store",
                             lambda: ResultStore(os.path.join(plan.out, shard.store_name), protocols=layout))
        with store:
            Runner(plan, store).loop(echo)
        if shard.world == 1:
            result = Run(plan.out)
            finish(result, echo, dataset=plan.dataset, backbone=plan.backbone,
                   figures=plan.config.figures, grid_images=plan.config.grid_images,
                   report=plan.config.report)
            return result
    finally:
        plan.lock.release()
    if shard.distributed:
        import torch.distributed as dist

        # every shard is stored; the only collective of a run
        dev = plan.device
        dist.barrier(**({"device_ids": [dev.index]} if dev.type == "cuda" and dev.index is not None else {}))
        if shard.rank == 0:
            return merge(plan.out, base, dataset=plan.dataset, backbone=plan.backbone,
                         figures=plan.config.figures)
        return Run(plan.out, store=shard.store_name)
    pending = [s for s in shard_states(plan.out) if not s.complete]
    if not pending:
        echo("every shard is complete: merging")
        try:
            return merge(plan.out, base, dataset=plan.dataset, backbone=plan.backbone,
                         figures=plan.config.figures)
        except RunLockedError:  # a shard that completed at the same moment is merging
            echo("another process is merging the shards; nothing left to do here")
            return Run(plan.out, store=shard.store_name)
    echo(f"shard done; {len(pending)} other shard(s) not complete yet "
         f"({', '.join(str(s.shard.rank) for s in pending)}); when they are: camzoo merge {plan.out}")
    return Run(plan.out, store=shard.store_name)


def merge(run_dir: str, echo: Echo = print, *, dataset: Optional[Dataset] = None,
          backbone: Optional[Backbone] = None, figures: bool = True) -> Run:
    """Merge the shards of a sharded run into ``rows.sqlite`` and write its tables and figures
    (``camzoo merge RUN``); returns the merged :class:`~camzoo.bench.Run`.

    Refuses (:class:`~camzoo.engine.shard.IncompleteShardsError`, a user error) when a shard is
    missing or incomplete, naming each and the command that completes it. ``dataset`` and
    ``backbone`` are needed only for the overlay grid; when not given they are rebuilt from
    ``config.json`` (the data folder and the backbone must be readable here). Merging twice
    gives the same run.
    """
    states = writing(run_dir, "rows.sqlite (the merge)", lambda: merge_shards(run_dir),
                     retry=f"camzoo merge {run_dir}")
    cfg_path = os.path.join(run_dir, CONFIG_NAME)
    with RunLock(run_dir, CONFIG_LOCK, wait=True):
        cfg = read_config(run_dir)
        cfg["merged"] = _dt.datetime.now().isoformat(timespec="seconds")
        writing(run_dir, "config.json", lambda: atomic_write(cfg_path, json.dumps(cfg, indent=2, default=str)),
                retry=f"camzoo merge {run_dir}")
    echo(f"merged {len(states)} shards into {os.path.join(run_dir, DB_NAME)}")
    bc = BenchConfig.from_dict(cfg["bench_config"])
    if figures and (dataset is None or backbone is None):
        try:
            if dataset is None:
                dataset = open_dataset(bc.data, bc.labels, bc.limit, bc.seed, devkit=bc.devkit,
                                       subset=bc.subset, allow_missing=bc.allow_missing)
            if backbone is None:
                backbone = load_backbone(bc.backbone, bc.weights, "cpu")
        except Exception as exc:  # the grid needs them; the tables do not
            echo(f"note: no overlay grid ({type(exc).__name__}: {exc}); the tables are complete")
            dataset = backbone = None
    result = Run(run_dir)
    finish(result, echo, dataset=dataset, backbone=backbone, figures=figures,
           grid_images=bc.grid_images, report=bc.report)
    return result


@dataclass
class _Health:
    """How one method's maps, or one protocol on one method's maps, fare in this process (for
    stopping what always fails)."""

    batches: int = 0
    failed: int = 0
    stopped: bool = False
    last_error: str = ""

    def record(self, failed: bool, limit: int, what: str, out: str, echo: Echo) -> None:
        """Count one batch; when it fails on each of its first ``limit`` batches, stop ``what``
        (``"gradcam"``, ``"gradcam: protocol road"``) and say so through ``echo``."""
        self.batches += 1
        self.failed += failed
        if not self.stopped and self.failed == self.batches == limit:
            self.stopped = True
            self.last_error = (f"{what} was stopped after failing on each of its first {self.batches} "
                               f"batches (last: {self.last_error})")
            echo(f"error: {self.last_error}; its other images are skipped (see `camzoo errors {out}`; "
                 "fix it and rerun with --resume)")


class Runner:
    """The batch loop of :func:`run` (state shared by the batches of one process).

    The unit of work is (method, protocol, batch). Each method is isolated: an exception of
    its explainer is recorded for the (method, image) pairs of that batch in the store's
    ``failures`` table (protocol ``''``: the map), and the other methods go on; a map that is
    not finite or not in [0,1] is recorded as ``invalid`` and never scored. Each protocol is
    isolated likewise: an exception of a protocol on a method's maps is recorded for that
    (method, protocol, images), and the method's other protocols keep their values. A method
    whose maps, or a protocol that on a method's maps, fail on each of the first
    ``config.max_failed_batches`` batches is stopped (its other images recorded as
    ``skipped``). A resumed run computes exactly the (method, image, protocol) units the store
    lacks; a method's map is made again when any protocol of it is missing. Every batch is
    written in one transaction.
    """

    def __init__(self, plan: Plan, store: ResultStore) -> None:
        self.plan, self.store = plan, store
        self.config = plan.config
        self.scorers = {m.name: Scorer(plan.forward_model(m.classifier), plan.eval_batch_size,
                                       amp=self.config.amp)
                        for m in plan.methods}
        self.clock = Clock(plan.device)
        #: the run's estimate and its progress display (None before the loop, and in a probe)
        self.est: Optional[Estimate] = None
        self.meter: Optional[WorkMeter] = None
        self.health = {m.name: _Health() for m in plan.methods}
        self.protocol_health = {(m.name, p): _Health() for m in plan.methods for p in plan.protocols}
        #: (method, image_id) -> the protocols its store lacks (pairs of this process's images)
        self.missing: Dict[Tuple[str, str], List[str]] = {}
        self.grid_ids: set = set()

    def loop(self, echo: Echo) -> None:
        """Print the plan and its estimate; evaluate every missing (method, image, protocol)
        unit (not for a ``dry_run`` plan); write ``timings.json``."""
        plan, store, config = self.plan, self.store, self.config
        t_loop = time.perf_counter()
        known_errors = store.error_ids()
        readable = [(i, it) for i, it in enumerate(plan.dataset.items) if it.image_id not in known_errors]
        # the grid shows the run's first images, whichever shard evaluates them
        self.grid_ids = {it.image_id for _, it in readable[: max(0, int(config.grid_images))]}
        indexed = [(i, it) for i, it in readable if plan.shard.owns(i)]
        done = self._missing_units(indexed)
        pending = [(i, it) for i, it in indexed
                   if any((m.name, it.image_id) not in done for m in plan.methods)]
        if not pending:
            if config.dry_run:
                echo(f"nothing to do: every (method, image, protocol) of {plan.out} is stored")
            return
        echo(f"bench: {len(plan.methods)} method(s) x {len(pending)} image(s) to do "
             f"({len(indexed) - len(pending)} done, {len(known_errors)} unreadable) -> {plan.out}"
             + self._partial_note())
        # the probe runs a runner of its own: its clock, scorers and counts are not kept
        work = lacking(plan.methods, plan.protocol_options, pending, done, self.missing)
        est = estimate(work, probe(Runner(plan, store), pending))
        echo(est.text())
        if config.dry_run:
            return
        self.est, meter = est, WorkMeter(est, len(pending), show=config.progress)
        self.meter = meter
        batches = iterate_maps(plan.dataset, pending, plan.methods, views={MAIN_VIEW: plan.backbone},
                               batch_size=plan.batch_size, target=config.target, done=done,
                               clock=self.clock, warmup=True, amp=config.amp,
                               model_of=plan.forward_model, workers=plan.workers,
                               stored=self.store.stored_pairs())
        try:
            with contextlib.closing(batches), forward_meter(meter.forwards):
                for batch in batches:
                    self._store_batch(batch, echo)
                    meter.images(len(batch.items) + len(batch.errors))
            meter.finish()
        finally:
            meter.close()
        self._write_timings(len(pending), time.perf_counter() - t_loop)

    def _missing_units(self, indexed: Sequence[Tuple[int, Any]]) -> set:
        """Fill :attr:`missing` for the images ``indexed``; return the pairs that lack nothing."""
        units = self.store.done_units(self.plan.protocols)
        done = set()
        for _, it in indexed:
            for m in self.plan.methods:
                lack = [p for p in self.plan.protocols if (m.name, it.image_id, p) not in units]
                if lack:
                    self.missing[(m.name, it.image_id)] = lack
                else:
                    done.add((m.name, it.image_id))
        return done

    def _partial_note(self) -> str:
        """``" (missing protocols only: ...)"`` when some pending pair lacks only some
        protocols (an added protocol, a protocol that failed), else ``""``."""
        n = len(self.plan.protocols)
        if all(len(lack) == n for lack in self.missing.values()):
            return ""
        lacking = {p for lack in self.missing.values() for p in lack}
        return f" (missing protocols only: {', '.join(p for p in self.plan.protocols if p in lacking)})"

    def _store_batch(self, batch: MapBatch, echo: Echo) -> None:
        """Evaluate one batch and write it in one transaction."""
        for e in batch.errors:
            echo(f"error: {e[3]}")
        if self.meter is not None:  # the clean forwards, done before the batch arrived
            self.meter.clean(len(batch.items))
        rows, fails = self.batch(batch, echo)
        t = self.clock.start()
        writing(self.plan.out, "the result store (rows.sqlite)",
                 lambda: self.store.write_batch(rows, batch.errors, batch.forwards, fails))
        self.clock.stop("store", t)

    def _write_timings(self, n_images: int, loop_s: float) -> None:
        """``timings.json`` (this shard's) of this process: clock, scorer counts, settings."""
        plan, config = self.plan, self.config
        timings = {**self.clock.to_dict(), "scorer_forwards": {
            f"{m}/{f}": int(n) for m, s in self.scorers.items() for f, n in s.counts.items()},
            # the estimate printed before the loop (the probe's time is part of loop_wall_s)
            "estimate": None if self.est is None else {
                "seconds": self.est.total, "probe_s": self.est.times.probe_seconds,
                "per_method_s": self.est.seconds, "forward_s": self.est.times.forward},
            "process": {"shard": plan.shard.name, "images": n_images, "loop_wall_s": loop_s,
                        "device": str(plan.device), "batch_size": plan.batch_size,
                        "eval_batch_size": plan.eval_batch_size, "amp": config.amp,
                        "compile": config.compile, "workers": plan.workers}}
        name = plan.shard.timings_name
        writing(plan.out, name, lambda: atomic_write(os.path.join(plan.out, name), json.dumps(timings, indent=2)))

    def batch(self, batch: MapBatch, echo: Echo = print) -> Tuple[List[Dict[str, Any]], List[Dict[str, Any]]]:
        """Every method's maps and missing protocols on ``batch``, each method and each
        protocol isolated from the others.

        Returns:
            ``(rows, failures)`` for the store.
        """
        rows: List[Dict[str, Any]] = []
        fails: List[Dict[str, Any]] = []
        for m in self.plan.methods:
            sel = batch.pending(m)
            if not sel:
                continue
            r, f = self._method(m, batch, sel, echo)
            rows += r
            fails += f
        return rows, fails

    def _todo(self, m: MapMethod, batch: MapBatch, sel: Sequence[int]) -> Dict[str, List[int]]:
        """protocol -> positions in ``batch`` (of ``sel``) whose values of it ``m`` lacks, in
        table order (every protocol, for a pair this process did not look up)."""
        todo: Dict[str, List[int]] = {}
        for p in self.plan.protocols:
            js = [j for j in sel
                  if p in self.missing.get((m.name, batch.items[j][1].image_id), self.plan.protocols)]
            if js:
                todo[p] = js
        return todo

    def _method(self, m: MapMethod, batch: MapBatch, sel: Sequence[int],
                echo: Echo) -> Tuple[List[Dict[str, Any]], List[Dict[str, Any]]]:
        """One method on the images ``sel`` of ``batch``: its maps once, then each protocol
        those images lack (stopped protocols are recorded as skipped)."""
        h = self.health[m.name]
        if h.stopped:
            return [], self._failures(m, batch, sel, "skipped", "Stopped", h.last_error)
        fails: List[Dict[str, Any]] = []
        todo = self._todo(m, batch, sel)
        for p in list(todo):
            hp = self.protocol_health[(m.name, p)]
            if hp.stopped:
                fails += self._failures(m, batch, todo.pop(p), "skipped", "Stopped", hp.last_error, protocol=p)
        if not todo:
            return [], fails
        maps, map_fails = self._maps(m, batch, sel, echo)
        fails += map_fails
        if maps is None:
            return [], fails
        values, proto_fails = self._protocols(m, batch, maps, todo, echo)
        t = self.clock.start()
        rows = self.rows(m, batch, maps, values)
        self.clock.stop("rows", t)
        return rows, fails + proto_fails

    def _maps(self, m: MapMethod, batch: MapBatch, sel: Sequence[int],
              echo: Echo) -> Tuple[Optional[Maps], List[Dict[str, Any]]]:
        """``m``'s valid maps of ``sel`` (None when there are none) and the failure records of
        the others (the explainer raised: all of them; invalid maps: those)."""
        h = self.health[m.name]
        fails: List[Dict[str, Any]] = []
        good = None
        if self.meter is not None:
            self.meter.maps(m.name, len(sel))
        try:
            maps = batch.maps_of(m)
            ok = valid_maps(maps.V)
            for r in (~ok).nonzero()[:, 0].tolist():
                fails += self._failures(m, batch, [maps.sel[r]], "invalid", "InvalidMap",
                                        describe_invalid(maps.V[r]))
            if bool(ok.any()):
                good = maps if bool(ok.all()) else maps.take(ok)
            else:
                h.last_error = "every map of the batch was invalid"
        except UserError:
            raise  # the run cannot go on (e.g. a full disk): not this method's fault
        except Exception as exc:
            h.last_error = f"{type(exc).__name__}: {exc}"
            fails += self._failures(m, batch, sel, "error", type(exc).__name__, str(exc),
                                    traceback.format_exc())
        h.record(good is None, int(self.config.max_failed_batches), m.name, self.plan.out, echo)
        return good, fails

    def _protocols(self, m: MapMethod, batch: MapBatch, maps: Maps, todo: Dict[str, List[int]],
                   echo: Echo) -> Tuple[List[Dict[str, Any]], List[Dict[str, Any]]]:
        """Each protocol of ``todo`` on the maps of the images that lack it, isolated.

        Returns:
            ``(values, failures)``: ``values[r]`` holds the host values of ``maps``' image
            ``r`` from every protocol that succeeded on it (empty when none did).
        """
        values: List[Dict[str, Any]] = [{} for _ in maps.sel]
        fails: List[Dict[str, Any]] = []
        for p, js in todo.items():
            want = set(js)
            rs = [r for r, j in enumerate(maps.sel) if j in want]
            if not rs:
                continue  # those images' maps were invalid
            sub = maps if len(rs) == len(maps.sel) else maps.take(
                torch.tensor([j in want for j in maps.sel], device=maps.V.device))
            got, f = self._protocol(m, p, batch, sub, echo)
            fails += f
            for k, a in (got or {}).items():
                a = a.detach().float().cpu().numpy()  # one device -> host copy per quantity
                for n, r in enumerate(rs):
                    values[r][k] = a[n] if a.ndim > 1 else float(a[n])
        return values, fails

    def _protocol(self, m: MapMethod, p: str, batch: MapBatch, maps: Maps,
                  echo: Echo) -> Tuple[Optional[Dict[str, Tensor]], List[Dict[str, Any]]]:
        """Protocol ``p`` on ``maps``: ``(values, [])``, or ``(None, failure records)`` when it
        raised; stops ``p`` for ``m`` when it failed on each of its first batches."""
        hp = self.protocol_health[(m.name, p)]
        fails: List[Dict[str, Any]] = []
        if self.meter is not None:
            self.meter.protocol(m.name, p, len(maps.sel))
        try:
            got: Optional[Dict[str, Tensor]] = self.evaluate(m, p, maps, batch.forwards,
                                                             [batch.items[j][1] for j in maps.sel])
        except UserError:
            raise  # the run cannot go on: not this protocol's fault
        except Exception as exc:
            hp.last_error = f"protocol {p}: {type(exc).__name__}: {exc}"
            fails = self._failures(m, batch, maps.sel, "error", type(exc).__name__,
                                   f"protocol {p}: {exc}", traceback.format_exc(), protocol=p)
            got = None
        hp.record(got is None, int(self.config.max_failed_batches), f"{m.name}: protocol {p}",
                  self.plan.out, echo)
        return got, fails

    def _failures(self, m: MapMethod, batch: MapBatch, sel: Sequence[int], kind: str, error: str,
                  message: str, tb: Optional[str] = None, protocol: str = "") -> List[Dict[str, Any]]:
        """Failure records of the images at positions ``sel`` of ``batch`` for method ``m``
        (``protocol`` ``''``: its map; else that protocol on its map)."""
        ds = self.plan.dataset
        return [{"method": m.name, "image_id": batch.items[j][1].image_id, "protocol": protocol,
                 "idx": batch.items[j][0], "path": ds.rel_path(batch.items[j][1]), "kind": kind,
                 "error": error, "message": message, "traceback": tb} for j in sel]

    def _reexplain(self, m: MapMethod, family: str, forwards) -> Callable[[Tensor, Tensor], Tensor]:
        """The method's explainer on other inputs (in its classifier's normalization), timed
        and counted under ``family`` (a protocol's ``<name>_explain``)."""
        clock, bb, clf = self.clock, m.backbone, m.classifier
        same = same_normalization(bb, clf)

        def explain_fn(E: Tensor, c: Tensor) -> Tensor:
            t = clock.start()
            V = explain_checked(m, E if same else bb.normalize(clf.denormalize(E)), c)
            clock.stop(family, t)
            if m.forward_passes:
                forwards[(m.name, family)] += m.forward_passes * E.shape[0]
            return V

        return explain_fn

    def evaluate(self, m: MapMethod, p: str, maps: Maps, forwards,
                 items: Optional[Sequence[Any]] = None) -> Dict[str, Tensor]:
        """Protocol ``p``'s per-image values for one method's maps (of the ``ImageItem``s
        ``items``, when given: their ids, files and labels go to the protocol). Its forwards
        (scorer families and ``<p>_explain``) are added to ``forwards`` only when it succeeds,
        so the stored counts are those of the stored values."""
        clock, clf, scorer = self.clock, m.classifier, self.scorers[m.name]
        before = dict(scorer.counts)
        mine: Dict[Tuple[str, str], int] = defaultdict(int)
        family = f"{p}_explain"
        labels = None if items is None else torch.tensor(
            [-1 if it.label is None else int(it.label) for it in items], dtype=torch.long, device=maps.clean.c.device)
        inputs = MetricInputs(scorer=scorer, x=maps.clean.x, V=maps.V, c=maps.clean.c,
                              Y=maps.clean.Y, normalize=clf.normalize, denormalize=clf.denormalize,
                              explain_fn=self._reexplain(m, family, mine),
                              x01=maps.x01, mean_std=_mean_std(clf), classifier=clf,
                              pred=maps.clean.pred, labels=labels,
                              image_ids=None if items is None else [it.image_id for it in items],
                              paths=None if items is None else [it.path for it in items])
        w0, c0 = clock.wall.get(family, 0.0), clock.cpu.get(family, 0.0)
        t = clock.start()
        try:
            values = PROTOCOLS.get(p).evaluate(inputs, **self.plan.protocol_options[p])
        finally:
            clock.stop(f"metric/{p}", t)
            # the explainer's own time inside a protocol is accounted under <protocol>_explain
            clock.wall[f"metric/{p}"] -= clock.wall.get(family, 0.0) - w0
            clock.cpu[f"metric/{p}"] -= clock.cpu.get(family, 0.0) - c0
        for fam, cnt in scorer.counts.items():
            if cnt - before.get(fam, 0) > 0:
                mine[(m.name, fam)] += cnt - before.get(fam, 0)
        for k, n in mine.items():
            forwards[k] += n
        return values

    def rows(self, m: MapMethod, batch: MapBatch, maps: Maps,
             values: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
        """The store rows of one method's images that got values from some protocol
        (``values[r]``: image ``r`` of ``maps``; one device -> host copy per quantity);
        writes the map files the run keeps for them."""
        config, ds, out = self.config, self.plan.dataset, self.plan.out
        cl = maps.clean
        c_h, Y_h, p_h = cl.c.cpu().tolist(), cl.Y.float().cpu().tolist(), cl.pred.cpu().tolist()
        need_maps = config.save_maps or any(batch.items[j][1].image_id in self.grid_ids for j in maps.sel)
        V_h = maps.V.detach().float().cpu().numpy() if need_maps else None
        rows = []
        for r, j in enumerate(maps.sel):
            if not values[r]:
                continue  # every protocol failed on it: recorded in failures
            idx, it = batch.items[j]
            rows.append({"method": m.name, "image_id": it.image_id, "idx": idx, "path": ds.rel_path(it),
                         "label": it.label, "classifier": m.classifier_key, "pred": p_h[r], "c": c_h[r],
                         "Y": Y_h[r], "seconds": maps.seconds, **values[r]})
            if config.save_maps:
                _save_map(out, map_path(out, "maps", m.name, it.image_id), V_h[r].astype(np.float32))
            if it.image_id in self.grid_ids:
                _save_map(out, map_path(out, "grid", m.name, it.image_id), V_h[r].astype(np.float16))
        return rows


def _save_map(out: str, path: str, arr: np.ndarray) -> None:
    writing(out, f"the map {os.path.relpath(path, out)}", lambda: atomic_write(path, lambda tmp: np.save(tmp, arr)))


def finish(result: Run, echo: Echo, *, dataset: Optional[Dataset], backbone: Optional[Backbone],
           figures: bool = True, grid_images: int = 8, report: bool = False) -> None:
    """Tables, figures (the overlay grid needs ``dataset`` and ``backbone``; without them only
    the curves are drawn), with ``report`` the HTML report, and the footer
    (:func:`camzoo.engine.footer.footer`) of a finished run."""
    from ..results.tables import write_tables
    from .footer import footer

    md = writing(result.dir, "the tables", lambda: write_tables(result))
    echo(md)
    if figures:
        from ..results.plots import bench_figures

        try:
            bench_figures(result, dataset, backbone, n_images=grid_images if dataset and backbone else 0)
        except Exception as exc:  # the rows and tables are safe; the run still fails
            raise UserError(f"the tables are written, but the figures in {result.dir} failed: "
                            f"{type(exc).__name__}: {exc}") from None
    if report:
        from .report import write_report

        writing(result.dir, "report.html", lambda: write_report([result], backbone=backbone, echo=echo))
    commands = []
    if (result.config.get("bench_config") or {}).get("preset") == "quick":
        commands.append("camzoo bench --preset full --dry-run    the full protocol's plan and estimated time")
    for line in footer(result, commands):
        echo(line)
    echo(f"run directory: {result.dir}")
