"""The first step of a bench run: :func:`prepare` resolves and checks a :class:`BenchConfig`
into a :class:`Plan`, and writes (or, resuming, checks) the run's ``config.json``.

Everything that can be refused is refused here, before the run directory is created: names,
options, the data, the backbone and its layer, the labels, a run already in ``out``. Then the
run directory is locked (the run's lock, or its shard's), ``config.json`` and ``manifest.csv``
are written under the lock that the shards of a run share, and the batch sizes are resolved.
The batch loop that consumes the plan is :mod:`camzoo.engine.runner`.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import sqlite3
import sys
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from ..data.datasets import Dataset, open_dataset
from ..data.images import path_text
from ..metrics.protocol import PROTOCOLS
from ..models.backbone import Backbone
from ..models.zoo import load_backbone
from ..models.weights import backbone_label, is_random
from ..results.run import CONFIG_NAME, LOCK_NAME, MANIFEST_NAME, RunLock, load_run_config
from ..results.store import DB_NAME
from ..utils import UserError, atomic_write, check_amp, file_hashes, jsonable, resolve_device, split_names
from ..version import __version__
from .accel import CPU_BATCH_SIZE, CPU_EVAL_BATCH_SIZE, auto_batch_size, compiled_model
from .config import (FULL_HINT, BenchConfig, absolute_paths, apply_preset, check_resume,
                     default_out, protocol_options, resolve_methods, resolve_protocols)
from .maps import MapMethod, make_methods
from .shard import CONFIG_LOCK, Shard, check_world, read_config, shard_stores, stored_methods
from .timing import malloc_env_set, tune_cpu_allocator

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
        lock: this process's lock (the run's, or its shard's), held until the run ends; None
            for a ``dry_run`` plan (nothing written).
        shard: which images this process evaluates, and into which store.
        batch_size, eval_batch_size: as resolved (given, CPU defaults, or probed on CUDA).
        workers: image-decoding worker processes.
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
    lock: Optional[RunLock]
    shard: Shard = Shard()
    batch_size: int = CPU_BATCH_SIZE
    eval_batch_size: int = CPU_EVAL_BATCH_SIZE
    workers: int = 0

    def forward_model(self, clf: Backbone):
        """The module of ``clf``'s clean and metric forwards (compiled with ``--compile``)."""
        return compiled_model(clf, self.config.compile) if self.config.compile else clf.model


def prepare(config: BenchConfig, echo: Echo = print, shard: Optional[Shard] = None,
            device: Optional[torch.device] = None) -> Plan:
    """Resolve and check ``config``, then write (or, resuming, check) ``config.json``.

    Args:
        config: the run's config.
        echo: where messages go.
        shard: this process's shard (default: the whole run).
        device: the device (default: ``config.device`` resolved; torchrun passes
            ``cuda:LOCAL_RANK``).
    Raises ``ValueError`` for bad names/options (listing the valid ones), ``FileExistsError``
    when ``out`` already holds a run (or this shard of one) and ``resume`` is False.

    Process-wide state: ``prepare`` changes torch's TF32 flags in no case (it only reads
    ``torch.backends.cudnn.allow_tf32`` for ``config.json``'s ``tf32``; a fp32 CUDA run turns
    TF32 off while it computes, and restores the caller's flags, in
    :func:`camzoo.engine.runner.run` through :func:`~camzoo.engine.accel.ieee_fp32`; the
    CUDA batch-size probe here runs under the caller's flags). With ``config.tune_malloc`` on
    CPU it tunes glibc's allocator of the whole process for its remaining life
    (:func:`~camzoo.engine.timing.tune_cpu_allocator`; an explicit option, off by default).
    """
    shard = shard or Shard()
    config = _apply_preset(config, echo, shard)
    _check_values(config)
    device = device if device is not None else resolve_device(config.device)
    malloc_tuned = _malloc_tuned(config, device, echo, shard)
    protocols, method_names, popts = _resolve_names(config)
    _check_counts(config)
    if config.out:  # a file, below a file, the data folder, a folder of someone else's files
        _check_out_folder(config.out, config.data)
    ds = _open_data(config, echo, shard)
    if config.out:
        _check_apart(config.out, ds)  # the run's outputs never become its data
    bb = _load_checked_backbone(config, device, ds, protocols, popts, shard)
    methods = make_methods(bb, method_names, config.options, config.layer, amp=config.amp)
    methods = _check_methods(methods, config, echo, shard)
    if ds.unlisted and shard.rank == 0:
        echo(f"warning: {len(ds.unlisted)} image(s) in {ds.root} are not listed in "
             f"{ds.labels_file} and are not evaluated: {', '.join(map(path_text, ds.unlisted[:5]))}"
             + (", ..." if len(ds.unlisted) > 5 else ""))
    out = _run_dir(config, bb, ds, shard)
    cfg = _config_json({"backbone": bb, "dataset": ds, "device": device, "methods": methods,
                        "protocols": protocols, "popts": popts, "out": out}, config, malloc_tuned)
    cfg["world_size"] = shard.world
    if config.dry_run:  # the plan only: nothing is created, locked or written
        if config.resume and os.path.isfile(os.path.join(out, CONFIG_NAME)):
            _continue(cfg, read_config(out), config, out, shard, echo)
        bs, ebs = _batch_sizes(config, bb, device, None, echo)
        workers = int(config.workers) if config.workers is not None else _default_workers(device, shard)
        return Plan(config, device, bb, ds, methods, protocols, popts, out, cfg, None, shard, bs, ebs, workers)
    # everything above can be refused without a trace; from here on the run directory is ours
    writing(out, "the run directory", lambda: os.makedirs(out, exist_ok=True))
    lock = RunLock(out, shard.lock_name).acquire()
    try:
        _write_config(cfg, config, ds, out, shard, device, echo)
        bs, ebs = _batch_sizes(config, bb, device, out, echo)
    except BaseException:
        lock.release()
        raise
    workers = int(config.workers) if config.workers is not None else _default_workers(device, shard)
    return Plan(config, device, bb, ds, methods, protocols, popts, out, cfg, lock, shard, bs, ebs, workers)


def _apply_preset(config: BenchConfig, echo: Echo, shard: Shard) -> BenchConfig:
    """``config`` with its preset applied; the preset's choices said once (rank 0)."""
    config, picked = apply_preset(config)
    if picked and shard.rank == 0:
        echo(f"{config.preset} preset: " + " ".join(picked))
        echo(FULL_HINT)
    return config


def _check_values(config: BenchConfig) -> None:
    """Refuse a bad target, batch size, ``amp`` or worker count (``ValueError``)."""
    if config.target not in ("pred", "gt"):
        raise ValueError(f"target must be 'pred' or 'gt'; got {config.target!r}")
    for k in ("batch_size", "eval_batch_size"):
        if getattr(config, k) is not None and int(getattr(config, k)) < 1:
            raise ValueError("batch_size and eval_batch_size must be >= 1")
    check_amp(config.amp, "amp")
    if config.workers is not None and int(config.workers) < 0:
        raise ValueError(f"workers must be >= 0; got {config.workers}")


def _malloc_tuned(config: BenchConfig, device: torch.device, echo: Echo, shard: Shard) -> bool:
    """Whether glibc's allocator is tuned: by the environment, or now by
    :func:`~camzoo.engine.timing.tune_cpu_allocator` when ``config.tune_malloc`` asks for it
    on CPU (process-wide, for the rest of the process); on CPU without it, a tip (rank 0)."""
    malloc_tuned = malloc_env_set() or bool(config.tune_malloc and device.type == "cpu" and tune_cpu_allocator())
    if device.type == "cpu" and not malloc_tuned and shard.rank == 0:
        echo("tip: on CPU, --tune-malloc (or the environment MALLOC_MMAP_THRESHOLD_=1073741824 "
             "MALLOC_TRIM_THRESHOLD_=2147483647) makes forwards up to ~1.9x faster (docs/bench.md)")
    return malloc_tuned


def _resolve_names(config: BenchConfig) -> Tuple[List[str], List[str], Dict[str, Dict[str, Any]]]:
    """``(protocols, method names, protocol options)`` of ``config`` (a resume's stored
    protocols included); options given for a method not in the run are refused."""
    protocols = resolve_protocols(config.metrics, _stored_protocols(config))
    method_names = resolve_methods(config.methods, config.options)
    unknown_opts = sorted(set(config.options) - set(method_names))
    if unknown_opts:
        raise ValueError(f"options given for method(s) not in this run: {', '.join(unknown_opts)}; "
                         f"methods: {', '.join(method_names)}")
    return protocols, method_names, protocol_options(config, protocols)


def _check_counts(config: BenchConfig) -> None:
    """Refuse a ``limit`` or a ``max_failed_batches`` below 1 (``ValueError``)."""
    if config.limit is not None and int(config.limit) < 1:
        raise ValueError(f"--limit {config.limit}: nothing to evaluate; give a number of images "
                         ">= 1, or no --limit for all of them")
    if int(config.max_failed_batches) < 1:
        raise ValueError(f"max_failed_batches must be >= 1; got {config.max_failed_batches}")


def _open_data(config: BenchConfig, echo: Echo, shard: Shard) -> Dataset:
    """The run's images; a ``--subset`` says what it selected (rank 0); target ``gt`` without
    labels is refused."""
    ds = open_dataset(config.data, config.labels, config.limit, config.seed, devkit=config.devkit,
                      subset=config.subset, allow_missing=config.allow_missing)
    if ds.subset and shard.rank == 0:
        echo(_subset_line(ds))
    if config.target == "gt" and not ds.has_labels:
        raise ValueError(f"target 'gt' needs ground-truth labels; data layout {ds.layout!r} has none "
                         "(use a folder with labels.csv, wnid sub-folders, or --labels FILE)")
    return ds


def _load_checked_backbone(config: BenchConfig, device: torch.device, ds: Dataset,
                           protocols: Sequence[str], popts: Dict[str, Dict[str, Any]],
                           shard: Shard) -> Backbone:
    """The benchmarked backbone, checked against the layer, the labels and each protocol's
    needs; random weights are warned about on stderr (rank 0)."""
    bb = load_backbone(config.backbone, config.weights, device)
    if is_random(bb.weights_id) and shard.rank == 0:
        sys.stderr.write(f"warning: {bb.name} runs on RANDOM weights ({bb.weights_id}): every table "
                         "and figure of this run is marked 'random weights'; its numbers say nothing "
                         "about explanations of a trained classifier\n")
    if config.layer is not None:
        bb.layer(config.layer)  # validates, listing the valid layers
    # for every target: the rows store the labels (accuracy, camzoo analyze)
    _check_labels(ds, bb)
    for p in protocols:
        PROTOCOLS.get(p).check_backbone(popts[p], bb)
    return bb


def _backbone_name(config: BenchConfig, bb: Backbone) -> str:
    """The backbone's name as the run records it: the config's, or the object's name."""
    return bb.name if isinstance(config.backbone, Backbone) else config.backbone


def _run_dir(config: BenchConfig, bb: Backbone, ds: Dataset, shard: Shard) -> str:
    """The run directory (``config.out`` or the default); refused when a sharded run has no
    ``--out``, when it cannot be the run's folder (:func:`_check_out_folder`,
    :func:`_check_apart`), or when it already holds this process's store and ``resume`` is
    False."""
    out = config.out or default_out(_backbone_name(config, bb))
    if shard.world > 1 and not config.out:
        raise ValueError("a sharded run needs --out: every shard must write into the same run directory")
    if not config.out:  # a given --out was checked before the data was read
        _check_out_folder(out, config.data)
        _check_apart(out, ds)
    if not config.resume:
        mine = [shard.store_name] + ([DB_NAME] if shard.world > 1 else shard_stores(out))
        held = [f for f in mine if os.path.exists(os.path.join(out, f))]
        if held:
            raise FileExistsError(
                f"{out} already holds a run ({', '.join(held)}); pass resume=True (--resume) to "
                "continue it, or choose another out directory")
    return out


def _is_run_dir(folder: str, entries: Optional[Sequence[str]] = None, locks: bool = False) -> bool:
    """True when ``folder`` holds a camzoo bench run: a ``config.json`` written by camzoo, or a
    result store (the run's or a shard's); with ``locks``, also a run being created (a run
    lock is taken before ``config.json`` is written; a sibling shard may be writing it now)."""
    if entries is None:
        try:
            entries = os.listdir(folder)
        except OSError:
            return False
    names = set(entries)
    if CONFIG_NAME in names:
        try:
            with open(os.path.join(folder, CONFIG_NAME)) as f:
                cfg = json.load(f)
        except (OSError, ValueError):
            cfg = None
        if isinstance(cfg, dict) and ("camzoo_version" in cfg or "bench_config" in cfg):
            return True
    locked = locks and any(n in (LOCK_NAME, CONFIG_LOCK) or n.startswith(LOCK_NAME + ".") for n in names)
    return DB_NAME in names or locked or bool(shard_stores(folder))


def _check_out_folder(out: str, data: Any = None) -> None:
    """Refuse, before anything is written, an ``out`` that is a file or below one, the folder
    ``data`` (:func:`_check_inside`), or a folder that holds files but no
    camzoo run: the run writes its ``config.json``, tables and ``timings.json`` there and
    would replace the user's files of those names."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"--out {out} is a file, not a folder: give --out a folder for the run "
                         "(a new one is created), e.g. --out results/<name>")
    above = os.path.dirname(os.path.abspath(out))
    while above and not os.path.exists(above):
        above = os.path.dirname(above) if os.path.dirname(above) != above else ""
    if above and not os.path.isdir(above):
        raise ValueError(f"--out {out}: {above} is a file, so no folder can be created below it; "
                         "give --out a folder path that does not pass through a file")
    if isinstance(data, (str, os.PathLike)) and os.path.isdir(data):
        _check_inside(out, os.fspath(data), "")
    if not os.path.isdir(out):
        return
    entries = os.listdir(out)
    if _is_run_dir(out, entries, locks=True):
        return
    theirs = sorted(e for e in entries if not e.startswith("."))  # hidden files are not replaced
    if theirs:
        raise FileExistsError(
            f"--out {out} holds {len(theirs)} file(s) or folder(s) that are not a camzoo run ("
            + ", ".join(theirs[:5]) + (", ..." if len(theirs) > 5 else "") + "): a run writes "
            "config.json, its tables (table.csv, ...), figures and timings.json there and would "
            "replace files of those names; give --out a new folder (it is created), or an empty one")


#: the layouts whose images are every image file found below the data folder: a run inside it
#: would be read as data by the next run (other layouts list their images)
_WALKED_LAYOUTS = ("folder", "wnid-folders", "torchvision-imagenet")


def _check_apart(out: str, ds: Dataset) -> None:
    """Refuse an ``out`` equal to the folder the images are read from, or inside it when its
    layout evaluates every image file found there (:data:`_WALKED_LAYOUTS`, no ``--subset``):
    the run's figures, ``curves.png`` and ``grid.png``, would be images of the next run on that
    data, and a resume would find other data. Refuse data whose images lie in a camzoo run
    directory (another run's outputs are not data)."""
    if ds.root:
        _check_inside(out, ds.root, ds.layout if ds.layout in _WALKED_LAYOUTS and not ds.subset else "")
    seen: Dict[str, Optional[str]] = {}
    for it in ds.items:
        if not isinstance(it.path, (str, os.PathLike)):
            continue  # an embedded sample photo
        d = os.path.dirname(os.path.abspath(it.path))
        if d in seen or not os.path.isfile(it.path):
            continue
        run_dir = _run_above(d, seen)
        if run_dir:
            raise ValueError(f"--data: {path_text(it.path)} is in the camzoo run directory {run_dir}: a "
                             "run's own outputs (curves.png, grid.png) are not data; point --data at a "
                             "folder of images only, or move the run out of the data folder")


def _check_inside(out: str, data: str, walked: str) -> None:
    """Refuse an ``out`` equal to the data folder ``data``, or inside it when ``walked`` (the
    layout that reads every image file below ``data``) is not empty."""
    root, o = os.path.realpath(data), os.path.realpath(out)
    if o == root:
        raise ValueError(
            f"--out {out} is the data folder: the run would write its tables and figures among "
            "the images, and its figures (curves.png, grid.png) would be read as images by the "
            f"next run on this data; give --out a folder outside {data}")
    if walked and o.startswith(root.rstrip(os.sep) + os.sep):
        raise ValueError(
            f"--out {out} is inside the data folder {data}, whose every image file is evaluated "
            f"(layout {walked}): the run's own figures (curves.png, grid.png) would be read as "
            "images by the next run on this data (and a resume would see other data); give --out "
            f"a folder outside {data}")


def _run_above(folder: str, seen: Dict[str, Optional[str]]) -> Optional[str]:
    """The camzoo run directory that is ``folder`` or holds it (None when there is none);
    ``seen`` keeps the answer of every folder looked at."""
    path: List[str] = []
    d, hit = folder, None
    while True:
        if d in seen:
            hit = seen[d]
            break
        path.append(d)
        if _is_run_dir(d):
            hit = d
            break
        parent = os.path.dirname(d)
        if parent == d:
            break
        d = parent
    for p in path:
        seen[p] = hit
    return hit


def _check_methods(methods: List[MapMethod], config: BenchConfig, echo: Echo, shard: Shard) -> List[MapMethod]:
    """Every method's options, layer and checkpoint checked against its backbone
    (:meth:`~camzoo.explainers.base.Explainer.check_backbone`) before the run directory is
    created: a ``ValueError`` naming the method, the option and why. Under ``--methods all`` a
    method the user gave no option that refuses this backbone (FullGrad on a vision
    transformer) is left out instead, said once; returns the methods of the run."""
    every = split_names("all" if config.methods is None else config.methods) == ["all"]
    keep = []
    for m in methods:
        try:
            m.explainer.check_backbone(m.backbone)
        except ValueError as exc:
            if not every or m.name in config.options:
                raise
            if shard.rank == 0:
                echo(f"--methods all: {m.name} left out ({exc})")
            continue
        keep.append(m)
    return keep


def _write_config(cfg: Dict[str, Any], config: BenchConfig, ds: Dataset, out: str, shard: Shard,
                  device: torch.device, echo: Echo) -> None:
    """Check ``cfg`` against the stored ``config.json`` (resume, sibling shards), complete it
    and write it with ``manifest.csv``.

    The shards of a run start together: ``config.json`` is read, checked and written by one
    process at a time, so each sees its siblings' (identical) run and adds its own entry under
    ``"shards"``.
    """
    cfg_path = os.path.join(out, CONFIG_NAME)
    with RunLock(out, CONFIG_LOCK, wait=True):
        old = read_config(out) if os.path.isfile(cfg_path) and (config.resume or shard.world > 1) else None
        if old is not None:
            _continue(cfg, old, config, out, shard, echo)
        if shard.world > 1:
            _add_shard_entry(cfg, shard, device)
        writing(out, "config.json", lambda: atomic_write(cfg_path, json.dumps(cfg, indent=2, default=str)))
        writing(out, "manifest.csv", lambda: ds.write_manifest(os.path.join(out, MANIFEST_NAME)))


def _continue(cfg: Dict[str, Any], old: Dict[str, Any], config: BenchConfig, out: str, shard: Shard,
              echo: Echo) -> None:
    """Make ``cfg`` the continuation of the stored run ``old`` (checked by
    :func:`~camzoo.engine.config.check_resume`): its methods and protocols, creation time,
    resume times and shards are kept; a protocol added now is said (rank 0)."""
    check_world(old, shard, out)
    try:
        cfg["methods"] = check_resume(old, cfg, out)
    except ValueError:
        # a method with no stored row (its every map failed, say) may change its options; the
        # stores are read only here, when something differs
        unstored = [m for m in old["methods"] if m not in stored_methods(out)]
        if not unstored:
            raise
        cfg["methods"] = check_resume(old, cfg, out, unstored=unstored)
    # a resume of some methods keeps the run's method list for the next resume
    cfg["bench_config"]["methods"] = ",".join(cfg["methods"])
    # and its protocols, added ones included (no "+NAME" stored)
    cfg["bench_config"]["metrics"] = ",".join(cfg["protocols"])
    added = [p for p in cfg["protocols"] if p not in old["protocols"]]
    if added and shard.rank == 0:
        echo(f"adding protocol(s) {', '.join(added)} to {out}: computed for every "
             "(method, image) of the run; the stored values are kept")
    cfg["created"] = old.get("created", cfg["created"])
    cfg["resumed"] = old.get("resumed", [])
    if "shards" in old:
        cfg["shards"] = old["shards"]
    if config.resume:
        cfg["resumed"] = cfg["resumed"] + [_dt.datetime.now().isoformat(timespec="seconds")]
    if not cfg["resumed"]:
        del cfg["resumed"]


def _add_shard_entry(cfg: Dict[str, Any], shard: Shard, device: torch.device) -> None:
    """Record this process under ``cfg["shards"][shard.name]`` (first start kept)."""
    entry = cfg.setdefault("shards", {}).get(shard.name, {})
    cfg["shards"][shard.name] = {
        **entry, "device": str(device), "device_name": cfg["device_name"],
        "host": platform.node(), "pid": os.getpid(), "torchrun": shard.distributed,
        "started": entry.get("started", _dt.datetime.now().isoformat(timespec="seconds")),
        "last_start": _dt.datetime.now().isoformat(timespec="seconds")}


def _stored_protocols(config: BenchConfig) -> Optional[List[str]]:
    """The protocols of the run a resume continues (``--metrics +NAME`` adds to them); None
    when not resuming or nothing is stored yet."""
    path = os.path.join(config.out, CONFIG_NAME) if config.resume and config.out else None
    if not path or not os.path.isfile(path):
        return None
    return list(load_run_config(config.out, require=()).get("protocols", {}))


def _layout(protocols: Sequence[str], popts: Dict[str, Dict[str, Any]]) -> Dict[str, Dict[str, List[str]]]:
    """The store's keys by protocol, in table order: ``{protocol: {"values": its row_keys,
    "curves": its curve_keys}}``. A key is one protocol's (refused, naming both, otherwise)."""
    layout: Dict[str, Dict[str, List[str]]] = {}
    owner: Dict[str, str] = {}
    for p in protocols:
        proto = PROTOCOLS.get(p)
        layout[p] = {"values": list(proto.row_keys(**popts[p])), "curves": list(proto.curve_keys(**popts[p]))}
        for k in layout[p]["values"] + layout[p]["curves"]:
            if k.lower() in owner:
                raise ValueError(f"protocols {owner[k.lower()]} and {p} both return the per-image value "
                                 f"{k!r}; a run can store one of them: run them apart")
            owner[k.lower()] = p
    return layout


def _config_json(plan_parts: Dict[str, Any], config: BenchConfig, malloc_tuned: bool) -> Dict[str, Any]:
    """The ``config.json`` of a run (before a resume or a shard completes it).

    ``plan_parts``: ``backbone``, ``dataset``, ``device``, ``methods``, ``protocols``,
    ``popts`` (protocol options) and ``out`` as :func:`prepare` resolved them. The keys are
    written in this order.
    """
    bb, ds, device = plan_parts["backbone"], plan_parts["dataset"], plan_parts["device"]
    methods, protocols, popts = plan_parts["methods"], plan_parts["protocols"], plan_parts["popts"]
    layout = _layout(protocols, popts)
    label = backbone_label(_backbone_name(config, bb), bb.weights_id)
    return {
        "summary": (f"{label}: {', '.join(m.name for m in methods)} x {len(ds)} images"
                    f"{' of ' + ds.subset if ds.subset else ''}; {', '.join(protocols)}; explaining "
                    f"{'the ground-truth class' if config.target == 'gt' else 'the top-1 class'}"),
        **_environment_json(config, device, malloc_tuned),
        "backbone": _backbone_json(config, bb, label),
        "methods": _methods_json(methods),
        "protocols": {p: {"options": jsonable(popts[p]), "source": PROTOCOLS.get(p).source,
                          "file_sha256": PROTOCOLS.get(p).file_hashes(popts[p])}
                      for p in protocols},
        "target": config.target,
        "amp": config.amp,
        "seed": config.seed,
        "data": _data_json(config, ds),
        "columns": {"values": [k for v in layout.values() for k in v["values"]],
                    "curves": [k for v in layout.values() for k in v["curves"]], "protocols": layout},
        # the shard is this process's, not the run's (config.json is shared by the shards)
        "bench_config": {k: v for k, v in absolute_paths(config.to_dict(), plan_parts["out"]).items()
                         if k != "shard"},
        "world_size": 1,
        "created": _dt.datetime.now().isoformat(timespec="seconds"),
    }


def _environment_json(config: BenchConfig, device: torch.device, malloc_tuned: bool) -> Dict[str, Any]:
    """Versions, platform, device and the settings of this process that time depends on."""
    return {
        "camzoo_version": __version__,
        "torch_version": torch.__version__,
        "torchvision_version": _version_of("torchvision"),
        "timm_version": _version_of("timm"),
        "cuda_version": torch.version.cuda,
        "cudnn_version": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "hostname": platform.node(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch_threads": torch.get_num_threads(),
        "malloc_tuned": malloc_tuned,
        # fp32 runs are IEEE fp32 (ieee_fp32); with --amp the user's TF32 settings stay
        "tf32": device.type == "cuda" and config.amp is not None and bool(torch.backends.cudnn.allow_tf32),
    }


def _version_of(package: str) -> Optional[str]:
    """The installed version of ``package`` (None when it is not installed)."""
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _backbone_json(config: BenchConfig, bb: Backbone, label: str) -> Dict[str, Any]:
    """The benchmarked backbone: name, weights, layer, input size, classes, normalization."""
    return {
        "name": _backbone_name(config, bb),
        "weights": config.weights, "weights_id": bb.weights_id,
        # the --weights file's content (config_identity): a resume with another file is refused
        "weights_sha256": file_hashes({"weights": config.weights}).get("weights"),
        "random_weights": is_random(bb.weights_id), "label": label,
        "layer": config.layer or bb.default_layer, "default_layer": bb.default_layer,
        "input_size": bb.input_size, "num_classes": bb.num_classes,
        "mean": bb.mean.tolist(), "std": bb.std.tolist(),
    }


def _methods_json(methods: Sequence[MapMethod]) -> Dict[str, Any]:
    """Each method: its explainer's class and options, forwards per map, its classifier."""
    return {
        m.name: {
            "class": f"{type(m.explainer).__module__}.{type(m.explainer).__qualname__}",
            "options": jsonable(m.explainer.options),
            # the content of every option naming a file (a checkpoint): part of the identity
            "file_sha256": file_hashes(m.explainer.options),
            "forward_passes": m.forward_passes,
            "classifier": {"key": m.classifier_key, "name": m.classifier.name,
                           "weights_id": m.classifier.weights_id},
        } for m in methods
    }


def _data_json(config: BenchConfig, ds: Dataset) -> Dict[str, Any]:
    """The images: folder, layout, labels, subset, limit and seed, count and manifest hash."""
    return {
        "root": ds.root, "layout": ds.layout, "labels_file": ds.labels_file,
        "devkit": config.devkit, "subset": ds.subset, "subset_listed": ds.subset_listed,
        "subset_missing": len(ds.subset_missing),
        "limit": config.limit, "seed": config.seed, "n_images": len(ds),
        "manifest": MANIFEST_NAME, "manifest_hash": ds.manifest_hash(),
    }


def _subset_line(ds: Dataset) -> str:
    """What a ``--subset`` selected: found / listed, the first missing names, label conflicts."""
    found = ds.subset_listed - len(ds.subset_missing)
    line = f"subset {ds.subset}: {found} of its {ds.subset_listed} images found under {ds.root}"
    if ds.subset_missing:
        line += (f"; {len(ds.subset_missing)} missing (--allow-missing), e.g. "
                 + ", ".join(ds.subset_missing[:5]))
    if ds.label_conflicts:
        line += (f"; {ds.label_conflicts} image(s) whose folder's label differs from the list's "
                 "(the list's label is used)")
    return line


def _batch_sizes(config: BenchConfig, bb: Backbone, device: torch.device, out: Optional[str],
                 echo: Echo) -> Tuple[int, int]:
    """``(batch_size, eval_batch_size)``: as given; else 16 / 64 on CPU and, on CUDA, the
    largest that fits (probed once, cached in the run directory ``out``; not cached when
    ``out`` is None)."""
    got = []
    for kind, cpu_default in (("batch_size", CPU_BATCH_SIZE), ("eval_batch_size", CPU_EVAL_BATCH_SIZE)):
        v = getattr(config, kind)
        if v is None:
            v = cpu_default if device.type != "cuda" else auto_batch_size(bb, kind, config.amp, out)
            if device.type == "cuda":
                echo(f"{kind}: {v} (the largest that fits on {device}, cached in {out})")
        got.append(int(v))
    return got[0], got[1]


def _default_workers(device: torch.device, shard: Shard) -> int:
    """Decoding processes when not given: none on CPU (the cores compute), on CUDA one per
    spare core of this process's share of the machine, at most 8."""
    if device.type != "cuda":
        return 0
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, min(8, (os.cpu_count() or 2) // local - 1))


def _check_labels(ds: Dataset, bb: Backbone) -> None:
    """Every ground-truth label must be a class of ``bb``, for every target (the rows store the
    labels): a negative label or one ``>= bb.num_classes`` is refused with the file and line,
    the label, the valid range and what to do."""
    bad = [it for it in ds.items if it.label is not None and not 0 <= int(it.label) < bb.num_classes]
    if bad:
        it = bad[0]
        raise ValueError(f"{it.where or it.image_id}: class_index {it.label} of {it.image_id!r} is "
                         f"outside the {bb.num_classes} classes of {bb.name} (valid 0.."
                         f"{bb.num_classes - 1}); {len(bad)} label(s) like it. Use a backbone "
                         f"whose classes include these labels, or data without labels (or a "
                         f"--labels file of this model's classes)")


def writing(out: str, what: str, write: Callable[[], Any], retry: Optional[str] = None) -> Any:
    """Run ``write``; an OS or SQLite error (a full disk, no permission) becomes one
    :class:`~camzoo.utils.UserError` naming the directory and what failed, and what to do:
    ``retry`` (a command), else rerun with ``--resume`` when ``out`` holds a ``config.json`` (a
    run to resume), else run the command again (nothing of the run was stored)."""
    try:
        return write()
    except (OSError, sqlite3.OperationalError) as exc:  # not IntegrityError: that is a bug
        fix = "free space (or fix the permissions)"
        if retry:
            hint = f"{fix} and run {retry}"
        elif os.path.isfile(os.path.join(out, CONFIG_NAME)):
            hint = (f"every batch stored before this one is kept: {fix} and rerun with --resume "
                    f"--out {out}")
        else:
            hint = f"nothing of the run was stored: {fix} and run the command again"
        raise UserError(f"cannot write {what} in {out}: {type(exc).__name__}: {exc}. {hint[0].upper()}{hint[1:]}") from None
