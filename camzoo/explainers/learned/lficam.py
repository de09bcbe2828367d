"""LFI-CAM (Lee et al., "LFI-CAM: Learning Feature Importance for Better Visual Explanation").

A classifier with an attention branch whose Feature Importance Network (FIN) learns one
weight per feature map, so that the CAM is made in the same forward pass as the prediction.
The model follows the authors' ImageNet code, at one explanation layer of a
:class:`camzoo.Backbone` (ResNet ``layer4``, Lite0 ``conv_head``, ...):

- ``F`` = the layer's output ``[B,C,m,n]``;
- gray image ``I~`` = mean over the 3 channels of the *normalized* input, bilinearly resized
  (``align_corners=False``) to ``m x n``: :func:`gray_image`;
- ``s(F)``: per-channel spatial min-max to [0,1]; a constant channel becomes 1 where
  ``F != 0`` and 0 where ``F == 0``: :func:`channel_minmax`;
- FIN input ``M = s(F) * I~``; FIN = 4 x [Conv3x3 C->C (padding 1, no bias), BatchNorm,
  ReLU], global average pooling, softmax over channels = ``w`` ``[B,C]``: :class:`FIN`;
- ``L = minmax(ReLU(sum_k w_k F_k))`` per image, in [0,1]: :func:`attention_map`;
- attention mechanism at the same layer: ``F' = (1 + L) * F``; the rest of the network
  turns ``F'`` into the logits (identical to ``Backbone.head(F', layer)``; implemented as a
  forward hook that replaces the layer's output, so the whole model runs exactly once);
- the explanation is ``L`` upsampled bilinearly to the input size (one forward pass).

A token layer of a vision transformer (``Backbone.reshapes``) works the same way: ``F`` is the
reshaped map ``[B,D,h,w]``, and ``(1 + L) * F`` goes back into the layer's token layout
(``TokenLayout.inverse``, prefix tokens such as the class token unchanged) before the rest of
the network runs.

:class:`LFICAM` is an ``nn.Module`` with ``forward(x) -> (logits, L)``. Modes:

- ``"frozen"``: the given backbone is used as is (eval mode, never modified, not a
  sub-module, so ``state_dict()`` holds the FIN only); only the FIN learns, through the
  attention mechanism and the cross-entropy loss. LFI-CAM then explains the same frozen model
  as every post-hoc method.
- ``"end-to-end"`` (the paper): a *copy* of the backbone (:func:`clone_backbone`; the
  caller's backbone is never touched) is trained together with the FIN; the LFI-CAM model is
  its own classifier (:meth:`LFICAM.as_backbone`).

As an explainer (``lficam`` with ``checkpoint=PATH`` from ``camzoo train lficam``), the map is
``L`` upsampled bilinearly (``align_corners=False``) to the input size: one forward pass. ``L``
does not depend on the class asked for (LFI-CAM makes one map per image, for its own decision).

Which classifier the metrics evaluate (:meth:`LFICAMExplainer.evaluated_backbone`):

- a **frozen-mode** checkpoint explains the given frozen backbone itself
  (``evaluated_backbone(model) is model``);
- an **end-to-end** checkpoint *is* its own classifier: ``evaluated_backbone(model)`` returns
  the LFI-CAM model wrapped as a :class:`camzoo.Backbone` (same normalization; name
  ``lficam[<backbone>]``), and the bench records it per method in ``config.json``
  (``methods.lficam.classifier``: key, name, weights_id).

The checkpoint must match the backbone it is used with: same backbone name and layer, and for
frozen mode the exact same weights (content hash); otherwise it is refused with a message
naming both. A loaded model is kept in the backbone's ``cache`` (it lives as long as the
backbone does).
"""
from __future__ import annotations

import os
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...models.backbone import Backbone, backbone_hash, freeze, hash_state_dict
from ...models.surgery import clone_backbone, replace_classifier
from ...models.zoo import eval_transform
from ..base import Explainer, minmax, register_explainer, upsample
from .checkpoint import file_key, load_task_checkpoint

MODES = ("frozen", "end-to-end")


# -- the pieces -----------------------------------------------------------------------------
def gray_image(x: Tensor, size: Tuple[int, int]) -> Tensor:
    """Gray version of the normalized input at feature resolution.

    Args:
        x: normalized float batch ``[B,3,H,W]`` (any range).
        size: ``(m, n)`` feature-map size.
    Returns:
        ``[B,1,m,n]``: channel mean of ``x``, bilinear resize (``align_corners=False``).
    """
    g = x.mean(dim=1, keepdim=True)
    if tuple(g.shape[-2:]) == tuple(size):
        return g
    return F.interpolate(g, size=tuple(size), mode="bilinear", align_corners=False)


def channel_minmax(f: Tensor) -> Tensor:
    """``s(F)``: per-sample, per-channel spatial min-max to [0,1] (differentiable, NaN-free).

    Args:
        f: feature maps ``[B,C,m,n]`` (any range).
    Returns:
        ``[B,C,m,n]`` in [0,1]. A channel that is constant over space becomes 1 where
        ``f != 0`` and 0 where ``f == 0`` (so an all-zero channel masks everything out and
        a constant non-zero channel keeps everything).
    """
    flat = f.flatten(2)
    lo = flat.amin(dim=2, keepdim=True)
    hi = flat.amax(dim=2, keepdim=True)
    rng = hi - lo
    # the clamp keeps the unselected branch finite, so torch.where's backward has no NaN
    scaled = (flat - lo) / rng.clamp_min(torch.finfo(rng.dtype).tiny)
    const = (flat != 0).to(flat.dtype)
    return torch.where(rng > 0, scaled, const).reshape(f.shape)


def attention_map(f: Tensor, w: Tensor) -> Tensor:
    """``L = minmax(ReLU(sum_k w_k F_k))`` per image.

    Args:
        f: feature maps ``[B,C,m,n]``.
        w: channel weights ``[B,C]`` (the FIN's softmax output).
    Returns:
        ``[B,m,n]`` float in [0,1] (a constant map is all zeros).
    """
    cam = torch.einsum("bc,bchw->bhw", w.to(f.dtype), f)
    return minmax(F.relu(cam))


class FIN(nn.Module):
    """Feature Importance Network: ``M [B,C,m,n] -> w [B,C]`` (softmax over channels, sums to 1).

    ``depth`` x [Conv3x3 C->C (padding 1, no bias), BatchNorm, ReLU], then global average
    pooling and a softmax over the C channels.
    """

    def __init__(self, channels: int, depth: int = 4) -> None:
        super().__init__()
        if channels < 1 or depth < 1:
            raise ValueError(f"FIN needs channels >= 1 and depth >= 1; got {channels}, {depth}")
        self.channels = int(channels)
        self.depth = int(depth)
        mods = []
        for _ in range(depth):
            mods += [nn.Conv2d(channels, channels, 3, padding=1, bias=False),
                     nn.BatchNorm2d(channels), nn.ReLU(inplace=True)]
        self.body = nn.Sequential(*mods)

    def reset_parameters(self, generator: Optional[torch.Generator] = None) -> None:
        """Kaiming-normal (fan_out, ReLU) convolutions, BN weight 1 / bias 0 (the authors' init)."""
        for m in self.body:
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu",
                                        generator=generator)
            elif isinstance(m, nn.BatchNorm2d):
                m.reset_parameters()

    def forward(self, m: Tensor) -> Tensor:
        """``[B,C,m,n]`` -> softmax weights ``[B,C]`` (float32, each row sums to 1)."""
        return torch.softmax(self.body(m).mean(dim=(2, 3)).float(), dim=1)


# -- the model --------------------------------------------------------------------------------
class _LogitsOnly(nn.Module):
    """``x -> logits`` of an :class:`LFICAM` (what a Backbone's ``model`` must be)."""

    def __init__(self, lficam: "LFICAM") -> None:
        super().__init__()
        self.lficam = lficam

    def forward(self, x: Tensor) -> Tensor:
        return self.lficam(x)[0]


class LFICAM(nn.Module):
    """LFI-CAM around one explanation layer of a backbone.

    Args:
        backbone: a :class:`camzoo.Backbone`. In ``"frozen"`` mode it is used as is and never
            modified; in ``"end-to-end"`` mode pass ``backbone`` already prepared (a copy, see
            :meth:`for_training`) or let the constructor copy it (``copy_backbone=True``).
        layer: explanation layer name (default ``backbone.default_layer``).
        mode: ``"frozen"`` or ``"end-to-end"``.
        depth: number of conv blocks in the FIN (4 in the paper).
        seed: seeds the FIN initialization (a ``torch.Generator``, no global RNG).
        copy_backbone: end-to-end only: copy ``backbone`` first (default True).

    ``forward(x)``: normalized ``[B,3,H,W]`` -> ``(logits [B,num_classes], L [B,m,n] in [0,1])``.
    """

    def __init__(self, backbone: Backbone, layer: Optional[str] = None, *, mode: str = "frozen",
                 depth: int = 4, seed: int = 0, copy_backbone: bool = True) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"unknown LFI-CAM mode {mode!r}; modes: {', '.join(MODES)}")
        self.mode = mode
        self.layer_name = layer or backbone.default_layer
        backbone.layer(self.layer_name)  # validates, listing the valid layers
        if mode == "end-to-end":
            bb = clone_backbone(backbone) if copy_backbone else backbone
            for p in bb.model.parameters():  # lift the frozen flags (on the copy)
                p.requires_grad_(True)
            self.body = bb.model  # registered: trained, saved in state_dict
        else:
            bb = backbone  # not registered: frozen, excluded from state_dict / DDP / .to()
        self.bb = bb
        layout = bb.reshape_of(self.layer_name)
        if layout is not None and not callable(getattr(layout, "inverse", None)):
            raise ValueError(
                f"LFI-CAM cannot re-weight layer {self.layer_name!r} of backbone {bb.name!r}: its "
                f"output is reshaped to a feature map by {layout!r}, which has no inverse to put "
                "(1+L)*F back into the layer's layout (use a camzoo.models.tokens.TokenLayout)")
        channels = bb.channels(self.layer_name)
        g = torch.Generator().manual_seed(int(seed))
        self.fin = FIN(channels, depth)
        self.fin.reset_parameters(g)
        self.fin.to(device=bb.device, memory_format=torch.channels_last)
        self.last: Dict[str, Tensor] = {}

    @property
    def backbone(self) -> Backbone:
        """The Backbone whose layer LFI-CAM reads (the copy in end-to-end mode)."""
        return self.bb

    def train(self, mode: bool = True) -> "LFICAM":
        """Train mode for the FIN (and the copied backbone end-to-end); a frozen backbone stays in eval."""
        super().train(mode)
        if self.mode == "frozen":
            self.bb.model.eval()
        return self

    def forward(self, x: Optional[Tensor] = None, *, features: Optional[Tensor] = None,
                gray: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """``x`` normalized ``[B,3,H,W]`` -> ``(logits [B,K], L [B,m,n] in [0,1])``.

        Frozen mode can also start from the layer's stored output (a feature cache):
        ``features`` ``F`` ``[B,C,m,n]`` and ``gray`` ``[B,1,m,n]`` (:func:`gray_image` of the
        input), giving the same result as ``x`` through ``Backbone.head((1 + L) * F)``.

        Also keeps ``self.last = {"F": features, "w": FIN weights [B,C], "L": L}`` of the
        last call (for inspection and tests).
        """
        if features is not None:
            return self._from_features(features, gray)
        if x is None:
            raise ValueError("LFICAM.forward needs x (images) or features= and gray=")
        out: Dict[str, Tensor] = {}
        layout = self.bb.reshape_of(self.layer_name)  # token layers: tokens <-> [B,C,m,n]

        def hook(module: nn.Module, inputs, output: Tensor) -> Tensor:
            if "L" in out:
                raise RuntimeError(f"layer {self.layer_name!r} ran twice in one forward; "
                                   "LFI-CAM needs a layer that is called once")
            f = output if layout is None else layout(output)
            m = channel_minmax(f) * gray_image(x, f.shape[-2:]).to(f.dtype)
            w = self.fin(m.contiguous(memory_format=torch.channels_last))
            L = attention_map(f, w)
            out.update(F=f.detach(), w=w.detach(), L=L)
            f2 = (1.0 + L[:, None].to(f.dtype)) * f
            # a token layer gets its tokens back (prefix tokens unchanged)
            return f2 if layout is None else layout.inverse(f2, output)

        handle = self.bb.layer(self.layer_name).register_forward_hook(hook)
        try:
            logits = self.bb.model(x)
        finally:
            handle.remove()
        if "L" not in out:
            raise RuntimeError(f"layer {self.layer_name!r} was not called by the model's forward")
        L = out.pop("L")
        self.last = {**out, "L": L.detach()}
        return logits, L

    def _from_features(self, f: Tensor, gray: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
        if self.mode != "frozen":
            raise ValueError("only a frozen-mode LFI-CAM can start from stored features")
        if gray is None or gray.shape != (f.shape[0], 1, *f.shape[-2:]):
            raise ValueError(f"gray must be [B,1,m,n] = {(f.shape[0], 1, *f.shape[-2:])}; got "
                             f"{None if gray is None else tuple(gray.shape)}")
        m = channel_minmax(f) * gray.to(f.dtype)
        w = self.fin(m.contiguous(memory_format=torch.channels_last))
        L = attention_map(f, w)
        logits = self.bb.head((1.0 + L[:, None].to(f.dtype)) * f, self.layer_name)
        self.last = {"F": f.detach(), "w": w.detach(), "L": L.detach()}
        return logits, L

    def explain(self, x: Tensor) -> Tensor:
        """Maps ``[B,H,W]`` in [0,1]: ``L`` upsampled bilinearly (``align_corners=False``)."""
        _, L = self(x)
        return upsample(L.float(), tuple(x.shape[-2:])).clamp_(0.0, 1.0)

    # -- saving / loading ------------------------------------------------------------------
    def trainable_state_dict(self) -> Dict[str, Tensor]:
        """What a checkpoint must hold: the FIN (frozen) or FIN + backbone (end-to-end)."""
        return {k: v.detach().cpu() for k, v in self.state_dict().items()}

    def as_backbone(self, weights_id: str = "lficam") -> Backbone:
        """This LFI-CAM model as a frozen :class:`Backbone` (its own classifier).

        Same preprocessing, mean/std, layers (of the copied backbone) and class names; no
        heads (the logits depend on the input image through the attention branch, not on the
        layer's output alone). ``model(x)`` returns the LFI-CAM logits.
        """
        freeze(self)
        model = _LogitsOnly(self).eval()
        return Backbone(
            name=f"lficam[{self.bb.name}]", model=model, preprocess=self.bb.preprocess,
            mean=self.bb.mean, std=self.bb.std, layers=dict(self.bb.layers),
            default_layer=self.layer_name, num_classes=self.bb.num_classes,
            class_names=list(self.bb.class_names), heads={}, weights_id=weights_id,
            input_size=self.bb.input_size, reshapes=dict(self.bb.reshapes),
        )


# -- the explainer --------------------------------------------------------------------------
def load_lficam(path: str, model: Backbone) -> Tuple["LFICAM", Dict[str, Any], Backbone]:
    """Rebuild the :class:`LFICAM` of checkpoint ``path`` on backbone ``model``.

    Returns ``(lficam model in eval mode, metadata, evaluated classifier)``: the classifier is
    ``model`` itself for a frozen-mode checkpoint, the LFI-CAM model as a Backbone for an
    end-to-end one. Kept in ``model.cache`` per (file, mtime, device).

    Raises:
        ValueError: not an LFI-CAM checkpoint, a baseline checkpoint, or one trained for
            another backbone / layer / weights.
    """
    path = os.fspath(path)
    key = ("lficam", *file_key(path), str(model.device))
    if key in model.cache:
        return model.cache[key]
    ck = load_task_checkpoint(path, "lficam", "train one with `camzoo train lficam`")
    meta = ck.get("metadata", {})
    _check_fits(path, meta, model)
    lf = _build_lficam(meta, model)
    try:
        lf.load_state_dict(ck["state_dict"])
    except RuntimeError as exc:
        raise ValueError(f"lficam: checkpoint {path} does not fit backbone {model.name!r} at "
                         f"layer {meta.get('layer')!r}: {exc}") from None
    freeze(lf)
    lf.to(model.device)
    ev = model
    if meta["mode"] == "end-to-end":
        ev = _end_to_end_classifier(lf, model, path, meta, ck["state_dict"])
    model.cache[key] = (lf, meta, ev)
    return lf, meta, ev


def _check_fits(path: str, meta: Dict[str, Any], model: Backbone) -> None:
    """Raise ``ValueError`` unless checkpoint metadata ``meta`` is of a frozen or end-to-end
    LFI-CAM trained for ``model``'s backbone and layer (and, frozen, its exact weights)."""
    mode = meta.get("mode")
    if mode not in ("frozen", "end-to-end"):
        raise ValueError(f"{path} is an LFI-CAM {mode!r} checkpoint (a plain classifier without "
                         "the attention branch); lficam needs a 'frozen' or 'end-to-end' one")
    bad = []
    if meta.get("backbone") != model.name:
        bad.append(f"backbone: checkpoint {meta.get('backbone')!r}, here {model.name!r}")
    if meta.get("layer") not in model.layers:
        bad.append(f"layer: checkpoint {meta.get('layer')!r}, backbone {model.name!r} has "
                   f"{', '.join(model.layers)}")
    if mode == "frozen" and not bad:
        h = backbone_hash(model)
        if meta.get("backbone_hash") != h:
            bad.append(f"weights: the FIN was trained on {meta.get('weights_id')!r} (hash "
                       f"{meta.get('backbone_hash')}), here {model.weights_id!r} (hash {h}); a "
                       "frozen-mode FIN only explains the exact model it was trained on")
    if bad:
        raise ValueError(f"lficam: checkpoint {path} was trained for another setup (backbone "
                         f"{meta.get('backbone')!r}, layer {meta.get('layer')!r}, mode {mode!r}) "
                         f"than the one it is used with (backbone {model.name!r}): "
                         + "; ".join(bad))


def _build_lficam(meta: Dict[str, Any], model: Backbone) -> "LFICAM":
    """The untrained :class:`LFICAM` that checkpoint metadata ``meta`` describes: on ``model``
    itself (frozen), or on a copy of it with the checkpoint's classifier where it had a new
    one (end-to-end)."""
    depth = int(meta.get("fin_depth", 4))
    if meta["mode"] == "frozen":
        return LFICAM(model, meta["layer"], mode="frozen", depth=depth)
    bb = clone_backbone(model)
    if meta.get("new_classifier"):
        replace_classifier(bb, int(meta["num_classes"]), class_names=meta.get("class_names"))
    return LFICAM(bb, meta["layer"], mode="end-to-end", depth=depth, copy_backbone=False)


def _end_to_end_classifier(lf: "LFICAM", model: Backbone, path: str, meta: Dict[str, Any],
                           state_dict: Dict[str, Tensor]) -> Backbone:
    """The end-to-end LFI-CAM ``lf`` of checkpoint ``path`` (built on ``model``) as the
    classifier it is evaluated on, at the image size it was trained at."""
    wid = f"lficam:{os.path.basename(path)}#{hash_state_dict(state_dict)}"
    ev = lf.as_backbone(weights_id=wid)
    size = int(meta.get("image_size") or model.input_size)
    if size != model.input_size:  # evaluate at the resolution it was trained at
        ev.preprocess = eval_transform(model, size)
        ev.input_size = size
    return ev


@register_explainer
class LFICAMExplainer(Explainer):
    name = "lficam"
    summary = ("LFI-CAM (Lee et al. 2021): learned Feature Importance Network, map from the "
               "same forward as the prediction; 1 forward")
    needs_checkpoint = True
    defaults = {"checkpoint": None}

    def _model(self, model) -> Tuple["LFICAM", Dict[str, Any], Backbone]:
        path = self.options["checkpoint"]
        if not path:
            raise ValueError("lficam needs checkpoint=PATH (CLI: --opt lficam.checkpoint=PATH), "
                             "an LFI-CAM model trained with `camzoo train lficam`")
        return load_lficam(path, model)

    def forward_passes(self, model) -> int:
        return 1

    def mode(self, model) -> str:
        """``"frozen"`` or ``"end-to-end"`` (from the checkpoint's metadata)."""
        return self._model(model)[1]["mode"]

    def check_backbone(self, model) -> None:
        """The checkpoint given, readable, and trained for ``model`` (loaded once, cached)."""
        super().check_backbone(model)
        with self.option_errors("checkpoint"):
            self._model(model)

    def evaluated_backbone(self, model):
        """Frozen mode: ``model``. End-to-end: the LFI-CAM model as a Backbone (cached).
        A checkpoint that cannot be used is refused by :meth:`check_backbone`."""
        self.check_backbone(model)
        return self._model(model)[2]

    def _explain(self, model, x: Tensor, y: Tensor) -> Tensor:
        lf = self._model(model)[0]
        with torch.inference_mode():
            return lf.explain(x)
