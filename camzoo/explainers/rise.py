"""RISE (Petsiuk et al., BMVC 2018), as in the authors' code (github.com/eclique/RISE).

N random masks, shared by every image of the batch:

1. a binary grid ``[s,s]`` per mask with P(cell = 1) = ``p1``;
2. ``cell = ceil(H/s)`` (and ``ceil(W/s)``); the grid is upsampled bilinearly
   (``align_corners=False``) to ``((s+1)*cell_h, (s+1)*cell_w)``;
3. a random shift ``(dy, dx)`` in ``[0,cell_h) x [0,cell_w)`` crops the ``[H,W]`` mask.

The masks multiply the normalized image; the saliency of class c is
``S = sum_i softmax(f(x * M_i))[c] * M_i / (N * p1)``, min-max normalized last.
``forward_passes = N``.

The grids and shifts (tiny: ``N*s*s`` values) are drawn up front from a generator seeded with
``seed`` on the input's device, so the map depends on ``seed`` but not on ``batch_size``;
the masks at input resolution are made per chunk and never all held at once.

Difference from the authors' code: they resize with scikit-image (``order=1,
mode="reflect"``), which mirrors the grid at its border; ``F.interpolate`` clamps to the edge
cell instead, so values differ within half a grid cell of the upsampled mask's border
(about ``(s+1)/s*cell/2`` pixels, partly cropped away by the shift).
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..utils import autocast as autocast_context
from ..utils import count_forwards, make_generator
from .base import Explainer, minmax, register_explainer
from .perturb import default_batch_size, inference_model


def rise_grids(n: int, s: int, p1: float, size: Tuple[int, int],
               generator: torch.Generator, device: Optional[torch.device] = None) -> Tuple[Tensor, Tensor]:
    """Draw RISE's random grids and shifts.

    Args:
        n: number of masks N.
        s: grid size (s x s cells).
        p1: probability that a cell is 1 (kept).
        size: input size ``(H, W)``.
        generator: seeded generator on ``device``.
    Returns:
        ``grids`` float32 ``[n,s,s]`` in {0,1} and ``shifts`` LongTensor ``[n,2]`` with
        ``shifts[:,0]`` in ``[0,cell_h)`` and ``shifts[:,1]`` in ``[0,cell_w)``.
    """
    device = generator.device if device is None else torch.device(device)
    ch, cw = math.ceil(size[0] / s), math.ceil(size[1] / s)
    grids = (torch.rand(n, s, s, generator=generator, device=device) < p1).float()
    dy = torch.randint(0, ch, (n,), generator=generator, device=device)
    dx = torch.randint(0, cw, (n,), generator=generator, device=device)
    return grids, torch.stack([dy, dx], dim=1)


def rise_masks(grids: Tensor, shifts: Tensor, size: Tuple[int, int]) -> Tensor:
    """Upsample and crop RISE grids to masks at input resolution.

    Args:
        grids: float ``[n,s,s]`` in {0,1}.
        shifts: LongTensor ``[n,2]`` (row, column) crop offsets.
        size: input size ``(H, W)``.
    Returns:
        float32 masks ``[n,H,W]`` in [0,1].
    """
    n, s = grids.shape[0], grids.shape[-1]
    H, W = size
    ch, cw = math.ceil(H / s), math.ceil(W / s)
    up = F.interpolate(grids[:, None].float(), size=((s + 1) * ch, (s + 1) * cw), mode="bilinear",
                       align_corners=False)[:, 0]
    rows = shifts[:, 0, None] + torch.arange(H, device=grids.device)  # [n,H]
    cols = shifts[:, 1, None] + torch.arange(W, device=grids.device)  # [n,W]
    ar = torch.arange(n, device=grids.device)
    return up[ar[:, None, None], rows[:, :, None], cols[:, None, :]]


@register_explainer
class RISE(Explainer):
    """RISE; see the module docstring.

    Options:
        n_masks: number of random masks N (the L-CAM paper: 4000 for VGG-16, 8000 for ResNet-50).
        s: grid size.
        p1: probability of keeping a cell.
        seed: seed of the mask generator (same seed, same masks, same map).
        batch_size: masked inputs per forward pass; None = 32 on CPU, 128 on accelerators.
        amp: None (fp32), ``"fp16"`` or ``"bf16"`` autocast for the forwards (meant for CUDA).
        fuse_bn: forward through :func:`camzoo.explainers.perturb.inference_model` (BatchNorm
            folded into the convolutions; same logits to float rounding).
    """

    name = "rise"
    summary = "RISE (Petsiuk et al. 2018): random masks weighted by the class probability"
    defaults = {"n_masks": 4000, "s": 7, "p1": 0.5, "seed": 0, "batch_size": None, "amp": None,
                "fuse_bn": True}

    def __init__(self, **options) -> None:
        super().__init__(**options)
        o = self.options
        if int(o["n_masks"]) < 1 or int(o["s"]) < 1 or (o["batch_size"] is not None and int(o["batch_size"]) < 1):
            raise ValueError(f"rise: n_masks, s and batch_size must be >= 1; got n_masks={o['n_masks']!r}, "
                             f"s={o['s']!r}, batch_size={o['batch_size']!r}")
        if not 0.0 < float(o["p1"]) <= 1.0:
            raise ValueError(f"rise: p1 must be in (0, 1], got {o['p1']!r}")

    def forward_passes(self, model) -> int:
        return int(self.options["n_masks"])

    @torch.inference_mode()
    def saliency(self, model, x: Tensor, y: Tensor) -> Tensor:
        """Unnormalized RISE saliency ``[B,H,W]`` (>= 0) of classes ``y`` ``[B]`` for ``x`` ``[B,3,H,W]``."""
        o = self.options
        n, s, p1 = int(o["n_masks"]), int(o["s"]), float(o["p1"])
        bs = default_batch_size(x.device, o["batch_size"])
        B = x.shape[0]
        size = (x.shape[-2], x.shape[-1])
        gen = make_generator(o["seed"], x.device)
        grids, shifts = rise_grids(n, s, p1, size, gen)
        xc = x.contiguous(memory_format=torch.channels_last)
        sal = torch.zeros(B, *size, device=x.device, dtype=torch.float32)
        amp = autocast_context(x.device, o["amp"])
        net = inference_model(model) if o["fuse_bn"] else model.model
        m_chunk = max(1, bs // B)  # masks per chunk: B * m_chunk pairs, forwarded bs at a time
        for m0 in range(0, n, m_chunk):
            masks = rise_masks(grids[m0:m0 + m_chunk], shifts[m0:m0 + m_chunk], size)  # [m,H,W]
            m = masks.shape[0]
            probs = torch.empty(B, m, device=x.device, dtype=torch.float32)
            pair = torch.arange(B * m, device=x.device)
            for p0 in range(0, B * m, bs):
                p = pair[p0:p0 + bs]
                b, i = p // m, p % m
                masked = xc[b]  # [n,3,H,W], channels-last (advanced indexing keeps the layout)
                masked.mul_(masks[i, None])
                with amp:
                    logits = net(masked)
                probs.view(-1)[p] = torch.softmax(logits.float(), dim=1).gather(1, y[b, None])[:, 0]
                count_forwards(masked.shape[0])  # the engine's progress within a batch
            sal += torch.einsum("bm,mhw->bhw", probs, masks)
        return sal / (n * p1)

    def _explain(self, model, x: Tensor, y: Tensor) -> Tensor:
        return minmax(self.saliency(model, x, y))
