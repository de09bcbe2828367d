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
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from ..data import Dataset, open_dataset
from ..metrics.protocol import PROTOCOLS, MetricInputs
from ..metrics.scorer import Scorer
from ..models import Backbone, load_backbone
from ..results.run import CONFIG_NAME, MANIFEST_NAME, TIMINGS_NAME, Run, map_path
from ..results.store import DB_NAME, ResultStore
from ..utils import atomic_write, jsonable, resolve_device
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

    ds = open_dataset(config.data, config.labels, config.limit, config.seed)
    if config.target == "gt" and not ds.has_labels:
        raise ValueError(f"target 'gt' needs ground-truth labels; data layout {ds.layout!r} has none "
                         "(use a folder with labels.csv, wnid sub-folders, or --labels FILE)")

    bb = load_backbone(config.backbone, config.weights, device)
    if config.layer is not None:
        bb.layer(config.layer)  # validates, listing the valid layers
    methods = make_methods(bb, method_names, config.options, config.layer)

    out = config.out or default_out(bb.name if isinstance(config.backbone, Backbone) else config.backbone)
    cfg_path = os.path.join(out, CONFIG_NAME)
    if os.path.exists(os.path.join(out, DB_NAME)) and not config.resume:
        raise FileExistsError(f"{out} already holds a run; pass resume=True (--resume) to continue "
                              "it, or choose another out directory")
    cfg = _config_json({"backbone": bb, "dataset": ds, "device": device, "methods": methods,
                        "protocols": protocols, "popts": popts, "out": out}, config, malloc_tuned)
    if config.resume and os.path.isfile(cfg_path):
        with open(cfg_path) as f:
            old = json.load(f)
        check_resume(old, cfg, out)
        cfg["created"] = old.get("created", cfg["created"])
        cfg["resumed"] = old.get("resumed", []) + [_dt.datetime.now().isoformat(timespec="seconds")]
    os.makedirs(out, exist_ok=True)
    atomic_write(cfg_path, json.dumps(cfg, indent=2, default=str))
    ds.write_manifest(os.path.join(out, MANIFEST_NAME))
    return Plan(config, device, bb, ds, methods, protocols, popts, out, cfg)


def run(config: BenchConfig, echo: Echo = print) -> Run:
    """Run (or resume) a benchmark; returns the finished :class:`~camzoo.results.Run`.

    The config's preset is applied first (see :mod:`camzoo.engine.config`), so
    ``run(BenchConfig())`` is what a bare ``camzoo bench`` runs. Raises ``ValueError`` for
    bad names/options (listing the valid ones), ``FileExistsError`` when ``out`` already holds
    a run and ``resume`` is False. Unreadable images do not raise: they go to the ``errors``
    table.
    """
    plan = prepare(config, echo)
    c = plan.cfg["columns"]
    with ResultStore(os.path.join(plan.out, DB_NAME), c["values"], c["curves"]) as store:
        Runner(plan, store).loop(echo)
    result = Run(plan.out)
    finish(result, plan, echo)
    return result


class Runner:
    """The batch loop of :func:`run` (state shared by the batches of one process)."""

    def __init__(self, plan: Plan, store: ResultStore) -> None:
        self.plan, self.store = plan, store
        self.config = plan.config
        self.scorers = {m.name: Scorer(m.classifier.model, self.config.eval_batch_size)
                        for m in plan.methods}
        self.clock = Clock(plan.device)
        self.bars: Dict[str, Any] = {}

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
                    rows = self.batch(batch)
                    t = self.clock.start()
                    store.write_batch(rows, batch.errors, batch.forwards)
                    self.clock.stop("store", t)
        finally:
            for b in self.bars.values():
                b.close()
        timings = {**self.clock.to_dict(), "scorer_forwards": {
            f"{m}/{f}": int(n) for m, s in self.scorers.items() for f, n in s.counts.items()}}
        atomic_write(os.path.join(plan.out, TIMINGS_NAME), json.dumps(timings, indent=2))

    def _open_bars(self, indexed, done) -> None:
        from tqdm.auto import tqdm

        for pos, m in enumerate(self.plan.methods):
            n_done = sum((m.name, it.image_id) in done for _, it in indexed)
            self.bars[m.name] = tqdm(total=len(indexed), initial=n_done, desc=f"{m.name:>16s}",
                                     unit="img", position=pos, leave=True, dynamic_ncols=True)

    def batch(self, batch: MapBatch) -> List[Dict[str, Any]]:
        """Every method's metrics on its maps of ``batch``; returns the batch's rows."""
        rows: List[Dict[str, Any]] = []
        for m, maps in batch.each_method():
            values = self.metrics(m, maps, batch.forwards)
            t = self.clock.start()
            rows += self.rows(m, batch, maps, values)
            self.clock.stop("rows", t)
            if m.name in self.bars:
                self.bars[m.name].update(len(maps.sel))
                self.bars[m.name].set_postfix_str(f"{maps.seconds:.3g} s/img map", refresh=False)
        return rows

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
                _save_map(map_path(out, "maps", m.name, it.image_id), V_h[r].astype(np.float32))
            if it.image_id in self.grid_ids:
                _save_map(map_path(out, "grid", m.name, it.image_id), V_h[r].astype(np.float16))
        return rows


def _save_map(path: str, arr: np.ndarray) -> None:
    atomic_write(path, lambda tmp: np.save(tmp, arr))


def finish(result: Run, plan: Plan, echo: Echo) -> None:
    """Tables and figures of a finished run."""
    from ..results.tables import write_tables

    md = write_tables(result)
    if plan.config.figures:
        from ..results.plots import bench_figures

        try:
            bench_figures(result, plan.dataset, plan.backbone, n_images=plan.config.grid_images)
        except Exception as exc:  # a figure must never lose a finished run
            echo(f"warning: figures failed: {type(exc).__name__}: {exc}")
    echo(md)
    echo(f"run directory: {result.dir}")
