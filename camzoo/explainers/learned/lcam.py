"""L-CAM-Fm and L-CAM-Img (Gkartzonika, Gkalelis, Mezaris, ECCV-W 2022): learned explainers.

An attention head ``g`` (a 1x1 convolution from the K channels of the explanation layer to
R = num_classes maps, with bias) is trained on a *frozen* classifier; the explanation of
class ``c`` is its map ``L^(c)``. Training (``camzoo train lcam``, :mod:`camzoo.train.lcam`)
masks either the feature maps (Fm) or the image (Img) with ``sigmoid(L^(y))``; inference is
the same for both variants and costs one forward pass:

    A = layer output of one forward;  L = g(A)[c]  (pre-sigmoid, only class c computed)
    V = upsample(minmax(L))  (bilinear, align_corners=False)

This module holds the head (:class:`LCAMHead`), the loss terms of the paper's Eqs. (6)-(8)
(:func:`tv_loss`, :func:`av_loss`, :func:`lcam_loss`) and the registered explainers
``lcam-fm`` / ``lcam-img`` (option ``checkpoint=PATH``).
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..base import Explainer, minmax, register_explainer, upsample
from .checkpoint import file_key, load_task_checkpoint, mismatches

VARIANTS = ("fm", "img")
#: the paper's loss weights (Eqs. 6-7): l1 TV, l2 AV, l3 CE, l4 AV exponent
PAPER_WEIGHTS = {"l1": 0.01, "l2": 2.0, "l3": 1.5, "l4": 0.3}
#: added inside AV's power (authors' code) so the gradient stays finite at S = 0
AV_EPS = 0.0005


class LCAMHead(nn.Module):
    """The attention head g: ``L^(r) = sum_k W[r,k] A_k + b[r]`` (a 1x1 conv K -> R).

    Parameters ``weight`` ``[R,K,1,1]`` and ``bias`` ``[R]`` have the shapes and the default
    initialization of ``nn.Conv2d(K, R, 1)`` (Kaiming-uniform with a = sqrt(5), bias
    uniform in +-1/sqrt(K)), drawn from ``generator`` when given.
    """

    def __init__(self, in_channels: int, num_classes: int,
                 generator: Optional[torch.Generator] = None) -> None:
        super().__init__()
        self.in_channels = int(in_channels)
        self.num_classes = int(num_classes)
        self.weight = nn.Parameter(torch.empty(num_classes, in_channels, 1, 1))
        self.bias = nn.Parameter(torch.empty(num_classes))
        with torch.no_grad():
            nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5), generator=generator)
            bound = 1.0 / math.sqrt(in_channels)
            nn.init.uniform_(self.bias, -bound, bound, generator=generator)

    def forward(self, A: Tensor, y: Optional[Tensor] = None, pairs: bool = False) -> Tensor:
        """Class maps before the sigmoid.

        Args:
            A: feature maps ``[B,K,h,w]``.
            y: LongTensor ``[B]``: compute only map ``y[i]`` for sample ``i`` (its *own*
                class). ``None``: all R maps.
            pairs: with ``y``: the maps of *every* ``y[j]`` for every sample ``i``
                (``[B,B,h,w]``, entry ``[i,j]`` = map ``y[j]`` of sample ``i``; the diagonal
                is each sample's own map), as the authors' training code regularizes.
        Returns:
            ``[B,h,w]`` when ``y`` is given, ``[B,B,h,w]`` with ``pairs``, else ``[B,R,h,w]``;
            real-valued.
        """
        if A.shape[1] != self.in_channels:
            raise ValueError(f"L-CAM head expects {self.in_channels} channels; got A of shape "
                             f"{tuple(A.shape)}")
        if y is None:
            return F.conv2d(A, self.weight.to(A.dtype), self.bias.to(A.dtype))
        w = self.weight[y, :, 0, 0].to(A.dtype)  # [B,K]
        b = self.bias[y].to(A.dtype)
        if pairs:
            return torch.einsum("nk,bkhw->bnhw", w, A) + b[None, :, None, None]
        return torch.einsum("bk,bkhw->bhw", w, A) + b[:, None, None]


# -- loss (paper Eqs. 6-8) ------------------------------------------------------------------
def tv_loss(S: Tensor) -> Tensor:
    """Total variation, Eq. (8), averaged over the batch.

    ``TV(S) = sum_{p,q} (s[p,q] - s[p,q+1])^2 + (s[p,q] - s[p+1,q])^2`` over the pairs of
    neighbours inside the map.

    Args:
        S: masks ``[B,h,w]`` (in [0,1] in practice).
    Returns:
        0-dim tensor, >= 0.
    """
    dh = (S[:, :, 1:] - S[:, :, :-1]).pow(2).sum(dim=(1, 2))
    dv = (S[:, 1:, :] - S[:, :-1, :]).pow(2).sum(dim=(1, 2))
    return (dh + dv).mean()


def av_loss(S: Tensor, l4: float = PAPER_WEIGHTS["l4"], eps: float = AV_EPS) -> Tensor:
    """Average, Eq. (7): ``mean_{p,q} (s[p,q] + eps)^l4``, averaged over the batch.

    Args:
        S: masks ``[B,h,w]`` in [0,1].
        l4: the exponent (paper: 0.3).
        eps: keeps the gradient finite at 0 (authors' code: 0.0005).
    Returns:
        0-dim tensor.
    """
    return (S + eps).pow(l4).mean(dim=(1, 2)).mean()


def lcam_loss(S: Tensor, logits: Tensor, y: Tensor, *, l1: float = PAPER_WEIGHTS["l1"],
              l2: float = PAPER_WEIGHTS["l2"], l3: float = PAPER_WEIGHTS["l3"],
              l4: float = PAPER_WEIGHTS["l4"]) -> Tuple[Tensor, Dict[str, Tensor]]:
    """Eq. (6): ``l1 * TV(S) + l2 * AV(S) + l3 * CE(y, logits)``.

    Args:
        S: ``sigmoid(L^(y))`` ``[B,h,w]`` in [0,1].
        logits: ``[B,R]`` of the masked forward (Fm: masked features; Img: masked image).
        y: LongTensor ``[B]``, the classes whose maps made ``S``.
        l1, l2, l3, l4: the weights (the CE-only ablation sets ``l1 = l2 = 0``).
    Returns:
        ``(loss, {"tv", "av", "ce"})``: the total and the *unweighted* components (detached).
    """
    tv = tv_loss(S)
    av = av_loss(S, l4)
    ce = F.cross_entropy(logits.float(), y)
    loss = l1 * tv + l2 * av + l3 * ce
    return loss, {"tv": tv.detach(), "av": av.detach(), "ce": ce.detach()}


#: the authors' TV border penalty (``smoothness_loss(..., border_penalty=0.3)``)
AUTHORS_BORDER = 0.3
#: how the TV / AV terms are computed (``regularizer=``)
REGULARIZERS = ("paper", "authors")


def authors_regularizers(S_pairs: Tensor, l4: float = PAPER_WEIGHTS["l4"], eps: float = AV_EPS,
                         border: float = AUTHORS_BORDER) -> Tuple[Tensor, Tensor]:
    """TV and AV as the authors' training code computes them (``get_loss`` of
    ``models/ResNet50_L_CAM_Img.py``), on the masks of *every* batch label for every image.

    ``AV = mean over all entries of (S + eps)^l4``;
    ``TV = (sum of all squared neighbour differences + border * sum of S^2 on the four edges
    of every map) / (2 * B)``, i.e. normalized by the batch size, not averaged over maps.

    Args:
        S_pairs: ``[B,N,h,w]`` in [0,1]: entry ``[i,j]`` is image ``i``'s mask for the
            ``j``-th batch label (:meth:`LCAMHead.forward` with ``pairs=True``, sigmoid).
        l4, eps: AV exponent and offset; border: edge penalty weight.
    Returns:
        ``(tv, av)``, 0-dim tensors.
    """
    B = S_pairs.shape[0]
    dv = (S_pairs[:, :, 1:, :] - S_pairs[:, :, :-1, :]).pow(2).sum()
    dh = (S_pairs[:, :, :, 1:] - S_pairs[:, :, :, :-1]).pow(2).sum()
    edges = (S_pairs[:, :, -1, :].pow(2).sum() + S_pairs[:, :, 0, :].pow(2).sum()
             + S_pairs[:, :, :, -1].pow(2).sum() + S_pairs[:, :, :, 0].pow(2).sum())
    tv = (dv + dh + border * edges) / (2.0 * B)
    av = (S_pairs + eps).pow(l4).mean()
    return tv, av


def masked_logits(bb, variant: str, layer: str, x: Tensor, A: Tensor, S: Tensor) -> Tensor:
    """Logits of the frozen classifier with the L-CAM mask applied (training forward).

    Args:
        bb: the frozen :class:`camzoo.Backbone`.
        variant: ``"fm"``: ``Backbone.head(A * S, layer)``; ``"img"``: ``S`` upsampled
            bilinearly (align_corners=False) to the input size multiplies the image in
            [0,1] space, which is normalized again and runs through the whole model
            (channels-last).
        layer: the explanation layer.
        x: normalized images ``[B,3,H,W]``; A: its features ``[B,K,h,w]``.
        S: masks ``[B,h,w]`` in [0,1].
    Returns:
        ``[B,R]`` logits (differentiable w.r.t. ``S``).
    """
    if variant == "fm":
        return bb.head(A * S[:, None].to(A.dtype), layer)
    if variant == "img":
        M = upsample(S, tuple(x.shape[-2:]))
        # channels-last: the layout the classifier's convolutions are fastest in (1.46x on
        # the CPU of benchmarks/README.md "Training from the feature cache")
        xm = bb.normalize(bb.denormalize(x) * M[:, None].to(x.dtype))
        return bb.model(xm.contiguous(memory_format=torch.channels_last))
    raise ValueError(f"unknown L-CAM variant {variant!r}; variants: {', '.join(VARIANTS)}")


# -- checkpoints ----------------------------------------------------------------------------
def load_head(path: str, device: torch.device) -> Tuple[LCAMHead, Dict[str, Any]]:
    """The head (eval mode, frozen, on ``device``) and metadata of an L-CAM checkpoint."""
    ck = load_task_checkpoint(path, "lcam", "train one with `camzoo train lcam`")
    meta = ck["metadata"]
    head = LCAMHead(int(meta["in_channels"]), int(meta["num_classes"]))
    head.load_state_dict(ck["state_dict"])
    head.eval().requires_grad_(False).to(device)
    return head, meta


class _LCAM(Explainer):
    """Shared inference of both variants (they differ only in how the head was trained)."""

    variant: str = ""
    needs_checkpoint = True
    defaults = {"checkpoint": None}

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        # the loaded head, keyed by (file, mtime, device): this instance's own, not global
        self._loaded: Optional[Tuple[tuple, LCAMHead, Dict[str, Any]]] = None

    def forward_passes(self, model) -> int:
        return 1

    def check_backbone(self, model) -> None:
        """The checkpoint given, readable, and trained for ``model`` (loaded once, kept)."""
        super().check_backbone(model)
        with self.option_errors("checkpoint"):
            self.head(model)

    def head(self, model) -> Tuple[LCAMHead, Dict[str, Any]]:
        """The trained head and its metadata, checked against ``model``."""
        path = self.options["checkpoint"]
        if not path:
            raise ValueError(f"{self.name} needs checkpoint=PATH (CLI: --opt "
                             f"{self.name}.checkpoint=PATH), an L-CAM head trained with "
                             f"`camzoo train lcam --variant {self.variant}`")
        key = (*file_key(path), str(model.device))
        if self._loaded is None or self._loaded[0] != key:
            self._loaded = (key, *load_head(path, model.device))
        _, head, meta = self._loaded
        bad = mismatches(meta, {"variant": self.variant, "backbone": model.name,
                                "weights_id": model.weights_id, "num_classes": model.num_classes})
        if meta.get("layer") not in model.layers:
            bad.append(f"layer: checkpoint {meta.get('layer')!r}, backbone {model.name!r} has "
                       f"{', '.join(model.layers)}")
        if bad:
            raise ValueError(f"{self.name}: checkpoint {path} was trained for another setup "
                             f"(backbone {meta.get('backbone')!r}, layer {meta.get('layer')!r}, "
                             f"variant {meta.get('variant')!r}) than the one it is used with "
                             f"(backbone {model.name!r}, variant {self.variant!r}): "
                             + "; ".join(bad))
        return head, meta

    def feature_maps(self, model, A: Tensor, y: Tensor, size: Tuple[int, int]) -> Tensor:
        """``A`` ``[B,K,h,w]`` and classes ``y`` -> maps ``[B,*size]`` in [0,1]."""
        head, _ = self.head(model)
        L = head(A, y)  # [B,h,w], pre-sigmoid; only the selected class map
        return upsample(minmax(L), size).clamp_(0.0, 1.0)

    def explain(self, model, x: Tensor, y: Optional[Tensor] = None) -> Tensor:
        """As :meth:`Explainer.explain`; with ``y=None`` the top-1 comes from the same single
        forward pass that gives the features (no extra forward)."""
        if y is not None:
            return super().explain(model, x, y)
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"x must be a normalized batch [B,3,H,W]; got shape {tuple(x.shape)}")
        _, meta = self.head(model)
        with torch.inference_mode():
            A, logits = model.features_and_logits(x.detach(), meta["layer"])
            maps = self.feature_maps(model, A, logits.argmax(dim=1), tuple(x.shape[-2:]))
        return self.finish_maps(maps, x)

    __call__ = explain

    def _explain(self, model, x: Tensor, y: Tensor) -> Tensor:
        _, meta = self.head(model)
        with torch.inference_mode():
            A, _ = model.features_and_logits(x, meta["layer"])
            return self.feature_maps(model, A, y, tuple(x.shape[-2:]))


@register_explainer
class LCAMFm(_LCAM):
    name = "lcam-fm"
    variant = "fm"
    summary = "L-CAM-Fm (Gkartzonika et al. 2022): learned attention head, trained on masked feature maps; 1 forward"


@register_explainer
class LCAMImg(_LCAM):
    name = "lcam-img"
    variant = "img"
    summary = "L-CAM-Img (Gkartzonika et al. 2022): learned attention head, trained on masked images; 1 forward"
