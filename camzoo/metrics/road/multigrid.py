"""The multigrid V-cycle that preconditions the ROAD imputation's conjugate gradients.

Vertex-centred coarsening: the coarse points of a side of n fine points are the even ones,
0, 2, ..., (n+1)//2 of them; an odd fine point takes the mean of its two coarse neighbours
(the last one, when n is even, copies its single neighbour). P = (this bilinear
interpolation) restricted to the fine unknowns, R = P^T; coarse operators P^T A P keep the
9-point stencil shape (the support of P e_J is J's 3x3 fine block) and are computed exactly by
probing (:func:`galerkin`).
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .operators import CENTRE, CL, OFFSETS, FineOperator, StencilOperator


# -- transfers on contiguous NCHW fields (the coarse grids) ------------------------------------
def _axis(t: Tensor, dim: int, s: slice) -> Tensor:
    idx: List[Any] = [slice(None)] * t.dim()
    idx[dim] = s
    return t[tuple(idx)]


def _interp_axis(c: Tensor, n: int, dim: int) -> Tensor:
    """Linear interpolation along ``dim``: ``(n+1)//2`` coarse values -> ``n`` fine values."""
    shape = list(c.shape)
    shape[dim] = n
    out = c.new_empty(shape)
    m = n // 2  # odd fine points
    _axis(out, dim, slice(0, None, 2)).copy_(c)
    odd = _axis(out, dim, slice(1, None, 2))
    pairs = m if n % 2 else m - 1  # odd points with two coarse neighbours
    if pairs > 0:
        o = _axis(odd, dim, slice(0, pairs))
        torch.add(_axis(c, dim, slice(0, pairs)), _axis(c, dim, slice(1, pairs + 1)), out=o)
        o.mul_(0.5)
    if n % 2 == 0 and m > 0:
        _axis(odd, dim, slice(m - 1, m)).copy_(_axis(c, dim, slice(m - 1, m)))
    return out


def _restrict_axis(r: Tensor, dim: int) -> Tensor:
    """The transpose of :func:`_interp_axis` along ``dim``: ``n`` -> ``(n+1)//2`` values."""
    n = r.shape[dim]
    m = n // 2
    pairs = m if n % 2 else m - 1
    z = _axis(r, dim, slice(0, None, 2)).clone()
    ro = _axis(r, dim, slice(1, None, 2))
    if pairs > 0:
        _axis(z, dim, slice(0, pairs)).add_(_axis(ro, dim, slice(0, pairs)), alpha=0.5)
        _axis(z, dim, slice(1, pairs + 1)).add_(_axis(ro, dim, slice(0, pairs)), alpha=0.5)
    if n % 2 == 0 and m > 0:
        _axis(z, dim, slice(m - 1, m)).add_(_axis(ro, dim, slice(m - 1, m)))
    return z


def interp(uc: Tensor, h: int, w: int) -> Tensor:
    """Bilinear interpolation ``[N,C,(h+1)//2,(w+1)//2]`` -> ``[N,C,h,w]`` (unmasked)."""
    return _interp_axis(_interp_axis(uc, h, 2), w, 3)


def restrict(r: Tensor) -> Tensor:
    """``P^T r`` for fields ``[N,C,h,w]`` that are 0 off the unknowns; contiguous NCHW."""
    return _restrict_axis(_restrict_axis(r, 2), 3).contiguous()


# -- transfers on the channels-last fine grid ---------------------------------------------------
# There the same two maps run as one depthwise convolution each (a single pass, ~2x faster
# there; on the NCHW coarse grids the slices are faster). With ``Q`` the stride-2 convolution
# with ``[1/2, 1, 1/2]`` per axis (zero padding), ``P^T = Q D`` and ``P = D Q^T``, where ``D``
# doubles the last fine row / column of an even side (its odd point has one coarse neighbour,
# weight 1, where ``Q`` gives 1/2).
@functools.lru_cache(maxsize=16)
def _transfer_kernel(C: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """The depthwise ``[C,1,3,3]`` kernel of ``Q`` (cached: no host-to-device copy per call)."""
    k = torch.tensor([0.5, 1.0, 0.5], dtype=dtype, device=device)
    return (k[:, None] * k[None]).expand(C, 1, 3, 3).contiguous()


def _double_last(t: Tensor, h: int, w: int) -> Tensor:
    """``D t`` in place (fine fields ``[N,C,h,w]``)."""
    if h % 2 == 0:
        t[..., -1, :].mul_(2.0)
    if w % 2 == 0:
        t[..., :, -1].mul_(2.0)
    return t


def restrict_cl_(r: Tensor) -> Tensor:
    """:func:`restrict` of channels-last fine fields ``[N,C,h,w]`` (overwrites ``r``'s last
    row / column); contiguous NCHW ``[N,C,(h+1)//2,(w+1)//2]``."""
    h, w = r.shape[-2:]
    k = _transfer_kernel(r.shape[1], r.dtype, r.device)
    return F.conv2d(_double_last(r, h, w), k, stride=2, padding=1, groups=r.shape[1]).contiguous()


def interp_cl(uc: Tensor, h: int, w: int) -> Tensor:
    """:func:`interp` onto the channels-last fine grid: ``[N,C,(h+1)//2,(w+1)//2]`` ->
    channels-last ``[N,C,h,w]``."""
    C = uc.shape[1]
    k = _transfer_kernel(C, uc.dtype, uc.device)
    p = F.conv_transpose2d(uc.contiguous(memory_format=CL), k, stride=2, padding=1,
                           output_padding=(1 - h % 2, 1 - w % 2), groups=C)
    return _double_last(p.contiguous(memory_format=CL), h, w)


# -- Galerkin coarse operators ---------------------------------------------------------------
_PROBES: Dict[Any, Tuple[Tensor, Tensor, Tensor]] = {}


def probes(h: int, w: int, dtype: torch.dtype, device: Any) -> Tuple[Tensor, Tensor, Tensor]:
    """The 9 colour probes of a fine grid ``h x w``: the indicators of the coarse points of
    colour ``(I_y mod 3) * 3 + (I_x mod 3)``, interpolated to the fine grid (``[1,9,h,w]``,
    NCHW and channels-last), and ``[9,hc,wc]``: the colour of ``I + offset_k``. Cached (a
    handful of small tensors per grid size)."""
    key = (h, w, dtype, str(device))
    if key not in _PROBES:
        hc, wc = (h + 1) // 2, (w + 1) // 2
        iy = torch.arange(hc, device=device).view(hc, 1)
        ix = torch.arange(wc, device=device).view(1, wc)
        colour = (iy % 3) * 3 + (ix % 3)
        e = torch.stack([(colour == k).to(dtype) for k in range(9)])[None]
        fine = interp(e, h, w)
        idx = torch.stack([((iy + dy) % 3) * 3 + ((ix + dx) % 3) for dy, dx in OFFSETS])
        if len(_PROBES) > 32:
            _PROBES.clear()
        _PROBES[key] = (fine, fine.contiguous(memory_format=CL), idx)
    return _PROBES[key]


def galerkin(apply9: Callable[[Tensor], Tensor], probe: Tensor, idx: Tensor, support: Tensor,
             restrict_: Callable[[Tensor], Tensor]) -> Tensor:
    """The coarse stencil ``[N,9,hc,wc]`` of ``P^T A P``, exactly, from 9 probes: coarse points
    of one colour are 3 apart, so each coarse point meets exactly one point of each colour in
    its 3x3 neighbourhood and ``(P^T A P e_colour)(I)`` is the coefficient of that neighbour.
    ``apply9``: ``A`` on 9 fields; ``probe``: the interpolated colours; ``support`` [N,1,h,w];
    ``restrict_``: ``P^T`` for the level's layout (:func:`restrict_cl_` on the fine grid)."""
    Z = restrict_(apply9(probe * support))  # [N, 9 colours, hc, wc]
    N, _, hc, wc = Z.shape
    return Z.gather(1, idx[None].expand(N, 9, hc, wc))


class Multigrid:
    """A symmetric multigrid V-cycle preconditioner for the ROAD systems of ``N`` images.

    Levels: the fine system, then vertex-centred coarsenings (bilinear interpolation ``P`` onto
    each level's unknowns, Galerkin operators ``P^T A P`` computed exactly by probing,
    :func:`galerkin`) until a side is at most ``coarse_size``, solved there by a dense
    Cholesky factorization (float64). Smoothing: one Jacobi sweep before and one after the
    coarse correction, weight ``omega`` on the fine grid (``lambda_max(D^-1 A) <= 4/3`` there)
    and l1-Jacobi (``D = sum_j |a_ij|``, so ``lambda_max(D^-1 A) <= 1``) with weight ``omega_c``
    on the coarse grids, whose operators are only positive semi-definite where the masked
    interpolation loses rank. Both smoothers converge (``omega * lambda_max < 2``) and the
    coarse solves are positive semi-definite (the coarsest one is shifted by ``1e-5`` of its
    diagonal: float32 rounding of a singular operator), so the V-cycle is SPD and conjugate
    gradients converge with it. The defaults (``omega = 1``, ``omega_c = 1.8``) took the fewest
    iterations on 224x224 ROAD masks: 6 per image to ``tol = 1e-5``, 7 to ``1e-6`` (the
    earlier 2x2-aggregation V-cycle: 12 and 15).

    Attributes:
        ops: per level, the operator (level 0: the :class:`FineOperator`, then
            :class:`StencilOperator`).
        support: per level, 1 on the level's unknowns (level 0: ``[N,C,H,W]``, else
            ``[N,1,h,w]``); ``sizes``: per level ``(h, w)``; ``dinv``: the smoothers' weights.
    """

    def __init__(self, fine: FineOperator, omega: float = 1.0, omega_c: float = 1.8,
                 coarse_size: int = 16) -> None:
        if not (0 < omega < 1.5 and 0 < omega_c < 2):
            raise ValueError(f"smoothing weights out of their convergent range: omega={omega} "
                             f"(0, 1.5), omega_c={omega_c} (0, 2)")
        dtype, m1 = fine.dtype, fine.m1
        _, _, H, W = m1.shape
        self.ops: List[Any] = [fine]
        self.support = [fine.m]
        self.sizes = [(H, W)]
        self.dinv = [torch.where(fine.md > 0, omega / fine.md.clamp_min(1e-30),
                                 torch.zeros_like(fine.md))]
        h, w = H, W
        S: Optional[Tensor] = None
        while max(h, w) > coarse_size:
            probe, probe_cl, idx = probes(h, w, dtype, m1.device)
            if S is None:  # from the channels-last fine grid
                S = galerkin(fine.apply9, probe_cl, idx, m1.contiguous(memory_format=CL),
                             restrict_cl_)
            else:
                S = galerkin(self.ops[-1].apply, probe, idx, self.support[-1], restrict)
            h, w = S.shape[-2:]
            diag = S[:, CENTRE:CENTRE + 1]
            self.ops.append(StencilOperator(S))
            self.support.append((diag > 0).to(dtype).contiguous())
            self.sizes.append((h, w))
            self.dinv.append(torch.where(diag > 0, omega_c / S.abs().sum(1, keepdim=True)
                                         .clamp_min(1e-30), torch.zeros_like(diag)).contiguous())
        self._factor(fine.stencil() if S is None else S)

    def _factor(self, S: Tensor) -> None:
        """Dense Cholesky factor of the coarsest operator (float64; empty cells get identity
        rows; the others a ``1e-5`` relative diagonal shift)."""
        N = S.shape[0]
        h, w = S.shape[-2:]
        n = h * w
        dev = S.device
        A = torch.zeros(N, n, n, dtype=torch.float64, device=dev)
        idx = torch.arange(n, device=dev)
        iy, ix = idx // w, idx % w
        for k, (dy, dx) in enumerate(OFFSETS):
            jy, jx = iy + dy, ix + dx
            ok = (jy >= 0) & (jy < h) & (jx >= 0) & (jx < w)
            A[:, idx[ok], (jy * w + jx)[ok]] = S[:, k].reshape(N, n)[:, ok].double()
        diag = S[:, CENTRE].reshape(N, n).double()
        shift = torch.where(diag > 0, 1e-5 * diag, torch.ones_like(diag))
        self.chol = torch.linalg.cholesky(A + torch.diag_embed(shift))

    def __call__(self, r: Tensor, level: int = 0) -> Tensor:
        """Approximate ``A^{-1} r`` for residuals ``r`` ``[N,C,h,w]`` at ``level`` (0 off the
        level's unknowns; level 0: channels-last)."""
        if level == len(self.ops) - 1:  # the coarsest grid (or a single level): exact
            N, C, h, w = r.shape
            z = torch.cholesky_solve(r.reshape(N, C, h * w).transpose(1, 2).double(), self.chol)
            return z.transpose(1, 2).reshape(N, C, h, w).to(r.dtype) * self.support[level]
        op, dinv = self.ops[level], self.dinv[level]
        u = dinv * r
        res = op.residual(r, u)
        if level == 0:  # the channels-last fine grid
            p = interp_cl(self(restrict_cl_(res), 1), *self.sizes[0])
        else:
            p = interp(self(restrict(res), level + 1), *self.sizes[level])
        u.addcmul_(p, self.support[level])
        u.addcmul_(dinv, op.residual(r, u))
        return u
