"""Score-CAM (Wang et al., CVPR-W 2020), batched and on-device.

Each of the K channels of the explanation layer becomes a mask: its activation map,
upsampled to the input size and min-max normalized to [0,1], multiplies the (normalized)
input; the model's score for the target class on that masked input is the channel's weight.
One clean forward gives the activations, K masked forwards the weights: ``forward_passes =
K + 1`` per image.

Two variants (option ``variant``):

``"official"`` (default) — the Score-CAM authors' code:
    mask_k = minmax(up(A_k)) with ``up`` bilinear, ``align_corners=False``;
    w_k = softmax(f(x * mask_k))[c]  (probability of the target class);
    channels whose activation is constant get w_k = 0 and are not forwarded (tested at
    feature resolution: the authors test the upsampled map, where float rounding can turn
    a constant channel into a 1-ulp "range" that their normalization blows up into noise);
    map = minmax(ReLU(sum_k w_k * up(A_k)))  (upsample first, then min-max).
``"grad-cam"`` — pytorch-grad-cam's ``ScoreCAM``:
    mask_k = (u_k - min u_k) / (max u_k - min u_k + 1e-8), u_k = up(A_k) with
    ``align_corners=True`` (``nn.UpsamplingBilinear2d``), no channel skipped;
    s_k = f(x * mask_k)[c]  (target *logit*); w = softmax_k(s)  (softmax over channels);
    cam = sum_k w_k A_k at feature resolution, then camzoo's CAM-style order:
    ReLU, min-max at feature resolution, bilinear upsampling (``align_corners=False``).
    pytorch-grad-cam upsamples and min-maxes (twice) instead; ``minmax(camzoo map)`` equals
    its output.

Masked inputs are streamed in chunks of ``batch_size`` over the flattened (image, channel)
pairs; masks are upsampled per chunk, so neither ``[B,K,3,H,W]`` nor ``[B,K,H,W]`` is ever
held. Forwards run in ``torch.inference_mode`` on channels-last inputs (faster convolutions
on CPU and GPU), optionally under CUDA autocast (``amp``).
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import Explainer, cam_to_map, minmax, register_explainer
from ..utils import autocast as autocast_context
from ..utils import count_forwards
from .perturb import default_batch_size, inference_model

VARIANTS = ("official", "grad-cam")

def _upsample_masks(acts: Tensor, size: Tuple[int, int], align_corners: bool) -> Tensor:
    """``[n,h,w]`` activations -> ``[n,1,H,W]`` bilinear upsampled (float32)."""
    return F.interpolate(acts[:, None].float(), size=size, mode="bilinear", align_corners=align_corners)


@register_explainer
class ScoreCAM(Explainer):
    """Score-CAM; see the module docstring for the two variants.

    Options:
        layer: explanation layer name (None = the backbone's ``default_layer``).
        variant: ``"official"`` (the authors' code) or ``"grad-cam"`` (pytorch-grad-cam).
        batch_size: masked inputs per forward pass; None = :func:`default_batch_size` (32 on
            CPU, 128 on accelerators).
        amp: None (fp32), ``"fp16"`` or ``"bf16"`` autocast for the forwards (the clean one
            giving the activations and the masked ones); masks, scores and the map are
            float32 (meant for CUDA; maps then differ from fp32 by autocast rounding).
        fuse_bn: run the masked forwards on :func:`inference_model` (BatchNorm folded into
            the convolutions; same logits to float rounding); False = ``model.model``.
    """

    name = "scorecam"
    summary = "Score-CAM (Wang et al. 2020): channel weights from forwards of activation-masked inputs"
    defaults = {"layer": None, "variant": "official", "batch_size": None, "amp": None, "fuse_bn": True}

    def __init__(self, **options) -> None:
        super().__init__(**options)
        if self.options["variant"] not in VARIANTS:
            raise ValueError(f"scorecam: unknown variant {self.options['variant']!r}; "
                             f"valid: {', '.join(VARIANTS)}")
        if self.options["batch_size"] is not None and int(self.options["batch_size"]) < 1:
            raise ValueError(f"scorecam: batch_size must be >= 1, got {self.options['batch_size']!r}")

    def forward_passes(self, model) -> int:
        return model.channels(self.options["layer"]) + 1

    @torch.inference_mode()
    def channel_scores(self, model, x: Tensor, y: Tensor, acts: Tensor) -> Tensor:
        """Per-channel scores of the masked inputs.

        Args:
            model: the Backbone.
            x: normalized input ``[B,3,H,W]``.
            y: target classes, LongTensor ``[B]``.
            acts: the explanation layer's activations ``[B,K,h,w]`` for ``x``.
        Returns:
            float32 ``[B,K]``: ``"official"``: target-class softmax probability (0 for
            constant channels, which are not forwarded); ``"grad-cam"``: target logit.
        """
        official = self.options["variant"] == "official"
        bs = default_batch_size(x.device, self.options["batch_size"])
        B, K = acts.shape[:2]
        size = (x.shape[-2], x.shape[-1])
        flat = acts.reshape(B * K, *acts.shape[2:])
        xc = x.contiguous(memory_format=torch.channels_last)
        scores = torch.zeros(B * K, device=x.device, dtype=torch.float32)
        amp = autocast_context(x.device, self.options["amp"])
        net = inference_model(model) if self.options["fuse_bn"] else model.model
        pairs = torch.arange(B * K, device=x.device)  # flattened (image, channel) pairs
        if official:
            # constant channels are skipped (weight 0, no forward); constancy is checked at
            # feature resolution, where rounding cannot make a constant map look non-constant
            f2 = flat.reshape(B * K, -1)
            pairs = pairs[f2.amax(1) > f2.amin(1)]
        for start in range(0, pairs.numel(), bs):
            idx = pairs[start:start + bs]
            a = flat[idx]
            m = _upsample_masks(a, size, align_corners=not official)  # [n,1,H,W]
            lo = m.amin(dim=(2, 3), keepdim=True)
            hi = m.amax(dim=(2, 3), keepdim=True)
            b = idx // K
            # official: the range is > 0 for a non-constant channel; the clamp only guards 0/0
            m.sub_(lo).div_((hi - lo).clamp_min_(1e-30) if official else hi - lo + 1e-8)
            masked = xc[b]  # [n,3,H,W], channels-last (advanced indexing keeps the layout)
            masked.mul_(m)
            del m
            with amp:
                logits = net(masked)
            logits = logits.float()
            if official:
                s = torch.softmax(logits, dim=1).gather(1, y[b, None])[:, 0]
            else:
                s = logits.gather(1, y[b, None])[:, 0]
            scores[idx] = s
            count_forwards(masked.shape[0])  # the engine's progress within a batch
        return scores.reshape(B, K)

    @torch.inference_mode()
    def _explain(self, model, x: Tensor, y: Tensor) -> Tensor:
        layer = self.options["layer"]
        with autocast_context(x.device, self.options["amp"]):
            acts, _ = model.features_and_logits(x.contiguous(memory_format=torch.channels_last), layer)
        acts = acts.float()
        model.cache[("channels", layer or model.default_layer)] = int(acts.shape[1])
        scores = self.channel_scores(model, x, y, acts)
        size = (x.shape[-2], x.shape[-1])
        if self.options["variant"] == "official":
            # sum_k w_k up(A_k) = up(sum_k w_k A_k): bilinear upsampling is linear
            cam = torch.einsum("bk,bkhw->bhw", scores, acts)
            cam = F.interpolate(cam[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
            return minmax(F.relu(cam))
        weights = torch.softmax(scores, dim=1)
        cam = torch.einsum("bk,bkhw->bhw", weights, acts)
        return cam_to_map(cam, size)
