"""The evaluation engine: every explainer x every metric protocol over a dataset, crash-safe.

``run(BenchConfig(...)) -> Run`` in three steps:

1. :func:`prepare` resolves the config (preset, names, options, data, backbone, methods) and
   writes or checks ``config.json`` -- everything that can be refused is refused here;
2. :class:`Runner` loops over the batches of :func:`camzoo.engine.maps.iterate_maps` (one
   clean forward per classifier, each method's maps once) and evaluates every selected
   protocol on those maps through one counting :class:`~camzoo.metrics.Scorer` per method;
   each batch's rows, unreadable images and forward counts go to the run's SQLite store in one
   transaction (see :mod:`camzoo.results.store`), so a killed run resumes exactly;
3. :func:`finish` writes the tables (:mod:`camzoo.results.tables`) and figures
   (:mod:`camzoo.results.plots`) into the run directory.

The engine knows no protocol by name: columns, options and shorthands come from the
protocols' own declarations. See docs/bench.md.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import platform
import sqlite3
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from ..data import Dataset, open_dataset
from ..metrics.protocol import PROTOCOLS, MetricInputs
from ..metrics.scorer import Scorer
from ..models import Backbone, load_backbone
from ..explainers.base import describe_invalid, valid_maps
from ..results.run import CONFIG_NAME, MANIFEST_NAME, TIMINGS_NAME, Run, RunLock, map_path
from ..results.store import DB_NAME, ResultStore
from ..utils import UserError, atomic_write, jsonable, resolve_device
from ..version import __version__
from .config import (FULL_HINT, BenchConfig, absolute_paths, apply_preset, check_resume,
                     default_out, protocol_options, resolve_methods, resolve_protocols)
from .maps import MAIN_VIEW, MapBatch, MapMethod, Maps, iterate_maps, make_methods, same_normalization
from .timing import Clock, tune_cpu_allocator

Echo = Callable[[str], None]


@dataclass
class Plan:
    """Everything a run needs, resolved and checked by :func:`prepare`.

    Attributes:
        config: the resolved :class:`BenchConfig` (preset applied).
        device: where the models run.
        backbone: the benchmarked :class:`~camzoo.Backbone`.
        dataset: the images.
        methods: the methods, in config order.
        protocols: protocol names, in table order.
        protocol_options: validated options per protocol.
        out: the run directory.
        cfg: the ``config.json`` written for this process.
        lock: the run directory's lock, held until the run ends.
    """

    config: BenchConfig
    device: torch.device
    backbone: Backbone
    dataset: Dataset
    methods: List[MapMethod]
    protocols: List[str]
    protocol_options: Dict[str, Dict[str, Any]]
    out: str
    cfg: Dict[str, Any]
    lock: RunLock


def _mean_std(clf: Backbone) -> Optional[Tuple[Tensor, Tensor]]:
    """``(mean, std)`` when ``clf.normalize`` is the plain per-channel ``(x - mean) / std``
    (lets the lcam protocol fuse its masking and normalization), else None."""
    return (clf.mean, clf.std) if type(clf).normalize is Backbone.normalize else None


def _columns(protocols: Sequence[str], popts: Dict[str, Dict[str, Any]]) -> Tuple[List[str], List[str]]:
    values: List[str] = []
    curves: List[str] = []
    for p in protocols:
        proto = PROTOCOLS.get(p)
        values += [k for k in proto.row_keys(**popts[p]) if k not in values]
        curves += [k for k in proto.curve_keys(**popts[p]) if k not in curves]
    return values, curves


def _config_json(plan_parts: Dict[str, Any], config: BenchConfig, malloc_tuned: bool) -> Dict[str, Any]:
    bb, ds, device = plan_parts["backbone"], plan_parts["dataset"], plan_parts["device"]
    methods, protocols, popts = plan_parts["methods"], plan_parts["protocols"], plan_parts["popts"]
    values, curves = _columns(protocols, popts)
    return {
        "camzoo_version": __version__,
        "torch_version": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch_threads": torch.get_num_threads(),
        "malloc_tuned": malloc_tuned,
        "backbone": {
            "name": bb.name if isinstance(config.backbone, Backbone) else config.backbone,
            "weights": config.weights, "weights_id": bb.weights_id,
            "layer": config.layer or bb.default_layer, "default_layer": bb.default_layer,
            "input_size": bb.input_size, "num_classes": bb.num_classes,
            "mean": bb.mean.tolist(), "std": bb.std.tolist(),
        },
        "methods": {
            m.name: {
                "class": f"{type(m.explainer).__module__}.{type(m.explainer).__qualname__}",
                "options": jsonable(m.explainer.options),
                "forward_passes": m.forward_passes,
                "classifier": {"key": m.classifier_key, "name": m.classifier.name,
                               "weights_id": m.classifier.weights_id},
            } for m in methods
        },
        "protocols": {p: {"options": jsonable(popts[p]), "source": PROTOCOLS.get(p).source}
                      for p in protocols},
        "target": config.target,
        "seed": config.seed,
        "data": {
            "root": ds.root, "layout": ds.layout, "labels_file": ds.labels_file,
            "limit": config.limit, "seed": config.seed, "n_images": len(ds),
            "manifest": MANIFEST_NAME, "manifest_hash": ds.manifest_hash(),
        },
        "columns": {"values": values, "curves": curves},
        "bench_config": absolute_paths(config.to_dict(), plan_parts["out"]),
        "created": _dt.datetime.now().isoformat(timespec="seconds"),
    }


def prepare(config: BenchConfig, echo: Echo = print) -> Plan:
    """Resolve and check ``config``, then write (or, resuming, check) ``config.json``.

    Raises ``ValueError`` for bad names/options (listing the valid ones), ``FileExistsError``
    when ``out`` already holds a run and ``resume`` is False.
    """
    config, picked = apply_preset(config)
    if picked:
        echo(f"{config.preset} preset: " + " ".join(picked))
        echo(FULL_HINT)
    if config.target not in ("pred", "gt"):
        raise ValueError(f"target must be 'pred' or 'gt'; got {config.target!r}")
    if int(config.batch_size) < 1 or int(config.eval_batch_size) < 1:
        raise ValueError("batch_size and eval_batch_size must be >= 1")
    device = resolve_device(config.device)
    malloc_tuned = bool(config.tune_malloc and device.type == "cpu" and tune_cpu_allocator())
    protocols = resolve_protocols(config.metrics)
    method_names = resolve_methods(config.methods, config.options)
    unknown_opts = sorted(set(config.options) - set(method_names))
    if unknown_opts:
        raise ValueError(f"options given for method(s) not in this run: {', '.join(unknown_opts)}; "
                         f"methods: {', '.join(method_names)}")
    popts = protocol_options(config, protocols)
    if config.limit is not None and int(config.limit) < 1:
        raise ValueError(f"--limit {config.limit}: nothing to evaluate; give a number of images "
                         ">= 1, or no --limit for all of them")
    if int(config.max_failed_batches) < 1:
        raise ValueError(f"max_failed_batches must be >= 1; got {config.max_failed_batches}")

    ds = open_dataset(config.data, config.labels, config.limit, config.seed)
    if config.target == "gt" and not ds.has_labels:
        raise ValueError(f"target 'gt' needs ground-truth labels; data layout {ds.layout!r} has none "
                         "(use a folder with labels.csv, wnid sub-folders, or --labels FILE)")

    bb = load_backbone(config.backbone, config.weights, device)
    if config.layer is not None:
        bb.layer(config.layer)  # validates, listing the valid layers
    if config.target == "gt":
        _check_labels(ds, bb)
    for p in protocols:
        PROTOCOLS.get(p).check_backbone(popts[p], bb)
    methods = make_methods(bb, method_names, config.options, config.layer)
    if ds.unlisted:
        echo(f"warning: {len(ds.unlisted)} image(s) in {ds.root} are not listed in "
             f"{ds.labels_file} and are not evaluated: {', '.join(ds.unlisted[:5])}"
             + (", ..." if len(ds.unlisted) > 5 else ""))

    out = config.out or default_out(bb.name if isinstance(config.backbone, Backbone) else config.backbone)
    cfg_path = os.path.join(out, CONFIG_NAME)
    if os.path.exists(os.path.join(out, DB_NAME)) and not config.resume:
        raise FileExistsError(f"{out} already holds a run; pass resume=True (--resume) to continue "
                              "it, or choose another out directory")
    cfg = _config_json({"backbone": bb, "dataset": ds, "device": device, "methods": methods,
                        "protocols": protocols, "popts": popts, "out": out}, config, malloc_tuned)
    # everything above can be refused without a trace; from here on the run directory is ours
    _writing(out, "the run directory", lambda: os.makedirs(out, exist_ok=True))
    lock = RunLock(out).acquire()
    try:
        if config.resume and os.path.isfile(cfg_path):
            with open(cfg_path) as f:
                old = json.load(f)
            cfg["methods"] = check_resume(old, cfg, out)
            # a resume of some methods keeps the run's method list for the next resume
            cfg["bench_config"]["methods"] = ",".join(cfg["methods"])
            cfg["created"] = old.get("created", cfg["created"])
            cfg["resumed"] = old.get("resumed", []) + [_dt.datetime.now().isoformat(timespec="seconds")]
        _writing(out, "config.json", lambda: atomic_write(cfg_path, json.dumps(cfg, indent=2, default=str)))
        _writing(out, "manifest.csv", lambda: ds.write_manifest(os.path.join(out, MANIFEST_NAME)))
    except BaseException:
        lock.release()
        raise
    return Plan(config, device, bb, ds, methods, protocols, popts, out, cfg, lock)


def _check_labels(ds: Dataset, bb: Backbone) -> None:
    """Every ground-truth label must be a class of ``bb`` (refused with the file and line)."""
    bad = [it for it in ds.items if it.label is not None and not 0 <= int(it.label) < bb.num_classes]
    if bad:
        it = bad[0]
        raise ValueError(f"{it.where or it.image_id}: class_index {it.label} of {it.image_id!r} is "
                         f"outside the {bb.num_classes} classes of {bb.name} (valid 0.."
                         f"{bb.num_classes - 1}); {len(bad)} label(s) like it")


def _writing(out: str, what: str, write: Callable[[], Any]) -> Any:
    """Run ``write``; an OS or SQLite error (a full disk, no permission) becomes one
    :class:`~camzoo.utils.UserError` naming the directory and what failed."""
    try:
        return write()
    except (OSError, sqlite3.OperationalError) as exc:  # not IntegrityError: that is a bug
        raise UserError(f"cannot write {what} in {out}: {type(exc).__name__}: {exc}. Every batch "
                        f"stored before this one is kept: free space (or fix the permissions) and "
                        f"rerun with --resume --out {out}") from None


def run(config: BenchConfig, echo: Echo = print) -> Run:
    """Run (or resume) a benchmark; returns the finished :class:`~camzoo.results.Run`.

    The config's preset is applied first (see :mod:`camzoo.engine.config`), so
    ``run(BenchConfig())`` is what a bare ``camzoo bench`` runs. Raises ``ValueError`` for
    bad names/options (listing the valid ones), ``FileExistsError`` when ``out`` already holds
    a run and ``resume`` is False. Unreadable images do not raise: they go to the ``errors``
    table.
    """
    plan = prepare(config, echo)
    try:
        c = plan.cfg["columns"]
        store = _writing(plan.out, "the result store",
                         lambda: ResultStore(os.path.join(plan.out, DB_NAME), c["values"], c["curves"]))
        with store:
            Runner(plan, store).loop(echo)
        result = Run(plan.out)
        finish(result, plan, echo)
    finally:
        plan.lock.release()
    return result


@dataclass
class _Health:
    """How one method fares in this process (for stopping a method that always fails)."""

    batches: int = 0
    failed: int = 0
    stopped: bool = False
    last_error: str = ""


class Runner:
    """The batch loop of :func:`run` (state shared by the batches of one process).

    Each method is isolated: an exception of its explainer or of a metric on its maps is
    recorded for the (method, image) pairs of that batch in the store's ``failures`` table and
    the other methods go on; a map that is not finite or not in [0,1] is recorded as
    ``invalid`` and never scored; a method that fails on each of its first
    ``config.max_failed_batches`` batches is stopped (its other images recorded as ``skipped``).
    """

    def __init__(self, plan: Plan, store: ResultStore) -> None:
        self.plan, self.store = plan, store
        self.config = plan.config
        self.scorers = {m.name: Scorer(m.classifier.model, self.config.eval_batch_size)
                        for m in plan.methods}
        self.clock = Clock(plan.device)
        self.bars: Dict[str, Any] = {}
        self.health = {m.name: _Health() for m in plan.methods}

    def loop(self, echo: Echo) -> None:
        """Evaluate every pending (method, image) pair; write ``timings.json``."""
        plan, store, config = self.plan, self.store, self.config
        done = store.done_pairs()
        known_errors = store.error_ids()
        indexed = [(i, it) for i, it in enumerate(plan.dataset.items) if it.image_id not in known_errors]
        pending = [(i, it) for i, it in indexed
                   if any((m.name, it.image_id) not in done for m in plan.methods)]
        self.grid_ids = {it.image_id for _, it in indexed[: max(0, int(config.grid_images))]}
        if pending:
            echo(f"bench: {len(plan.methods)} method(s) x {len(pending)} image(s) to do "
                 f"({len(indexed) - len(pending)} done, {len(known_errors)} unreadable) -> {plan.out}")
        if config.progress:
            self._open_bars(indexed, done)
        batches = iterate_maps(plan.dataset, pending, plan.methods, views={MAIN_VIEW: plan.backbone},
                               batch_size=int(config.batch_size), target=config.target, done=done,
                               clock=self.clock, warmup=True)
        try:
            with contextlib.closing(batches):
                for batch in batches:
                    for e in batch.errors:
                        echo(f"error: {e[3]}")
                        for b in self.bars.values():
                            b.total -= 1
                            b.refresh()
                    rows, fails = self.batch(batch, echo)
                    t = self.clock.start()
                    _writing(plan.out, "the result store (rows.sqlite)",
                             lambda: store.write_batch(rows, batch.errors, batch.forwards, fails))
                    self.clock.stop("store", t)
        finally:
            for b in self.bars.values():
                b.close()
        timings = {**self.clock.to_dict(), "scorer_forwards": {
            f"{m}/{f}": int(n) for m, s in self.scorers.items() for f, n in s.counts.items()}}
        _writing(plan.out, "timings.json",
                 lambda: atomic_write(os.path.join(plan.out, TIMINGS_NAME), json.dumps(timings, indent=2)))

    def _open_bars(self, indexed, done) -> None:
        from tqdm.auto import tqdm

        for pos, m in enumerate(self.plan.methods):
            n_done = sum((m.name, it.image_id) in done for _, it in indexed)
            self.bars[m.name] = tqdm(total=len(indexed), initial=n_done, desc=f"{m.name:>16s}",
                                     unit="img", position=pos, leave=True, dynamic_ncols=True)

    def batch(self, batch: MapBatch, echo: Echo = print) -> Tuple[List[Dict[str, Any]], List[Dict[str, Any]]]:
        """Every method's maps and metrics on ``batch``, each method isolated from the others.

        Returns:
            ``(rows, failures)`` for the store.
        """
        rows: List[Dict[str, Any]] = []
        fails: List[Dict[str, Any]] = []
        for m in self.plan.methods:
            sel = batch.pending(m)
            if not sel:
                continue
            h = self.health[m.name]
            if h.stopped:
                fails += self._failures(m, batch, sel, "skipped", "Stopped", h.last_error)
                self._advance(m, len(sel))
                continue
            h.batches += 1
            failed = True
            try:
                maps = batch.maps_of(m)
                ok = valid_maps(maps.V)
                for r in (~ok).nonzero()[:, 0].tolist():
                    fails += self._failures(m, batch, [maps.sel[r]], "invalid", "InvalidMap",
                                            describe_invalid(maps.V[r]))
                if bool(ok.any()):
                    good = maps if bool(ok.all()) else maps.take(ok)
                    values = self.metrics(m, good, batch.forwards)
                    t = self.clock.start()
                    rows += self.rows(m, batch, good, values)
                    self.clock.stop("rows", t)
                    failed = False
                    if m.name in self.bars:
                        self.bars[m.name].set_postfix_str(f"{maps.seconds:.3g} s/img map", refresh=False)
                else:
                    h.last_error = "every map of the batch was invalid"
            except UserError:
                raise  # the run cannot go on (e.g. a full disk): not this method's fault
            except Exception as exc:
                h.last_error = f"{type(exc).__name__}: {exc}"
                fails += self._failures(m, batch, sel, "error", type(exc).__name__, str(exc),
                                        traceback.format_exc())
            h.failed += failed
            if h.failed == h.batches == int(self.config.max_failed_batches):
                h.stopped = True
                h.last_error = (f"{m.name} was stopped after failing on each of its first "
                                f"{h.batches} batches (last: {h.last_error})")
                echo(f"error: {h.last_error}; its other images are skipped (see `camzoo errors "
                     f"{self.plan.out}`; fix it and rerun with --resume)")
            self._advance(m, len(sel))
        return rows, fails

    def _advance(self, m: MapMethod, n: int) -> None:
        if m.name in self.bars:
            self.bars[m.name].update(n)

    def _failures(self, m: MapMethod, batch: MapBatch, sel: Sequence[int], kind: str, error: str,
                  message: str, tb: Optional[str] = None) -> List[Dict[str, Any]]:
        """Failure records of the images at positions ``sel`` of ``batch`` for method ``m``."""
        ds = self.plan.dataset
        return [{"method": m.name, "image_id": batch.items[j][1].image_id, "idx": batch.items[j][0],
                 "path": ds.rel_path(batch.items[j][1]), "kind": kind, "error": error,
                 "message": message, "traceback": tb} for j in sel]

    def _reexplain(self, m: MapMethod, family: str, forwards) -> Callable[[Tensor, Tensor], Tensor]:
        """The method's explainer on other inputs (in its classifier's normalization), timed
        and counted under ``family`` (a protocol's ``<name>_explain``)."""
        clock, bb, clf = self.clock, m.backbone, m.classifier
        same = same_normalization(bb, clf)

        def explain_fn(E: Tensor, c: Tensor) -> Tensor:
            t = clock.start()
            V = m.explainer.explain(bb, E if same else bb.normalize(clf.denormalize(E)), c)
            clock.stop(family, t)
            if m.forward_passes:
                forwards[(m.name, family)] += m.forward_passes * E.shape[0]
            return V

        return explain_fn

    def metrics(self, m: MapMethod, maps: Maps, forwards) -> Dict[str, Tensor]:
        """Every protocol's per-image values for one method's maps (forwards counted)."""
        clock, clf, scorer = self.clock, m.classifier, self.scorers[m.name]
        before = dict(scorer.counts)
        values: Dict[str, Tensor] = {}
        for p in self.plan.protocols:
            family = f"{p}_explain"
            inputs = MetricInputs(scorer=scorer, x=maps.clean.x, V=maps.V, c=maps.clean.c,
                                  Y=maps.clean.Y, normalize=clf.normalize,
                                  denormalize=clf.denormalize,
                                  explain_fn=self._reexplain(m, family, forwards),
                                  x01=maps.x01, mean_std=_mean_std(clf), classifier=clf)
            w0, c0 = clock.wall.get(family, 0.0), clock.cpu.get(family, 0.0)
            t = clock.start()
            values.update(PROTOCOLS.get(p).evaluate(inputs, **self.plan.protocol_options[p]))
            clock.stop(f"metric/{p}", t)
            # the explainer's own time inside a protocol is accounted under <protocol>_explain
            clock.wall[f"metric/{p}"] -= clock.wall.get(family, 0.0) - w0
            clock.cpu[f"metric/{p}"] -= clock.cpu.get(family, 0.0) - c0
        for fam, cnt in scorer.counts.items():
            if cnt - before.get(fam, 0) > 0:
                forwards[(m.name, fam)] += cnt - before.get(fam, 0)
        return values

    def rows(self, m: MapMethod, batch: MapBatch, maps: Maps,
             values: Dict[str, Tensor]) -> List[Dict[str, Any]]:
        """The store rows of one method's images (one device -> host copy per quantity);
        writes the map files the run keeps."""
        config, ds, out = self.config, self.plan.dataset, self.plan.out
        host = {k: v.detach().float().cpu().numpy() for k, v in values.items()}
        cl = maps.clean
        c_h, Y_h, p_h = cl.c.cpu().tolist(), cl.Y.float().cpu().tolist(), cl.pred.cpu().tolist()
        need_maps = config.save_maps or any(batch.items[j][1].image_id in self.grid_ids for j in maps.sel)
        V_h = maps.V.detach().float().cpu().numpy() if need_maps else None
        rows = []
        for r, j in enumerate(maps.sel):
            idx, it = batch.items[j]
            row = {"method": m.name, "image_id": it.image_id, "idx": idx, "path": ds.rel_path(it),
                   "label": it.label, "classifier": m.classifier_key, "pred": p_h[r], "c": c_h[r],
                   "Y": Y_h[r], "seconds": maps.seconds}
            for k, arr in host.items():
                row[k] = arr[r] if arr.ndim > 1 else float(arr[r])
            rows.append(row)
            if config.save_maps:
                _save_map(out, map_path(out, "maps", m.name, it.image_id), V_h[r].astype(np.float32))
            if it.image_id in self.grid_ids:
                _save_map(out, map_path(out, "grid", m.name, it.image_id), V_h[r].astype(np.float16))
        return rows


def _save_map(out: str, path: str, arr: np.ndarray) -> None:
    _writing(out, f"the map {os.path.relpath(path, out)}", lambda: atomic_write(path, lambda tmp: np.save(tmp, arr)))


def finish(result: Run, plan: Plan, echo: Echo) -> None:
    """Tables and figures of a finished run."""
    from ..results.tables import write_tables

    md = _writing(result.dir, "the tables", lambda: write_tables(result))
    echo(md)
    echo(f"run directory: {result.dir}")
    if plan.config.figures:
        from ..results.plots import bench_figures

        try:
            bench_figures(result, plan.dataset, plan.backbone, n_images=plan.config.grid_images)
        except Exception as exc:  # the rows and tables are safe; the run still fails
            raise UserError(f"the tables are written, but the figures in {result.dir} failed: "
                            f"{type(exc).__name__}: {exc}") from None
