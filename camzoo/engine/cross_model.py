"""``camzoo stability``: the LFI-CAM paper's stability of explanations across models.

The sources (learned-explainer checkpoints, or explainers on one model) make their maps through
the shared map path (:func:`camzoo.engine.maps.iterate_maps`); the comparison itself is the
pure :mod:`camzoo.metrics.stability`.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Set, Tuple

import torch
from torch import Tensor

from ..data.datasets import Dataset, open_dataset
from ..explainers.base import get_explainer
from ..explainers.base import upsample
from ..explainers.learned.checkpoint import load_checkpoint
from ..metrics.stability import DEFAULT_THRESHOLD, StabilityResult, binarize, iou, pick_baseline
from ..models.zoo import load_backbone
from ..progress import Progress
from .maps import MapMethod, iterate_maps


@dataclass
class MapSource:
    """One set of maps to compare: an explainer on a backbone, and the classifier it explains.

    Attributes:
        name: label in the result (checkpoint file name or method name).
        explainer: a :class:`camzoo.Explainer` (options set).
        backbone: the :class:`camzoo.Backbone` it is called with.
        classifier: the Backbone whose top-1 is explained (``explainer.evaluated_backbone``).
        accuracy: held-out accuracy used to pick the baseline (``None`` if unknown).
        accuracy_source: where ``accuracy`` came from (``"checkpoint:top1"``, ``"measured"``, ...).
        class_map: original label of each classifier class (end-to-end with a new classifier).
    """

    name: str
    explainer: object
    backbone: object
    classifier: object
    accuracy: Optional[float] = None
    accuracy_source: str = "none"
    class_map: Optional[List[int]] = None


def checkpoint_accuracy(ck: dict) -> tuple:
    """``(accuracy, source)`` from a training checkpoint's last held-out metrics.

    ``top1`` (LFI-CAM: accuracy of the trained classifier) when present, else ``masked_acc``
    (L-CAM: accuracy of the frozen model on the masked input, a proxy of the head's quality;
    every head of one frozen model has the same ``top1``), else ``(None, "none")``.
    """
    hist = ck.get("history") or []
    val = hist[-1].get("val", {}) if hist else {}
    for k in ("top1", "masked_acc"):
        if val.get(k) is not None:
            return float(val[k]), f"checkpoint:{k}"
    return None, "none"


def sources_from_checkpoints(paths, *, weights: Optional[str] = None, device=None,
                             backbones: Optional[dict] = None) -> List[MapSource]:
    """A :class:`MapSource` per learned-explainer checkpoint (LFI-CAM, L-CAM, ...).

    The explainer is read from the checkpoint's metadata (``metadata["explainer"]``, e.g.
    ``lficam``, ``lcam-fm``); the backbone is built by name from ``metadata["backbone"]``
    (``weights``: a state_dict file for it; end-to-end LFI-CAM checkpoints hold every weight
    and use random initial ones). ``backbones`` caches built backbones by (name, weights).
    """
    backbones = {} if backbones is None else backbones
    out = []
    names = [os.path.basename(os.fspath(p)) for p in paths]
    if len(set(names)) != len(names):
        names = [os.fspath(p) for p in paths]
    for path, label in zip(paths, names):
        ck = load_checkpoint(path)
        meta = ck.get("metadata", {})
        method = meta.get("explainer") or ck.get("task")
        if not method:
            raise ValueError(f"{path}: the checkpoint does not say which explainer it belongs to")
        if meta.get("mode") == "baseline":
            raise ValueError(f"{path} is a plain classifier (LFI-CAM --mode baseline), not an "
                             "explainer; its maps cannot be compared")
        name = meta.get("backbone")
        w = "random" if meta.get("mode") == "end-to-end" and weights is None else weights
        key = (name, w)
        if key not in backbones:
            backbones[key] = load_backbone(name, weights=w, device=device)
        bb = backbones[key]
        ex = get_explainer(method, checkpoint=os.fspath(path))
        ev = ex.evaluated_backbone(bb)
        acc, src = checkpoint_accuracy(ck)
        out.append(MapSource(label, ex, bb, ev, acc, src, meta.get("class_map")))
    return out


def sources_from_methods(methods, backbone, options: Optional[dict] = None) -> List[MapSource]:
    """A :class:`MapSource` per explainer name on one ``backbone`` (``options[name]``: its options)."""
    options = options or {}
    out = []
    for m in methods:
        ex = get_explainer(m, **options.get(m, {}))
        out.append(MapSource(m, ex, backbone, ex.evaluated_backbone(backbone)))
    return out


def run_stability(sources: List[MapSource], data=None, *, labels=None, limit: Optional[int] = None,
                  seed: int = 0, batch_size: int = 16, threshold: float = DEFAULT_THRESHOLD,
                  baseline: Optional[str] = None, measure_accuracy: bool = False,
                  progress: bool = True, echo=print) -> StabilityResult:
    """Maps of every source on the same images, compared against the most accurate source.

    Each source preprocesses the images with its classifier's ``preprocess`` and explains that
    classifier's top-1 ("model truth"); maps are resized (bilinear) to the first source's
    resolution when they differ. Accuracy for the baseline choice: the sources' own (from
    checkpoints), or measured on ``data`` when ``measure_accuracy`` or when unknown and the data
    has labels (labels mapped through ``class_map`` for new classifiers). Unreadable images are
    skipped (reported through ``echo``).

    Returns:
        :class:`~camzoo.metrics.stability.StabilityResult` (``n_images`` = images compared).
    """
    if len(sources) < 2:
        raise ValueError(f"stability compares at least two models or methods; got {len(sources)}")
    binarize(torch.zeros(1, 1, 1), threshold)  # validates the threshold before any work
    if baseline is not None and baseline not in {s.name for s in sources}:
        raise ValueError(f"baseline {baseline!r} is not among: {', '.join(s.name for s in sources)}")
    ds = open_dataset(data, labels=labels, limit=limit, seed=seed)
    measure = {s.name for s in sources
               if ds.has_labels and (measure_accuracy or s.accuracy is None)}
    masks, correct, n_lab = _masks(sources, ds, measure, batch_size, threshold, progress, echo)
    if n_lab == 0:
        raise ValueError(f"no readable images in {data}")
    accuracy = {s.name: s.accuracy for s in sources}
    for n in measure:
        accuracy[n] = correct[n] / n_lab
    if baseline is None:
        baseline = pick_baseline(accuracy)
    ref = torch.cat(masks[baseline])
    per_image = {k: iou(torch.cat(v), ref) for k, v in masks.items() if k != baseline}
    per_model = {k: float(v.mean()) for k, v in per_image.items()}
    overall = float(torch.tensor(list(per_model.values())).mean())
    return StabilityResult(baseline, per_model, overall, accuracy, ref.shape[0], threshold, per_image)


def _map_methods(sources: List[MapSource]) -> Tuple[Dict[str, Any], List[MapMethod]]:
    """``(views, methods)`` of the map path: one view and one clean forward per distinct
    classifier, one method per source."""
    keys: Dict[int, str] = {}
    views: Dict[str, Any] = {}
    methods: List[MapMethod] = []
    for s in sources:
        key = keys.setdefault(id(s.classifier), f"classifier{len(keys)}")
        views[key] = s.classifier
        methods.append(MapMethod(s.name, s.explainer, s.backbone, s.classifier, key,
                                 int(s.explainer.forward_passes(s.backbone)), view=key))
    return views, methods


def _masks(sources: List[MapSource], ds: Dataset, measure: Set[str], batch_size: int, threshold: float,
           progress: bool, echo) -> Tuple[Dict[str, List[Tensor]], Dict[str, int], int]:
    """Every source's binarized maps of ``ds``, and the top-1 hits of the sources in ``measure``.

    Returns:
        ``(masks, correct, n)``: ``masks[name]``: per batch, ``[B, H, W]`` bool on the CPU at
        the first map's resolution (kept instead of the maps: the baseline may need measured
        accuracies first; 1 byte/pixel); ``correct[name]``: images whose label the source's
        classifier predicts; ``n``: readable images.
    """
    views, methods = _map_methods(sources)
    by_name = {s.name: s for s in sources}
    masks: Dict[str, List[Tensor]] = {s.name: [] for s in sources}
    correct = {n: 0 for n in measure}
    size = None
    n_lab = 0
    bar = None
    if progress:
        bar = Progress(len(ds), "stability", unit="img")
    batches = iterate_maps(ds, list(enumerate(ds.items)), methods, views=views,
                           batch_size=batch_size, target="pred")
    try:
        with contextlib.closing(batches):
            for batch in batches:
                for e in batch.errors:
                    echo(f"skipped: {e[3]}")
                labs = [it.label for _, it in batch.items]
                for m, mp in batch.each_method():
                    if size is None:
                        size = tuple(mp.V.shape[-2:])
                    masks[m.name].append(binarize(upsample(mp.V, size).clamp(0, 1), threshold).cpu())
                    if m.name in measure:
                        correct[m.name] += _hits(by_name[m.name], labs, mp.clean.pred)
                n_lab += len(batch.items)
                if bar:
                    bar.update(len(batch.items) + len(batch.errors))
    finally:
        if bar:
            bar.close()
    return masks, correct, n_lab


def _hits(s: MapSource, labs: List[int], pred: Tensor) -> int:
    """How many of the top-1 classes ``pred`` (``[B]``) are the labels ``labs``, mapped through
    the source's ``class_map`` when its classifier has new classes (unmapped: a miss)."""
    y = torch.tensor(labs)
    if s.class_map is not None:
        inv = {c: i for i, c in enumerate(s.class_map)}
        y = torch.tensor([inv.get(int(v), -1) for v in labs])
    return int((pred.cpu() == y).sum())


def format_result(res: StabilityResult, sources: Optional[List[MapSource]] = None) -> str:
    """A plain-text table of a :class:`StabilityResult`."""
    src = {s.name: s.accuracy_source for s in sources or []}
    w = max(12, *(len(str(r["model"])) for r in res.table()))
    lines = [f"{'model':{w}s}  {'role':8s}  {'accuracy':>8s}  {'mean IoU':>8s}"]
    for r in res.table():
        acc = "-" if r["accuracy"] is None else f"{r['accuracy']:.4f}"
        note = f"  ({src[r['model']]})" if r["model"] in src and src[r["model"]] != "none" else ""
        lines.append(f"{r['model']:{w}s}  {r['role']:8s}  {acc:>8s}  {r['mean_iou']:8.4f}{note}")
    lines.append(f"overall mean IoU vs baseline {res.baseline!r}: {res.overall:.4f} "
                 f"({res.n_images} images, high attention = map >= {res.threshold:.4f})")
    return "\n".join(lines)
