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

import weakref
from contextlib import nullcontext
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..capture import capture
from .base import Explainer, cam_to_map, minmax, register_explainer

VARIANTS = ("official", "grad-cam")
AMP_DTYPES = {None: None, "fp16": torch.float16, "bf16": torch.bfloat16}

# explanation layer module -> number of channels K (filled by a dry run or by explain)
_CHANNELS: "weakref.WeakKeyDictionary[nn.Module, int]" = weakref.WeakKeyDictionary()


def layer_channels(model, layer: Optional[str] = None) -> int:
    """Channels K of ``model``'s explanation ``layer`` (cached per layer module).

    The first call for a layer runs one dry forward of a zero image ``[1,3,S,S]``
    (``S = model.input_size``) on the model's device; later calls are free.
    """
    module = model.layer(layer)
    k = _CHANNELS.get(module)
    if k is None:
        s = int(getattr(model, "input_size", 224) or 224)
        x = torch.zeros(1, 3, s, s, device=model.device)
        with torch.inference_mode(), capture(module) as cap:
            model.model(x)
        k = int(cap.activation.shape[1])
        _CHANNELS[module] = k
    return k


# model -> (state key, fast copy or the model itself)
_FAST: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()


def _version(t: Tensor) -> int:
    try:
        return t._version
    except RuntimeError:  # inference tensors track no version (they cannot be changed in place)
        return -1


def _state_key(model: nn.Module) -> tuple:
    """Changes when the model moves device/layout or any parameter/buffer is modified in place."""
    ts = list(model.parameters()) + list(model.buffers())
    conv_w = [m.weight for m in model.modules() if isinstance(m, nn.Conv2d)]
    return (str(ts[0].device) if ts else "",
            bool(conv_w) and conv_w[0].is_contiguous(memory_format=torch.channels_last),
            tuple(_version(t) for t in ts), tuple(t.data_ptr() for t in ts))


def _fold_batchnorm(model: nn.Module) -> nn.Module:
    """``torch.fx`` copy of ``model`` with each eval-mode ``BatchNorm2d`` that follows a
    ``Conv2d`` (its only user) folded into that convolution.

    The copy shares every other submodule (and its weights) with ``model``; only the folded
    convolutions are new, so it costs about the convolution weights in memory. ``model`` is not
    modified. Raises whatever ``torch.fx.symbolic_trace`` raises for untraceable models.
    """
    import torch.fx as fx
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    gm = fx.symbolic_trace(model)  # leaf modules shared, containers new
    mods = dict(gm.named_modules())
    folded = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or type(mods.get(node.target)) is not nn.BatchNorm2d:
            continue
        src = node.args[0] if node.args else None
        if (not isinstance(src, fx.Node) or src.op != "call_module" or len(src.users) != 1
                or type(mods.get(src.target)) is not nn.Conv2d):
            continue
        conv, bn = mods[src.target], mods[node.target]
        if bn.training or bn.running_mean is None or conv.training:
            continue
        with torch.no_grad():
            fused = fuse_conv_bn_eval(conv, bn)
            if conv.weight.is_contiguous(memory_format=torch.channels_last):
                fused = fused.to(memory_format=torch.channels_last)
        for p in fused.parameters():
            p.requires_grad_(False)
        parent, _, leaf = src.target.rpartition(".")
        setattr(gm.get_submodule(parent) if parent else gm, leaf, fused)  # gm's own container
        node.replace_all_uses_with(src)
        gm.graph.erase_node(node)
        folded += 1
    if folded == 0:
        return model
    gm.graph.lint()
    gm.delete_all_unused_submodules()  # the folded BNs (only gm's references)
    gm.recompile()
    return gm.eval()


def inference_model(model: nn.Module, input_size: int = 224) -> nn.Module:
    """``model`` with eval-mode BatchNorm folded into the preceding convolutions (cached).

    Used for the many masked forwards of Score-CAM and RISE: one memory pass fewer per
    conv+BN pair (about 5-8% faster on CPU for ResNets, and a lower activation peak), at the
    cost of a second copy of the folded convolutions' weights (see :func:`_fold_batchnorm`).
    The result is checked once against ``model`` on a random ``[1,3,S,S]`` input
    (``S = input_size``) and cached until ``model``'s parameters, buffers, device or memory
    format change. When ``model`` has no plain ``nn.BatchNorm2d`` after a ``Conv2d``, cannot be
    traced by ``torch.fx`` (e.g. timm EfficientNets) or fails the check, ``model`` itself is
    returned. Logits ``[B,num_classes]`` equal ``model``'s to float rounding.
    """
    key = _state_key(model)
    hit = _FAST.get(model)
    if hit is not None and hit[0] == key:
        return hit[1]
    fast = model
    if not model.training and any(type(m) is nn.BatchNorm2d for m in model.modules()):
        try:
            cand = _fold_batchnorm(model)
            if cand is not model:
                g = torch.Generator(device="cpu").manual_seed(0)
                x = torch.randn(1, 3, input_size, input_size, generator=g).to(key[0] or "cpu")
                with torch.inference_mode():
                    ref, out = model(x).float(), cand(x).float()
                if torch.allclose(out, ref, rtol=1e-3, atol=1e-4 * float(ref.abs().max()) + 1e-5):
                    fast = cand
        except Exception:  # untraceable model: use it as it is
            fast = model
    _FAST[model] = (key, fast)
    return fast


def autocast_context(device: torch.device, amp: Optional[str]):
    """Autocast for the masked forwards: ``amp`` in {None, "fp16", "bf16"}; None = fp32.

    Autocast is opt-in: on CPUs without bf16 hardware it is much slower than fp32.
    """
    if amp not in AMP_DTYPES:
        raise ValueError(f"amp={amp!r} is not valid; valid: None, 'fp16', 'bf16'")
    if amp is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=AMP_DTYPES[amp])


def default_batch_size(device: torch.device, batch_size: Optional[int]) -> int:
    """``batch_size`` if given, else 32 on CPU and 128 on accelerators.

    On CPU (ResNet-18, 2 cores) 16 and 32 cost the same CPU time single-threaded and 32 was
    faster with 2 threads; 16 halves the activation peak (pass ``batch_size=16`` for that).
    """
    if batch_size is not None:
        return int(batch_size)
    return 32 if torch.device(device).type == "cpu" else 128


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
        amp: None (fp32), ``"fp16"`` or ``"bf16"`` autocast for the masked forwards
            (meant for CUDA; maps then differ from fp32 by autocast rounding).
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
        if self.options["amp"] not in AMP_DTYPES:
            raise ValueError(f"scorecam: amp={self.options['amp']!r} is not valid; valid: None, 'fp16', 'bf16'")

    def forward_passes(self, model) -> int:
        return layer_channels(model, self.options["layer"]) + 1

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
        net = inference_model(model.model, int(getattr(model, "input_size", 224) or 224)) \
            if self.options["fuse_bn"] else model.model
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
        return scores.reshape(B, K)

    @torch.inference_mode()
    def _explain(self, model, x: Tensor, y: Tensor) -> Tensor:
        layer = self.options["layer"]
        acts, _ = model.features_and_logits(x.contiguous(memory_format=torch.channels_last), layer)
        acts = acts.float()
        _CHANNELS[model.layer(layer)] = int(acts.shape[1])
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
