"""FullGrad (Srinivas & Fleuret, NeurIPS 2019), as pytorch-grad-cam computes it, batched.

FullGrad adds to the input-gradient the *bias-gradients* of every layer: for a layer with
bias ``b`` (per channel) and output gradient ``g = dS/dz`` (``S`` the class logit), the map
``|b_c * g_c|`` of each channel. pytorch-grad-cam's ``FullGrad`` (which camzoo equals):

    F = sum_c norm(|x_grad_c * x_c|)  +  sum_layers up( sum_c norm(|b_c * g_c|) )
    map = minmax(F)

with ``norm(m) = (m - min m) / (1e-7 + max(m - min m))`` per image and channel (at the map's
own resolution), ``up`` bilinear to the input size (``align_corners=False``; camzoo sums the
channels before upsampling, equal by linearity) and ``x`` the normalized input. The layers
are every ``nn.Conv2d`` with a bias and every ``nn.BatchNorm2d`` (bias
``beta - mean * gamma / sqrt(var + eps)``, the eval-mode affine map's), and the gradient is
taken at their output. There is no explanation layer: FullGrad has no ``layer`` option.

camzoo also counts timm's ``BatchNormAct2d`` (BatchNorm, dropout and activation in one module,
e.g. every BatchNorm of EfficientNet-Lite0), at the BatchNorm's output before the activation.
pytorch-grad-cam selects layers by exact type and silently skips them: on Lite0 its FullGrad
finds no bias layer at all (the convolutions have none) and returns the input-gradient term
alone. camzoo's Lite0 map equals pytorch-grad-cam's on a copy of Lite0 whose BatchNormAct2d are
split into ``BatchNorm2d`` + activation (tested).

Refused (``ValueError`` at :meth:`FullGrad.check_backbone`): vision transformers (token
layers: their biases sit in Linear and LayerNorm layers that FullGrad's conv/BN formula does
not cover; pytorch-grad-cam would use the patch-embedding convolution alone), models with no
conv/BN bias, and models with biased layers of other kinds (GroupNorm, LayerNorm, transposed
or 1-d/3-d convolutions, ...), which FullGrad would leave out. Linear layers' biases
(classifiers) are left out, as in pytorch-grad-cam and the authors' code.

One forward and one backward (``forward_passes = 1``); the bias-gradient maps are reduced in
the backward hooks as they arrive, so no layer's gradient is kept.
"""
from __future__ import annotations

from typing import Callable, List, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..utils import autocast
from .base import Explainer, minmax, register_explainer

#: pytorch-grad-cam's ``scale_cam_image``: ``m / (EPS + max m)`` after subtracting the minimum
EPS = 1e-7
#: fp16 only: the class score is multiplied by this before the backward (as the gradient CAMs)
FP16_LOSS_SCALE = 2.0 ** 12


def _is_batchnorm_act(m: nn.Module) -> bool:
    """timm's ``BatchNormAct2d`` (BatchNorm, then ``drop`` and ``act`` in one module)."""
    return type(m).__name__ == "BatchNormAct2d" and isinstance(m, nn.BatchNorm2d) and hasattr(m, "act")


def _has_bias(m: nn.Module) -> bool:
    return isinstance(getattr(m, "bias", None), Tensor)


def bias_of(m: nn.Module) -> Tensor:
    """The per-channel bias a conv / eval-mode BatchNorm adds: float32 ``[C]``."""
    if isinstance(m, nn.BatchNorm2d):
        gamma = m.weight if m.weight is not None else torch.ones_like(m.running_mean)
        beta = m.bias if m.bias is not None else torch.zeros_like(m.running_mean)
        return (beta - m.running_mean * gamma / torch.sqrt(m.running_var + m.eps)).detach().float()
    return m.bias.detach().float()


def bias_layers(model) -> List[Tuple[str, nn.Module]]:
    """FullGrad's layers of backbone ``model``: ``(name, module)`` of every ``nn.Conv2d`` with a
    bias, ``nn.BatchNorm2d`` with a bias and timm ``BatchNormAct2d``.

    Raises:
        ValueError naming the backbone and why FullGrad cannot explain it (see the module
        docstring).
    """
    if model.reshapes:
        raise ValueError(
            f"fullgrad: backbone {model.name!r} is a vision transformer (token layers "
            f"{', '.join(model.reshapes)}); FullGrad sums the bias-gradients of a CNN's "
            "convolution and BatchNorm layers, and a transformer's biases sit in Linear and "
            "LayerNorm layers it does not cover (pytorch-grad-cam's FullGrad would use the "
            "patch-embedding convolution alone). Use a CNN backbone")
    layers, other = [], []
    for name, m in model.model.named_modules():
        if type(m) is nn.Conv2d and m.bias is not None:
            layers.append((name, m))
        elif type(m) is nn.BatchNorm2d or _is_batchnorm_act(m):
            if m.running_mean is None:
                other.append(f"{name} ({type(m).__name__} without running statistics)")
            elif m.bias is not None:
                layers.append((name, m))
        elif _has_bias(m) and not isinstance(m, nn.Linear):
            other.append(f"{name} ({type(m).__name__})")
    if other:
        few = ", ".join(other[:5]) + (f" and {len(other) - 5} more" if len(other) > 5 else "")
        raise ValueError(
            f"fullgrad: backbone {model.name!r} has biased layers FullGrad's conv/BatchNorm "
            f"bias-gradients do not cover: {few}; FullGrad needs a CNN whose biases are in "
            "nn.Conv2d / nn.BatchNorm2d (and timm BatchNormAct2d) layers")
    if not layers:
        raise ValueError(f"fullgrad: backbone {model.name!r} has no nn.Conv2d or nn.BatchNorm2d "
                         "with a bias: FullGrad would be the input-gradient alone")
    return layers


def channel_norm(m: Tensor) -> Tensor:
    """pytorch-grad-cam's per-map scaling of ``[B,C,h,w]``: ``(m - min) / (1e-7 + max(m - min))``
    per image and channel."""
    flat = m.flatten(2)
    flat = flat - flat.amin(dim=2, keepdim=True)
    return (flat / (EPS + flat.amax(dim=2, keepdim=True))).reshape(m.shape)


@register_explainer
class FullGrad(Explainer):
    """FullGrad; see the module docstring. No ``layer`` option: every conv / BatchNorm bias
    of the network is used.

    Options:
        amp: None (fp32), ``"bf16"`` or ``"fp16"`` autocast for the forward; gradients are
            taken in float32 (fp16: the score is scaled by :data:`FP16_LOSS_SCALE`, and a batch
            whose scaled gradients overflow is recomputed in fp32).
    """

    name = "fullgrad"
    uses_gradients = True
    summary = ("FullGrad (Srinivas & Fleuret 2019): input-gradient plus every conv/BN bias-gradient "
               "(no layer option)")
    defaults = {"amp": None}

    def forward_passes(self, model) -> int:
        return 1

    def check_backbone(self, model) -> None:
        super().check_backbone(model)
        bias_layers(model)

    def _explain(self, model, x: Tensor, y: Tensor) -> Tensor:
        return minmax(self.saliency(model, x, y, self.options["amp"]))

    def saliency(self, model, x: Tensor, y: Tensor, amp=None) -> Tensor:
        """The un-normalized FullGrad map ``F`` ``[B,H,W]`` (float32) of classes ``y``."""
        layers = bias_layers(model)
        size = tuple(x.shape[-2:])
        scale = FP16_LOSS_SCALE if amp == "fp16" else 1.0
        total = torch.zeros(x.shape[0], *size, device=x.device, dtype=torch.float32)
        finite = [True]

        def add(g: Tensor, bias: Tensor) -> None:
            g = g.detach().float()
            if scale != 1.0:
                g = g / scale
                if not bool(torch.isfinite(g).all()):
                    finite[0] = False
                    return
            s = channel_norm((bias[None, :, None, None] * g).abs()).sum(dim=1)  # [B,h,w]
            if tuple(s.shape[-2:]) != size:
                s = F.interpolate(s[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
            total.add_(s)

        def watch(bias: Tensor) -> Callable:
            def on_tensor(z: Tensor) -> None:
                if z.requires_grad:
                    z.register_hook(lambda g: add(g, bias))
            return on_tensor

        handles = []
        try:
            for _, m in layers:
                on_tensor = watch(bias_of(m).to(x.device))
                if _is_batchnorm_act(m):
                    # the BatchNorm's output, before drop / act: the input of drop (or of act)
                    sub = m.drop if isinstance(getattr(m, "drop", None), nn.Module) else m.act
                    handles.append(sub.register_forward_pre_hook(lambda mod, args, f=on_tensor: f(args[0])))
                else:
                    handles.append(m.register_forward_hook(lambda mod, args, out, f=on_tensor: f(out)))
            xg = x.detach().clone().requires_grad_(True)
            with torch.enable_grad():
                with autocast(x.device, amp):
                    logits = model.model(xg)
                # y cloned: it may come from inference mode, and autograd saves the index
                score = logits.float().gather(1, y.clone()[:, None]).sum()
                (score * scale if scale != 1.0 else score).backward()
        finally:
            for h in handles:
                h.remove()
        grad = xg.grad.float() / scale
        if not finite[0] or not bool(torch.isfinite(grad).all()):
            return self.saliency(model, x, y, None)  # fp16 overflow: this batch in fp32
        total.add_(channel_norm((grad * x.float()).abs()).sum(dim=1))
        return total
