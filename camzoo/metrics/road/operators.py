"""The ROAD imputation's linear system and its operators (pure torch, any device).

Every removed pixel ``i`` takes the weighted mean of its in-image 8 neighbours (weights 1/6
direct, 1/12 diagonal), the removed neighbours' values being unknowns too::

    d_i * u_i - sum_{j removed} w_ij u_j = sum_{k kept} w_ik x_k,   d_i = sum_{j in image} w_ij

:class:`FineOperator` applies this system to fields ``[N,C,H,W]`` (the channels of an image
share it); :class:`StencilOperator` applies a coarse level's 9-point stencil
(:mod:`.multigrid`). Memory layouts, each chosen for torch's fastest CPU kernels: fine-grid
fields are channels-last (the depthwise 3x3 convolution is several times faster there) with
the masks expanded to the fields' shape (a broadcast over the innermost channel dimension is
slow); coarse-grid fields are contiguous NCHW with ``[N,1,h,w]`` coefficients.
"""
from __future__ import annotations

from typing import Any, List, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

#: the authors' ``neighbors_weights``: 1/6 for the 4 direct neighbours, 1/12 for the diagonals
NEIGHBOUR_WEIGHTS = {(-1, -1): 1 / 12, (-1, 0): 1 / 6, (-1, 1): 1 / 12, (0, -1): 1 / 6,
                     (0, 1): 1 / 6, (1, -1): 1 / 12, (1, 0): 1 / 6, (1, 1): 1 / 12}
#: the 3x3 stencil positions in raster order; index 4 is the centre (the diagonal)
OFFSETS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
CENTRE = 4
CL = torch.channels_last


def neighbour_kernel(dtype=torch.float32, device=None) -> Tensor:
    """The 3x3 neighbour weights ``[3,3]`` (centre 0), summing to 1."""
    k = torch.zeros(3, 3, dtype=torch.float64)
    for (dy, dx), w in NEIGHBOUR_WEIGHTS.items():
        k[dy + 1, dx + 1] = w
    return k.to(dtype=dtype, device=device)


def in_image_weights(H: int, W: int, dtype: torch.dtype, device: Any) -> Tensor:
    """``d`` ``[1,1,H,W]``: each pixel's sum of in-image neighbour weights (1 inside)."""
    ones = torch.ones(1, 1, H, W, dtype=dtype, device=device)
    return F.conv2d(ones, neighbour_kernel(dtype, device)[None, None], padding=1)


def dot(a: Tensor, b: Tensor) -> Tensor:
    """Inner products per image over all channels, ``[N,1,1,1]``, of fine-grid fields
    ``[N,C,H,W]`` (both channels-last, or both contiguous NCHW): one batched matrix product
    over their memory, no copies."""
    N = a.shape[0]
    if a.is_contiguous() and b.is_contiguous():
        fa, fb = a.reshape(N, 1, -1), b.reshape(N, 1, -1)
    else:
        fa, fb = a.permute(0, 2, 3, 1).reshape(N, 1, -1), b.permute(0, 2, 3, 1).reshape(N, 1, -1)
    return torch.bmm(fa, fb.transpose(1, 2)).view(N, 1, 1, 1)  # (a row-major B^T: fast GEMM)


class FineOperator:
    """The system over the removed pixels of ``N`` images: ``A u = m * (d * u - K*u)``.

    ``m`` is 1 at removed pixels; fields ``u`` ``[N,C,H,W]`` (channels-last) live on them (0
    elsewhere), so ``K*u`` (the 3x3 neighbour weights, zero padding) only sums removed
    neighbours and the kept ones go to the right-hand side ``b = m * (K * ((1 - m) * x))``.
    ``d`` (the in-image weight sums) is 1 inside the image, so ``d*u - K*u = (delta - K)*u +
    (d - 1)*u``: one depthwise convolution (float32; float64 uses the separable form
    ``K = [1,2,1]^T [1,2,1] / 12 - delta / 3`` on slices) plus a correction on the border pixels.
    """

    def __init__(self, removed: Tensor, dtype: torch.dtype, channels: int = 3) -> None:
        dev = removed.device
        N, H, W = removed.shape
        self.dtype = dtype
        self.m1 = removed[:, None].to(dtype)  # [N,1,H,W] (setup only)
        self.m = self.m1.expand(N, channels, H, W).contiguous(memory_format=CL)
        k = neighbour_kernel(dtype, dev)
        delta = torch.zeros_like(k)
        delta[1, 1] = 1.0
        self.kernel = k.expand(channels, 1, 3, 3).contiguous()
        self.laplace = (delta - k).expand(channels, 1, 3, 3).contiguous()  # delta - K
        self.d = in_image_weights(H, W, dtype, dev)  # [1,1,H,W]
        self.md = self.m * self.d
        # the border pixels (the only ones where d != 1): rows 0 and H-1, then columns 0 and
        # W-1 between them; the (d - 1) * u correction is applied on these slices only
        self.border = [(Ellipsis, slice(y, y + 1), slice(None)) for y in sorted({0, H - 1})]
        if H > 2:
            cols = sorted({0, W - 1})
            self.border += [(Ellipsis, slice(1, H - 1), slice(x, x + 1)) for x in cols]
        self.dm1b = [(self.d - 1.0)[sl] for sl in self.border]  # [1,1,...]: any channel count

    def add_border(self, t: Tensor, u: Tensor) -> Tensor:
        """``t += (d - 1) * u`` on the border pixels, in place (fields of any channel count)."""
        for sl, c in zip(self.border, self.dm1b):
            t[sl].addcmul_(c, u[sl])
        return t

    def _neighbours(self, u: Tensor) -> Tensor:
        """``K*u`` (zero padding)."""
        if self.dtype == torch.float32:
            return F.conv2d(u, self.kernel, padding=1, groups=u.shape[1])
        a = u * 2.0  # [1,2,1] along the rows, then along the columns (zero outside)
        a[..., :, 1:] += u[..., :, :-1]
        a[..., :, :-1] += u[..., :, 1:]
        s = a * 2.0
        s[..., 1:, :] += a[..., :-1, :]
        s[..., :-1, :] += a[..., 1:, :]
        return s.mul_(1.0 / 12.0).sub_(u, alpha=1.0 / 3.0)

    def _unmasked(self, u: Tensor) -> Tensor:
        """``d * u - K*u`` everywhere (u supported on the removed pixels)."""
        if self.dtype == torch.float32:
            t = F.conv2d(u, self.laplace, padding=1, groups=u.shape[1])
        else:
            t = u - self._neighbours(u)
        return self.add_border(t, u)

    def apply(self, u: Tensor) -> Tensor:
        """``A u`` for fields ``u`` ``[N,C,H,W]`` that are 0 at kept pixels."""
        return self._unmasked(u).mul_(self.m)

    def apply9(self, v: Tensor) -> Tensor:
        """``A`` on 9 channels-last fields ``[N,9,H,W]`` of one image each (the multigrid's
        probes), whatever channel count the operator was built for; ``v`` 0 at kept pixels."""
        lap = self.laplace[:1].expand(9, 1, 3, 3).contiguous()
        return self.add_border(F.conv2d(v, lap, padding=1, groups=9), v).mul_(
            self.m1.contiguous(memory_format=CL))

    def residual(self, r: Tensor, u: Tensor) -> Tensor:
        """``r - A u``."""
        return torch.addcmul(r, self.m, self._unmasked(u), value=-1.0)

    def rhs(self, x: Tensor) -> Tensor:
        """``b = m * (K * ((1 - m) * x))`` for channels-last images ``x`` ``[N,C,H,W]``."""
        return self._neighbours((1 - self.m) * x).mul_(self.m)

    def stencil(self) -> Tensor:
        """The explicit 9-point stencil ``[N,9,H,W]`` (channel k: the coefficient of the
        neighbour at ``OFFSETS[k]``; for coarsening)."""
        m = self.m1
        # -w_k * m(i + offset_k): one convolution with 9 one-hot kernels scaled by -w_k, times m(i)
        pick = torch.diag_embed(-neighbour_kernel(m.dtype, m.device).reshape(9)).view(9, 1, 3, 3)
        S = F.conv2d(m, pick, padding=1).mul_(m)
        S[:, CENTRE] = (m * self.d)[:, 0]
        return S


def _span(d: int, n: int) -> Tuple[slice, slice]:
    """Indices ``i`` with ``0 <= i + d < n`` (destination) and ``i + d`` (source)."""
    return slice(max(0, -d), n - max(0, d)), slice(max(0, d), n + min(0, d))


def apply_stencil(S: List[Tensor], u: Tensor) -> Tensor:
    """``(A u)(i) = sum_k S[k](i) * u(i + offset_k)`` (zero outside); S: 9 tensors ``[N,1,h,w]``,
    u ``[N,C,h,w]`` (contiguous). Written on slices (no padded copy)."""
    h, w = u.shape[-2:]
    out = S[CENTRE] * u
    for k, (dy, dx) in enumerate(OFFSETS):
        if k != CENTRE:
            (ty, sy), (tx, sx) = _span(dy, h), _span(dx, w)
            out[..., ty, tx].addcmul_(S[k][..., ty, tx], u[..., sy, sx])
    return out


class StencilOperator:
    """A coarse-grid operator: a 9-point stencil ``S`` ``[N,9,h,w]`` with per-cell
    coefficients, on contiguous NCHW fields ``[N,C,h,w]``."""

    def __init__(self, S: Tensor) -> None:
        self.S = [S[:, k:k + 1] for k in range(9)]

    def apply(self, u: Tensor) -> Tensor:
        return apply_stencil(self.S, u)

    def residual(self, r: Tensor, u: Tensor) -> Tensor:
        return r - apply_stencil(self.S, u)
