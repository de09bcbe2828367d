"""Gradient-based CAMs: Grad-CAM, Grad-CAM++, XGrad-CAM (pytorch-grad-cam) and Smooth Grad-CAM++.

The channel weights come from pytorch-grad-cam's own classes (``get_cam_image`` /
``get_cam_weights``), used batched with one target per sample; camzoo then applies the
CAM-style order of the L-CAM protocol: ReLU, min-max at feature resolution, bilinear
upsampling (``align_corners=False``). pytorch-grad-cam instead upsamples and min-maxes twice;
``minmax(camzoo map)`` equals its output (tested to 1e-5).

The pytorch-grad-cam object is used through :func:`pgc_cam`, a context manager that always
releases its hooks and, unlike ``BaseCAM.__exit__``, never swallows an ``IndexError``. A token
layer of a vision transformer reaches pytorch-grad-cam with its ``Backbone.reshapes`` entry as
``reshape_transform`` (activations and gradients as ``[B,K,h,w]`` maps).

Option ``amp`` (None = fp32, ``"bf16"``, ``"fp16"``; the engine's ``--amp``): the forward runs
under autocast and the backward goes through the autocast graph; the class scores, the
unscaled gradients and all CAM arithmetic are float32. fp16 scales the score by
:data:`FP16_LOSS_SCALE` before the backward (late-layer gradients sit below fp16's normal
range) and divides the gradients by it in float32; a batch whose fp16 gradients still
overflow is recomputed in fp32.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import ClassVar, Iterator, Tuple

import numpy as np
import torch
from torch import Tensor

from ..utils import autocast, make_generator
from .base import Explainer, cam_to_map, register_explainer


@contextmanager
def pgc_cam(cls, model, layer, reshape=None) -> Iterator:
    """``with pgc_cam(GradCAM, backbone.model, layer, reshape) as cam:`` — hooks removed on exit.

    ``reshape`` is the layer's ``Backbone.reshape_of`` (token layers of transformers), passed
    as pytorch-grad-cam's ``reshape_transform``."""
    cam = cls(model, [layer], reshape_transform=reshape)
    try:
        yield cam
    finally:
        cam.activations_and_grads.release()


def _targets(y: Tensor):
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    return [ClassifierOutputTarget(c) for c in y.tolist()]


#: fp16 only: the class scores are multiplied by this before the backward, the gradients
#: divided by it after (in float32)
FP16_LOSS_SCALE = 2.0 ** 12


def _acts_and_grads(cam, x: Tensor, targets, amp=None) -> Tuple[np.ndarray, np.ndarray, Tensor]:
    """One forward (under autocast when ``amp``) + backward through pytorch-grad-cam's hooks.

    Returns activations and gradients of the hooked layer (numpy float32 ``[B,K,h,w]``) and
    the input tensor that required grad.
    """
    xg = x.detach().clone().requires_grad_(True)
    scale = FP16_LOSS_SCALE if amp == "fp16" else 1.0
    with torch.enable_grad():
        with autocast(x.device, amp):
            logits = cam.activations_and_grads(xg)
        loss = sum(t(o) for t, o in zip(targets, logits.float()))
        (loss * scale if scale != 1.0 else loss).backward()
    acts = cam.activations_and_grads.activations[0].float()
    grads = cam.activations_and_grads.gradients[0].float()
    if scale != 1.0:
        grads = grads / scale
        if not bool(torch.isfinite(grads).all()):  # fp16 overflow: this batch in fp32
            return _acts_and_grads(cam, x, targets, None)
    return acts.numpy(), grads.numpy(), xg


class _PGCExplainer(Explainer):
    """One pytorch-grad-cam class, one target per sample, one forward and one backward."""

    pgc_class_name: ClassVar[str] = ""
    uses_gradients = True
    defaults = {"layer": None, "amp": None}

    @classmethod
    def pgc_class(cls):
        import pytorch_grad_cam

        return getattr(pytorch_grad_cam, cls.pgc_class_name)

    def forward_passes(self, model) -> int:
        return 1

    def feature_cam(self, model, x: Tensor, y: Tensor) -> Tensor:
        """Weighted activation sum at feature resolution ``[B,h,w]`` (before ReLU)."""
        layer = model.layer(self.options["layer"])
        targets = _targets(y)
        with pgc_cam(self.pgc_class(), model.model, layer, model.reshape_of(self.options["layer"])) as cam:
            acts, grads, xg = _acts_and_grads(cam, x, targets, self.options["amp"])
            cam_np = cam.get_cam_image(xg, layer, targets, acts, grads, eigen_smooth=False)
        return torch.from_numpy(np.ascontiguousarray(cam_np, dtype=np.float32)).to(x.device)

    def _explain(self, model, x: Tensor, y: Tensor) -> Tensor:
        return cam_to_map(self.feature_cam(model, x, y), tuple(x.shape[-2:]))


@register_explainer
class GradCAM(_PGCExplainer):
    name = "gradcam"
    pgc_class_name = "GradCAM"
    summary = "Grad-CAM (Selvaraju et al. 2017): spatially averaged gradients as channel weights"


@register_explainer
class GradCAMPlusPlus(_PGCExplainer):
    name = "gradcam++"
    pgc_class_name = "GradCAMPlusPlus"
    summary = "Grad-CAM++ (Chattopadhay et al. 2018): higher-order gradient weights"


@register_explainer
class XGradCAM(_PGCExplainer):
    name = "xgradcam"
    pgc_class_name = "XGradCAM"
    summary = "XGrad-CAM (Fu et al. 2020): activation-normalized gradient weights"


@register_explainer
class SmoothGradCAMPlusPlus(_PGCExplainer):
    """Smooth Grad-CAM++ (Omeiza et al. 2019).

    Grad-CAM++ channel weights are computed on ``n_samples`` noisy copies ``x + N(0, noise_std^2)``
    (noise in normalized input space, drawn from a generator seeded with ``seed``) and averaged;
    the CAM is the averaged weights times the clean input's activations.

    The ``n_samples`` noise tensors ``[3,H,W]`` are drawn once per call and shared by every
    image of the batch (as RISE shares its masks), so an image's map depends on ``seed`` only,
    never on the batch it is in or its position there.
    """

    name = "smoothgradcam++"
    pgc_class_name = "GradCAMPlusPlus"
    summary = "Smooth Grad-CAM++ (Omeiza et al. 2019): Grad-CAM++ weights averaged over noisy inputs"
    defaults = {"layer": None, "n_samples": 4, "noise_std": 0.3, "seed": 0, "amp": None}

    def __init__(self, **options) -> None:
        super().__init__(**options)
        if int(self.options["n_samples"]) < 1:  # refused before any run starts
            raise ValueError(f"smoothgradcam++: n_samples must be >= 1, got {self.options['n_samples']!r}")

    def forward_passes(self, model) -> int:
        return int(self.options["n_samples"]) + 1

    def feature_cam(self, model, x: Tensor, y: Tensor) -> Tensor:
        n = int(self.options["n_samples"])
        if n < 1:
            raise ValueError("smoothgradcam++: n_samples must be >= 1")
        layer = model.layer(self.options["layer"])
        targets = _targets(y)
        amp = self.options["amp"]
        gen = make_generator(self.options["seed"], x.device)
        weights = None
        with pgc_cam(self.pgc_class(), model.model, layer, model.reshape_of(self.options["layer"])) as cam:
            for _ in range(n):
                # one noise image per sample, the same for every image of the batch
                noise = torch.randn(x.shape[1:], generator=gen, device=x.device, dtype=x.dtype)
                acts, grads, xg = _acts_and_grads(cam, x + noise * float(self.options["noise_std"]),
                                                  targets, amp)
                w = cam.get_cam_weights(xg, layer, targets, acts, grads)
                weights = w if weights is None else weights + w
        with torch.inference_mode(), autocast(x.device, amp):
            clean, _ = model.features_and_logits(x, self.options["layer"])
        w = torch.from_numpy(np.asarray(weights / n, dtype=np.float32)).to(x.device)
        return (w[:, :, None, None] * clean.float()).sum(dim=1)
