"""Which pixels ROAD removes: the MoRF / LeRF order of a map, with the authors' tie breaking,
and the seeded random fields (tie breaking, imputation noise) shared by all images."""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

from ...utils import make_generator
from ..rise_protocol import descending_rank

ORDERS = ("morf", "lerf")


def removed_count(p: float, n: int) -> int:
    """Pixels removed at fraction ``p`` of ``n``: ``floor(p * n)`` (rounded to 9 decimals first,
    so ``0.7 * 10`` is 7, not 6). Raises for ``p`` outside (0, 1)."""
    p = float(p)
    if not 0.0 < p < 1.0:
        raise ValueError(f"ROAD removal fractions must be in (0, 1); got {p}")
    return int(math.floor(round(p * n, 9)))


def removal_masks(V: Tensor, fractions: Sequence[float], order: str,
                  tie_fields: Optional[Tensor] = None) -> Tensor:
    """Removed pixels per image and fraction.

    Args:
        V: maps ``[B,H,W]`` (any real values).
        fractions: removal fractions in (0, 1), ``P`` of them.
        order: ``"morf"`` (most relevant first: the highest values go) or ``"lerf"``.
        tie_fields: ``[P,H,W]`` added to the rescaled map before ordering (the authors' tie
            breaking, ``1e-4 * N(0,1)``); None = exact order, ties in raster order (a stable
            sort: of equal values the earlier pixel counts as more relevant).
    Returns:
        bool ``[B,P,H,W]``: True where the pixel is removed; exactly ``floor(p*H*W)`` per map.
    """
    if order not in ORDERS:
        raise ValueError(f"unknown ROAD order {order!r}; valid: {', '.join(ORDERS)}")
    B, H, W = V.shape
    n = H * W
    flat = V.reshape(B, n).float()
    lo = flat.amin(1, keepdim=True)
    hi = flat.amax(1, keepdim=True)
    s = (flat - lo) / (hi - lo + 1e-5)  # the authors' normalize_map
    out = torch.empty(B, len(fractions), H, W, dtype=torch.bool, device=V.device)
    for j, p in enumerate(fractions):
        k = removed_count(p, n)
        sj = s if tie_fields is None else s + tie_fields[j].reshape(1, n).to(s)
        rank = descending_rank(sj.view(B, H, W))  # 0 = most relevant
        removed = rank < k if order == "morf" else rank >= n - k
        out[:, j] = removed.view(B, H, W)
    return out


def random_fields(seed: int, n_fields: int, shape: Tuple[int, ...], scale: float,
                  device=None) -> Tensor:
    """``scale * N(0,1)`` fields ``[n_fields, *shape]`` from a CPU generator seeded with ``seed``
    (the same numbers on every device), moved to ``device``."""
    t = torch.randn((n_fields, *shape), generator=make_generator(seed)) * float(scale)
    return t.to(device)
