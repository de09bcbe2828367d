"""Ablation-CAM (Desai & Ramaswamy, WACV 2020), batched and on-device.

One clean forward gives the explanation layer's activations ``A [B,K,h,w]`` and the target
class's logit ``s``. Each channel k is then *ablated* -- its activation map replaced by a
constant ``v`` -- and the rest of the network scores the ablated activations: ``s_k``. The
channel weight is the relative score drop ``w_k = (s - s_k) / s`` (pytorch-grad-cam's formula,
the paper's Eq. 3), the CAM ``sum_k w_k A_k``, then camzoo's CAM-style order: ReLU, min-max at
feature resolution, bilinear upsampling. ``forward_passes = K + 1``, reported as Score-CAM
reports it.

The ablation value ``v`` (option ``variant``):

``"official"`` (default): 0, the paper's ablation ("setting all activation values of the
    feature map to zero").
``"grad-cam"``: pytorch-grad-cam's ``AblationLayer``: 0 when the minimum ``m`` of the image's
    activations ``A[b]`` is 0 (a layer after a ReLU), else a very negative value (signed
    layers, e.g. Lite0's ``blocks``, the last block's projection). Its loop writes into the
    tensor it takes the minimum of, so within each of its batches of 32 ablated copies the
    value falls by 1e7 per copy: channel ``k`` gets ``m - (k mod 32 + 1) * 1e7`` (float32,
    subtracted step by step as there). camzoo reproduces that sequence for any
    ``batch_size`` of its own; it matters: on Lite0's ``blocks`` a single ``m - 1e7`` moved
    target logits by up to 0.26 (some channels do not saturate after ``conv_head`` and ``bn2``).

The two agree wherever the image's activations reach 0 (``conv_head`` of Lite0, which is the
BatchNorm + ReLU6 after the convolution; every post-ReLU layer). ``minmax(camzoo map)`` equals
pytorch-grad-cam's ``AblationCAM`` output with ``variant="grad-cam"``, and pytorch-grad-cam's
machinery with a zeroing ablation layer with ``"official"`` (tested).

How the ablated activations are scored: pytorch-grad-cam swaps the layer for a module that
outputs the ablated copy and runs the whole network, image by image (32 copies per forward,
the layers *before* the explanation layer recomputed every time, scores read with ``.item()``).
camzoo streams the flattened (image, channel) pairs in chunks of ``batch_size``, all on the
device, through the backbone's ``head`` from the layer (``Backbone.heads``: only the part of
the network after the layer runs) when it has one, else through the whole model with a forward
hook replacing the layer's output (a token layer's map put back into tokens with its layout's
``inverse``). Channels that already equal the ablation value everywhere (dead ReLU channels)
are not forwarded: ablating them changes nothing and their term ``w_k A_k`` is 0 whatever
``w_k``. ``count_forwards`` reports each chunk to the engine's progress.
"""
from __future__ import annotations

from typing import List, Optional

import torch
from torch import Tensor

from ..models.tokens import TokenLayout
from ..utils import autocast as autocast_context
from ..utils import count_forwards
from .base import Explainer, cam_to_map, register_explainer
from .perturb import default_batch_size

VARIANTS = ("official", "grad-cam")
#: pytorch-grad-cam's AblationLayer: a signed layer's channel is set to ``min - ABLATION_VALUE``
ABLATION_VALUE = 1e7
#: pytorch-grad-cam's AblationCAM default ``batch_size`` (the period of its ablation values)
PGC_BATCH = 32


def ablation_values(acts: Tensor, variant: str) -> Tensor:
    """The value ablated channel ``k`` of image ``b`` takes: float32 ``[B,K]`` (see the module
    docstring)."""
    B, K = acts.shape[:2]
    if variant == "official":
        return torch.zeros(B, K, device=acts.device, dtype=torch.float32)
    lo = acts.reshape(B, -1).amin(dim=1).float()
    v, steps = lo, []
    for _ in range(min(K, PGC_BATCH)):  # as pytorch-grad-cam: min(output) - 1e7, step by step
        v = v - ABLATION_VALUE
        steps.append(v)
    seq = torch.stack(steps, dim=1)[:, torch.arange(K, device=acts.device) % PGC_BATCH]
    return torch.where(lo[:, None] == 0, torch.zeros_like(seq), seq)


@register_explainer
class AblationCAM(Explainer):
    """Ablation-CAM; see the module docstring.

    Options:
        layer: explanation layer (None = the backbone's ``default_layer``).
        variant: ``"official"`` (ablated channel = 0, the paper) or ``"grad-cam"``
            (pytorch-grad-cam's ablation value).
        batch_size: ablated copies per forward; None = 32 on CPU, 128 on accelerators.
        amp: None (fp32), ``"fp16"`` or ``"bf16"`` autocast for the forwards; scores, weights
            and the map are float32.
    """

    name = "ablationcam"
    summary = ("Ablation-CAM (Desai & Ramaswamy 2020): channel weights from the score drop when each "
               "channel is zeroed")
    defaults = {"layer": None, "variant": "official", "batch_size": None, "amp": None}

    def __init__(self, **options) -> None:
        super().__init__(**options)
        if self.options["variant"] not in VARIANTS:
            raise ValueError(f"ablationcam: unknown variant {self.options['variant']!r}; "
                             f"valid: {', '.join(VARIANTS)}")
        if self.options["batch_size"] is not None and int(self.options["batch_size"]) < 1:
            raise ValueError(f"ablationcam: batch_size must be >= 1, got {self.options['batch_size']!r}")
        if self.options["variant"] == "grad-cam" and self.options["amp"] == "fp16":
            raise ValueError("ablationcam: variant='grad-cam' cannot run with amp='fp16': its ablation "
                             "value on a signed layer (min - 1e7 and below) overflows float16; use "
                             "amp='bf16' or None, or variant='official'")

    def forward_passes(self, model) -> int:
        return model.channels(self.options["layer"]) + 1

    def check_backbone(self, model) -> None:
        super().check_backbone(model)
        name = self.options["layer"] or model.default_layer
        reshape = model.reshape_of(name)
        if name not in model.heads and reshape is not None and not _has_inverse(reshape):
            raise ValueError(f"ablationcam: option layer={self.options['layer']!r} cannot be used: "
                             f"backbone {model.name!r} has no head from layer {name!r} and its "
                             "reshape has no inverse, so ablated activations cannot be put back "
                             "into the network")

    @torch.inference_mode()
    def _explain(self, model, x: Tensor, y: Tensor) -> Tensor:
        self.check_backbone(model)
        name = self.options["layer"] or model.default_layer
        module = model.layer(name)
        reshape = model.reshape_of(name)
        amp = self.options["amp"]
        raw: List[Tensor] = []
        handle = module.register_forward_hook(lambda m, i, o: raw.append(o))
        try:
            with autocast_context(x.device, amp):
                logits = model.model(x)
        finally:
            handle.remove()
        out = raw[-1]
        acts = (out if reshape is None else reshape(out)).float()
        B, K = acts.shape[:2]
        model.cache[("channels", name)] = int(K)
        score = logits.float().gather(1, y[:, None])[:, 0]
        scores = self.ablated_scores(model, name, x, y, acts, out)
        weights = (score[:, None] - scores) / score[:, None]
        weights = torch.where(torch.isnan(scores), torch.zeros_like(weights), weights)
        cam = torch.einsum("bk,bkhw->bhw", weights, acts)
        return cam_to_map(cam, tuple(x.shape[-2:]))

    def ablated_scores(self, model, name: str, x: Tensor, y: Tensor, acts: Tensor,
                       out: Optional[Tensor] = None) -> Tensor:
        """Target-class logits with each channel ablated: float32 ``[B,K]``; NaN for the
        (image, channel) pairs not forwarded (the channel already equals the ablation value).

        Args:
            name: the layer; acts: its (reshaped) activations ``[B,K,h,w]`` for ``x``; out:
                its raw output (needed without a head: the prefix tokens of a token layer).
        """
        B, K = acts.shape[:2]
        value = ablation_values(acts, self.options["variant"])
        flat = acts.reshape(B, K, -1)
        needed = (flat != value[:, :, None]).any(dim=2).reshape(-1)
        pairs = torch.arange(B * K, device=acts.device)[needed]
        scores = torch.full((B * K,), float("nan"), device=acts.device, dtype=torch.float32)
        bs = default_batch_size(x.device, self.options["batch_size"])
        amp = autocast_context(x.device, self.options["amp"])
        run = self._scorer(model, name, x, out)
        for start in range(0, pairs.numel(), bs):
            idx = pairs[start:start + bs]
            b, k = idx // K, idx % K
            a = acts[b]  # [n,K,h,w], a copy (advanced indexing)
            a[torch.arange(idx.numel(), device=a.device), k] = value[b, k][:, None, None]
            with amp:
                logits = run(a, b)
            scores[idx] = logits.float().gather(1, y[b, None])[:, 0]
            count_forwards(idx.numel())
        return scores.reshape(B, K)

    @staticmethod
    def _scorer(model, name: str, x: Tensor, out: Optional[Tensor]):
        """``(ablated acts [n,K,h,w], image index [n]) -> logits``: the backbone's head from the
        layer, else the whole model with the layer's output replaced by a hook."""
        if name in model.heads:
            return lambda a, b: model.head(a, name)
        module = model.layer(name)
        reshape = model.reshape_of(name)

        def run(a: Tensor, b: Tensor) -> Tensor:
            if reshape is None:
                new = a
            else:
                new = reshape.inverse(a, out[b])
            new = new.to(out.dtype)
            handle = module.register_forward_hook(lambda m, i, o: new)
            try:
                return model.model(x[b])
            finally:
                handle.remove()

        return run


def _has_inverse(reshape) -> bool:
    """Whether a layer's reshape can put a map back into the layer's output layout."""
    if isinstance(reshape, TokenLayout):
        return type(reshape).inverse is not TokenLayout.inverse
    return callable(getattr(reshape, "inverse", None))
