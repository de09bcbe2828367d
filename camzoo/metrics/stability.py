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

Pure tensor functions, batch-first, any device; ``camzoo stability`` makes the maps through
the shared map path and compares them with these (see :mod:`camzoo.engine.cross_model`).
"""
from __future__ import annotations

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
