"""Protocol ``localization``: pointing game, energy-based pointing game, localization error,
against ground-truth boxes (``--boxes``: ImageNet's VOC XML folder or a CSV, :mod:`camzoo.data.boxes`).

Sources:

- **Pointing game**: J. Zhang, S. A. Bargal, Z. Lin, J. Brandt, X. Shen, S. Sclaroff, "Top-down
  Neural Attention by Excitation Backprop", ECCV 2016 / IJCV 2018, Sec. 5.1; authors' code
  github.com/jimmie33/Caffe-ExcitationBP ``excitationBP/eval_coco.py`` (``evalPointingGame``:
  ``np.argmax`` of the map at image resolution, a hit when the radius-15 disc around it meets the
  object). TorchRay's reimplementation ``torchray/benchmark/pointing_game.py`` (tolerance 15).
- **Energy-based pointing game**: H. Wang, Z. Wang, M. Du, F. Yang, Z. Zhang, S. Ding,
  P. Mardziel, X. Hu, "Score-CAM: Score-Weighted Visual Explanations for Convolutional Neural
  Networks", CVPR Workshops 2020, localization evaluation (Sec. 4.3; Sec. 5.2 of arXiv v1);
  authors' code github.com/haofanwang/Score-CAM ``utils/energyPointGame.py``.
- **Localization error**: B. Zhou, A. Khosla, A. Lapedriza, A. Oliva, A. Torralba, "Learning Deep
  Features for Discriminative Localization", CVPR 2016, Sec. 3.1 (threshold 20 % of the max,
  bounding box of the largest connected component); R. R. Selvaraju et al., "Grad-CAM: Visual
  Explanations from Deep Networks via Gradient-based Localization", ICCV 2017 / IJCV 2020,
  Sec. 4.1 (threshold 15 % of the max intensity, box around the single largest segment, top-1
  localization error of ILSVRC); correctness as ILSVRC's ``eval_clsloc.m`` /
  ``compute_overlap.m`` (IoU >= 0.5 with a box of the class, inclusive pixel areas).

Per image ``i`` with map ``V`` (``[H,W]`` in [0,1], the preprocessed input's pixels), explained
class ``c`` and the boxes of class ``c`` mapped onto the input (:func:`camzoo.data.boxes.input_geometry`),
each box being the pixels whose centres lie in it::

    pointing        = 1 if the first maximum of V (row-major) is within `tolerance` pixels of the
                      original image (centre to centre) of a pixel of a box of c, else 0
    energy_pointing = sum(V inside the union of c's boxes) / sum(V)      (0 for an all-zero map)
    loc_error       = 0 if IoU(box of the largest 8-connected component of V > threshold*max(V),
                      some box of c) >= 0.5, else 1                   (1 when nothing is above)
    top1_loc_error  = 1 if the classifier's top-1 is not the label, else loc_error
                      (of the label's boxes; NaN when the map is of neither)

An image with no box of the class (not listed, every box of another class, or every box outside
the crop) gets NaN: not scored. Tables show means x100 over the scored images.
"""
from __future__ import annotations

import os

from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from ..data.boxes import (BoxSource, boxes_sha256, geometric_steps, image_size, input_geometry,
                          pixel_box, read_boxes, scaled_to)
from .protocol import MetricInputs, MetricSpec, Protocol, register_protocol

#: IoU a predicted box needs with a box of the class to be correct (ILSVRC's localization)
IOU_CORRECT = 0.5


# -- boxes as tensors -----------------------------------------------------------------------------
def box_union_mask(boxes: Tensor, valid: Tensor, height: int, width: int) -> Tensor:
    """The union of each image's valid boxes as a mask.

    Args:
        boxes: LongTensor ``[B,K,4]``: ``(x0, y0, x1, y1)`` inclusive column / row indices.
        valid: bool ``[B,K]``: which of the ``K`` boxes count.
        height, width: the mask's size.
    Returns:
        bool ``[B,height,width]``.
    """
    dev = boxes.device
    cols = torch.arange(width, device=dev).view(1, 1, 1, width)
    rows = torch.arange(height, device=dev).view(1, 1, height, 1)
    b = boxes.unsqueeze(-1).unsqueeze(-1)  # [B,K,4,1,1]
    inside = ((cols >= b[:, :, 0]) & (cols <= b[:, :, 2]) & (rows >= b[:, :, 1]) & (rows <= b[:, :, 3]))
    return (inside & valid.view(*valid.shape, 1, 1)).any(dim=1)


def pointing_game(V: Tensor, boxes: Tensor, valid: Tensor, tolerance: float = 15.0,
                  scale: Optional[Tensor] = None) -> Tensor:
    """Per-image pointing game hit (Zhang et al.).

    The map's maximum is its first maximal pixel in row-major order (``torch.argmax``, as the
    authors' ``np.argmax``). It hits when its centre is within ``tolerance`` of the centre of a
    pixel of some valid box (Euclidean; inside a box: distance 0).

    Args:
        V: maps ``[B,H,W]``.
        boxes: LongTensor ``[B,K,4]`` ``(x0, y0, x1, y1)`` inclusive pixel indices of ``V``.
        valid: bool ``[B,K]``, the boxes of the explained class.
        tolerance: in image pixels (see ``scale``).
        scale: float ``[B,2]``: input pixels per image pixel ``(sx, sy)``, so that the tolerance
            is measured in the original image's pixels; None: in ``V``'s pixels.
    Returns:
        float32 ``[B]``: 1 hit, 0 miss, NaN without a valid box.
    """
    B, H, W = V.shape
    idx = V.reshape(B, -1).argmax(dim=1)
    px, py = (idx % W).view(B, 1), (idx // W).view(B, 1)
    dx = ((boxes[..., 0] - px).clamp(min=0) + (px - boxes[..., 2]).clamp(min=0)).double()
    dy = ((boxes[..., 1] - py).clamp(min=0) + (py - boxes[..., 3]).clamp(min=0)).double()
    if scale is not None:
        s = scale.to(device=V.device, dtype=torch.float64)
        dx, dy = dx / s[:, :1], dy / s[:, 1:]
    hit = ((dx * dx + dy * dy <= float(tolerance) ** 2) & valid).any(dim=1)
    return torch.where(valid.any(dim=1), hit.float(), torch.full_like(hit, float("nan"), dtype=torch.float32))


def energy_pointing_game(V: Tensor, boxes: Tensor, valid: Tensor) -> Tensor:
    """Per-image energy-based pointing game (Score-CAM): the map's sum inside the union of the
    valid boxes over its total sum.

    Args:
        V: maps ``[B,H,W]`` (non-negative).
        boxes, valid: as in :func:`pointing_game`.
    Returns:
        float32 ``[B]`` in [0,1]; 0 for an all-zero map (no energy inside); NaN without a valid box.
    """
    B, H, W = V.shape
    mask = box_union_mask(boxes.to(V.device), valid.to(V.device), H, W)
    v = V.double()
    inside = (v * mask).sum(dim=(1, 2))
    total = v.sum(dim=(1, 2))
    frac = torch.where(total > 0, inside / total.clamp(min=torch.finfo(torch.float64).tiny),
                       torch.zeros_like(total))
    return torch.where(valid.to(V.device).any(dim=1), frac, torch.full_like(frac, float("nan"))).float()


def largest_component_boxes(V: Tensor, threshold: float = 0.15) -> Tensor:
    """The bounding box of each map's largest connected region above ``threshold * max``.

    The region is ``V > threshold * max(V)`` (strictly above, in float64); components are
    8-connected (``scipy.ndimage.label``, on the CPU, one call for the batch); the largest has
    the most pixels, ties going to the one whose first pixel comes first in row-major order.

    Args:
        V: maps ``[B,H,W]``.
        threshold: fraction of each map's maximum.
    Returns:
        LongTensor ``[B,4]`` ``(x0, y0, x1, y1)`` inclusive pixel indices on ``V``'s device;
        ``-1`` rows where nothing is above the threshold (an all-zero map).
    """
    from scipy import ndimage

    B = V.shape[0]
    v = V.detach().to("cpu", torch.float64).numpy()
    mx = v.reshape(B, -1).max(axis=1)
    fg = (v > (float(threshold) * mx)[:, None, None]) & (mx > 0)[:, None, None]
    out = np.full((B, 4), -1, dtype=np.int64)
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = True  # 8-connected within an image, never across the batch
    labels, n = ndimage.label(fg, structure=structure)
    if n:
        sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
        objs = ndimage.find_objects(labels)
        img = np.array([o[0].start for o in objs])
        order = np.lexsort((np.arange(n), -sizes, img))  # by image, then size desc, then label
        first = np.r_[True, img[order][1:] != img[order][:-1]]
        for lab in order[first]:
            o = objs[lab]
            out[img[lab]] = (o[2].start, o[1].start, o[2].stop - 1, o[1].stop - 1)
    return torch.from_numpy(out).to(V.device)


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of inclusive pixel boxes (areas count pixels, as ILSVRC's ``compute_overlap.m``).

    Args:
        a: LongTensor ``[B,4]``; a row of -1 is no box (IoU 0).
        b: LongTensor ``[B,K,4]``.
    Returns:
        float64 ``[B,K]``.
    """
    a = a.unsqueeze(1)
    iw = (torch.minimum(a[..., 2], b[..., 2]) - torch.maximum(a[..., 0], b[..., 0]) + 1).clamp(min=0)
    ih = (torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1]) + 1).clamp(min=0)
    inter = (iw * ih).double()
    area = lambda t: ((t[..., 2] - t[..., 0] + 1) * (t[..., 3] - t[..., 1] + 1)).double()  # noqa: E731
    iou = inter / (area(a) + area(b) - inter)
    return torch.where(a[..., 0] >= 0, iou, torch.zeros_like(iou))


def localization_error(V: Tensor, boxes: Tensor, valid: Tensor, threshold: float = 0.15,
                       pred_boxes: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """Per-image localization error (CAM / Grad-CAM; ILSVRC's IoU rule).

    Args:
        V: maps ``[B,H,W]``.
        boxes, valid: as in :func:`pointing_game`.
        threshold: see :func:`largest_component_boxes`.
        pred_boxes: the maps' boxes when already computed (``[B,4]``).
    Returns:
        ``(error, iou)``: float32 ``[B]`` error 0 (IoU >= 0.5 with some valid box) or 1, and
        the best IoU; both NaN without a valid box.
    """
    pb = largest_component_boxes(V, threshold) if pred_boxes is None else pred_boxes
    iou = box_iou(pb.to(boxes.device), boxes)
    iou = torch.where(valid, iou, torch.full_like(iou, -1.0))
    best = iou.max(dim=1).values if iou.shape[1] else torch.full(iou.shape[:1], -1.0, dtype=iou.dtype,
                                                                 device=iou.device)
    has = valid.any(dim=1)
    nan = torch.full_like(best, float("nan"))
    err = torch.where(has, (best < IOU_CORRECT).double(), nan)
    return err.float(), torch.where(has, best, nan).float()


def localization_scores(V: Tensor, c: Tensor, boxes: Tensor, box_labels: Tensor,
                        pred: Optional[Tensor] = None, labels: Optional[Tensor] = None,
                        tolerance: float = 15.0, threshold: float = 0.15,
                        scale: Optional[Tensor] = None) -> Dict[str, Tensor]:
    """Every per-image value of the protocol.

    Args:
        V: maps ``[B,H,W]`` in [0,1] for classes ``c``.
        c: LongTensor ``[B]``, the explained classes.
        boxes: LongTensor ``[B,K,4]`` inclusive pixel boxes on ``V`` (padding rows arbitrary).
        box_labels: LongTensor ``[B,K]`` each box's class, -1 for padding.
        pred: LongTensor ``[B]`` the classifier's top-1 (for ``top1_loc_error``).
        labels: LongTensor ``[B]`` ground truth, -1 where unknown.
        tolerance, scale: :func:`pointing_game`; threshold: :func:`largest_component_boxes`.
    Returns:
        ``{"pointing", "energy_pointing", "loc_error", "loc_iou", "top1_loc_error"}``, each
        float32 ``[B]`` on ``V``'s device, NaN where not scored.
    """
    dev = V.device
    boxes, box_labels, c = boxes.to(dev), box_labels.to(dev), c.to(dev)
    valid = (box_labels == c.view(-1, 1)) & (box_labels >= 0)
    pb = largest_component_boxes(V, threshold)
    err, iou = localization_error(V, boxes, valid, threshold, pred_boxes=pb)
    out = {"pointing": pointing_game(V, boxes, valid, tolerance, scale),
           "energy_pointing": energy_pointing_game(V, boxes, valid),
           "loc_error": err, "loc_iou": iou}
    nan = torch.full_like(err, float("nan"))
    if pred is None or labels is None:
        out["top1_loc_error"] = nan
        return out
    pred, labels = pred.to(dev), labels.to(dev)
    has_gt = ((box_labels == labels.view(-1, 1)) & (box_labels >= 0) & (labels.view(-1, 1) >= 0)).any(dim=1)
    # the prediction wrong: an error; right: the map's box, when the map is of that class
    t1 = torch.where(pred != labels, torch.ones_like(err), torch.where(c == labels, err, nan))
    out["top1_loc_error"] = torch.where(has_gt, t1, nan)
    return out


# -- the protocol ---------------------------------------------------------------------------------
POINTING_SOURCE = (
    "Zhang, Bargal, Lin, Brandt, Shen, Sclaroff, 'Top-down Neural Attention by Excitation "
    "Backprop', ECCV 2016 / IJCV 2018, Sec. 5.1 (pointing game, 15-pixel tolerance); code "
    "github.com/jimmie33/Caffe-ExcitationBP excitationBP/eval_coco.py (evalPointingGame)"
)
ENERGY_SOURCE = (
    "Wang, Wang, Du, Yang, Zhang, Ding, Mardziel, Hu, 'Score-CAM: Score-Weighted Visual "
    "Explanations for Convolutional Neural Networks', CVPR Workshops 2020, localization "
    "evaluation (energy-based pointing game); code github.com/haofanwang/Score-CAM "
    "utils/energyPointGame.py"
)
LOC_SOURCE = (
    "Selvaraju et al., 'Grad-CAM: Visual Explanations from Deep Networks via Gradient-based "
    "Localization', ICCV 2017, Sec. 4.1 (15% of the max, largest segment); Zhou et al., 'Learning "
    "Deep Features for Discriminative Localization', CVPR 2016, Sec. 3.1 (20%); ILSVRC devkit "
    "eval_clsloc.m / compute_overlap.m (IoU >= 0.5)"
)
SOURCE = f"{POINTING_SOURCE}; {ENERGY_SOURCE}; {LOC_SOURCE}"

#: where the protocol keeps what it derives from a classifier (``Backbone.cache``)
_CACHE_KEY = ("localization", "geometric_steps")


def _steps(classifier: Any) -> List[Any]:
    """The classifier's preprocess's geometric steps, kept in its ``cache`` with the preprocess
    they were read from."""
    pre = classifier.preprocess
    cache = getattr(classifier, "cache", None)
    if cache is None:
        return geometric_steps(pre)
    got = cache.get(_CACHE_KEY)
    if got is None or got[0] is not pre:
        got = cache[_CACHE_KEY] = (pre, geometric_steps(pre))
    return got[1]


def image_boxes(src: BoxSource, steps: Sequence[Any], image_ids: Sequence[str],
                paths: Sequence[Optional[str]], height: int, width: int
                ) -> Tuple[Tensor, Tensor, Tensor, List[bool]]:
    """Each image's boxes mapped onto the ``height x width`` input as pixel boxes.

    Args:
        src: the boxes (:func:`camzoo.data.boxes.read_boxes`).
        steps: the preprocess's :func:`~camzoo.data.boxes.geometric_steps`.
        image_ids, paths: the images' ids and files (``None``: an in-memory image, no boxes).
    Returns:
        ``(boxes [B,K,4], box_labels [B,K] (-1 padding), scale [B,2] (sx, sy): input pixels per
        pixel of the image the boxes were drawn on, listed [B])``, on the CPU.

    Raises:
        ValueError: the preprocess does not give a ``height x width`` input.
    """
    per: List[List[Tuple[int, int, int, int, int]]] = []
    scales, listed = [], []
    for iid, path in zip(image_ids, paths):
        ib = src.lookup(iid, path)
        listed.append(ib is not None)
        if ib is None or (path is None and ib.size is None):
            per.append([])
            scales.append((1.0, 1.0))
            continue
        size = image_size(path) if path is not None else ib.size
        geo = input_geometry(steps, size)
        if (geo.height, geo.width) != (height, width):
            raise ValueError(f"the classifier's preprocess makes {geo.width}x{geo.height} inputs of "
                             f"{iid!r} but its maps are {width}x{height}: boxes cannot be mapped")
        ref = ib.size or size
        scales.append((geo.sx * size[0] / ref[0], geo.sy * size[1] / ref[1]))
        per.append([pixel_box(b, width, height) + (b.label,)
                    for b in geo.map_boxes(scaled_to(ib, size))])
    K = max([len(p) for p in per] + [1])
    boxes = torch.zeros(len(per), K, 4, dtype=torch.long)
    box_labels = torch.full((len(per), K), -1, dtype=torch.long)
    for i, p in enumerate(per):
        if p:
            t = torch.tensor(p, dtype=torch.long)
            boxes[i, :len(p)], box_labels[i, :len(p)] = t[:, :4], t[:, 4]
    return boxes, box_labels, torch.tensor(scales, dtype=torch.float64), listed


def _boxes_error(opts: Dict[str, Any], exc: Exception) -> ValueError:
    return ValueError(f"protocol 'localization': option boxes={opts['boxes']!r}: {exc}")


@register_protocol
class LocalizationProtocol(Protocol):
    name = "localization"
    order = 50
    in_all = False  # needs ground-truth boxes: --metrics localization --boxes PATH
    summary = "pointing game, energy-based pointing game, CAM/Grad-CAM localization error (needs --boxes)"
    source = SOURCE
    shorthands = {"boxes": "ground-truth boxes of the localization protocol: a CSV file "
                           "(file,xmin,ymin,xmax,ymax,class) or a folder of Pascal-VOC XML files "
                           "(ImageNet's ILSVRC2012_bbox_val_v3)"}
    defaults = {"boxes": "", "tolerance": 15, "threshold": 0.15}

    def options(self, **opts: Any) -> Dict[str, Any]:
        """As :meth:`Protocol.options`, with ``boxes`` made absolute (a resume from another folder
        names the same file; the run identity holds the path and its content's hash)."""
        o = super().options(**opts)
        o["boxes"] = os.path.abspath(o["boxes"])
        return o

    def validate(self, opts: Dict[str, Any]) -> None:
        if not str(opts["boxes"]).strip():
            raise ValueError("protocol 'localization' needs ground-truth boxes: --boxes PATH (or "
                             "--metric-opt localization.boxes=PATH), PATH a CSV file with the columns "
                             "file,xmin,ymin,xmax,ymax,class or a folder of Pascal-VOC XML files "
                             "(ImageNet's ILSVRC2012_bbox_val_v3)")
        if int(opts["tolerance"]) < 0:
            raise ValueError(f"protocol 'localization': option tolerance is a distance in pixels "
                             f">= 0 (the paper: 15); got {opts['tolerance']!r}")
        if not 0.0 <= float(opts["threshold"]) < 1.0:
            raise ValueError(f"protocol 'localization': option threshold is a fraction of the "
                             f"map's maximum in [0, 1) (Grad-CAM: 0.15, CAM: 0.2); got {opts['threshold']!r}")

    def check_backbone(self, opts: Dict[str, Any], backbone: Any) -> None:
        """The boxes exist and parse, their classes are classes of ``backbone``, and its
        preprocess is one whose resize and crop camzoo can map boxes through."""
        try:
            src = read_boxes(opts["boxes"])
        except ValueError as exc:
            raise _boxes_error(opts, exc) from None
        n = int(getattr(backbone, "num_classes", 0) or 0)
        for ib in src.images.values():
            bad = [b.label for b in ib.boxes if n and b.label >= n]
            if bad:
                raise _boxes_error(opts, ValueError(
                    f"{ib.where}: class {bad[0]} is not a class of {backbone.name} ({n} classes)"))
        try:
            geo = input_geometry(_steps(backbone), (500, 375))
        except ValueError as exc:
            raise ValueError(f"protocol 'localization': {exc}") from None
        size = int(getattr(backbone, "input_size", geo.width))
        if (geo.width, geo.height) != (size, size):
            raise ValueError(f"protocol 'localization': {backbone.name}'s preprocess makes "
                             f"{geo.width}x{geo.height} inputs, not its {size}x{size}")

    def file_hashes(self, opts: Dict[str, Any]) -> Dict[str, str]:
        """The content of the boxes (a file's sha256; a folder's over its XML files)."""
        return {"boxes": boxes_sha256(opts["boxes"])}

    def metrics(self, **opts: Any) -> List[MetricSpec]:
        return [
            MetricSpec("pointing", "Pointing", True, 100.0, POINTING_SOURCE,
                       "% of images whose map maximum is within 15 px of a box of the class",
                       binary=True),
            MetricSpec("energy_pointing", "EnergyPG", True, 100.0, ENERGY_SOURCE,
                       "map energy inside the class's boxes / total, x100"),
            MetricSpec("loc_error", "LocErr", False, 100.0, LOC_SOURCE,
                       "% of images whose largest-component box has IoU < 0.5 with every box of the class",
                       binary=True),
            MetricSpec("top1_loc_error", "Top1LocErr", False, 100.0, LOC_SOURCE + " (top-1)",
                       "% of images misclassified or with LocErr (the label's boxes)", binary=True),
            MetricSpec("loc_iou", "LocIoU", True, 100.0, LOC_SOURCE,
                       "best IoU of the largest-component box with a box of the class, x100",
                       in_table=False),
        ]

    def row_keys(self, **opts: Any) -> List[str]:
        return ["pointing", "energy_pointing", "loc_error", "top1_loc_error", "loc_iou"]

    def forwards_per_image(self, **opts: Any) -> int:
        return 0  # the maps only

    def evaluate(self, inputs: MetricInputs, **opts: Any) -> Dict[str, Tensor]:
        o = self.options(**opts)
        if inputs.image_ids is None or inputs.classifier is None:
            raise ValueError("the localization protocol needs MetricInputs.image_ids (and paths) "
                             "and classifier (its preprocess) to find and map the boxes")
        try:
            src = read_boxes(o["boxes"])
        except ValueError as exc:
            raise _boxes_error(o, exc) from None
        V = inputs.V
        paths = inputs.paths if inputs.paths is not None else [None] * len(inputs.image_ids)
        boxes, box_labels, scale, listed = image_boxes(src, _steps(inputs.classifier), inputs.image_ids,
                                                       paths, V.shape[-2], V.shape[-1])
        if not any(listed):
            raise ValueError(f"none of this batch's images ({', '.join(map(repr, inputs.image_ids[:3]))}"
                             f"{', ...' if len(inputs.image_ids) > 3 else ''}) is listed in the boxes "
                             f"{src.path} ({len(src)} images, e.g. {next(iter(src.images))!r}); images "
                             "are matched by image id or file name without extension")
        return localization_scores(V, inputs.c, boxes, box_labels, inputs.pred, inputs.labels,
                                   tolerance=float(o["tolerance"]), threshold=float(o["threshold"]),
                                   scale=scale)
