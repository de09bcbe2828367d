"""What a bench run depends on: :class:`BenchConfig`, its presets, and the resume rules.

``camzoo bench [options]`` is ``camzoo.bench.run(BenchConfig.from_cli(...))``, and
``camzoo.bench.run(BenchConfig())`` runs exactly what a bare ``camzoo bench`` runs: the preset
(:data:`PRESETS`) is applied by the engine, not by the CLI.

Presets fill only what the user left unset (``None`` fields, and explainer options not given):

- ``quick`` (the default without ``--data``: the six sample photos, about 3 minutes on a 2-core
  CPU): 16 insertion/deletion steps, six fast methods (Fake-CAM, Grad-CAM, Grad-CAM++, RISE with
  64 masks, Smooth Grad-CAM++, XGrad-CAM);
- ``full`` (the default with ``--data``): every protocol at its defaults.

Resume rules (:func:`resume_config`, :func:`check_resume`): ``--resume --out RUN`` reads the
stored ``bench_config``; an option given again overrides it, everything else comes from the
store; the resumed run must then have the same identity (:func:`config_identity`) as the
stored one, or it is refused with the differences listed.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from ..explainers.base import EXPLAINERS
from ..metrics.protocol import PROTOCOLS, all_protocols, ordered_protocols, shorthand_flags
from ..models.backbone import Backbone
from ..results.run import CONFIG_NAME, load_run_config
from ..utils import dict_diff, jsonable, markdown_table, parse_dotted, split_names


@dataclass(frozen=True)
class Preset:
    """Values a preset fills in when the user left them unset.

    Attributes:
        metric_options: protocol options set unless given, for the protocols the run
            computes (``{"rise": {"steps": 16}}``).
        options: explainer options set unless given (``{"rise": {"n_masks": 64}}``).
        summary: one line for messages.
    """

    metric_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    summary: str = ""
    methods: Tuple[str, ...] = ()
    learned: Tuple[str, ...] = ()
    metrics: Optional[str] = None
    subset: Optional[str] = None
    layers: Mapping[str, str] = field(default_factory=dict)
    backbone_options: Mapping[str, Mapping[str, Mapping[str, Any]]] = field(default_factory=dict)
    needs_data: bool = False


#: Preset fields beyond the first three: ``methods`` replaces an unset method list, plus each of
#: ``learned`` whose ``checkpoint`` option is given; ``metrics``, ``subset`` fill those fields;
#: ``layers`` the layer per backbone name; ``backbone_options`` explainer options per backbone
#: name; ``needs_data``: refused without ``data``.
PRESETS: Dict[str, Preset] = {
    # the methods of a first run: the seeds' fast ones and the Fake-CAM baseline (Score-CAM,
    # Ablation-CAM and the rest of the family: --methods all, or --preset full)
    "quick": Preset(metric_options={"rise": {"steps": 16}}, options={"rise": {"n_masks": 64}},
                    methods=("fakecam", "gradcam", "gradcam++", "rise", "smoothgradcam++", "xgradcam"),
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


#: ``--weights`` of every command that loads a backbone
WEIGHTS_HELP = ("default: the backbone's pretrained weights (camzoo list; downloaded into torch's / "
                "timm's cache when missing); a torchvision weights tag (IMAGENET1K_V2, DEFAULT); a "
                "state_dict file; or 'random' (smoke tests, marked in every output)")


def option(default: Any = None, help: str = "", *, identity: Optional[str] = None, kind: type = str,
           flag: Optional[str] = None, choices: Optional[Sequence[str]] = None, metavar: Optional[str] = None,
           factory: Optional[Any] = None) -> Any:
    """A :class:`BenchConfig` field and its one declaration.

    The CLI option (:func:`camzoo.cli.bench` builds ``camzoo bench``'s options from these),
    ``config.json``'s ``bench_config`` (:meth:`BenchConfig.to_dict`) and the option table of
    docs/bench.md (:func:`options_table`) all come from it.

    Args:
        default: the default value (``factory`` for a mutable one).
        help: one line for ``--help`` and the docs.
        identity: where the field enters a run's identity (:func:`config_identity`: a resumed run
            may not change it), e.g. ``"data.manifest_hash"``; None for fields that change how a
            run runs, not what it computes.
        kind: the CLI value type: ``str``, ``int``, ``bool`` (a flag; ``--x/--no-x`` when the
            default is True), ``"path"``, or ``"dotted"`` (repeatable ``NAME.OPTION=VALUE``).
        flag: the CLI flag when not ``--<name with dashes>``.
        choices, metavar: the CLI's valid values / placeholder.
    """
    meta = {"help": help, "identity": identity, "kind": kind, "flag": flag, "choices": choices,
            "metavar": metavar}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


MANIFEST = "data.manifest_hash"


@dataclass
class BenchConfig:
    """Everything a bench run depends on: one field per ``camzoo bench`` option.

    Each field is declared once, with its default, help, CLI flag and place in the run identity
    (:func:`option`); ``camzoo bench --help`` and docs/bench.md's option table
    (:func:`options_table`) show them. In Python, ``backbone`` may also be a
    :class:`~camzoo.Backbone` object (``config.json`` then records its ``name`` and
    ``weights_id``), ``methods`` / ``metrics`` lists, and ``options`` / ``metric_options``
    nested dicts (``{"rise": {"n_masks": 8000}}``, ``{"lcam": {"nus": [1.0, 0.5]}}``).
    """

    backbone: Union[str, Backbone] = option(
        "efficientnet_lite0", "backbone name (camzoo list), timm:<model>, or py:module:function",
        identity="backbone.name")
    weights: Optional[str] = option(None, WEIGHTS_HELP, identity="backbone.weights_id")
    layer: Optional[str] = option(
        None, "explanation layer for every method with a layer option [default: the backbone's]",
        identity="backbone.layer")
    methods: Union[None, str, Sequence[str]] = option(
        None, "'all' (every explainer needing no checkpoint, plus learned ones given a checkpoint) or "
              "comma-separated names [default: the preset's]", identity="methods")
    options: Dict[str, Dict[str, Any]] = option(
        help="METHOD.OPTION=VALUE, repeatable (e.g. rise.n_masks=8000)", identity="methods.<m>.options",
        kind="dotted", flag="--opt", metavar="METHOD.OPTION=VALUE", factory=dict)
    metrics: Union[None, str, Sequence[str]] = option(
        None, "'all' (lcam,rise,adcc and plugins) and/or comma-separated protocol names (camzoo list), "
              "e.g. road, or all,road [default: the preset's, else all]; with --resume, +NAME adds "
              "protocols to the stored run (--metrics +road)", identity="protocols")
    metric_options: Dict[str, Dict[str, Any]] = option(
        help="PROTOCOL.OPTION=VALUE, repeatable; commas make lists (e.g. lcam.nus=1,0.5,0.15)",
        identity="protocols.<p>", kind="dotted", flag="--metric-opt", metavar="PROTOCOL.OPTION=VALUE",
        factory=dict)
    data: Optional[str] = option(
        None, "image folder (layouts: docs/bench.md) [default: the six sample photos]", identity=MANIFEST,
        kind="path")
    labels: Optional[str] = option(
        None, "ground-truth file for a flat --data folder: FILE,LABEL rows, Kaggle's LOC_val_solution.csv, "
              "or the devkit's ILSVRC2012_validation_ground_truth.txt (with --devkit)", identity=MANIFEST,
        kind="path")
    devkit: Optional[str] = option(
        None, "ImageNet devkit folder or ILSVRC2012_devkit_t12.tar.gz (maps the devkit's 1-based "
              "ILSVRC2012_IDs to class indices through its meta.mat)", identity=MANIFEST, kind="path")
    subset: Optional[str] = option(
        None, "evaluate exactly the images of a list found under --data, with the list's labels: "
              "lcam-2000 (the L-CAM paper's 2,000 val images) or a file of 'FILE LABEL' lines",
        identity=MANIFEST)
    allow_missing: bool = option(
        False, "run a --subset whose images are not all under --data (refused otherwise)", kind=bool)
    limit: Optional[int] = option(None, "a deterministic subset of N images", identity=MANIFEST, kind=int)
    seed: int = option(0, "seed of the --limit subset", identity=MANIFEST, kind=int)
    batch_size: Optional[int] = option(
        None, "images per engine batch [default: 16 on CPU; on CUDA the largest that fits]", kind=int)
    eval_batch_size: Optional[int] = option(
        None, "perturbed images per metric forward [default: 64 on CPU; on CUDA the largest that fits]",
        kind=int)
    device: Optional[str] = option(
        None, "cpu, cuda, cuda:1 ... [default: CUDA when available; under torchrun cuda:LOCAL_RANK]")
    out: Optional[str] = option(None, "run directory [default: results/<backbone>-<time>]", kind="path")
    resume: bool = option(False, "continue the run in --out (options not given are read from it)", kind=bool)
    save_maps: bool = option(False, "also write maps/<method>/<image_id>.npy (float32 [H,W])", kind=bool)
    target: str = option("pred", "explain and score the model's top-1 class or the ground-truth class",
                         identity="target", choices=("pred", "gt"))
    grid_images: int = option(8, "images in the overlay grid figure (the run's first readable images)", kind=int)
    figures: bool = option(True, "write the figures at the end", kind=bool)
    report: bool = option(False, "also write report.html, the run's self-contained HTML report "
                                 "(camzoo report RUN)", kind=bool)
    progress: bool = option(True, "show the run's progress (a bar on a terminal, a plain line every "
                                  "30 s in a log)", kind=bool)
    dry_run: bool = option(False, "print the plan (methods, images, forwards per image) and its "
                                  "estimated time from a short probe on this device, then exit; "
                                  "nothing is written", kind=bool)
    tune_malloc: bool = option(
        False, "on CPU, keep freed memory in glibc's heap for the next forward (process-wide; ~1.9x "
               "faster CPU forwards, benchmarks/speed/bench_malloc.py); the environment variables "
               "MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=2147483647 do the same",
        kind=bool)
    preset: Optional[str] = option(
        None, "quick: fast demo settings (default without --data); full: protocol defaults (default "
              "with --data); lcam-table1: the L-CAM paper's Table 1 protocol (needs --data)",
        choices=("quick", "full", "lcam-table1"))
    max_failed_batches: int = option(
        3, "stop a method whose first N batches all fail (its other images are recorded as skipped; "
           "--resume retries them)", kind=int)
    amp: Optional[str] = option(
        None, "every forward of the engine under autocast in this precision; maps, softmax and stored "
              "values stay float32 [default: fp32]", identity="amp", choices=("bf16", "fp16"))
    compile: Union[bool, str] = option(
        False, "torch.compile the classifier's clean and metric forwards (Python: a backend name too)",
        kind=bool)
    shard: Optional[str] = option(
        None, "evaluate shard I (0-based) of N only, into its own store; then camzoo merge RUN (job "
              "arrays; under torchrun the shard is the process's rank)", metavar="I/N")
    workers: Optional[int] = option(
        None, "image-decoding worker processes [default: 0 on CPU, up to 8 on CUDA]", kind=int)

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
    def from_cli(cls, given: Mapping[str, Any]) -> "BenchConfig":
        """The config of ``camzoo bench``: only the options given on the command line.

        Args:
            given: field -> value for every option the user gave (not the CLI's defaults);
                ``options`` / ``metric_options`` as ``NAME.OPTION=VALUE`` strings (``--opt``,
                ``--metric-opt``; commas make lists in the latter). With ``resume=True`` the
                other fields come from the stored run (:func:`resume_config`).
        Raises:
            ValueError for a malformed option or an unknown field.
        """
        fields = dict(given)
        for name, what, lists in (("options", "METHOD", False), ("metric_options", "PROTOCOL", True)):
            if name in fields:
                parsed = parse_dotted(fields.pop(name), what, lists=lists)
                if parsed:
                    fields[name] = parsed
        fields = route_shorthands(fields)
        unknown = set(fields) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown bench option(s): {', '.join(sorted(unknown))}")
        if fields.get("resume"):
            return resume_config(fields.get("out"), fields)
        return cls(**fields)


def route_shorthands(fields: Mapping[str, Any]) -> Dict[str, Any]:
    """``fields`` with each protocol shorthand (``steps``: :func:`~camzoo.metrics.protocol.shorthand_flags`)
    moved into ``metric_options`` (``{"rise": {"steps": N}}``); a ``None`` value is dropped. An
    option also given through ``metric_options`` keeps that value."""
    out = dict(fields)
    for opt, (proto, _, _) in shorthand_flags().items():
        v = out.pop(opt, None)
        if v is not None:
            mo = {p: dict(o) for p, o in out.get("metric_options", {}).items()}
            mo.setdefault(proto, {}).setdefault(opt, v)
            out["metric_options"] = mo
    return out


def cli_flag(f: dataclasses.Field) -> str:
    """The ``camzoo bench`` flag of a :class:`BenchConfig` field."""
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def options_table() -> str:
    """docs/bench.md's option table of ``camzoo bench``, made from the field declarations and
    the protocols' shorthands."""
    rows = []
    for f in dataclasses.fields(BenchConfig):
        m = f.metadata
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        flag = cli_flag(f)
        if m["kind"] is bool and default is True:
            flag = f"--{f.name.replace('_', '-')} / --no-{f.name.replace('_', '-')}"
        elif m["kind"] is not bool:
            flag += " " + (m["metavar"] or ("{" + ",".join(m["choices"]) + "}" if m["choices"] else
                                            "N" if m["kind"] is int else f.name.upper()))
        shown = "" if default is None or (isinstance(default, dict) and not default) else f"`{default}`"
        rows.append([f"`{flag}`", shown, f"`{m['identity']}`" if m["identity"] else "", m["help"]])
    for opt, (proto, kind, help_) in shorthand_flags().items():
        rows.append([f"`--{opt} {'N' if kind is int else opt.upper()}`", "", f"`protocols.{proto}.{opt}`", help_])
    return "\n".join(markdown_table(["option", "default", "run identity", "what"], rows)) + "\n"


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


def resolve_protocols(metrics: Union[None, str, Sequence[str]],
                      stored: Optional[Sequence[str]] = None) -> List[str]:
    """Protocol names of a config, validated, in table order. ``"all"`` (or None) stands for
    :func:`~camzoo.metrics.all_protocols` (the protocols with ``in_all``) and may be combined
    with others: ``"all,road"`` = all of those plus ``road``.

    A name with a leading ``+`` adds protocols to a stored run: ``"+road"`` (or ``"+road,adcc"``,
    ``"+road,+adcc"``: with one ``+``, every name is added) is ``stored`` (the resumed run's
    protocols) plus those; without a stored run it is refused.
    """
    names = split_names("all" if metrics is None else metrics)
    if not names:
        raise ValueError(f"no metrics given; valid: all, {', '.join(PROTOCOLS.names())}")
    if any(n.startswith("+") for n in names):
        if stored is None:
            raise ValueError(f"--metrics {','.join(names)}: +NAME adds protocols to a stored run "
                             "(camzoo bench --resume --out RUN --metrics +NAME); a new run names its "
                             "protocols, e.g. all,road")
        names = [*stored, *(n[1:] if n.startswith("+") else n for n in names)]
    expanded: List[str] = []
    for n in names:
        expanded += all_protocols() if n == "all" else [n]
    return ordered_protocols(expanded)


def protocol_options(config: BenchConfig, protocols: Sequence[str]) -> Dict[str, Dict[str, Any]]:
    """Validated options (defaults filled) per protocol."""
    bad = sorted(set(config.metric_options) - set(protocols))
    if bad:
        raise ValueError(f"metric options given for protocol(s) not in this run: {', '.join(bad)}")
    popts: Dict[str, Dict[str, Any]] = {}
    for p in protocols:
        proto = PROTOCOLS.get(p)
        popts[p] = proto.options(**config.metric_options.get(p, {}))  # validates, fills defaults
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

    fill("metrics", p.metrics, "--metrics")
    changes["metric_options"] = _preset_metric_options(config, p, changes.get("metrics", config.metrics), picked)
    fill("subset", p.subset, "--subset")
    bb_name = config.backbone if isinstance(config.backbone, str) else config.backbone.name
    fill("layer", p.layers.get(bb_name), "--layer")
    if config.methods is None and p.methods:
        names = list(p.methods) + [m for m in p.learned if options.get(m, {}).get("checkpoint")]
        changes["methods"] = ",".join(names)
        picked.append(f"--methods {changes['methods']}")
    names = resolve_methods(changes.get("methods", config.methods), options)
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


def _preset_metric_options(config: BenchConfig, p: Preset, metrics, picked: List[str]) -> Dict[str, Dict[str, Any]]:
    """``config.metric_options`` with the preset's protocol options added where not given, for
    the protocols of ``metrics`` only (``+NAME`` lists, resolved at resume, get none)."""
    mo = {n: dict(o) for n, o in config.metric_options.items()}
    if any(n.startswith("+") for n in split_names(metrics or "")):
        return mo
    run_protocols = resolve_protocols(metrics)
    for proto, opts in p.metric_options.items():
        if proto in run_protocols:
            for k, v in opts.items():
                if k not in mo.get(proto, {}):
                    mo.setdefault(proto, {})[k] = v
                    short = shorthand_flags().get(k, ("",))[0] == proto
                    picked.append(f"--{k} {v}" if short else f"--metric-opt {proto}.{k}={v}")
    return mo


# -- resume -----------------------------------------------------------------------------------
def stored_config(out: Optional[str]) -> Dict[str, Any]:
    """The ``config.json`` of run directory ``out``; a clear error when there is none, or when
    it is damaged (:func:`~camzoo.results.run.load_run_config`; the keys a resume reads first)."""
    path = os.path.join(out, CONFIG_NAME) if out else None
    if not path or not os.path.isfile(path):
        raise ValueError("--resume needs --out pointing at an existing run directory"
                         + (f" ({out} has no {CONFIG_NAME})" if out else ""))
    return load_run_config(out, require=("bench_config", "protocols"))


def _keep_added_options(cfg: Dict[str, Any], fields: Dict[str, Any]) -> None:
    """Give each stored protocol the resumed run computes, for every option the protocol added
    since the run was stored (:attr:`~camzoo.metrics.protocol.Protocol.added_options`: one that
    adds stored keys, say), the value the run had in effect, unless given again:
    ``fields["metric_options"]`` updated."""
    keep = set(resolve_protocols(fields["metrics"], stored=list(cfg.get("protocols", {}))))
    mo = {n: dict(o) for n, o in fields.get("metric_options", {}).items()}
    for p, entry in cfg.get("protocols", {}).items():
        if p in keep and p in PROTOCOLS:
            was = entry.get("options", {})
            added = {k: v for k, v in PROTOCOLS.get(p).stored_options(was).items() if k not in was}
            if added:
                mo[p] = {**added, **mo.get(p, {})}
    fields["metric_options"] = mo


def resume_config(out: Optional[str], given: Mapping[str, Any]) -> BenchConfig:
    """The config of a resumed run: the stored ``bench_config`` overridden by ``given``.

    Explainer and protocol options given again are merged into the stored ones (given
    values win); every other field not in ``given`` keeps its stored value.
    """
    cfg = stored_config(out)
    stored = route_shorthands(cfg["bench_config"])  # a run stored with "steps": N
    fields = {k: v for k, v in stored.items() if k in {f.name for f in dataclasses.fields(BenchConfig)}}
    given = route_shorthands(given)
    if "metrics" in given:  # stored options of protocols the resumed run drops are not "given"
        keep = set(resolve_protocols(given["metrics"], stored=list(cfg.get("protocols", {}))))
        fields["metric_options"] = {p: o for p, o in fields.get("metric_options", {}).items() if p in keep}
    for k, v in given.items():
        if k in ("options", "metric_options"):
            merged = {n: dict(o) for n, o in stored.get(k, {}).items()}
            for n, o in v.items():
                merged[n] = {**merged.get(n, {}), **o}
            fields[k] = merged
        else:
            fields[k] = v
    if "metrics" not in given:  # the stored protocols, not what "all" means today (plugins)
        fields["metrics"] = ",".join(cfg.get("protocols", {})) or fields.get("metrics")
    _keep_added_options(cfg, fields)
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
        if p not in PROTOCOLS:
            return dict(o)
        proto = PROTOCOLS.get(p)
        # as in effect: an option the protocol added since the run was stored (absent) counts
        # as the value the run had (Protocol.added_options)
        return {k: v for k, v in proto.stored_options(o).items() if k not in proto.runtime_options}

    return jsonable({
        # the --weights file's and each option file's content (sha256); None / {}: not recorded
        # (a run stored before camzoo recorded them) or no file
        "backbone": {**{k: cfg["backbone"][k] for k in ("name", "weights_id", "layer")},
                     "weights_sha256": cfg["backbone"].get("weights_sha256")},
        "methods": {m: {"options": options(v["options"]), "classifier": v["classifier"],
                        "file_sha256": v.get("file_sha256") or {}}
                    for m, v in cfg["methods"].items()},
        # not their docs, nor their runtime options (Protocol.runtime_options)
        "protocols": {p: protocol_options(p, v["options"]) for p, v in cfg["protocols"].items()},
        # each protocol option naming a file (the localization protocol's boxes): its sha256
        "protocol_files": {p: v.get("file_sha256") or {} for p, v in cfg["protocols"].items()},
        "target": cfg["target"],
        "data": {k: cfg["data"][k] for k in ("manifest_hash", "n_images")},
        "amp": cfg.get("amp"),  # runs stored before --amp existed ran in fp32
    })


def _changed_files(a: Dict[str, Any], b: Dict[str, Any], new: Dict[str, Any]) -> List[str]:
    """One line per file of the stored identity ``a`` (the backbone's ``--weights``, an option
    naming a file) whose content differs in ``b`` (this run's): changed or gone since the run
    started. The hashes are taken out of ``a`` and ``b`` (the paths stay). A hash the stored
    run lacks (stored before camzoo recorded them) is unknown: accepted, and this run's
    ``config.json`` records the file as it is now."""
    files = [("backbone.weights", a["backbone"].pop("weights_sha256"),
              b["backbone"].pop("weights_sha256"), new["backbone"].get("weights"))]
    stored = {m: v.pop("file_sha256") for m, v in a["methods"].items()}
    now = {m: v.pop("file_sha256") for m, v in b["methods"].items()}
    for m in now:
        for opt, h in stored.get(m, {}).items():
            files.append((f"methods.{m}.options.{opt}", h, now[m].get(opt),
                          new["methods"][m]["options"].get(opt)))
    stored_p, now_p = a.pop("protocol_files", {}), b.pop("protocol_files", {})
    for p in now_p:
        for opt, h in stored_p.get(p, {}).items():
            files.append((f"protocols.{p}.options.{opt}", h, now_p[p].get(opt),
                          new["protocols"][p]["options"].get(opt)))
    out = []
    for key, then, here, path in files:
        if then is None or then == here:
            continue
        state = ("is not there any more" if here is None else
                 f"changed since the run started (sha256 {then[:16]}... then, {here[:16]}... now)")
        out.append(f"{key}: the file {path} {state}: the run's remaining images would be computed "
                   "with another file; restore the original file, or start a new run with another --out")
    return out


def check_resume(old: Dict[str, Any], new: Dict[str, Any], out: str,
                 unstored: Sequence[str] = ()) -> Dict[str, Any]:
    """Check that ``new`` may resume the run stored as ``old``; return the merged methods.

    The identity (:func:`config_identity`) must be equal, except that ``new`` may run a
    subset of the stored methods (``--resume --methods a,b`` finishes those) and may add
    protocols (``--metrics +road``: computed for the stored images, the stored values kept);
    every stored protocol must be in ``new``, with the same options. An explainer
    option that names a value equal to its resolved default (``layer`` = the backbone's
    layer) is no difference. A method of ``unstored`` (no stored row in the run's stores,
    e.g. every map failed) may change its options, files and classifier: nothing of it would
    mix. Raises ``ValueError`` listing every difference.

    Returns:
        ``config.json``'s ``methods``: every stored method, in stored order, updated with
        ``new``'s entries.
    """
    a, b = config_identity(old), config_identity(new)
    for m in unstored:  # compared with itself (a copy: _changed_files pops from both)
        if m in a["methods"] and m in b["methods"]:
            a["methods"][m] = jsonable(b["methods"][m])
    changed = _changed_files(a, b, new)
    extra = sorted(set(b["methods"]) - set(a["methods"]))
    both = [m for m in b["methods"] if m in a["methods"]]  # the methods this process runs
    a["methods"] = {m: a["methods"][m] for m in both}
    b["methods"] = {m: b["methods"][m] for m in both}
    dropped = [p for p in a["protocols"] if p not in b["protocols"]]
    # protocols new adds are no difference; a stored protocol left out is
    b["protocols"] = {p: o for p, o in b["protocols"].items() if p in a["protocols"]}
    a["protocols"] = {p: o for p, o in a["protocols"].items() if p in b["protocols"]}
    diffs = changed + dict_diff(a, b)
    if dropped:
        diffs.append(f"protocols: {', '.join(dropped)} stored but not in this run (stored: "
                     f"{', '.join(old['protocols'])}); a resumed run computes every stored protocol "
                     "and may add some (--metrics +NAME)")
    if extra:
        diffs.append(f"methods: {', '.join(extra)} not in the stored run (stored: "
                     f"{', '.join(old['methods'])}); a resumed run runs the stored methods or "
                     "some of them")
    if diffs:
        raise ValueError(f"cannot resume {out}: the run differs from the stored one:\n  "
                         + "\n  ".join(diffs))
    return {**old["methods"], **{m: v for m, v in new["methods"].items() if m in old["methods"]}}

