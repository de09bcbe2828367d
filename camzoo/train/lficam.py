"""Training LFI-CAM (``camzoo train lficam``): the :class:`LFICAMTask` for the shared loop.

Modes (``mode=``):

- ``"end-to-end"`` (the paper): a copy of the backbone, the FIN and the classifier are trained
  together with cross-entropy only (ground-truth labels). Recipe: SGD momentum 0.9, lr 0.1
  divided by 10 at 50 % and 75 % of the epochs, weight decay 1e-4 (5e-4 for small images,
  ``image_size <= 64``), random-resized crop + horizontal flip. ``init="pretrained"`` starts
  from the backbone's weights, ``"random"`` re-initializes them (seeded). ``num_classes``
  replaces the final linear layer by a new one (labels of the data are mapped to
  ``0..num_classes-1`` in sorted order when they are not already in that range).
- ``"frozen"``: the backbone and its classifier stay frozen (eval mode, bit-for-bit
  unchanged); only the FIN learns, through the attention mechanism ``F' = (1 + L) * F`` and
  the cross-entropy of the resulting logits. Targets: the frozen model's top-1 by default
  ("model truth", like L-CAM), so LFI-CAM explains the same model as the post-hoc methods.
- ``"baseline"``: the same recipe without the attention branch (a plain copy of the
  backbone): the reference top-1 of the paper's Tables 1-3. Its checkpoints are not
  explainers.

Held-out metrics after every epoch (:meth:`LFICAMTask.evaluate`): ``top1`` of the trained
model against the ground truth (when known), and in frozen mode ``backbone_top1`` (the frozen
model) and ``agree`` (same top-1 as the frozen model).

:func:`train_lficam` is the Python API behind the CLI.
"""
from __future__ import annotations

import math
import os
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.datasets import ImageItem
from ..explainers.learned.lficam import LFICAM
from ..models.backbone import Backbone
from ..models.backbone import backbone_hash
from ..models.surgery import clone_backbone, reinit_backbone, replace_classifier
from ..models.zoo import eval_transform, imagenet_class_names
from .data import TrainImages
from .loop import TrainTask, fit, multistep, sgd

TRAIN_MODES = ("frozen", "end-to-end", "baseline")
INITS = ("pretrained", "random")


def paper_milestones(epochs: int) -> List[int]:
    """Epochs after which the lr is divided by 10: 50 % and 75 % of ``epochs`` (deduplicated, >= 1)."""
    ms = sorted({int(round(epochs * 0.5)), int(round(epochs * 0.75))})
    return [m for m in ms if 1 <= m < epochs] or ([1] if epochs > 1 else [])


def default_weight_decay(image_size: int) -> float:
    """The paper's weight decay: 5e-4 for small-image datasets (<= 64 px), else 1e-4."""
    return 5e-4 if image_size <= 64 else 1e-4


class LFICAMImages(TrainImages):
    """:class:`camzoo.train.data.TrainImages` with the LFI-CAM recipe's augmentation.

    - ``augment=True``: random-resized crop (area 8-100 %, aspect ratio 3/4-4/3, up to 10
      tries, else a center crop of the whole image) to ``size x size`` (bilinear) and a random
      horizontal flip, from a generator seeded by ``(seed, epoch, index)``;
    - ``augment=False``: :func:`eval_transform`;
    - ``label_map``: original label -> training label (for a new classifier), ``-1`` stays.
    """

    def __init__(self, items: Sequence[ImageItem], backbone: Backbone, *, augment: bool,
                 seed: int = 0, root: Optional[str] = None, size: Optional[int] = None,
                 label_map: Optional[Dict[int, int]] = None) -> None:
        super().__init__(items, backbone, augment=augment, seed=seed, root=root)
        self.size = int(size or backbone.input_size)
        self.label_map = dict(label_map) if label_map else None
        self._eval = eval_transform(backbone, self.size)

    def _rrc(self, img, index: int, epoch: Optional[int] = None) -> Tensor:
        from torchvision.transforms import functional as TF

        g = self._generator(index, epoch)
        w, h = img.size
        area = float(w * h)
        box = None
        for _ in range(10):
            r = torch.rand(3, generator=g).tolist()
            target = area * (0.08 + r[0] * (1.0 - 0.08))
            ratio = math.exp(math.log(3 / 4) + r[1] * (math.log(4 / 3) - math.log(3 / 4)))
            cw = int(round(math.sqrt(target * ratio)))
            ch = int(round(math.sqrt(target / ratio)))
            if 0 < cw <= w and 0 < ch <= h:
                top = int(torch.randint(0, h - ch + 1, (1,), generator=g))
                left = int(torch.randint(0, w - cw + 1, (1,), generator=g))
                box = (top, left, ch, cw)
                break
        if box is None:
            s = min(w, h)
            box = ((h - s) // 2, (w - s) // 2, s, s)
        img = TF.resized_crop(img, *box, [self.size, self.size],
                              interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
        t = TF.pil_to_tensor(img).float().div_(255.0)
        if bool(torch.rand((), generator=g) < 0.5):
            t = t.flip(-1)
        return (t - self.mean) / self.std

    def augmented(self, img, index: int, epoch: Optional[int] = None) -> Tensor:
        return self._rrc(img, index, epoch)

    def evaluated(self, img) -> Tensor:
        return self._eval(img)


def label_mapping(labels: Sequence[int], num_classes: int) -> Tuple[Optional[Dict[int, int]], List[int]]:
    """``(label_map or None, class_map)`` for a new ``num_classes``-way classifier.

    Labels already in ``[0, num_classes)`` are kept (``label_map=None``, class_map identity);
    otherwise the sorted distinct labels must number exactly ``num_classes`` and map to
    ``0..num_classes-1``. ``class_map[i]`` is the original label of new class ``i``.
    """
    distinct = sorted({int(v) for v in labels if v is not None and v >= 0})
    if not distinct:
        raise ValueError("a new classifier needs ground-truth labels, but the data has none")
    if distinct[-1] < num_classes:
        return None, list(range(num_classes))
    if len(distinct) != num_classes:
        raise ValueError(f"--num-classes {num_classes}, but the data has {len(distinct)} distinct "
                         f"labels ({distinct[:10]}{'...' if len(distinct) > 10 else ''}); they must match")
    return {v: i for i, v in enumerate(distinct)}, distinct


# -- the task -----------------------------------------------------------------------------------
class LFICAMTask(TrainTask):
    """Train LFI-CAM (or its baseline) on ``backbone`` (never modified).

    Args:
        backbone: the classifier. Frozen mode uses it as is; end-to-end / baseline train a
            copy (:func:`camzoo.models.surgery.clone_backbone`).
        mode: ``"frozen"``, ``"end-to-end"`` or ``"baseline"``.
        layer: explanation layer (default ``backbone.default_layer``).
        labels: ``"model"`` (frozen model's top-1; frozen mode only) or ``"gt"``.
        num_classes: a new classifier with this many classes (end-to-end / baseline).
        class_map, class_names: original label and name of each new class (metadata).
        init: ``"pretrained"`` or ``"random"`` (end-to-end / baseline).
        depth: FIN depth (paper: 4).
        image_size: training resolution (metadata; the data decides the actual size).
        seed: seeds the FIN, a new classifier and a random init.
    """

    name = "lficam"
    identity_keys = ("mode", "backbone", "weights_id", "layer", "num_classes", "labels", "init",
                     "fin_depth", "image_size")

    def __init__(self, backbone: Backbone, mode: str = "frozen", layer: Optional[str] = None, *,
                 labels: Optional[str] = None, num_classes: Optional[int] = None,
                 class_map: Optional[List[int]] = None, class_names: Optional[List[str]] = None,
                 init: str = "pretrained", depth: int = 4, image_size: Optional[int] = None,
                 seed: int = 0) -> None:
        if mode not in TRAIN_MODES:
            raise ValueError(f"unknown mode {mode!r}; modes: {', '.join(TRAIN_MODES)}")
        if init not in INITS:
            raise ValueError(f"unknown init {init!r}; choices: {', '.join(INITS)}")
        labels = labels or ("model" if mode == "frozen" else "gt")
        if labels not in ("model", "gt"):
            raise ValueError(f"labels must be 'model' or 'gt'; got {labels!r}")
        if mode != "frozen":
            if labels == "model":
                raise ValueError(f"mode {mode!r} trains the classifier: it needs labels='gt'")
        elif num_classes not in (None, backbone.num_classes) or init != "pretrained":
            raise ValueError("frozen mode keeps the backbone and its classifier as they are: "
                             "--num-classes and --init random need --mode end-to-end or baseline")
        self.mode = mode
        self.layer = layer or backbone.default_layer
        backbone.layer(self.layer)  # validates, listing the valid layers
        self.labels = labels
        self.init = init
        self.depth = int(depth)
        self.seed = int(seed)
        self.source = backbone
        self.class_map = list(class_map) if class_map is not None else None
        g = torch.Generator().manual_seed(self.seed + 1)
        if mode == "frozen":
            bb = backbone
            self.frozen_hash = backbone_hash(backbone)
        else:
            bb = clone_backbone(backbone)
            if init == "random":
                reinit_backbone(bb, self.seed)
            if num_classes is not None and (num_classes != bb.num_classes or init == "random"
                                            or class_map is not None):
                replace_classifier(bb, int(num_classes), g, class_names)
            for p in bb.model.parameters():
                p.requires_grad_(True)
            self.frozen_hash = None
        self.bb = bb
        self.image_size = int(image_size or backbone.input_size)
        if mode == "baseline":
            self.net: nn.Module = bb.model
            self.lficam: Optional[LFICAM] = None
        else:
            self.lficam = LFICAM(bb, self.layer, mode=mode, depth=depth, seed=self.seed,
                                 copy_backbone=False)
            self.net = self.lficam

    # -- TrainTask ------------------------------------------------------------------------------
    def modules(self) -> nn.Module:
        return self.net

    def train_mode(self) -> None:
        self.net.train()
        if self.mode == "frozen":
            self.bb.model.eval()

    def eval_mode(self) -> None:
        self.net.eval()
        self.bb.model.eval()

    def to(self, device: torch.device) -> "LFICAMTask":
        self.net.to(device)
        if self.mode != "frozen":
            self.bb.mean = self.bb.mean.to(device)
            self.bb.std = self.bb.std.to(device)
        return self

    def metadata(self) -> Dict[str, Any]:
        return {
            "explainer": "lficam", "mode": self.mode, "backbone": self.source.name,
            "weights_id": self.source.weights_id, "backbone_hash": self.frozen_hash,
            "layer": self.layer, "num_classes": self.bb.num_classes,
            "new_classifier": self.mode != "frozen" and (self.bb.num_classes != self.source.num_classes
                                                         or self.init == "random"
                                                         or self.class_map is not None),
            "class_map": self.class_map, "class_names": list(self.bb.class_names),
            "labels": self.labels, "init": self.init, "fin_depth": self.depth,
            "fin_channels": self.lficam.fin.channels if self.lficam is not None else None,
            "image_size": self.image_size, "input_size": self.source.input_size,
        }

    def _frozen_top1(self, x: Tensor) -> Tensor:
        """Top-1 of the frozen model for the batch just run (head of the captured features when
        the backbone has one at the layer, else one more forward)."""
        with torch.no_grad():
            if self.lficam is not None and self.layer in self.bb.heads and "F" in self.lficam.last:
                return self.bb.head(self.lficam.last["F"], self.layer).argmax(1)
            return self.bb.model(x).argmax(1)

    def targets(self, x: Tensor, y: Tensor) -> Tensor:
        if self.labels == "model":
            return self._frozen_top1(x)
        if bool((y < 0).any()):
            raise ValueError("labels='gt' but some images have no ground-truth label (-1)")
        if y.numel() and int(y.max()) >= self.bb.num_classes:
            raise ValueError(f"label {int(y.max())} out of range for a {self.bb.num_classes}-class "
                             "classifier (use --num-classes N for a new classifier)")
        return y

    def loss(self, net: nn.Module, x, y: Tensor) -> Tuple[Tensor, Dict[str, Tensor]]:
        """Cross-entropy of the (attention) model's logits. ``x``: normalized images, or in
        frozen mode a feature-cache batch ``{"A", "gray", "top1"}`` (no backbone forward up
        to the layer). Logs ``ce``, ``acc`` and (LFI-CAM) ``area`` = mean of ``L``."""
        if isinstance(x, dict):
            if self.lficam is None or self.mode != "frozen":
                raise ValueError("cached features can only train a frozen-mode LFI-CAM")
            out = net(features=x["A"].float(), gray=x["gray"].float())
            t = x["top1"] if self.labels == "model" else self.targets(None, y)
        else:
            out = net(x)
            t = self.targets(x, y)
        logits = out[0] if isinstance(out, tuple) else out
        ce = F.cross_entropy(logits.float(), t)
        logs = {"ce": ce.detach(), "acc": (logits.argmax(1) == t).float().mean().detach()}
        if isinstance(out, tuple):
            logs["area"] = out[1].detach().float().mean()
        return ce, logs

    def evaluate(self, loader: Iterable) -> Dict[str, float]:
        """Held-out ``loss``, ``top1`` (vs ground truth, where known), and in frozen mode
        ``backbone_top1`` and ``agree`` (fraction with the frozen model's top-1)."""
        dev = next(self.net.parameters()).device
        sums: Dict[str, float] = {}
        n = n_gt = 0
        with torch.inference_mode():
            for x, y in loader:
                x = x.to(dev)
                y = torch.as_tensor(y).to(dev).long()
                out = self.net(x)
                logits = out[0] if isinstance(out, tuple) else out
                pred = logits.argmax(1)
                known = y >= 0
                if self.mode == "frozen":
                    ref = self._frozen_top1(x)
                    sums["agree"] = sums.get("agree", 0.0) + float((pred == ref).sum())
                    sums["backbone_top1"] = sums.get("backbone_top1", 0.0) + float((ref == y)[known].sum())
                    t = ref if self.labels == "model" else torch.where(known, y, ref)
                else:
                    t = torch.where(known, y, pred)
                sums["loss"] = sums.get("loss", 0.0) + float(F.cross_entropy(logits.float(), t, reduction="sum"))
                sums["top1"] = sums.get("top1", 0.0) + float((pred == y)[known].sum())
                n += x.shape[0]
                n_gt += int(known.sum())
        res = {"loss": sums.get("loss", 0.0) / max(n, 1)}
        if self.mode == "frozen":
            res["agree"] = sums["agree"] / max(n, 1)
        if n_gt:
            res["top1"] = sums["top1"] / n_gt
            if self.mode == "frozen":
                res["backbone_top1"] = sums["backbone_top1"] / n_gt
        return res


# -- the API ------------------------------------------------------------------------------------
def train_lficam(
    backbone: Backbone,
    train_set,
    val_set=None,
    *,
    mode: str = "frozen",
    layer: Optional[str] = None,
    labels: Optional[str] = None,
    num_classes: Optional[int] = None,
    class_map: Optional[List[int]] = None,
    class_names: Optional[List[str]] = None,
    init: str = "pretrained",
    depth: int = 4,
    image_size: Optional[int] = None,
    epochs: int = 10,
    batch_size: int = 64,
    lr: float = 0.1,
    momentum: float = 0.9,
    weight_decay: Optional[float] = None,
    out: Union[str, os.PathLike, None] = None,
    resume: bool = False,
    overwrite: bool = False,
    seed: int = 0,
    num_workers: int = 0,
    device: Union[None, str, torch.device] = None,
    progress: bool = True,
    log=print,
    cache: Union[None, bool, str, os.PathLike] = None,
    views: str = "center+flip",
    best_metric: Optional[Tuple[str, str]] = None,
    figure: bool = True,
) -> Dict[str, Any]:
    """Train LFI-CAM with the paper's recipe; returns :func:`camzoo.train.loop.fit`'s result.

    SGD (momentum 0.9, no Nesterov), lr ``lr`` divided by 10 at 50 % and 75 % of ``epochs``
    (:func:`paper_milestones`), weight decay :func:`default_weight_decay` unless given.
    ``train_set`` / ``val_set`` yield ``(x normalized [3,S,S], y int or -1)`` (e.g.
    :func:`lficam_data`). See :class:`LFICAMTask` for the other arguments.

    ``cache`` (frozen mode only; as in :func:`camzoo.train.lcam.train_lcam`): train the FIN on
    cached features and gray images of fixed ``views``, so an epoch runs the FIN and the
    classifier's tail only; it needs ``Backbone.head`` at the layer (``cache=True``, the
    default location, falls back to no cache when there is none; a folder is an error).
    ``best_metric``: default the held-out ``loss``; ``figure``: as in :func:`camzoo.train.loop.fit`.
    """
    size = int(image_size or backbone.input_size)
    wd = default_weight_decay(size) if weight_decay is None else float(weight_decay)
    task = LFICAMTask(backbone, mode, layer, labels=labels, num_classes=num_classes,
                      class_map=class_map, class_names=class_names, init=init, depth=depth,
                      image_size=size, seed=seed)
    if cache is True and mode == "frozen" and task.layer not in backbone.heads:
        log(f"no feature cache: backbone {backbone.name!r} cannot run the rest of the network "
            f"from layer {task.layer!r}; training uncached")
        cache = None
    if cache is not None and cache is not False:
        from .cache import cached_training_set, default_cache_root

        if mode != "frozen":
            raise ValueError(f"the feature cache needs a frozen backbone (--mode frozen); mode "
                             f"{mode!r} trains the backbone, so its features change (use --no-cache)")
        if task.layer not in backbone.heads:
            raise ValueError(f"the feature cache needs the rest of the network after layer "
                             f"{task.layer!r}, which backbone {backbone.name!r} cannot run; "
                             f"layers with a head: {', '.join(backbone.heads) or 'none'} (or --no-cache)")
        root = default_cache_root(out) if cache is True else cache
        train_set = cached_training_set(train_set, backbone, task.layer, root, views=views,
                                        batch_size=batch_size, num_workers=num_workers,
                                        progress=progress, log=log)
    return fit(task, train_set, val_set, epochs=epochs, batch_size=batch_size,
               optimizer=sgd(lr, momentum=momentum, nesterov=False, weight_decay=wd),
               scheduler=multistep(paper_milestones(epochs), 0.1), out=out, resume=resume,
               overwrite=overwrite, seed=seed, num_workers=num_workers,
               device=device if device is not None else backbone.device, progress=progress,
               log=log, best_metric=best_metric, figure=figure)


def lficam_data(data, backbone: Backbone, *, num_classes: Optional[int] = None,
                val_fraction: float = 0.2, seed: int = 0, split_seed: int = 0,
                limit: Optional[int] = None, image_size: Optional[int] = None,
                need_labels: bool = False, labels_file=None) -> Tuple[LFICAMImages, LFICAMImages, Dict[str, Any]]:
    """``(train, held_out, info)`` from an image folder (any :func:`camzoo.data.datasets.open_dataset`
    layout), split by image. ``split_seed`` chooses the ``limit`` subset and the held-out
    split (the same for every training ``seed``, so models trained with different seeds are
    compared on the same held-out images); ``seed`` seeds the augmentation. With ``num_classes`` (a new classifier) the labels are mapped to
    ``0..num_classes-1``; ``info = {"class_map", "class_names"}`` (``None`` without a new
    classifier)."""
    from ..data.datasets import open_dataset
    from .data import check_gt_labels, split_training

    full = open_dataset(data, labels=labels_file)
    ds = full if limit is None else open_dataset(data, labels=labels_file, limit=limit, seed=split_seed)
    info: Dict[str, Any] = {"class_map": None, "class_names": None}
    label_map = None
    if num_classes is not None:
        if not full.has_labels:
            raise ValueError(f"a new {num_classes}-class classifier needs ground-truth labels, but "
                             f"{data} (layout {full.layout!r}) has none for some images")
        # the classes of the whole folder (a small --limit may miss some)
        label_map, class_map = label_mapping([it.label for it in full.items], num_classes)
        names = imagenet_class_names() if class_map[-1] < 1000 else None
        info = {"class_map": class_map,
                "class_names": [names[c] if names else f"class_{c}" for c in class_map]}
    elif need_labels:
        check_gt_labels(ds, data, backbone)
    train, held = split_training(ds, data, val_fraction, split_seed)
    mk = lambda items, aug: LFICAMImages(items, backbone, augment=aug, seed=seed, root=ds.root,  # noqa: E731
                                         size=image_size, label_map=label_map)
    return mk(train, True), mk(held, False), info
