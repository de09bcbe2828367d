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

:class:`LFICAM` is an ``nn.Module`` with ``forward(x) -> (logits, L)``. Modes:

- ``"frozen"``: the given backbone is used as is (eval mode, never modified, not a
  sub-module, so ``state_dict()`` holds the FIN only); only the FIN learns, through the
  attention mechanism and the cross-entropy loss. LFI-CAM then explains the same frozen model
  as every post-hoc method.
- ``"end-to-end"`` (the paper): a *copy* of the backbone (:func:`clone_backbone`; the
  caller's backbone is never touched) is trained together with the FIN; the LFI-CAM model is
  its own classifier (:meth:`LFICAM.as_backbone`).
"""
from __future__ import annotations

import copy
import dataclasses
import types
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .backbones import Backbone

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


def minmax_maps(cam: Tensor) -> Tensor:
    """Per-sample min-max of ``[B,h,w]`` maps to [0,1]; constant maps become 0.

    Like :func:`camzoo.explainers.base.minmax` but safe to back-propagate through (no NaN
    gradients for constant maps).
    """
    flat = cam.flatten(1)
    lo = flat.amin(dim=1, keepdim=True)
    hi = flat.amax(dim=1, keepdim=True)
    rng = hi - lo
    scaled = (flat - lo) / rng.clamp_min(torch.finfo(rng.dtype).tiny)
    return torch.where(rng > 0, scaled, torch.zeros_like(flat)).reshape(cam.shape)


def attention_map(f: Tensor, w: Tensor) -> Tensor:
    """``L = minmax(ReLU(sum_k w_k F_k))`` per image.

    Args:
        f: feature maps ``[B,C,m,n]``.
        w: channel weights ``[B,C]`` (the FIN's softmax output).
    Returns:
        ``[B,m,n]`` float in [0,1] (a constant map is all zeros).
    """
    cam = torch.einsum("bc,bchw->bhw", w.to(f.dtype), f)
    return minmax_maps(F.relu(cam))


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


# -- backbones: copy, classifier replacement ---------------------------------------------------
def _copy_callable(f: Any, memo: dict) -> Any:
    """Deep-copy a head callable so that closures point at the copied modules (via ``memo``)."""
    if isinstance(f, types.FunctionType):
        if id(f) in memo:
            return memo[id(f)]
        if not f.__closure__:
            return f
        cells = []
        for c in f.__closure__:
            try:
                v = c.cell_contents
            except ValueError:  # empty cell
                cells.append(c)
                continue
            cells.append(types.CellType(_copy_callable(v, memo)))
        g = types.FunctionType(f.__code__, f.__globals__, f.__name__, f.__defaults__, tuple(cells))
        g.__kwdefaults__ = f.__kwdefaults__
        memo[id(f)] = g
        return g
    if isinstance(f, (nn.Module, types.MethodType, Tensor)):
        return copy.deepcopy(f, memo)
    return f  # plain data (ints, strings, ...) is shared


def clone_backbone(bb: Backbone) -> Backbone:
    """A deep copy of ``bb`` whose ``layers`` and ``heads`` refer to the copied model.

    ``copy.deepcopy`` alone would leave the head closures (``lambda f: model.fc(...)``)
    pointing at the original model; here they are rebuilt against the copy. The original
    backbone is not modified. The copy keeps ``bb``'s frozen / eval state.
    """
    memo: dict = {}
    model = copy.deepcopy(bb.model, memo)
    layers = {k: copy.deepcopy(m, memo) for k, m in bb.layers.items()}
    heads = {k: _copy_callable(h, memo) for k, h in bb.heads.items()}
    return dataclasses.replace(bb, model=model, layers=layers, heads=heads,
                               mean=bb.mean.clone(), std=bb.std.clone(),
                               class_names=list(bb.class_names))


def _last_linear(model: nn.Module) -> Tuple[nn.Module, str, nn.Linear]:
    found = None
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            found = (name, m)
    if found is None:
        raise ValueError(f"{type(model).__name__} has no nn.Linear classifier to replace")
    name, lin = found
    parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
    return parent, name.rsplit(".", 1)[-1], lin


def replace_classifier(bb: Backbone, num_classes: int, generator: Optional[torch.Generator] = None,
                       class_names: Optional[list] = None) -> Backbone:
    """Replace ``bb``'s final ``nn.Linear`` (in place) by a new ``in -> num_classes`` layer.

    Use on a :func:`clone_backbone` copy. The new layer is initialized like PyTorch's default
    (uniform in ``+-1/sqrt(in)``) from ``generator``; ``bb.num_classes`` and
    ``bb.class_names`` are updated. Heads keep working (they look the layer up by attribute).
    """
    parent, attr, old = _last_linear(bb.model)
    new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    bound = 1.0 / old.in_features ** 0.5
    with torch.no_grad():
        new.weight.uniform_(-bound, bound, generator=generator)
        if new.bias is not None:
            new.bias.uniform_(-bound, bound, generator=generator)
    new.to(device=old.weight.device, dtype=old.weight.dtype)
    new.requires_grad_(old.weight.requires_grad)
    if isinstance(parent, nn.Sequential) and attr.isdigit():
        parent[int(attr)] = new
    else:
        setattr(parent, attr, new)
    if hasattr(bb.model, "num_classes"):
        try:
            bb.model.num_classes = num_classes
        except AttributeError:
            pass
    bb.num_classes = int(num_classes)
    bb.class_names = list(class_names) if class_names else [f"class_{i}" for i in range(num_classes)]
    return bb


def reinit_backbone(bb: Backbone, seed: int) -> Backbone:
    """Re-initialize every module of ``bb.model`` with ``reset_parameters`` (``--init random``).

    PyTorch's initializers draw from the global RNG; the draws happen inside
    ``torch.random.fork_rng`` seeded with ``seed``, so the global RNG state is restored
    afterwards and the result depends on ``seed`` only.
    """
    devices = [bb.device] if bb.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(seed))
        with torch.no_grad():
            for m in bb.model.modules():
                if hasattr(m, "reset_parameters") and callable(m.reset_parameters):
                    m.reset_parameters()
    return bb


def set_trainable(bb: Backbone, trainable: bool = True) -> Backbone:
    """Lift (or restore) the frozen flags of ``bb.model``'s parameters. Use on a copy."""
    for p in bb.model.parameters():
        p.requires_grad_(trainable)
    bb.model.train(trainable)
    return bb


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
        channels = self._probe_channels()
        g = torch.Generator().manual_seed(int(seed))
        self.fin = FIN(channels, depth)
        self.fin.reset_parameters(g)
        self.fin.to(device=bb.device, memory_format=torch.channels_last)
        self.last: Dict[str, Tensor] = {}

    @torch.no_grad()
    def _probe_channels(self) -> int:
        was_training = self.bb.model.training
        self.bb.model.eval()
        try:
            s = self.bb.input_size
            x = torch.zeros(1, 3, s, s, device=self.bb.device)
            f, _ = self.bb.features_and_logits(x, self.layer_name)
        finally:
            self.bb.model.train(was_training)
        return int(f.shape[1])

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

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        """``x`` normalized ``[B,3,H,W]`` -> ``(logits [B,K], L [B,m,n] in [0,1])``.

        Also keeps ``self.last = {"F": features, "w": FIN weights [B,C], "L": L}`` of the
        last call (for inspection and tests).
        """
        out: Dict[str, Tensor] = {}

        def hook(module: nn.Module, inputs, f: Tensor) -> Tensor:
            if "L" in out:
                raise RuntimeError(f"layer {self.layer_name!r} ran twice in one forward; "
                                   "LFI-CAM needs a layer that is called once")
            m = channel_minmax(f) * gray_image(x, f.shape[-2:]).to(f.dtype)
            w = self.fin(m.contiguous(memory_format=torch.channels_last))
            L = attention_map(f, w)
            out.update(F=f.detach(), w=w.detach(), L=L)
            return (1.0 + L[:, None].to(f.dtype)) * f

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

    def explain(self, x: Tensor) -> Tensor:
        """Maps ``[B,H,W]`` in [0,1]: ``L`` upsampled bilinearly (``align_corners=False``)."""
        from .explainers.base import upsample

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
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)
        model = _LogitsOnly(self).eval()
        return Backbone(
            name=f"lficam[{self.bb.name}]", model=model, preprocess=self.bb.preprocess,
            mean=self.bb.mean, std=self.bb.std, layers=dict(self.bb.layers),
            default_layer=self.layer_name, num_classes=self.bb.num_classes,
            class_names=list(self.bb.class_names), heads={}, weights_id=weights_id,
            input_size=self.bb.input_size,
        )
