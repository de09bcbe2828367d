"""Gradient-free principal-component CAMs: Eigen-CAM and KPCA-CAM.

Both project the explanation layer's activations, one image at a time, on their first
principal component: the activations ``A [K,h,w]`` are read as ``h*w`` points in ``R^K``,
centred, and each point's coordinate on the first component is the CAM ``[h,w]``. Neither
depends on the explained class (one forward, no backward). camzoo then applies the CAM-style
order: ReLU, min-max at feature resolution, bilinear upsampling (``align_corners=False``);
``minmax(camzoo map)`` equals pytorch-grad-cam's output (it upsamples, then min-maxes).

Eigen-CAM (Muhammad & Yeasin 2020) uses pytorch-grad-cam's own ``get_2d_projection`` (numpy's
SVD, per image). The sign of a singular vector is arbitrary and pytorch-grad-cam does not fix
it: its maps carry the sign numpy's LAPACK returns. ``torch.linalg.svd`` (MKL's LAPACK on
CPU) returned the opposite sign for 25% (float64) to 45% (float32) of random activation
matrices, reduced or full, which after the ReLU is a different map; so camzoo keeps numpy's
SVD (on the CPU, whatever the device) to equal pytorch-grad-cam.

KPCA-CAM (Karmani et al. 2024) is camzoo's own batched torch code: pytorch-grad-cam fits
scikit-learn's ``KernelPCA(n_components=1, kernel, gamma)`` per image; camzoo builds the same
centred kernel matrices ``[B,hw,hw]`` in float64 on the device, takes the top eigenpair with
``torch.linalg.eigh`` (batched) and fixes the sign as scikit-learn does (``svd_flip``: the
eigenvector's entry of largest magnitude is positive), so the sign is defined and equal to
scikit-learn's. The coordinates are ``v * sqrt(lambda)`` (0 where ``lambda`` is not
positive, or mere rounding: a constant layer gives a zero map, not stretched noise).
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import Tensor

from ..utils import autocast
from .base import Explainer, cam_to_map, register_explainer

#: KPCA-CAM kernels (scikit-learn's ``pairwise_kernels`` with KernelPCA's defaults:
#: ``degree=3``, ``coef0=1``, ``gamma=None`` = 1 / channels)
KERNELS = ("sigmoid", "rbf", "poly", "linear", "cosine")


def _points(acts: Tensor) -> Tensor:
    """``[B,K,h,w]`` -> centred points ``[B,h*w,K]`` in float64 (NaN -> 0, as pytorch-grad-cam)."""
    B, K = acts.shape[:2]
    X = torch.nan_to_num(acts.double(), nan=0.0).reshape(B, K, -1).transpose(1, 2)
    return X - X.mean(dim=1, keepdim=True)


def kernel_matrix(X: Tensor, kernel: str = "sigmoid", gamma: Optional[float] = None) -> Tensor:
    """scikit-learn's ``pairwise_kernels(X, X, metric=kernel)`` for a batch ``[B,n,K]`` -> ``[B,n,n]``.

    ``gamma`` None = ``1 / K``; ``poly`` has degree 3 and ``coef0`` 1, ``sigmoid`` ``coef0`` 1.
    """
    if kernel not in KERNELS:
        raise ValueError(f"kpcacam: unknown kernel {kernel!r}; valid: {', '.join(KERNELS)}")
    g = 1.0 / X.shape[-1] if gamma is None else float(gamma)
    if kernel == "cosine":
        norm = X.norm(dim=-1, keepdim=True)
        Xn = X / torch.where(norm > 0, norm, torch.ones_like(norm))  # a zero point stays zero
        return Xn @ Xn.transpose(1, 2)
    dot = X @ X.transpose(1, 2)
    if kernel == "linear":
        return dot
    if kernel == "sigmoid":
        return torch.tanh(g * dot + 1.0)
    if kernel == "poly":
        return (g * dot + 1.0) ** 3
    sq = X.pow(2).sum(-1)
    d2 = (sq[:, :, None] + sq[:, None, :] - 2.0 * dot).clamp_min(0.0)
    d2 = d2 * (1.0 - torch.eye(X.shape[1], dtype=X.dtype, device=X.device))  # exact 0 diagonal
    return torch.exp(-g * d2)


def kpca_projection(acts: Tensor, kernel: str = "sigmoid", gamma: Optional[float] = None) -> Tensor:
    """First kernel principal component of each image's activations, batched.

    Equal to pytorch-grad-cam's ``get_2d_projection_kernel`` (scikit-learn's
    ``KernelPCA(n_components=1).fit_transform`` of the centred ``[h*w, K]`` points, per image),
    sign included.

    Args:
        acts: float ``[B,K,h,w]`` activations.
        kernel, gamma: see :func:`kernel_matrix`.
    Returns:
        float32 ``[B,h,w]`` coordinates (zeros where the top eigenvalue is not positive, or
        below 1e-10 of the kernel's largest entry).
    """
    B, _, h, w = acts.shape
    Km = kernel_matrix(_points(acts), kernel, gamma)
    # KernelCenterer: K - column means - row means + overall mean
    Kc = Km - Km.mean(dim=1, keepdim=True) - Km.mean(dim=2, keepdim=True) + Km.mean(dim=(1, 2), keepdim=True)
    Kc = 0.5 * (Kc + Kc.transpose(1, 2))  # exactly symmetric for eigh
    evals, evecs = torch.linalg.eigh(Kc)  # ascending
    lam = evals[:, -1]
    # not positive, or rounding of a kernel with nothing to explain (a constant layer: centred
    # kernel ~1e-16, whose "component" would be noise stretched to [0,1]): no component
    lam = torch.where(lam > 1e-10 * Km.abs().amax(dim=(1, 2)), lam, torch.zeros_like(lam))
    v = evecs[:, :, -1]
    # scikit-learn's svd_flip: the entry of largest magnitude (the first one on ties) is positive
    sign = torch.sign(v.gather(1, v.abs().argmax(dim=1, keepdim=True)))
    return (v * sign * lam.sqrt()[:, None]).reshape(B, h, w).float()


def eigen_projection(acts: Tensor) -> Tensor:
    """pytorch-grad-cam's ``get_2d_projection`` (Eigen-CAM): ``[B,K,h,w]`` -> float32 ``[B,h,w]``
    on ``acts``'s device; numpy's SVD per image (see the module docstring for why)."""
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

    proj = get_2d_projection(acts.detach().float().cpu().numpy())
    return torch.from_numpy(np.ascontiguousarray(proj, dtype=np.float32)).to(acts.device)


class _ActivationCAM(Explainer):
    """One forward to the explanation layer, a CAM ``[B,h,w]`` from its activations alone."""

    defaults = {"layer": None, "amp": None}

    def forward_passes(self, model) -> int:
        return 1

    def projection(self, acts: Tensor) -> Tensor:
        raise NotImplementedError

    @torch.inference_mode()
    def _explain(self, model, x: Tensor, y: Tensor) -> Tensor:
        with autocast(x.device, self.options["amp"]):
            acts, _ = model.features_and_logits(x, self.options["layer"])
        return cam_to_map(self.projection(acts.float()), tuple(x.shape[-2:]))


@register_explainer
class EigenCAM(_ActivationCAM):
    """Eigen-CAM (Muhammad & Yeasin, IJCNN 2020): the activations' projection on their first
    principal component (class-agnostic), ReLU, min-max, upsampling; pytorch-grad-cam's
    ``get_2d_projection``.

    Options:
        layer: explanation layer (None = the backbone's ``default_layer``).
        amp: None (fp32), ``"bf16"`` or ``"fp16"`` autocast for the forward; the SVD is float64.
    """

    name = "eigencam"
    summary = "Eigen-CAM (Muhammad & Yeasin 2020): activations projected on their first principal component"

    def projection(self, acts: Tensor) -> Tensor:
        return eigen_projection(acts)


@register_explainer
class KPCACAM(_ActivationCAM):
    """KPCA-CAM (Karmani et al. 2024): Eigen-CAM with kernel PCA, batched in torch.

    Options:
        layer: explanation layer (None = the backbone's ``default_layer``).
        kernel: ``"sigmoid"`` (default, pytorch-grad-cam's), ``"rbf"``, ``"poly"``,
            ``"linear"`` or ``"cosine"``.
        gamma: kernel coefficient (None = 1 / channels, scikit-learn's default).
        amp: autocast for the forward; the kernel and its eigendecomposition are float64.
    """

    name = "kpcacam"
    summary = "KPCA-CAM (Karmani et al. 2024): activations projected on their first kernel principal component"
    defaults = {"layer": None, "kernel": "sigmoid", "gamma": None, "amp": None}

    def __init__(self, **options) -> None:
        super().__init__(**options)
        if self.options["kernel"] not in KERNELS:
            raise ValueError(f"kpcacam: unknown kernel {self.options['kernel']!r}; valid: {', '.join(KERNELS)}")
        g = self.options["gamma"]
        if g is not None and (isinstance(g, bool) or not isinstance(g, (int, float)) or not g > 0):
            raise ValueError(f"kpcacam: gamma must be a positive number or None, got {g!r}")

    def projection(self, acts: Tensor) -> Tensor:
        return kpca_projection(acts, self.options["kernel"], self.options["gamma"])
