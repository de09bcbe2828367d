"""The evaluation engine: every explainer x every metric protocol over a dataset, crash-safe.

``run(BenchConfig(...)) -> Run``. For each batch of images:

1. one clean forward per evaluated classifier gives ``Y`` (softmax prob of ``c``) and ``c``
   (its top-1, or the ground truth with ``target="gt"``) for every method and metric;
2. each method makes its maps once (timed per image, CUDA synchronized);
3. every selected protocol (:data:`camzoo.metrics.PROTOCOLS`) evaluates those maps through
   one counting :class:`~camzoo.metrics.Scorer` per method, which packs the perturbed inputs
   of all images and steps into forwards of ``eval_batch_size``;
4. the batch's rows, unreadable images and forward counts are written to the run's SQLite
   store in one transaction (see :mod:`camzoo.store`), so a killed run resumes exactly.

At the end the tables (:mod:`camzoo.tables`) and figures (:mod:`camzoo.plots`) are written
into the run directory. See docs/bench.md.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import importlib
import json
import os
import platform
import queue
import sys
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from .backbones import Backbone, load_backbone
from .data import Dataset, ImageItem, open_dataset
from .explainers import EXPLAINERS, Explainer, get_explainer
from .images import ImageReadError
from .store import DB_NAME, ResultStore

ALL_PROTOCOLS = ("lcam", "adcc", "rise")
CONFIG_NAME = "config.json"
MANIFEST_NAME = "manifest.csv"
TIMINGS_NAME = "timings.json"
#: the shared clean forward of the benchmarked backbone is counted under this method name
CLEAN_METHOD = "*"


@dataclass
class BenchConfig:
    """Everything a bench run depends on (the CLI maps its options onto these fields).

    Attributes:
        backbone: backbone name (``camzoo list``), ``timm:<model>``, ``py:module:function``
            (a callable returning a :class:`~camzoo.Backbone`, e.g.
            ``py:camzoo.testing:tiny_backbone``), or a Backbone object (Python API only;
            config.json then records its ``name`` and ``weights_id``).
        weights: state_dict file, ``"random"``, or ``None`` (the backbone's default weights).
        layer: explanation layer for every method with a ``layer`` option (None = default).
        methods: ``"all"`` or names. ``"all"`` = every registered explainer whose class has
            ``needs_checkpoint == False``, plus learned ones given ``options[m]["checkpoint"]``.
        options: per-method explainer options, ``{"rise": {"n_masks": 8000}}``.
        metrics: ``"all"`` or protocol names among ``lcam``, ``adcc``, ``rise``.
        metric_options: per-protocol options, ``{"lcam": {"nus": [1.0, 0.5]}}``.
        data, labels: see :func:`camzoo.data.open_dataset` (``None`` = the sample photos).
        limit, seed: deterministic subset of the data (see :func:`camzoo.data.subset`).
        steps: insertion/deletion steps (``rise`` protocol); None = the protocol's 224.
        batch_size: images per engine batch (maps are made per batch).
        eval_batch_size: perturbed images per metric forward.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``...; None = CUDA when available.
        out: run directory; None = ``results/<backbone>-<timestamp>``.
        resume: continue an existing run directory (skip stored (method, image) pairs).
        save_maps: also write ``maps/<method>/<image_id>.npy`` (float32 ``[H,W]``).
        target: ``"pred"`` (the classifier's top-1) or ``"gt"`` (the data's labels).
        grid_images: images shown in the overlay grid figure.
        figures: write the figures at the end.
        progress: show tqdm bars (one per method).
        tune_malloc: on CPU, keep freed memory in glibc's heap (:func:`tune_cpu_allocator`).
    """

    backbone: Union[str, Backbone] = "efficientnet_lite0"
    weights: Optional[str] = None
    layer: Optional[str] = None
    methods: Union[str, Sequence[str]] = "all"
    options: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    metrics: Union[str, Sequence[str]] = "all"
    metric_options: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    data: Optional[str] = None
    labels: Optional[str] = None
    limit: Optional[int] = None
    seed: int = 0
    steps: Optional[int] = None
    batch_size: int = 16
    eval_batch_size: int = 64
    device: Optional[str] = None
    out: Optional[str] = None
    resume: bool = False
    save_maps: bool = False
    target: str = "pred"
    grid_images: int = 4
    figures: bool = True
    progress: bool = True
    tune_malloc: bool = True

    def to_dict(self) -> Dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if isinstance(d["backbone"], Backbone):
            d["backbone"] = f"<object:{d['backbone'].name}>"
        d["methods"] = d["methods"] if isinstance(d["methods"], str) else list(d["methods"])
        d["metrics"] = d["metrics"] if isinstance(d["metrics"], str) else list(d["metrics"])
        return _jsonable(d)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "BenchConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# -- small helpers ---------------------------------------------------------------------------
def _jsonable(obj: Any) -> Any:
    """JSON round trip (tuples -> lists, unknown objects -> str) for stable comparisons."""
    return json.loads(json.dumps(obj, default=str, sort_keys=True))


def _split(v: Union[str, Sequence[str]]) -> List[str]:
    if isinstance(v, str):
        return [p.strip() for p in v.split(",") if p.strip()]
    return [str(p) for p in v]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _atomic_write(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _save_npy(path: str, arr: np.ndarray) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp.npy"
    np.save(tmp, arr)
    os.replace(tmp, path)


def tune_cpu_allocator() -> bool:
    """Stop glibc from returning large blocks to the OS after every free (Linux only).

    By default glibc serves every allocation above its mmap threshold (at most 32 MB) with a
    fresh ``mmap`` and unmaps it on free, so each CPU forward of a large batch page-faults its
    activations in again: measured on Lite0 at batch 64, ~20 ms/image of system time on top of
    ~30 ms/image of compute. Raising ``M_MMAP_THRESHOLD`` and ``M_TRIM_THRESHOLD`` keeps the
    freed memory in the heap for the next forward (peak memory is kept, not returned).
    Process-wide; :func:`run` calls it for CPU runs (``BenchConfig.tune_malloc``).

    Returns:
        True when both settings were accepted.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return (libc.mallopt(m_mmap_threshold, 1 << 30) == 1
                and libc.mallopt(m_trim_threshold, (1 << 31) - 1) == 1)
    except (OSError, AttributeError):  # not glibc
        return False


def resolve_device(device: Optional[str]) -> torch.device:
    """``None`` -> CUDA when available, else CPU; otherwise ``torch.device(device)``."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available; use --device cpu")
    return dev


def build_backbone(name: Union[str, Backbone], weights: Optional[str], device: torch.device) -> Backbone:
    """:func:`camzoo.load_backbone`, plus ``py:module:function`` for user-made backbones
    (a :class:`Backbone` object is moved to ``device`` and used as is)."""
    if isinstance(name, Backbone):
        return name.to(device)
    if name.startswith("py:"):
        spec = name[3:]
        if ":" not in spec:
            raise ValueError(f"--backbone {name!r}: expected py:module:function")
        mod, fn = spec.rsplit(":", 1)
        factory = getattr(importlib.import_module(mod), fn)
        bb = factory() if weights is None else factory(weights=weights)
        if not isinstance(bb, Backbone):
            raise ValueError(f"{name} returned {type(bb).__name__}, not a camzoo Backbone")
        return bb.to(device)
    return load_backbone(name, weights=weights, device=device)


def resolve_methods(methods: Union[str, Sequence[str]], options: Dict[str, Dict[str, Any]]) -> List[str]:
    """Method names of a config: ``"all"`` expands as documented in :class:`BenchConfig`."""
    names = _split(methods)
    if names == ["all"]:
        out = []
        for n in EXPLAINERS.names():
            cls = EXPLAINERS.get(n)
            if not getattr(cls, "needs_checkpoint", False) or options.get(n, {}).get("checkpoint"):
                out.append(n)
        return out
    if not names:
        raise ValueError("no methods given; use 'all' or names from: " + ", ".join(EXPLAINERS.names()))
    for n in names:
        EXPLAINERS.get(n)  # unknown names raise, listing the valid ones
    if len(set(names)) != len(names):
        raise ValueError(f"methods listed twice: {names}")
    return names


def resolve_protocols(metrics: Union[str, Sequence[str]]) -> List[str]:
    """Protocol names of a config (``"all"`` = lcam, adcc, rise), validated."""
    from .metrics import PROTOCOLS

    names = _split(metrics)
    if names == ["all"]:
        return list(ALL_PROTOCOLS)
    if not names:
        raise ValueError(f"no metrics given; valid: all, {', '.join(PROTOCOLS.names())}")
    for n in names:
        PROTOCOLS.get(n)
    return list(dict.fromkeys(names))


def default_out(backbone: str) -> str:
    """``results/<backbone>-<YYYYmmdd-HHMMSS>`` (``:`` and ``/`` in the name become ``_``)."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    safe = backbone.replace(":", "_").replace("/", "_")
    return os.path.join("results", f"{safe}-{stamp}")


def _classifier_key(method: str, bb: Backbone, ev: Backbone) -> str:
    return "backbone" if ev is bb else f"{method}:{ev.name}"


def _mean_std(clf: Backbone) -> Optional[Tuple[Tensor, Tensor]]:
    """``(mean, std)`` when ``clf.normalize`` is the plain per-channel ``(x - mean) / std``
    (lets the lcam protocol fuse its masking and normalization), else None."""
    return (clf.mean, clf.std) if type(clf).normalize is Backbone.normalize else None


def _same_normalization(a: Backbone, b: Backbone) -> bool:
    return a is b or (torch.equal(a.mean.cpu(), b.mean.cpu()) and torch.equal(a.std.cpu(), b.std.cpu()))


# -- the prepared run ------------------------------------------------------------------------
@dataclass
class _Method:
    name: str
    explainer: Explainer
    classifier: Backbone
    classifier_key: str
    forward_passes: int
    warm: bool = False


class Run:
    """A run directory: its config, result store and derived tables.

    Attributes:
        dir: the run directory.
        config: the parsed ``config.json``.
        store: the :class:`~camzoo.store.ResultStore` of ``rows.sqlite``.
        timings: engine seconds per part of the last (resumed) process (``timings.json``).
    """

    def __init__(self, path: str) -> None:
        self.dir = os.fspath(path)
        cfg = os.path.join(self.dir, CONFIG_NAME)
        if not os.path.isfile(cfg):
            raise FileNotFoundError(f"{self.dir} is not a camzoo run (no {CONFIG_NAME})")
        with open(cfg) as f:
            self.config: Dict[str, Any] = json.load(f)
        self.store = ResultStore(os.path.join(self.dir, DB_NAME))
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

    def table(self) -> pd.DataFrame:
        """The summary table (one row per method), see :func:`camzoo.tables.summary`."""
        from .tables import summary

        return summary(self).df

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> "Run":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _absolute_paths(d: Dict[str, Any], out: str) -> Dict[str, Any]:
    """``bench_config`` with data / labels / weights / out as absolute paths (resume from anywhere)."""
    d = dict(d)
    d["out"] = os.path.abspath(out)
    for k in ("data", "labels", "weights"):
        if isinstance(d.get(k), str) and os.path.exists(d[k]):
            d[k] = os.path.abspath(d[k])
    return d


def _config_identity(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """The parts of ``config.json`` a resumed run must share with the stored one."""
    return _jsonable({
        "backbone": {k: cfg["backbone"][k] for k in ("name", "weights_id", "layer")},
        "methods": {m: {"options": v["options"], "classifier": v["classifier"]}
                    for m, v in cfg["methods"].items()},
        "protocols": cfg["protocols"],
        "target": cfg["target"],
        "data": {k: cfg["data"][k] for k in ("manifest_hash", "n_images")},
    })


def _diff(a: Any, b: Any, prefix: str = "") -> List[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else str(k))
        return out
    return [] if a == b else [f"{prefix}: stored {a!r}, now {b!r}"]


class _Prefetcher:
    """Loads and preprocesses the next batches in a background thread (PIL decoding releases
    the GIL), yielding ``(items, x [B,3,H,W] CPU, errors)`` in manifest order."""

    def __init__(self, ds: Dataset, items: List[Tuple[int, ImageItem]], preprocess: Callable,
                 batch_size: int, depth: int = 2) -> None:
        self.q: "queue.Queue" = queue.Queue(maxsize=depth)
        self.stop = threading.Event()
        self.t = threading.Thread(target=self._work, args=(ds, items, preprocess, batch_size),
                                  daemon=True)
        self.t.start()

    def _work(self, ds, items, preprocess, batch_size) -> None:
        try:
            good: List[Tuple[int, ImageItem]] = []
            xs: List[Tensor] = []
            errs: List[Tuple[str, int, str, str]] = []
            for idx, it in items:
                if self.stop.is_set():
                    return
                try:
                    xs.append(preprocess(ds.load(it)))
                    good.append((idx, it))
                except ImageReadError as exc:
                    errs.append((it.image_id, idx, ds.rel_path(it), str(exc)))
                if len(good) == batch_size:
                    self._put((good, torch.stack(xs), errs))
                    good, xs, errs = [], [], []
            if good or errs:
                self._put((good, torch.stack(xs) if xs else None, errs))
            self._put(None)
        except BaseException as exc:  # re-raised in the main thread
            self._put(exc)

    def _put(self, obj) -> None:
        while not self.stop.is_set():
            try:
                self.q.put(obj, timeout=0.2)
                return
            except queue.Full:
                continue

    def __iter__(self):
        while True:
            obj = self.q.get()
            if obj is None:
                return
            if isinstance(obj, BaseException):
                raise obj
            yield obj

    def close(self) -> None:
        self.stop.set()


def _prepare(config: BenchConfig, echo: Callable[[str], None]):
    """Build everything a run needs and write / check ``config.json``."""
    import camzoo
    from .metrics import PROTOCOLS

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
    popts: Dict[str, Dict[str, Any]] = {}
    for p in protocols:
        o = dict(config.metric_options.get(p, {}))
        if p == "rise" and config.steps is not None:
            o["steps"] = int(config.steps)
        popts[p] = PROTOCOLS.get(p).options(**o)  # validates, fills defaults
    bad = sorted(set(config.metric_options) - set(protocols))
    if bad:
        raise ValueError(f"metric options given for protocol(s) not in this run: {', '.join(bad)}")

    ds = open_dataset(config.data, config.labels, config.limit, config.seed)
    if config.target == "gt" and not ds.has_labels:
        raise ValueError(f"target 'gt' needs ground-truth labels; data layout {ds.layout!r} has none "
                         "(use a folder with labels.csv, wnid sub-folders, or --labels FILE)")

    bb = build_backbone(config.backbone, config.weights, device)
    if config.layer is not None:
        bb.layer(config.layer)  # validates, listing the valid layers
    methods: List[_Method] = []
    for m in method_names:
        opts = dict(config.options.get(m, {}))
        cls = EXPLAINERS.get(m)
        if config.layer is not None and "layer" in getattr(cls, "defaults", {}) and "layer" not in opts:
            opts["layer"] = config.layer
        ex = get_explainer(m, **opts)
        ev = ex.evaluated_backbone(bb)
        if ev is not bb:
            ev.to(device)
        methods.append(_Method(m, ex, ev, _classifier_key(m, bb, ev), int(ex.forward_passes(bb))))

    out = config.out or default_out(bb.name if isinstance(config.backbone, Backbone) else config.backbone)
    db = os.path.join(out, DB_NAME)
    cfg_path = os.path.join(out, CONFIG_NAME)
    if os.path.exists(db) and not config.resume:
        raise FileExistsError(f"{out} already holds a run; pass resume=True (--resume) to continue "
                              "it, or choose another out directory")
    os.makedirs(out, exist_ok=True)

    value_cols: List[str] = []
    curve_cols: List[str] = []
    for p in protocols:
        proto = PROTOCOLS.get(p)
        value_cols += [k for k in proto.row_keys(**popts[p]) if k not in value_cols]
        curve_cols += [k for k in proto.curve_keys(**popts[p]) if k not in curve_cols]

    cfg = {
        "camzoo_version": camzoo.__version__,
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
                "options": _jsonable(m.explainer.options),
                "forward_passes": m.forward_passes,
                "classifier": {"key": m.classifier_key, "name": m.classifier.name,
                               "weights_id": m.classifier.weights_id},
            } for m in methods
        },
        "protocols": {p: {"options": _jsonable(popts[p]), "source": PROTOCOLS.get(p).source}
                      for p in protocols},
        "target": config.target,
        "seed": config.seed,
        "data": {
            "root": ds.root, "layout": ds.layout, "labels_file": ds.labels_file,
            "limit": config.limit, "seed": config.seed, "n_images": len(ds),
            "manifest": MANIFEST_NAME, "manifest_hash": ds.manifest_hash(),
        },
        "columns": {"values": value_cols, "curves": curve_cols},
        "bench_config": _absolute_paths(config.to_dict(), out),
        "created": _dt.datetime.now().isoformat(timespec="seconds"),
    }
    if config.resume and os.path.isfile(cfg_path):
        with open(cfg_path) as f:
            old = json.load(f)
        diffs = _diff(_config_identity(old), _config_identity(cfg))
        if diffs:
            raise ValueError(f"cannot resume {out}: the run differs from the stored one:\n  "
                             + "\n  ".join(diffs))
        cfg["created"] = old.get("created", cfg["created"])
        cfg["resumed"] = old.get("resumed", []) + [_dt.datetime.now().isoformat(timespec="seconds")]
    _atomic_write(cfg_path, json.dumps(cfg, indent=2, default=str))
    ds.write_manifest(os.path.join(out, MANIFEST_NAME))
    store = ResultStore(db, value_cols, curve_cols)
    return device, bb, ds, methods, protocols, popts, out, store, cfg


#: methods needing at most this many forwards per map get one untimed warm-up call, so that
#: first-call costs (lazy imports, autograd / allocator set-up) stay out of s/img
WARMUP_MAX_FORWARDS = 16


class _Clock:
    """Accumulates wall-clock and process-CPU seconds per named part of the engine."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.wall: Dict[str, float] = defaultdict(float)
        self.cpu: Dict[str, float] = defaultdict(float)

    def start(self) -> Tuple[float, float]:
        _sync(self.device)
        return time.perf_counter(), time.process_time()

    def stop(self, key: str, t0: Tuple[float, float]) -> float:
        """Add the time since ``t0`` to ``key``; return the wall seconds."""
        _sync(self.device)
        w = time.perf_counter() - t0[0]
        self.wall[key] += w
        self.cpu[key] += time.process_time() - t0[1]
        return w

    def to_dict(self) -> Dict[str, Dict[str, float]]:
        return {"wall_s": dict(self.wall), "cpu_s": dict(self.cpu)}


def run(config: BenchConfig, echo: Callable[[str], None] = print) -> Run:
    """Run (or resume) a benchmark; returns the finished :class:`Run`.

    Raises ``ValueError`` for bad names/options (listing the valid ones), ``FileExistsError``
    when ``out`` already holds a run and ``resume`` is False. Unreadable images do not raise:
    they go to the ``errors`` table.
    """
    device, bb, ds, methods, protocols, popts, out, store, cfg = _prepare(config, echo)
    engine = _Engine(config, device, bb, ds, methods, protocols, popts, out, store)
    try:
        engine.loop(echo)
    finally:
        store.close()
    result = Run(out)
    _finish(result, ds, bb, config, echo)
    return result


class _Engine:
    """The batch loop of :func:`run` (state shared by the batches of one process)."""

    def __init__(self, config, device, bb, ds, methods, protocols, popts, out, store) -> None:
        from .metrics import Scorer

        self.config, self.device, self.bb, self.ds = config, device, bb, ds
        self.methods: List[_Method] = methods
        self.protocols, self.popts, self.out, self.store = protocols, popts, out, store
        self.scorers = {m.name: Scorer(m.classifier.model, config.eval_batch_size) for m in methods}
        self.classifiers: Dict[str, Backbone] = {}
        for m in methods:
            self.classifiers.setdefault(m.classifier_key, m.classifier)
        self.clock = _Clock(device)
        self.bars: Dict[str, Any] = {}

    def loop(self, echo) -> None:
        config, ds, methods, store = self.config, self.ds, self.methods, self.store
        self.done = store.done_pairs()
        known_errors = store.error_ids()
        indexed = [(i, it) for i, it in enumerate(ds.items) if it.image_id not in known_errors]
        pending = [(i, it) for i, it in indexed
                   if any((m.name, it.image_id) not in self.done for m in methods)]
        self.grid_ids = {it.image_id for _, it in indexed[: max(0, int(config.grid_images))]}
        if pending:
            echo(f"bench: {len(methods)} method(s) x {len(pending)} image(s) to do "
                 f"({len(indexed) - len(pending)} done, {len(known_errors)} unreadable) -> {self.out}")
        if config.progress:
            from tqdm.auto import tqdm

            for pos, m in enumerate(methods):
                n_done = sum((m.name, it.image_id) in self.done for _, it in indexed)
                self.bars[m.name] = tqdm(total=len(indexed), initial=n_done, desc=f"{m.name:>16s}",
                                         unit="img", position=pos, leave=True, dynamic_ncols=True)
        loader = _Prefetcher(ds, pending, self.bb.preprocess, int(config.batch_size))
        clock = self.clock
        t = clock.start()
        try:
            for batch_items, x_cpu, errs in loader:
                clock.stop("load_wait", t)
                forwards: Dict[Tuple[str, str], int] = defaultdict(int)
                rows: List[Dict[str, Any]] = []
                for e in errs:
                    echo(f"error: {e[3]}")
                    for b in self.bars.values():
                        b.total -= 1
                        b.refresh()
                if batch_items:
                    rows = self.batch(batch_items, x_cpu, forwards)
                t = clock.start()
                store.write_batch(rows, errs, forwards)
                clock.stop("store", t)
                t = clock.start()
        finally:
            loader.close()
            for b in self.bars.values():
                b.close()
        timings = {**clock.to_dict(), "scorer_forwards": {
            f"{m}/{f}": int(n) for m, s in self.scorers.items() for f, n in s.counts.items()}}
        _atomic_write(os.path.join(self.out, TIMINGS_NAME), json.dumps(timings, indent=2))

    def clean_forward(self, x: Tensor, x01: Tensor, labels: List[Optional[int]],
                      forwards: Dict[Tuple[str, str], int]) -> Dict[str, Tuple[Tensor, Tensor, Tensor, Tensor]]:
        """One forward per classifier: ``{key: (x in its normalization, c, Y, pred)}``."""
        out = {}
        B = x.shape[0]
        for key, clf in self.classifiers.items():
            xc = x if _same_normalization(self.bb, clf) else clf.normalize(x01)
            with torch.inference_mode():
                logits = clf.model(xc.contiguous(memory_format=torch.channels_last))
                probs = torch.softmax(logits.float(), dim=1)
                pred = probs.argmax(dim=1)
            if self.config.target == "gt":
                c = torch.tensor(labels, dtype=torch.long, device=self.device)
                clf.check_classes(c)
            else:
                c = pred
            with torch.inference_mode():
                Y = probs.gather(1, c[:, None])[:, 0]
            # c, Y, pred come out of inference mode: clone them (explainers may save c for
            # backward); xc was made outside it and is used as is
            out[key] = (xc, c.clone(), Y.clone(), pred.clone())
            forwards[(CLEAN_METHOD if key == "backbone" else key.split(":", 1)[0], "clean")] += B
        return out

    def batch(self, batch_items, x_cpu: Tensor, forwards: Dict[Tuple[str, str], int]) -> List[Dict[str, Any]]:
        """Clean forward(s), maps and metrics of one batch; returns its rows."""
        from .metrics import PROTOCOLS, MetricInputs

        config, device, bb, clock = self.config, self.device, self.bb, self.clock
        # channels_last: the layout the backbones' convolutions run fastest in (CPU and GPU)
        x = x_cpu.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        B = x.shape[0]
        x01 = bb.denormalize(x).clamp_(0.0, 1.0)
        t = clock.start()
        clean = self.clean_forward(x, x01, [it.label for _, it in batch_items], forwards)
        clock.stop("clean", t)

        rows: List[Dict[str, Any]] = []
        for m in self.methods:
            sel = [j for j, (_, it) in enumerate(batch_items) if (m.name, it.image_id) not in self.done]
            if not sel:
                continue
            xc, c, Y, pred = clean[m.classifier_key]
            if not m.warm and m.forward_passes <= WARMUP_MAX_FORWARDS:
                m.explainer.explain(bb, x[:1], c[:1])
                m.warm = True
            n = len(sel)
            if n < B:
                ii = torch.tensor(sel, device=device)
                xs, cs, Ys, preds, xm, x01s = xc[ii], c[ii], Y[ii], pred[ii], x[ii], x01[ii]
            else:
                xs, cs, Ys, preds, xm, x01s = xc, c, Y, pred, x, x01

            # the maps, once, timed
            t = clock.start()
            V = m.explainer.explain(bb, xm, cs)
            dt = clock.stop(f"explain/{m.name}", t)
            if m.forward_passes:
                forwards[(m.name, "explain")] += m.forward_passes * n

            # every metric reuses them, through the method's counting scorer
            scorer = self.scorers[m.name]
            before = dict(scorer.counts)
            clf = m.classifier
            same = _same_normalization(bb, clf)

            def explain_fn(E: Tensor, cc: Tensor, _m=m, _same=same, _clf=clf) -> Tensor:
                t_e = clock.start()
                V2 = _m.explainer.explain(bb, E if _same else bb.normalize(_clf.denormalize(E)), cc)
                clock.stop("adcc_explain", t_e)
                if _m.forward_passes:
                    forwards[(_m.name, "adcc_explain")] += _m.forward_passes * E.shape[0]
                return V2

            inputs = MetricInputs(scorer=scorer, x=xs, V=V, c=cs, Y=Ys, normalize=clf.normalize,
                                  denormalize=clf.denormalize, explain_fn=explain_fn, x01=x01s,
                                  mean_std=_mean_std(clf))
            values: Dict[str, Tensor] = {}
            for p in self.protocols:
                w0, c0 = clock.wall["adcc_explain"], clock.cpu["adcc_explain"]
                t = clock.start()
                values.update(PROTOCOLS.get(p).evaluate(inputs, **self.popts[p]))
                clock.stop(f"metric/{p}", t)
                # the explainer's own time inside adcc is accounted under adcc_explain
                clock.wall[f"metric/{p}"] -= clock.wall["adcc_explain"] - w0
                clock.cpu[f"metric/{p}"] -= clock.cpu["adcc_explain"] - c0
            for fam, cnt in scorer.counts.items():
                if cnt - before.get(fam, 0) > 0:
                    forwards[(m.name, fam)] += cnt - before.get(fam, 0)

            # rows: one device -> host copy per quantity
            t = clock.start()
            rows += self.rows(m, batch_items, sel, values, cs, Ys, preds, V, dt / n)
            clock.stop("rows", t)
            if m.name in self.bars:
                self.bars[m.name].update(n)
                self.bars[m.name].set_postfix_str(f"{dt / n:.3g} s/img map", refresh=False)
        return rows

    def rows(self, m: _Method, batch_items, sel, values, cs, Ys, preds, V, seconds) -> List[Dict[str, Any]]:
        config, ds, out = self.config, self.ds, self.out
        host = {k: v.detach().float().cpu().numpy() for k, v in values.items()}
        c_h, Y_h, p_h = cs.cpu().tolist(), Ys.float().cpu().tolist(), preds.cpu().tolist()
        need_maps = config.save_maps or any(batch_items[j][1].image_id in self.grid_ids for j in sel)
        V_h = V.detach().float().cpu().numpy() if need_maps else None
        rows = []
        for r, j in enumerate(sel):
            idx, it = batch_items[j]
            row = {"method": m.name, "image_id": it.image_id, "idx": idx, "path": ds.rel_path(it),
                   "label": it.label, "classifier": m.classifier_key, "pred": p_h[r], "c": c_h[r],
                   "Y": Y_h[r], "seconds": seconds}
            for k, arr in host.items():
                row[k] = arr[r] if arr.ndim > 1 else float(arr[r])
            rows.append(row)
            if config.save_maps:
                _save_npy(os.path.join(out, "maps", m.name, it.image_id + ".npy"), V_h[r].astype(np.float32))
            if it.image_id in self.grid_ids:
                _save_npy(os.path.join(out, "grid", m.name, it.image_id + ".npy"), V_h[r].astype(np.float16))
        return rows


def _finish(result: Run, ds: Dataset, bb: Backbone, config: BenchConfig, echo) -> None:
    """Tables and figures of a finished run."""
    from .tables import write_tables

    md = write_tables(result)
    if config.figures:
        from .plots import bench_figures

        try:
            bench_figures(result, ds, bb, n_images=config.grid_images)
        except Exception as exc:  # a figure must never lose a finished run
            echo(f"warning: figures failed: {type(exc).__name__}: {exc}")
    echo(md)
    echo(f"run directory: {result.dir}")
