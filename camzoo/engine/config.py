"""What a bench run depends on: :class:`BenchConfig`, its presets, and the resume rules.

``camzoo bench [options]`` is ``camzoo.bench.run(BenchConfig.from_cli(...))``, and
``camzoo.bench.run(BenchConfig())`` runs exactly what a bare ``camzoo bench`` runs: the preset
(:data:`PRESETS`) is applied by the engine, not by the CLI.

Presets fill only what the user left unset (``None`` fields, and explainer options not given):

- ``quick`` (the default without ``--data``: the six sample photos, about 3 minutes on a 2-core
  CPU): 16 insertion/deletion steps, Score-CAM skipped, RISE with 64 masks;
- ``full`` (the default with ``--data``): every protocol at its defaults.

Resume rules (:func:`resume_config`, :func:`check_resume`): ``--resume --out RUN`` reads the
stored ``bench_config``; an option given again overrides it, everything else comes from the
store; the resumed run must then have the same identity (:func:`config_identity`) as the
stored one, or it is refused with the differences listed.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from ..explainers import EXPLAINERS
from ..metrics.protocol import PROTOCOLS, all_protocols, ordered_protocols
from ..models import Backbone
from ..results.run import CONFIG_NAME
from ..utils import dict_diff, jsonable, parse_dotted, split_names


@dataclass(frozen=True)
class Preset:
    """Values a preset fills in when the user left them unset.

    Attributes:
        steps: insertion/deletion steps (``None``: the protocol's default).
        skip_methods: dropped from an unset ``methods`` (unless options name them).
        options: explainer options set unless given (``{"rise": {"n_masks": 64}}``).
        summary: one line for messages.
    """

    steps: Optional[int] = None
    skip_methods: Tuple[str, ...] = ()
    options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    summary: str = ""
    methods: Tuple[str, ...] = ()
    learned: Tuple[str, ...] = ()
    metrics: Optional[str] = None
    subset: Optional[str] = None
    layers: Mapping[str, str] = field(default_factory=dict)
    backbone_options: Mapping[str, Mapping[str, Mapping[str, Any]]] = field(default_factory=dict)
    needs_data: bool = False


#: Preset fields beyond the first four: ``methods`` replaces an unset method list, plus each of
#: ``learned`` whose ``checkpoint`` option is given; ``metrics``, ``subset`` fill those fields;
#: ``layers`` the layer per backbone name; ``backbone_options`` explainer options per backbone
#: name; ``needs_data``: refused without ``data``.
PRESETS: Dict[str, Preset] = {
    "quick": Preset(steps=16, skip_methods=("scorecam",), options={"rise": {"n_masks": 64}},
                    summary="fast demo settings (default without --data)"),
    "full": Preset(summary="every protocol and method at its defaults (default with --data)"),
    # L-CAM paper, Sec. 4.2-4.3 and Table 1 (Gkartzonika et al., ECCV 2022 Workshops)
    "lcam-table1": Preset(
        summary="the L-CAM paper's Table 1: its 2,000 ImageNet-val images, top-1 class, AD/IC at "
                "100/50/15 %, Grad-CAM, Grad-CAM++, Score-CAM (all channels), RISE (4,000 masks on "
                "VGG-16, 8,000 on ResNet-50), L-CAM heads when their checkpoints are given",
        methods=("gradcam", "gradcam++", "scorecam", "rise"), learned=("lcam-fm", "lcam-img"),
        metrics="lcam", subset="lcam-2000", layers={"vgg16": "conv5", "resnet50": "layer4"},
        options={"scorecam": {"variant": "official"}, "rise": {"n_masks": 4000}},
        backbone_options={"resnet50": {"rise": {"n_masks": 8000}}}, needs_data=True),
}
FULL_HINT = ("full protocol: camzoo bench --data DIR [--labels FILE] --limit 2000 (or --preset full "
             "on the sample photos): 224 insertion/deletion steps, every method incl. scorecam at its "
             "defaults; the L-CAM paper's Table 1: --data IMAGENET_VAL --preset lcam-table1")


@dataclass
class BenchConfig:
    """Everything a bench run depends on (the CLI maps its options onto these fields).

    Attributes:
        backbone: backbone name (``camzoo list``), ``timm:<model>``, ``py:module:function``
            (a callable returning a :class:`~camzoo.Backbone`, e.g.
            ``py:camzoo.models.testing:tiny_backbone``), or a Backbone object (Python API
            only; config.json then records its ``name`` and ``weights_id``).
        weights: state_dict file, ``"random"``, or ``None`` (the backbone's default weights).
        layer: explanation layer for every method with a ``layer`` option (None = default).
        methods: ``"all"`` or names; ``None`` = ``"all"`` less the preset's skipped methods.
            ``"all"`` = every registered explainer whose class has ``needs_checkpoint ==
            False``, plus learned ones given ``options[m]["checkpoint"]``.
        options: per-method explainer options, ``{"rise": {"n_masks": 8000}}``.
        metrics: ``"all"`` (every protocol with ``in_all``), protocol names, or both
            (``"all,road"``: all of those plus ``road``); None = the preset's, else ``"all"``.
        metric_options: per-protocol options, ``{"lcam": {"nus": [1.0, 0.5]}}``.
        data, labels: see :func:`camzoo.data.open_dataset` (``None`` = the sample photos).
        devkit: the ImageNet devkit (folder or ``ILSVRC2012_devkit_t12.tar.gz``) that maps the
            devkit's ground-truth file (``labels``) to class indices.
        subset: a published image list (``"lcam-2000"``) or a list file (``FILE LABEL`` lines):
            evaluate exactly those images of ``data``, with the list's labels.
        allow_missing: run a ``subset`` whose images are not all under ``data`` (refused
            otherwise, before anything is written).
        limit, seed: deterministic subset of the data (see :func:`camzoo.data.subset`).
        steps: insertion/deletion steps (``rise`` protocol); None = the preset's, else 224.
        batch_size: images per engine batch (maps are made per batch); None = 16 on CPU, on
            CUDA the largest that fits (:func:`camzoo.engine.accel.auto_batch_size`).
        eval_batch_size: perturbed images per metric forward; None = 64 on CPU, on CUDA the
            largest that fits.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``...; None = CUDA when available (under
            torchrun: ``cuda:LOCAL_RANK``).
        out: run directory; None = ``results/<backbone>-<timestamp>``.
        resume: continue an existing run directory (skip stored (method, image) pairs).
        save_maps: also write ``maps/<method>/<image_id>.npy`` (float32 ``[H,W]``).
        target: ``"pred"`` (the classifier's top-1) or ``"gt"`` (the data's labels).
        grid_images: images shown in the overlay grid figure.
        figures: write the figures at the end.
        progress: show tqdm bars (one per method).
        tune_malloc: on CPU, keep freed memory in glibc's heap
            (:func:`camzoo.engine.timing.tune_cpu_allocator`).
        preset: ``"quick"``, ``"full"``, ``"lcam-table1"`` or None (``quick`` without
            ``data``, else ``full``); see :data:`PRESETS`.
        max_failed_batches: a method whose first N batches all fail (raise, or give only
            invalid maps) is stopped for the rest of the run; its remaining images are recorded
            as skipped (``--resume`` retries them).
        amp: None (fp32), ``"bf16"`` or ``"fp16"``: every forward of the engine under
            autocast (the clean forward, the metric forwards, and the explainers with an
            ``amp`` option, which it sets unless given per method); softmax, map arithmetic
            and stored values stay float32. Part of the run identity.
        compile: ``torch.compile`` the classifier's forward for the clean and metric
            forwards (not part of the identity: same rows to float rounding); True = the
            default backend (inductor), or a backend name (``"aot_eager"``).
        shard: ``"I/N"``: evaluate only shard I of N (manifest indexes ``i % N == I``) into
            its own store ``rows.rank-I-of-N.sqlite``, for job arrays without
            torch.distributed; merged by :func:`camzoo.engine.runner.merge`. Under torchrun
            the shard comes from ``RANK`` / ``WORLD_SIZE`` instead.
        workers: image-decoding worker processes; None = 0 on CPU (a background thread),
            ``min(8, cores per process - 1)`` on CUDA.
    """

    backbone: Union[str, Backbone] = "efficientnet_lite0"
    weights: Optional[str] = None
    layer: Optional[str] = None
    methods: Union[None, str, Sequence[str]] = None
    options: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    metrics: Union[None, str, Sequence[str]] = None
    metric_options: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    data: Optional[str] = None
    labels: Optional[str] = None
    devkit: Optional[str] = None
    subset: Optional[str] = None
    allow_missing: bool = False
    limit: Optional[int] = None
    seed: int = 0
    steps: Optional[int] = None
    batch_size: Optional[int] = None
    eval_batch_size: Optional[int] = None
    device: Optional[str] = None
    out: Optional[str] = None
    resume: bool = False
    save_maps: bool = False
    target: str = "pred"
    grid_images: int = 4
    figures: bool = True
    progress: bool = True
    tune_malloc: bool = True
    preset: Optional[str] = None
    max_failed_batches: int = 3
    amp: Optional[str] = None
    compile: Union[bool, str] = False
    shard: Optional[str] = None
    workers: Optional[int] = None

    def to_dict(self) -> Dict[str, Any]:
        """The fields as JSON values (a Backbone object becomes ``"<object:NAME>"``)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if isinstance(d["backbone"], Backbone):
            d["backbone"] = f"<object:{d['backbone'].name}>"
        for k in ("methods", "metrics"):
            d[k] = d[k] if d[k] is None or isinstance(d[k], str) else list(d[k])
        return jsonable(d)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "BenchConfig":
        """Inverse of :meth:`to_dict` (unknown keys are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    @classmethod
    def from_cli(cls, given: Mapping[str, Any], opts: Sequence[str] = (),
                 metric_opts: Sequence[str] = ()) -> "BenchConfig":
        """The config of ``camzoo bench``: only the options given on the command line.

        Args:
            given: field -> value for every option the user gave (not the CLI's defaults);
                with ``resume=True`` the others come from the stored run (:func:`resume_config`).
            opts: ``METHOD.OPTION=VALUE`` strings (``--opt``).
            metric_opts: ``PROTOCOL.OPTION=VALUE`` strings (``--metric-opt``; commas make lists).
        Raises:
            ValueError for a malformed option or an unknown field.
        """
        fields = dict(given)
        unknown = set(fields) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown bench option(s): {', '.join(sorted(unknown))}")
        options = parse_dotted(opts, "METHOD")
        metric_options = parse_dotted(metric_opts, "PROTOCOL", lists=True)
        if options:
            fields["options"] = options
        if metric_options:
            fields["metric_options"] = metric_options
        if fields.get("resume"):
            return resume_config(fields.get("out"), fields)
        return cls(**fields)


# -- names ------------------------------------------------------------------------------------
def resolve_methods(methods: Union[None, str, Sequence[str]],
                    options: Dict[str, Dict[str, Any]]) -> List[str]:
    """Method names of a config: ``"all"`` (or None) expands as documented in :class:`BenchConfig`."""
    names = split_names("all" if methods is None else methods)
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


def resolve_protocols(metrics: Union[None, str, Sequence[str]]) -> List[str]:
    """Protocol names of a config, validated, in table order. ``"all"`` (or None) stands for
    :func:`~camzoo.metrics.all_protocols` (the protocols with ``in_all``) and may be combined
    with others: ``"all,road"`` = all of those plus ``road``."""
    names = split_names("all" if metrics is None else metrics)
    if not names:
        raise ValueError(f"no metrics given; valid: all, {', '.join(PROTOCOLS.names())}")
    expanded: List[str] = []
    for n in names:
        expanded += all_protocols() if n == "all" else [n]
    return ordered_protocols(expanded)


def protocol_options(config: BenchConfig, protocols: Sequence[str]) -> Dict[str, Dict[str, Any]]:
    """Validated options (defaults filled) per protocol, with the config's shorthands
    (``steps``) applied to the protocols that declare them."""
    bad = sorted(set(config.metric_options) - set(protocols))
    if bad:
        raise ValueError(f"metric options given for protocol(s) not in this run: {', '.join(bad)}")
    popts: Dict[str, Dict[str, Any]] = {}
    for p in protocols:
        proto = PROTOCOLS.get(p)
        o = dict(config.metric_options.get(p, {}))
        for fld, opt in proto.shorthands.items():
            v = getattr(config, fld)
            if v is not None:
                o[opt] = v
        popts[p] = proto.options(**o)  # validates, fills defaults
    return popts


def default_out(backbone: str) -> str:
    """``results/<backbone>-<YYYYmmdd-HHMMSS>`` (``:`` and ``/`` in the name become ``_``)."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    safe = backbone.replace(":", "_").replace("/", "_")
    return os.path.join("results", f"{safe}-{stamp}")


# -- presets ----------------------------------------------------------------------------------
def apply_preset(config: BenchConfig) -> Tuple[BenchConfig, List[str]]:
    """The config with its preset's values filled in, and what was filled (for a message).

    Idempotent: a config whose fields are already set is returned unchanged, so a resumed
    run (whose stored fields are set) gets nothing new.
    """
    name = config.preset or ("quick" if config.data is None else "full")
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    p = PRESETS[name]
    if p.needs_data and config.data is None:
        raise ValueError(f"preset {name} needs --data: a folder of ImageNet validation images (any "
                         "layout of docs/bench.md, e.g. torchvision's ImageNet(root, split='val'))")
    options = {m: dict(o) for m, o in config.options.items()}
    changes: Dict[str, Any] = {"preset": name}
    picked: List[str] = []

    def fill(fld: str, value: Any, flag: str) -> None:
        if getattr(config, fld) is None and value is not None:
            changes[fld] = value
            picked.append(f"{flag} {value}")

    fill("steps", p.steps, "--steps")
    fill("metrics", p.metrics, "--metrics")
    fill("subset", p.subset, "--subset")
    bb_name = config.backbone if isinstance(config.backbone, str) else config.backbone.name
    fill("layer", p.layers.get(bb_name), "--layer")
    if config.methods is None and p.methods:
        names = list(p.methods) + [m for m in p.learned if options.get(m, {}).get("checkpoint")]
        changes["methods"] = ",".join(names)
        picked.append(f"--methods {changes['methods']}")
    names = resolve_methods(changes.get("methods", config.methods), options)
    if config.methods is None and not p.methods:
        skipped = [m for m in names if m in p.skip_methods and m not in options]
        names = [m for m in names if m not in skipped]
        changes["methods"] = ",".join(names)
        if skipped:
            picked.append(f"--methods {changes['methods']} (skipped: {', '.join(skipped)})")
    per_backbone = p.backbone_options.get(bb_name, {})
    preset_options = {m: {**p.options.get(m, {}), **per_backbone.get(m, {})}
                      for m in dict.fromkeys([*p.options, *per_backbone])}
    for m, o in preset_options.items():
        if m in names:
            for k, v in o.items():
                if k not in options.get(m, {}):
                    options.setdefault(m, {})[k] = v
                    picked.append(f"--opt {m}.{k}={v}")
    changes["options"] = options
    return dataclasses.replace(config, **changes), picked


# -- resume -----------------------------------------------------------------------------------
def stored_config(out: Optional[str]) -> Dict[str, Any]:
    """The ``config.json`` of run directory ``out``; a clear error when there is none."""
    path = os.path.join(out, CONFIG_NAME) if out else None
    if not path or not os.path.isfile(path):
        raise ValueError("--resume needs --out pointing at an existing run directory"
                         + (f" ({out} has no {CONFIG_NAME})" if out else ""))
    with open(path) as f:
        return json.load(f)


def resume_config(out: Optional[str], given: Mapping[str, Any]) -> BenchConfig:
    """The config of a resumed run: the stored ``bench_config`` overridden by ``given``.

    Explainer and protocol options given again are merged into the stored ones (given
    values win); every other field not in ``given`` keeps its stored value.
    """
    stored = dict(stored_config(out)["bench_config"])
    fields = {k: v for k, v in stored.items() if k in {f.name for f in dataclasses.fields(BenchConfig)}}
    for k, v in given.items():
        if k in ("options", "metric_options"):
            merged = {n: dict(o) for n, o in stored.get(k, {}).items()}
            for n, o in v.items():
                merged[n] = {**merged.get(n, {}), **o}
            fields[k] = merged
        else:
            fields[k] = v
    fields["resume"] = True
    fields["out"] = out
    # runs stored before presets were recorded hold their resolved values already
    fields.setdefault("preset", "full")
    return BenchConfig(**fields)


def absolute_paths(d: Dict[str, Any], out: str) -> Dict[str, Any]:
    """A ``bench_config`` dict with data / labels / weights / out made absolute (so a run can be
    resumed from any directory)."""
    d = dict(d)
    d["out"] = os.path.abspath(out)
    for k in ("data", "labels", "weights", "devkit", "subset"):
        if isinstance(d.get(k), str) and os.path.exists(d[k]):
            d[k] = os.path.abspath(d[k])
    return d


def config_identity(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """The parts of ``config.json`` a resumed run must share with the stored one: everything
    that changes a row (backbone and weights, layer, each method's options and classifier,
    each protocol's options but its ``runtime_options``, the target, and the data: its
    manifest hash covers the folder,
    labels, ``--limit`` and ``--seed``), and the precision (``amp``) of the engine's own
    forwards. A method's ``layer`` option left at ``None`` counts as the layer it resolves
    to."""
    layer = cfg["backbone"]["layer"]

    def options(o: Dict[str, Any]) -> Dict[str, Any]:
        return {k: (layer if k == "layer" and v is None else v) for k, v in o.items()}

    def protocol_options(p: str, o: Dict[str, Any]) -> Dict[str, Any]:
        runtime = PROTOCOLS.get(p).runtime_options if p in PROTOCOLS else ()
        return {k: v for k, v in o.items() if k not in runtime}

    return jsonable({
        "backbone": {k: cfg["backbone"][k] for k in ("name", "weights_id", "layer")},
        "methods": {m: {"options": options(v["options"]), "classifier": v["classifier"]}
                    for m, v in cfg["methods"].items()},
        # not their docs, nor their runtime options (Protocol.runtime_options)
        "protocols": {p: protocol_options(p, v["options"]) for p, v in cfg["protocols"].items()},
        "target": cfg["target"],
        "data": {k: cfg["data"][k] for k in ("manifest_hash", "n_images")},
        "amp": cfg.get("amp"),  # runs stored before --amp existed ran in fp32
    })


def check_resume(old: Dict[str, Any], new: Dict[str, Any], out: str) -> Dict[str, Any]:
    """Check that ``new`` may resume the run stored as ``old``; return the merged methods.

    The identity (:func:`config_identity`) must be equal, except that ``new`` may run a
    subset of the stored methods (``--resume --methods a,b`` finishes those). An explainer
    option that names a value equal to its resolved default (``layer`` = the backbone's
    layer) is no difference. Raises ``ValueError`` listing every difference.

    Returns:
        ``config.json``'s ``methods``: every stored method, in stored order, updated with
        ``new``'s entries.
    """
    a, b = config_identity(old), config_identity(new)
    extra = sorted(set(b["methods"]) - set(a["methods"]))
    both = [m for m in b["methods"] if m in a["methods"]]  # the methods this process runs
    a["methods"] = {m: a["methods"][m] for m in both}
    b["methods"] = {m: b["methods"][m] for m in both}
    diffs = dict_diff(a, b)
    if extra:
        diffs.append(f"methods: {', '.join(extra)} not in the stored run (stored: "
                     f"{', '.join(old['methods'])}); a resumed run runs the stored methods or "
                     "some of them")
    if diffs:
        raise ValueError(f"cannot resume {out}: the run differs from the stored one:\n  "
                         + "\n  ".join(diffs))
    return {**old["methods"], **{m: v for m, v in new["methods"].items() if m in old["methods"]}}

