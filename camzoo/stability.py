"""Stability of visual explanations (the LFI-CAM paper, Sec. 4.4).

For the same images, the maps of several models (trained with different seeds or
hyper-parameters) are binarized and compared with the maps of the *most accurate* model (the
baseline) by intersection over union; the stability of a model is its mean IoU over the
images, the overall stability the mean over the non-baseline models.

Binarization rule (one rule everywhere in camzoo): a pixel is "high attention" when

    V >= threshold,  threshold = 127/255 (about 0.498) by default.

This is the paper's "temperature >= 127" on maps scaled to 0..255: for an 8-bit map
``q/255`` (q integer) it keeps exactly ``q >= 127``, and for a float map it equals
``floor(255 * V) >= 127``. (The issue's "0.5 of [0,1]" is this value rounded; a strict
``V > 0.5`` would keep ``q >= 128`` on 8-bit maps, which is *not* the paper's rule.) Pass
``threshold=0.5`` to use 0.5 itself (then ``V >= 0.5``).

When both masks are empty (two constant maps, e.g. all zeros) they agree: IoU = 1.

Pure tensor functions, batch-first, any device; the CLI ``camzoo stability`` is a thin layer
over :func:`stability_from_maps` (see :mod:`camzoo.cli_lficam`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional

import torch
from torch import Tensor

#: default binarization threshold of maps in [0,1]: the paper's ">= 127 of 255"
DEFAULT_THRESHOLD = 127.0 / 255.0


def binarize(maps: Tensor, threshold: float = DEFAULT_THRESHOLD) -> Tensor:
    """High-attention masks ``maps >= threshold``.

    Args:
        maps: float ``[B,H,W]`` in [0,1].
        threshold: in [0,1]; default 127/255 (see the module docstring).
    Returns:
        bool ``[B,H,W]``.
    """
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0,1] (maps are in [0,1]); got {threshold}")
    return maps >= threshold


def iou(mask_a: Tensor, mask_b: Tensor) -> Tensor:
    """Intersection over union of two batches of binary masks.

    Args:
        mask_a, mask_b: bool ``[B,...]`` of the same shape.
    Returns:
        float32 ``[B]`` in [0,1]; 1 where both masks are empty.
    """
    if mask_a.shape != mask_b.shape:
        raise ValueError(f"masks differ in shape: {tuple(mask_a.shape)} vs {tuple(mask_b.shape)}")
    a = mask_a.bool().flatten(1)
    b = mask_b.bool().flatten(1)
    inter = (a & b).sum(dim=1).float()
    union = (a | b).sum(dim=1).float()
    return torch.where(union > 0, inter / union.clamp_min(1.0), torch.ones_like(union))


def map_iou(maps_a: Tensor, maps_b: Tensor, threshold: float = DEFAULT_THRESHOLD) -> Tensor:
    """IoU ``[B]`` of the binarized maps ``[B,H,W]`` (see :func:`binarize`, :func:`iou`)."""
    return iou(binarize(maps_a, threshold), binarize(maps_b, threshold))


def pick_baseline(accuracy: Mapping[str, Optional[float]]) -> str:
    """The most accurate model's name (first one on ties; models without accuracy lose)."""
    if not accuracy:
        raise ValueError("no models to pick a baseline from")
    best, best_acc = None, None
    for name, acc in accuracy.items():
        if best is None or (acc is not None and (best_acc is None or acc > best_acc)):
            best, best_acc = name, acc
    return best  # type: ignore[return-value]


def stability_ious(maps: Mapping[str, Tensor], baseline: str,
                   threshold: float = DEFAULT_THRESHOLD) -> Dict[str, Tensor]:
    """Per-image IoU of every model's maps against the baseline's.

    Args:
        maps: model name -> float ``[B,H,W]`` maps in [0,1] of the same images, same order.
        baseline: the reference model (a key of ``maps``).
        threshold: binarization threshold (:func:`binarize`).
    Returns:
        model name -> float32 ``[B]`` IoU, for every model except the baseline.
    """
    if baseline not in maps:
        raise ValueError(f"baseline {baseline!r} is not among the models: {', '.join(maps)}")
    ref = binarize(maps[baseline], threshold)
    return {k: iou(binarize(v, threshold), ref) for k, v in maps.items() if k != baseline}


@dataclass
class StabilityResult:
    """Mean IoU per model against the baseline, and overall.

    Attributes:
        baseline: name of the reference (most accurate) model.
        per_model: model -> mean IoU over the images (baseline excluded).
        overall: mean of ``per_model`` (NaN when there is only one model).
        accuracy: model -> accuracy used to pick the baseline (``None`` if unknown).
        n_images: number of images compared.
        threshold: binarization threshold used.
        per_image: model -> float32 ``[N]`` IoU per image.
    """

    baseline: str
    per_model: Dict[str, float]
    overall: float
    accuracy: Dict[str, Optional[float]]
    n_images: int
    threshold: float
    per_image: Dict[str, Tensor] = field(default_factory=dict, repr=False)

    def table(self) -> List[Dict[str, object]]:
        """Rows ``{"model", "role", "accuracy", "mean_iou"}`` (baseline first, IoU 1)."""
        rows: List[Dict[str, object]] = [{"model": self.baseline, "role": "baseline",
                                          "accuracy": self.accuracy.get(self.baseline),
                                          "mean_iou": 1.0}]
        for k, v in self.per_model.items():
            rows.append({"model": k, "role": "compared", "accuracy": self.accuracy.get(k),
                         "mean_iou": v})
        return rows


class StabilityAccumulator:
    """Streams batches of maps and accumulates per-image IoUs against the baseline.

    ``acc.add({"a": Va, "b": Vb, ...})`` once per batch (``[B,H,W]`` each), then
    :meth:`result`. The baseline is fixed at construction.
    """

    def __init__(self, baseline: str, accuracy: Mapping[str, Optional[float]],
                 threshold: float = DEFAULT_THRESHOLD) -> None:
        binarize(torch.zeros(1, 1, 1), threshold)  # validates the threshold
        self.baseline = baseline
        self.accuracy = dict(accuracy)
        self.threshold = threshold
        self._ious: Dict[str, List[Tensor]] = {}

    def add(self, maps: Mapping[str, Tensor]) -> None:
        """Add one batch: model name -> maps ``[B,H,W]`` in [0,1] (same images for all)."""
        for k, v in stability_ious(maps, self.baseline, self.threshold).items():
            self._ious.setdefault(k, []).append(v.detach().float().cpu())

    def result(self) -> StabilityResult:
        per_image = {k: torch.cat(v) for k, v in self._ious.items()}
        per_model = {k: float(v.mean()) if v.numel() else float("nan") for k, v in per_image.items()}
        overall = float(torch.tensor(list(per_model.values())).mean()) if per_model else float("nan")
        n = next(iter(per_image.values())).numel() if per_image else 0
        return StabilityResult(self.baseline, per_model, overall, self.accuracy, n,
                               self.threshold, per_image)


def stability_from_maps(maps: Mapping[str, Tensor], accuracy: Optional[Mapping[str, Optional[float]]] = None,
                        baseline: Optional[str] = None,
                        threshold: float = DEFAULT_THRESHOLD) -> StabilityResult:
    """The paper's stability measure on maps already computed.

    Args:
        maps: model name -> float ``[N,H,W]`` maps in [0,1] of the same N images.
        accuracy: model name -> accuracy; the most accurate model is the baseline.
        baseline: force the baseline (default: :func:`pick_baseline` of ``accuracy``, else
            the first model).
        threshold: binarization threshold (:func:`binarize`).
    Returns:
        :class:`StabilityResult`.
    """
    accuracy = dict(accuracy or {k: None for k in maps})
    if baseline is None:
        baseline = pick_baseline({k: accuracy.get(k) for k in maps})
    acc = StabilityAccumulator(baseline, accuracy, threshold)
    acc.add(maps)
    return acc.result()


# -- models from checkpoints / explainers on images (used by ``camzoo stability``) ----------
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
    from .backbones import load_backbone
    from .explainers import get_explainer
    from .train.loop import load_checkpoint

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
    from .explainers import get_explainer

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
        :class:`StabilityResult` (``n_images`` = images compared).
    """
    from .data import open_dataset
    from .explainers.base import upsample
    from .images import ImageReadError

    if len(sources) < 2:
        raise ValueError(f"stability compares at least two models or methods; got {len(sources)}")
    ds = open_dataset(data, labels=labels, limit=limit, seed=seed)
    measure = {s.name for s in sources
               if ds.has_labels and (measure_accuracy or s.accuracy is None)}
    correct = {n: 0 for n in measure}
    n_lab = 0
    items = list(ds.items)
    # the baseline may need measured accuracies first: keep the binarized masks (1 byte/pixel)
    masks: Dict[str, List[Tensor]] = {s.name: [] for s in sources}
    it = range(0, len(items), batch_size)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc="stability", unit="batch")
    size = None
    for start in it:
        imgs = []
        labs = []
        for item in items[start:start + batch_size]:
            try:
                imgs.append(ds.load(item))
                labs.append(item.label)
            except ImageReadError as exc:
                echo(f"skipped: {exc}")
        if not imgs:
            continue
        for s in sources:
            clf = s.classifier
            x = torch.stack([clf.preprocess(im) for im in imgs]).to(clf.device)
            with torch.inference_mode():
                pred = clf.model(x).argmax(1)
            V = s.explainer.explain(s.backbone, x, pred)
            if size is None:
                size = tuple(V.shape[-2:])
            masks[s.name].append(binarize(upsample(V, size).clamp(0, 1), threshold).cpu())
            if s.name in measure:
                y = torch.tensor(labs)
                if s.class_map is not None:
                    inv = {c: i for i, c in enumerate(s.class_map)}
                    y = torch.tensor([inv.get(int(v), -1) for v in labs])
                correct[s.name] += int((pred.cpu() == y).sum())
        n_lab += len(imgs)
    accuracy = {s.name: s.accuracy for s in sources}
    for n in measure:
        accuracy[n] = correct[n] / max(n_lab, 1)
    if n_lab == 0:
        raise ValueError(f"no readable images in {data}")
    if baseline is None:
        baseline = pick_baseline(accuracy)
    elif baseline not in masks:
        raise ValueError(f"baseline {baseline!r} is not among: {', '.join(masks)}")
    ref = torch.cat(masks[baseline])
    per_image = {k: iou(torch.cat(v), ref) for k, v in masks.items() if k != baseline}
    per_model = {k: float(v.mean()) for k, v in per_image.items()}
    overall = float(torch.tensor(list(per_model.values())).mean())
    return StabilityResult(baseline, per_model, overall, accuracy, ref.shape[0], threshold, per_image)


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
