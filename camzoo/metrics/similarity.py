"""How alike two saliency maps are: the similarity measures of the model-randomization sanity
check (Adebayo, Gilmer, Muelly, Goodfellow, Hardt, Kim, "Sanity checks for saliency maps",
NeurIPS 2018, Sec. 3: Spearman rank correlation with and without absolute values, SSIM, and
the Pearson correlation of HOG features) and the top-region IoU of the misclassification
analysis.

Conventions (camzoo's, where the paper has none):

- Spearman is the Pearson correlation of the *average* ranks (ties share their mean rank),
  computed in float64. A constant map carries no ranking: two constant maps are identical
  (1), a constant map against a non-constant one is 0. The same rule holds for HOG
  (a constant map has an all-zero HOG).
- "Without absolute values" ranks the maps as they are; "with absolute values" ranks
  ``|V|``. camzoo's maps are in [0,1], so the two coincide; both are reported so numbers line
  up with the paper's figures (whose gradient maps are signed).
- SSIM: ``skimage.metrics.structural_similarity`` with ``data_range=1`` (maps in [0,1]),
  its default 7x7 window. HOG: ``skimage.feature.hog`` with 9 orientations, 16x16-pixel cells,
  2x2-cell blocks (L2-Hys), then Pearson of the two feature vectors.

SSIM and HOG run on the CPU through numpy (scikit-image); they are analysis tools, not part
of a benchmark's hot loop.
"""
from __future__ import annotations

from typing import Dict

import numpy as np
import torch
from torch import Tensor

from .adcc import pearson

HOG_OPTIONS = {"orientations": 9, "pixels_per_cell": (16, 16), "cells_per_block": (2, 2),
               "block_norm": "L2-Hys"}
SIMILARITIES = ("spearman", "spearman_abs", "ssim", "hog")


def average_ranks(x: Tensor) -> Tensor:
    """Average ranks of every row.

    Args:
        x: ``[B,N]`` real values.
    Returns:
        float64 ``[B,N]``: 0 for the lowest value of a row, ``N-1`` for the highest; tied
        values share the mean of their ranks.
    """
    s, order = torch.sort(x, dim=1, stable=True)
    B, N = s.shape
    pos = torch.arange(N, device=x.device).expand(B, N)
    diff = s[:, 1:] != s[:, :-1]
    edge = torch.ones(B, 1, dtype=torch.bool, device=x.device)
    # first and last sorted position of each value's tie group
    first = torch.where(torch.cat([edge, diff], 1), pos, 0).cummax(dim=1).values
    last = torch.where(torch.cat([diff, edge], 1), pos, N - 1).flip(1).cummin(dim=1).values.flip(1)
    mean = (first + last).to(torch.float64) / 2
    return torch.empty(B, N, dtype=torch.float64, device=x.device).scatter_(1, order, mean)


def _constant(x: Tensor) -> Tensor:
    return x.amax(dim=1) == x.amin(dim=1)


def _correlation(a: Tensor, b: Tensor) -> Tensor:
    """Pearson per row in float64 with the constant-row rule of the module docstring."""
    ca, cb = _constant(a), _constant(b)
    r = pearson(a, b, nan_value=0.0, dtype=torch.float64)
    return torch.where(ca & cb, torch.ones_like(r), r)


def rank_correlation(A: Tensor, B: Tensor, absolute: bool = False) -> Tensor:
    """Spearman rank correlation of each pair of maps.

    Args:
        A, B: ``[B,H,W]`` maps (any real values).
        absolute: rank ``|A|`` and ``|B|`` instead.
    Returns:
        float64 ``[B]`` in [-1,1] (constant maps: see the module docstring).
    """
    a, b = A.reshape(A.shape[0], -1), B.reshape(B.shape[0], -1)
    if absolute:
        a, b = a.abs(), b.abs()
    return _correlation(average_ranks(a), average_ranks(b))


def _nonnegative(*maps: Tensor) -> bool:
    return all(bool((m >= 0).all()) for m in maps)


def ssim(A: Tensor, B: Tensor) -> Tensor:
    """SSIM of each pair of maps ``[B,H,W]`` in [0,1] (scikit-image, ``data_range=1``);
    float64 ``[B]`` in [-1,1]."""
    from skimage.metrics import structural_similarity

    a = A.detach().double().cpu().numpy()
    b = B.detach().double().cpu().numpy()
    return torch.tensor([structural_similarity(x, y, data_range=1.0) for x, y in zip(a, b)],
                        dtype=torch.float64)


def hog_features(A: Tensor) -> Tensor:
    """HOG features (:data:`HOG_OPTIONS`) of each map ``[B,H,W]``: float64 ``[B,F]``."""
    from skimage.feature import hog

    a = A.detach().double().cpu().numpy()
    return torch.from_numpy(np.stack([hog(x, **HOG_OPTIONS) for x in a]))


def hog_similarity(A: Tensor, B: Tensor) -> Tensor:
    """Pearson correlation of the HOG features of each pair of maps ``[B,H,W]``: float64
    ``[B]`` in [-1,1] (constant maps: see the module docstring)."""
    return _correlation(hog_features(A), hog_features(B))


def map_similarities(V: Tensor, V0: Tensor) -> Dict[str, Tensor]:
    """Every measure of :data:`SIMILARITIES` between maps ``V`` and reference maps ``V0``
    (``[B,H,W]`` in [0,1], on any device): ``{name: float64 [B]}`` on the CPU."""
    V, V0 = V.detach().cpu(), V0.detach().cpu()
    sp = rank_correlation(V, V0)
    # |V| = V for maps >= 0 (every camzoo map): the same ranks, not computed twice
    sp_abs = sp.clone() if _nonnegative(V, V0) else rank_correlation(V, V0, absolute=True)
    return {"spearman": sp, "spearman_abs": sp_abs, "ssim": ssim(V, V0), "hog": hog_similarity(V, V0)}
