"""Training L-CAM heads (``camzoo train lcam``): the :class:`LCAMTask` for the shared loop.

One training step (paper Sec. 3.2, Fig. 2a/b), for a batch ``x`` of normalized images:

1. one forward of the frozen classifier (no grad) gives the explanation layer's features
   ``A`` ``[B,K,h,w]`` and the logits; the target ``y`` is the model's top-1 ("model
   truth", the paper's choice) or the ground truth (``labels="gt"``). With the feature
   cache (:mod:`camzoo.train.cache`, ``cache=``) ``A`` and the top-1 of each view are read
   from the cache instead: an Fm step then costs only the head and the classifier's tail
   (``Backbone.head``), an Img step the masked forward and backward;
2. the head gives each sample's *own* class map ``L^(y_i)`` ``[B,h,w]``; ``S = sigmoid(L)``.
   (The authors' training script builds the maps of every class in the batch for every
   sample, an ``N x N`` set, and masks with the wrong ones; camzoo uses one map per sample,
   as the paper's equations say.)
3. Fm: logits of ``Backbone.head(A * S)``; Img: logits of the whole model on the image
   (in [0,1]) times ``S`` upsampled bilinearly, renormalized;
4. loss = ``l1*TV(S) + l2*AV(S) + l3*CE(y, logits)`` (:func:`camzoo.explainers.learned.lcam.lcam_loss`).

The classifier stays in eval mode (no dropout, frozen BatchNorm statistics) with
``requires_grad=False``; gradients flow *through* it to the head only. On CUDA the
classifier's forwards run under bf16 autocast by default (``amp``); the head, the mask and
the loss stay float32.

:func:`train_lcam` is the Python API behind the CLI.
"""
from __future__ import annotations

import os
from typing import Any, Dict, Iterable, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..explainers.base import minmax, upsample
from ..explainers.learned.lcam import (PAPER_WEIGHTS, REGULARIZERS, VARIANTS, LCAMHead,
                                       authors_regularizers, lcam_loss, masked_logits)
from ..utils import autocast as autocast_context
from ..models.backbone import Backbone
from .loop import TrainTask, exponential_decay, fit, sgd

AMP_CHOICES = ("auto", "bf16", None)


def resolve_amp(amp: Optional[str], device: torch.device) -> Optional[str]:
    """Autocast dtype of the classifier's training forwards: ``"auto"`` = bf16 on CUDA, none
    elsewhere; ``"bf16"`` needs CUDA (on CPUs without bf16 units it is slower, not
    faster); ``None``: float32."""
    if amp not in AMP_CHOICES:
        raise ValueError(f"amp must be one of auto, bf16, none; got {amp!r}")
    if amp == "auto":
        return "bf16" if device.type == "cuda" else None
    if amp is not None and device.type != "cuda":
        raise ValueError(f"amp={amp!r} is for CUDA; training on {device} runs in float32 "
                         "(use amp=None / --amp none, or 'auto')")
    return amp

#: default (epochs, lr decay per epoch) per backbone; paper: VGG-16 7 x 0.75, ResNet-50 25 x 0.95
SCHEDULES: Dict[str, Tuple[int, float]] = {
    "vgg16": (7, 0.75),
    "resnet50": (25, 0.95),
    "resnet18": (25, 0.95),
    "resnet101": (25, 0.95),
    "resnext50_32x4d": (25, 0.95),
    "resnext101_32x8d": (25, 0.95),
    "efficientnet_lite0": (25, 0.95),
}
DEFAULT_SCHEDULE = (25, 0.95)


def default_schedule(backbone: str) -> Tuple[int, float]:
    """``(epochs, lr_decay)`` defaults: the paper's for VGG-16 (7, 0.75) and ResNet-50
    (25, 0.95); every other backbone uses ResNet-50's (a reasonable choice for a
    global-pooling CNN; not tuned)."""
    return SCHEDULES.get(backbone, DEFAULT_SCHEDULE)


class LCAMTask(TrainTask):
    """Train an :class:`LCAMHead` on the frozen ``backbone`` at ``layer``.

    Args:
        backbone: the frozen classifier (not modified; kept in eval mode).
        variant: ``"fm"`` or ``"img"``.
        layer: explanation layer (default: ``backbone.default_layer``); Fm needs
            ``Backbone.head`` support at that layer.
        labels: ``"model"`` (top-1 of the frozen model on the same crop) or ``"gt"`` (the
            dataset's labels; ``-1`` labels are an error).
        ce_only: the paper's ablation (L-CAM-Fm*, L-CAM-Img*): ``l1 = l2 = 0``.
        l1, l2, l3, l4: loss weights (default: the paper's).
        seed: seeds the head's initialization.
        amp: autocast of the classifier's forwards (:func:`resolve_amp`).
        regularizer: ``"paper"`` (Eqs. 7-8 on each image's own mask, averaged over the
            batch) or ``"authors"`` (the authors' training code: TV and AV over the masks of
            all batch labels on every image, TV with a 0.3 edge penalty and divided by 2B:
            :func:`camzoo.explainers.learned.lcam.authors_regularizers`). The CE term and
            the masking use each image's own mask either way.
        init_from: start from the head of this L-CAM checkpoint (same backbone, weights,
            layer, classes) instead of a random one, e.g. L-CAM-Img from a trained L-CAM-Fm
            head (not in the paper: a warm start for a small compute budget).

    ``loss(net, x, y)`` takes normalized images ``x`` ``[B,3,H,W]``, or a feature-cache
    batch ``{"A": [B,K,h,w] (float16), "top1": [B], "gray": ..., "x": images (Img only)}``.
    """

    name = "lcam"
    identity_keys = ("variant", "backbone", "weights_id", "layer", "in_channels", "num_classes",
                     "labels", "l1", "l2", "l3", "l4", "regularizer")

    def __init__(self, backbone: Backbone, variant: str, layer: Optional[str] = None, *,
                 labels: str = "model", ce_only: bool = False,
                 l1: float = PAPER_WEIGHTS["l1"], l2: float = PAPER_WEIGHTS["l2"],
                 l3: float = PAPER_WEIGHTS["l3"], l4: float = PAPER_WEIGHTS["l4"],
                 seed: int = 0, amp: Optional[str] = "auto", regularizer: str = "paper",
                 init_from: Union[None, str, os.PathLike] = None) -> None:
        if variant not in VARIANTS:
            raise ValueError(f"unknown L-CAM variant {variant!r}; variants: {', '.join(VARIANTS)}")
        if labels not in ("model", "gt"):
            raise ValueError(f"labels must be 'model' or 'gt'; got {labels!r}")
        if regularizer not in REGULARIZERS:
            raise ValueError(f"unknown regularizer {regularizer!r}; valid: {', '.join(REGULARIZERS)}")
        self.regularizer = regularizer
        self.bb = backbone
        self.variant = variant
        self.layer = layer or backbone.default_layer
        backbone.layer(self.layer)  # validates the name
        if variant == "fm" and self.layer not in backbone.heads:
            raise ValueError(f"L-CAM-Fm needs the rest of the network after layer {self.layer!r}, "
                             f"which backbone {backbone.name!r} cannot run; layers with a head: "
                             f"{', '.join(backbone.heads) or 'none'} (L-CAM-Img works at any layer)")
        self.labels = labels
        self.weights = {"l1": 0.0 if ce_only else float(l1), "l2": 0.0 if ce_only else float(l2),
                        "l3": float(l3), "l4": float(l4)}
        self.ce_only = ce_only
        K = backbone.channels(self.layer)
        g = torch.Generator().manual_seed(int(seed))
        self.net = LCAMHead(K, backbone.num_classes, generator=g).to(backbone.device)
        self.amp = resolve_amp(amp, backbone.device)
        self.init_from: Optional[Dict[str, Any]] = None
        if init_from is not None:
            self._warm_start(init_from)

    def _warm_start(self, path) -> None:
        """Start from the head of another L-CAM checkpoint (any variant / loss) of the same
        backbone, weights, layer and classes; recorded in the metadata (``init_from``)."""
        from ..explainers.learned.checkpoint import load_task_checkpoint, mismatches
        from ..models.backbone import hash_state_dict

        ck = load_task_checkpoint(path, "lcam", "init_from needs an L-CAM head")
        bad = mismatches(ck["metadata"], {"backbone": self.bb.name, "weights_id": self.bb.weights_id,
                                          "layer": self.layer, "in_channels": self.net.in_channels,
                                          "num_classes": self.net.num_classes})
        if bad:
            raise ValueError(f"cannot start from {path}: it was trained for another setup: "
                             + "; ".join(bad))
        self.net.load_state_dict(ck["state_dict"])
        self.init_from = {"file": os.path.basename(os.fspath(path)),
                          "variant": ck["metadata"].get("variant"), "epoch": int(ck["epoch"]),
                          "state_hash": hash_state_dict(ck["state_dict"])}

    # -- TrainTask ------------------------------------------------------------------------
    def modules(self) -> nn.Module:
        return self.net

    def train_mode(self) -> None:
        self.net.train()
        self.bb.model.eval()

    def eval_mode(self) -> None:
        self.net.eval()
        self.bb.model.eval()

    def metadata(self) -> Dict[str, Any]:
        return {"variant": self.variant, "backbone": self.bb.name,
                "weights_id": self.bb.weights_id, "layer": self.layer,
                "in_channels": self.net.in_channels, "num_classes": self.net.num_classes,
                "labels": self.labels, "ce_only": self.ce_only, **self.weights,
                "regularizer": self.regularizer, "init_from": self.init_from,
                "explainer": f"lcam-{self.variant}"}

    def targets(self, top1: Tensor, y: Tensor) -> Tensor:
        """The classes trained on: the model's top-1 ``top1``, or the given labels (checked)."""
        if self.labels == "model":
            return top1
        if bool((y < 0).any()):
            raise ValueError("labels='gt' but some images have no ground-truth label (-1)")
        self.bb.check_classes(y)
        return y

    def step(self, net: nn.Module, x, y: Tensor) -> Dict[str, Any]:
        """One training forward, on images or on a feature-cache batch (see the class).

        Returns a dict: ``loss`` (0-dim), ``logs`` (loss components, ``masked_acc`` and
        ``area`` = mean of the mask ``S``), ``t`` (targets ``[B]``), ``L`` (the head's maps
        ``[B,h,w]``, pre-sigmoid) and ``logits`` (clean ``[B,R]``; None from the cache).
        """
        if isinstance(x, dict):  # cached: no clean forward
            A, top1, img, logits = x["A"].float(), x["top1"], x.get("x"), None
            if self.variant == "img" and img is None:
                raise ValueError("L-CAM-Img needs the images: a cached batch without 'x' "
                                 "(open the cache with images=True)")
        else:
            with torch.no_grad(), autocast_context(self.bb.device, self.amp):
                A, logits = self.bb.features_and_logits(x, self.layer)
            A, top1, img = A.float(), logits.float().argmax(dim=1), x
        t = self.targets(top1, y)
        authors = self.regularizer == "authors"
        L = net(A, t, pairs=authors)
        if authors:
            S_pairs = torch.sigmoid(L.float())
            L = torch.diagonal(L, dim1=0, dim2=1).permute(2, 0, 1)  # each image's own map
        S = torch.sigmoid(L.float())
        with autocast_context(self.bb.device, self.amp):
            out = masked_logits(self.bb, self.variant, self.layer, img, A, S)
        if authors:
            w = self.weights
            tv, av = authors_regularizers(S_pairs, w["l4"])
            ce = F.cross_entropy(out.float(), t)
            loss = w["l1"] * tv + w["l2"] * av + w["l3"] * ce
            logs = {"tv": tv.detach(), "av": av.detach(), "ce": ce.detach()}
        else:
            loss, logs = lcam_loss(S, out, t, **self.weights)
        logs["masked_acc"] = (out.argmax(dim=1) == t).float().mean()
        logs["area"] = S.detach().mean()
        return {"loss": loss, "logs": logs, "t": t, "L": L, "logits": logits}

    def loss(self, net: nn.Module, x: Tensor, y: Tensor) -> Tuple[Tensor, Dict[str, Tensor]]:
        r = self.step(net, x, y)
        return r["loss"], r["logs"]

    #: held-out sets up to this many bytes (images + features + logits) keep their clean
    #: forward between epochs (the classifier is frozen, the held-out views are fixed)
    held_out_memory = 1 << 30

    def _held_out(self, loader: Iterable):
        """``(x, y, {"A", "top1", "logits"})`` per held-out batch: the clean forward of the
        frozen classifier, computed once and kept in memory when the set is small enough
        (:attr:`held_out_memory`), else recomputed each time."""
        ds = getattr(loader, "dataset", None)
        memo = getattr(self, "_memo", None)
        if memo is not None and ds is not None and memo[0] is ds:
            yield from memo[1]
            return
        kept, size = [], 0
        for x, y in loader:
            x = x.to(self.bb.device)
            y = torch.as_tensor(y).to(self.bb.device).long()
            A, logits = self.bb.features_and_logits(x, self.layer)
            item = (x, y, {"A": A, "top1": logits.float().argmax(dim=1), "logits": logits})
            size += sum(t.numel() * t.element_size() for t in (x, A, logits))
            if kept is not None:
                kept = kept + [item] if size <= self.held_out_memory else None
            yield item
        if kept is not None and ds is not None:
            self._memo = (ds, kept)

    def evaluate(self, loader: Iterable) -> Dict[str, float]:
        """Held-out loss components and AD/IC(100%) of the maps (percent; lower/higher is better).

        AD/IC(100%) follow :mod:`camzoo.metrics.lcam`: ``O = softmax(f(normalize(x01 * V)))[c]``
        with ``V`` the inference map (min-max, upsampled) and ``c`` the target class.
        """
        from ..metrics.lcam_protocol import average_drop, increase_in_confidence, masked_confidence
        from ..metrics.scorer import Scorer

        tot: Dict[str, float] = {}
        n = 0
        with torch.inference_mode():
            for x, y, clean in self._held_out(loader):
                r = self.step(self.net, {**clean, "x": x}, y)
                t = r["t"]
                Y = clean["logits"].float().softmax(1).gather(1, t[:, None])[:, 0]
                V = upsample(minmax(r["L"]), tuple(x.shape[-2:])).clamp_(0, 1)
                b = x.shape[0]
                O = masked_confidence(Scorer(self.bb.model, eval_batch_size=b), self.bb.denormalize(x),
                                      V, t, self.bb.normalize, nus=(1.0,))[:, 0]
                vals = {"loss": r["loss"], **r["logs"], "ad100": average_drop(Y, O).mean(),
                        "ic100": increase_in_confidence(Y, O).mean()}
                for k, v in vals.items():
                    tot[k] = tot.get(k, 0.0) + float(v) * b
                n += b
        return {k: v / max(n, 1) for k, v in tot.items()}


def train_lcam(
    backbone: Backbone,
    train_set,
    val_set=None,
    *,
    variant: str,
    layer: Optional[str] = None,
    labels: str = "model",
    ce_only: bool = False,
    epochs: Optional[int] = None,
    batch_size: int = 64,
    lr: float = 1e-4,
    lr_decay: Optional[float] = None,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    out: Union[str, os.PathLike, None] = None,
    resume: bool = False,
    overwrite: bool = False,
    seed: int = 0,
    num_workers: int = 0,
    progress: bool = True,
    log=print,
    cache: Union[None, bool, str, os.PathLike] = None,
    views: str = "center+flip",
    amp: Optional[str] = "auto",
    best_metric: Optional[Tuple[str, str]] = None,
    figure: bool = True,
    regularizer: str = "paper",
    init_from: Union[None, str, os.PathLike] = None,
    **loss_weights: float,
) -> Dict[str, Any]:
    """Train an L-CAM head with the paper's recipe; returns :func:`camzoo.train.loop.fit`'s result.

    SGD (momentum 0.9, Nesterov, weight decay 5e-4), batch 64, lr 1e-4 decayed per epoch by
    ``lr_decay``; ``epochs`` / ``lr_decay`` default per backbone (:func:`default_schedule`).
    ``train_set`` / ``val_set`` yield ``(x normalized [3,H,W], y int or -1)`` (e.g.
    :func:`camzoo.train.data.training_data`). ``loss_weights``: ``l1``..``l4`` overrides.

    ``cache``: train on cached features of fixed ``views`` (:mod:`camzoo.train.cache`;
    ``train_set`` must then be a :class:`camzoo.train.data.TrainImages`): a folder (the
    cache root), ``True`` (``feature_cache/`` beside ``out``), or ``None`` / ``False`` (no
    cache: ``train_set`` as it is, e.g. fresh random crops every epoch). ``amp``: see
    :func:`resolve_amp`. ``best_metric``: see :func:`camzoo.train.loop.fit` (default: the
    held-out ``loss``, lower is better). ``regularizer``: see :class:`LCAMTask`. ``figure``:
    redraw ``NAME.training.png`` after every epoch (:func:`camzoo.train.loop.fit`).
    """
    d_epochs, d_decay = default_schedule(backbone.name)
    epochs = d_epochs if epochs is None else epochs
    lr_decay = d_decay if lr_decay is None else lr_decay
    task = LCAMTask(backbone, variant, layer, labels=labels, ce_only=ce_only, seed=seed,
                    amp=amp, regularizer=regularizer, init_from=init_from, **loss_weights)
    if cache is not None and cache is not False:
        from .cache import cached_training_set, default_cache_root

        root = default_cache_root(out) if cache is True else cache
        train_set = cached_training_set(train_set, backbone, task.layer, root, views=views,
                                        images=variant == "img", batch_size=batch_size,
                                        num_workers=num_workers, progress=progress, log=log)
    return fit(task, train_set, val_set, epochs=epochs, batch_size=batch_size,
               optimizer=sgd(lr, momentum=momentum, nesterov=True, weight_decay=weight_decay),
               scheduler=exponential_decay(lr_decay), out=out, resume=resume,
               overwrite=overwrite, seed=seed, num_workers=num_workers,
               device=backbone.device, progress=progress, log=log, best_metric=best_metric,
               figure=figure)
