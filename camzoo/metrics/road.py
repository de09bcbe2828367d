"""Protocol ``road``: Remove And Debias -- MoRF / LeRF curves with noisy linear imputation.

Source: Y. Rong, T. Leemann, V. Borisov, G. Kasneci, E. Kasneci, "A Consistent and Efficient
Evaluation Strategy for Attribution Methods", ICML 2022; authors' code
github.com/tleemann/road_evaluation (``road/imputations.py``: ``NoisyLinearImputer``;
``road/imputed_dataset.py``: ``ImputedDataset``; ``road/road.py``: ``run_road``;
``road/retraining.py``: ``road_eval``).

Per image ``x01`` in [0,1], map ``V`` and class ``c``, and per removal fraction ``p``
(default 10 %, 20 %, ..., 90 %):

- **order**: ``s = (V - min V) / (max V - min V + 1e-5) + tie_noise * N(0,1)`` (the authors'
  ``rescale_channel`` and ``random_v``; one tie-breaking field per order and fraction, shared by
  all images); MoRF removes the ``floor(p*H*W)`` pixels with the highest ``s``, LeRF the
  ``floor(p*H*W)`` with the lowest;
- **imputation** (in [0,1] image space, before the normalization, as in the authors' code,
  whose datasets return unnormalized tensors and normalize after the imputation): every removed
  pixel ``i`` takes the weighted mean of its in-image 8 neighbours, weights 1/6 (direct) and
  1/12 (diagonal), the neighbours' own values being imputed too -- one sparse linear system
  over all removed pixels, per channel::

      d_i * u_i - sum_{j removed} w_ij u_j = sum_{k kept} w_ik x_k,   d_i = sum_{j in image} w_ij

  then ``+ noise * N(0,1)`` at the removed pixels (noise 0.01, the authors' default; one noise
  field per order and fraction, shared by all images, so a row does not depend on its batch);
- **score**: ``softmax(f(normalize(imputed)))[c]``; curves ``[B, P]``; the row values are the
  curve means ``ROAD-MoRF`` (lower is better), ``ROAD-LeRF`` (higher is better) and
  ``ROAD = (LeRF - MoRF) / 2`` (pytorch-grad-cam's ``ROADCombined``).

The system matrix is the graph Laplacian of the removed pixels with Dirichlet values at the
kept ones: symmetric positive definite whenever a pixel is kept. It is solved batched over many
(image, fraction) systems by conjugate gradients preconditioned with a multigrid V-cycle
(:class:`_Multigrid`: bilinear interpolation onto vertex-centred coarse grids, exact Galerkin
coarse operators, Jacobi / l1-Jacobi smoothing, a dense Cholesky solve on the coarsest grid;
about 7 iterations per system), in float32 inside a float64 iterative refinement, to a
relative residual ``||b - A u|| <= tol * ||b||`` (float64, per image over its channels;
default ``tol = 1e-6``). No scipy, no per-pixel Python loop; any device. On the CPU the
multigrid's stencil passes run as compiled C kernels (:mod:`.road_kernels`, built once per
machine with the system's C compiler; torch operators where none works, or with
``kernels=False``): the same algorithm, the same values to float32 rounding. The residual is a
loose proxy for the error at 224x224, where removed regions are large: on CAM-shaped maps
(tests/test_road.py) ``tol = 1e-5`` leaves imputed values up to 2.3e-4 from scipy's exact
solve, ``1e-6`` at most 4.0e-5 (4.1e-6 on Lite0 Grad-CAM maps of 4 photos), far below the 0.01
noise.
"""
from __future__ import annotations

import functools
import math
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..utils import make_generator
from . import road_kernels
from .insertion_deletion import descending_rank
from .protocol import MetricInputs, MetricSpec, Protocol, register_protocol
from .scorer import Scorer

FAMILY = "road"
ORDERS = ("morf", "lerf")
#: the imputation's default relative residual (see the module docstring for the error it leaves)
DEFAULT_TOL = 1e-6
DEFAULT_FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
#: the authors' ``neighbors_weights``: 1/6 for the 4 direct neighbours, 1/12 for the diagonals
NEIGHBOUR_WEIGHTS = {(-1, -1): 1 / 12, (-1, 0): 1 / 6, (-1, 1): 1 / 12, (0, -1): 1 / 6,
                     (0, 1): 1 / 6, (1, -1): 1 / 12, (1, 0): 1 / 6, (1, 1): 1 / 12}
#: the 3x3 stencil positions in raster order; index 4 is the centre (the diagonal)
_OFFSETS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
_CENTRE = 4


def removed_count(p: float, n: int) -> int:
    """Pixels removed at fraction ``p`` of ``n``: ``floor(p * n)`` (rounded to 9 decimals first,
    so ``0.7 * 10`` is 7, not 6). Raises for ``p`` outside (0, 1)."""
    p = float(p)
    if not 0.0 < p < 1.0:
        raise ValueError(f"ROAD removal fractions must be in (0, 1); got {p}")
    return int(math.floor(round(p * n, 9)))


def neighbour_kernel(dtype=torch.float32, device=None) -> Tensor:
    """The 3x3 neighbour weights ``[3,3]`` (centre 0), summing to 1."""
    k = torch.zeros(3, 3, dtype=torch.float64)
    for (dy, dx), w in NEIGHBOUR_WEIGHTS.items():
        k[dy + 1, dx + 1] = w
    return k.to(dtype=dtype, device=device)


def _in_image_weights(H: int, W: int, dtype: torch.dtype, device: Any) -> Tensor:
    """``d`` ``[1,1,H,W]``: each pixel's sum of in-image neighbour weights (1 inside)."""
    ones = torch.ones(1, 1, H, W, dtype=dtype, device=device)
    return F.conv2d(ones, neighbour_kernel(dtype, device)[None, None], padding=1)


# -- which pixels are removed ------------------------------------------------------------------
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


# -- the linear system ---------------------------------------------------------------------------
# Memory layouts. On torch's operators (any device; each layout chosen for torch's fastest CPU
# kernels): fine-grid fields ``[N,C,H,W]`` are channels-last (the depthwise 3x3 convolution is
# several times faster there) with the masks expanded to the fields' shape (a broadcast over the
# innermost channel dimension is slow); coarse-grid fields are contiguous NCHW with
# ``[N,1,h,w]`` coefficients. On the compiled CPU kernels (:class:`_KernelFineOperator`) every
# level's fields are contiguous NCHW and the masks ``[N,1,h,w]``.
_CL = torch.channels_last


def _span(d: int, n: int) -> Tuple[slice, slice]:
    """Indices ``i`` with ``0 <= i + d < n`` (destination) and ``i + d`` (source)."""
    return slice(max(0, -d), n - max(0, d)), slice(max(0, d), n + min(0, d))


def _apply_stencil(S: List[Tensor], u: Tensor) -> Tensor:
    """``(A u)(i) = sum_k S[k](i) * u(i + offset_k)`` (zero outside); S: 9 tensors ``[N,1,h,w]``,
    u ``[N,C,h,w]`` (contiguous). Written on slices (no padded copy)."""
    h, w = u.shape[-2:]
    out = S[_CENTRE] * u
    for k, (dy, dx) in enumerate(_OFFSETS):
        if k != _CENTRE:
            (ty, sy), (tx, sx) = _span(dy, h), _span(dx, w)
            out[..., ty, tx].addcmul_(S[k][..., ty, tx], u[..., sy, sx])
    return out


def _dot(a: Tensor, b: Tensor) -> Tensor:
    """Inner products per image over all channels, ``[N,1,1,1]``, of fine-grid fields
    ``[N,C,H,W]`` (both channels-last, or both contiguous NCHW): one batched matrix product
    over their memory, no copies."""
    N = a.shape[0]
    if a.is_contiguous() and b.is_contiguous():
        fa, fb = a.reshape(N, 1, -1), b.reshape(N, 1, -1)
    else:
        fa, fb = a.permute(0, 2, 3, 1).reshape(N, 1, -1), b.permute(0, 2, 3, 1).reshape(N, 1, -1)
    return torch.bmm(fa, fb.transpose(1, 2)).view(N, 1, 1, 1)  # (a row-major B^T: fast GEMM)


class _FineOperator:
    """The system over the removed pixels of ``N`` images: ``A u = m * (d * u - K*u)``.

    ``m`` is 1 at removed pixels; fields ``u`` ``[N,C,H,W]`` live on them (0 elsewhere), so
    ``K*u`` (the 3x3 neighbour weights, zero padding) only sums removed neighbours and the kept
    ones go to the right-hand side ``b = m * (K * ((1 - m) * x))``. ``d`` (the in-image weight
    sums) is 1 inside the image, so ``d*u - K*u = (delta - K)*u + (d - 1)*u``: one depthwise
    convolution (float32; float64 uses the separable form ``K = [1,2,1]^T [1,2,1] / 12 -
    delta / 3`` on slices) plus a correction on the border pixels.
    """

    def __init__(self, removed: Tensor, dtype: torch.dtype, channels: int = 3) -> None:
        dev = removed.device
        N, H, W = removed.shape
        self.dtype = dtype
        self.m1 = removed[:, None].to(dtype)  # [N,1,H,W] (setup only)
        self.m = self.m1.expand(N, channels, H, W).contiguous(memory_format=_CL)
        k = neighbour_kernel(dtype, dev)
        delta = torch.zeros_like(k)
        delta[1, 1] = 1.0
        self.kernel = k.expand(channels, 1, 3, 3).contiguous()
        self.laplace = (delta - k).expand(channels, 1, 3, 3).contiguous()  # delta - K
        self.d = _in_image_weights(H, W, dtype, dev)  # [1,1,H,W]
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

    def residual(self, r: Tensor, u: Tensor) -> Tensor:
        """``r - A u``."""
        return torch.addcmul(r, self.m, self._unmasked(u), value=-1.0)

    def rhs(self, x: Tensor) -> Tensor:
        """``b = m * (K * ((1 - m) * x))`` for channels-last images ``x`` ``[N,C,H,W]``."""
        return self._neighbours((1 - self.m) * x).mul_(self.m)

    def stencil(self) -> Tensor:
        """The explicit 9-point stencil ``[N,9,H,W]`` (channel k: the coefficient of the
        neighbour at ``_OFFSETS[k]``; for coarsening)."""
        m = self.m1
        # -w_k * m(i + offset_k): one convolution with 9 one-hot kernels scaled by -w_k, times m(i)
        pick = torch.diag_embed(-neighbour_kernel(m.dtype, m.device).reshape(9)).view(9, 1, 3, 3)
        S = F.conv2d(m, pick, padding=1).mul_(m)
        S[:, _CENTRE] = (m * self.d)[:, 0]
        return S


class _KernelFineOperator(_FineOperator):
    """:class:`_FineOperator` on contiguous NCHW fields through the compiled CPU kernels
    (:mod:`road_kernels`): each product, residual or Jacobi update is one pass over the data.
    ``m`` and ``md`` are ``[N,1,H,W]`` here (the kernels broadcast them over the channels).
    Of the torch operator it keeps only :meth:`stencil` (from ``m1`` and ``d``); its
    convolution and border helpers are not set up."""

    def __init__(self, removed: Tensor, dtype: torch.dtype, channels: int = 3) -> None:
        N, H, W = removed.shape
        self.dtype = dtype
        self.m1 = removed[:, None].to(dtype).contiguous()
        self.m = self.m1
        self.d = _in_image_weights(H, W, dtype, removed.device)
        self.d2 = self.d[0, 0].contiguous()  # [H,W]
        self.md = self.m1 * self.d

    def apply(self, u: Tensor) -> Tensor:
        return road_kernels.fine_op(u, self.m1, self.d2)

    def residual(self, r: Tensor, u: Tensor) -> Tensor:
        return road_kernels.fine_op(u, self.m1, self.d2, r=r, sign=-1.0)

    def jacobi(self, u: Tensor, r: Tensor, dinv: Tensor) -> Tensor:
        """``u + dinv * (r - A u)`` (a new tensor)."""
        return road_kernels.fine_op(u, self.m1, self.d2, r=r, dinv=dinv, base=u, sign=-1.0)

    def rhs(self, x: Tensor) -> Tensor:
        """``b = m * (K * ((1 - m) * x)) = -A ((1 - m) * x)`` (``m d (1 - m) = 0``)."""
        return road_kernels.fine_op(((1 - self.m1) * x).contiguous(), self.m1, self.d2,
                                    sign=-1.0)


class _StencilOperator:
    """A coarse-grid operator: a 9-point stencil ``S`` ``[N,9,h,w]`` with per-cell
    coefficients (through the compiled kernels when ``kernels``, on contiguous fields)."""

    def __init__(self, S: Tensor, kernels: bool = False) -> None:
        self.kernels = kernels
        self.S9 = S.contiguous() if kernels else S
        self.S = [S[:, k:k + 1] for k in range(9)]

    def apply(self, u: Tensor) -> Tensor:
        if self.kernels:
            return road_kernels.st9_op(u, self.S9)
        return _apply_stencil(self.S, u)

    def residual(self, r: Tensor, u: Tensor) -> Tensor:
        if self.kernels:
            return road_kernels.st9_op(u, self.S9, r=r, sign=-1.0)
        return r - _apply_stencil(self.S, u)

    def jacobi(self, u: Tensor, r: Tensor, dinv: Tensor) -> Tensor:
        """``u + dinv * (r - A u)``."""
        if self.kernels:
            return road_kernels.st9_op(u, self.S9, r=r, dinv=dinv, base=u, sign=-1.0)
        return u.addcmul_(dinv, self.residual(r, u))


# -- the multigrid preconditioner -----------------------------------------------------------------
# Vertex-centred coarsening: the coarse points of a side of n fine points are the even ones,
# 0, 2, ..., (n+1)//2 of them; an odd fine point takes the mean of its two coarse neighbours
# (the last one, when n is even, copies its single neighbour). P = (this bilinear
# interpolation) restricted to the fine unknowns, R = P^T; coarse operators P^T A P keep the
# 9-point stencil shape (the support of P e_J is J's 3x3 fine block).
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


def _interp(uc: Tensor, h: int, w: int) -> Tensor:
    """Bilinear interpolation ``[N,C,(h+1)//2,(w+1)//2]`` -> ``[N,C,h,w]`` (unmasked)."""
    return _interp_axis(_interp_axis(uc, h, 2), w, 3)


def _restrict(r: Tensor) -> Tensor:
    """``P^T r`` for fields ``[N,C,h,w]`` that are 0 off the unknowns; contiguous NCHW."""
    return _restrict_axis(_restrict_axis(r, 2), 3).contiguous()


# On the channels-last fine grid the same two maps run as one depthwise convolution each (a
# single pass, ~2x faster there; on the NCHW coarse grids the slices are faster). With ``Q`` the
# stride-2 convolution with ``[1/2, 1, 1/2]`` per axis (zero padding), ``P^T = Q D`` and
# ``P = D Q^T``, where ``D`` doubles the last fine row / column of an even side (its odd point
# has one coarse neighbour, weight 1, where ``Q`` gives 1/2).
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


def _restrict_cl_(r: Tensor) -> Tensor:
    """:func:`_restrict` of channels-last fine fields ``[N,C,h,w]`` (overwrites ``r``'s last
    row / column); contiguous NCHW ``[N,C,(h+1)//2,(w+1)//2]``."""
    h, w = r.shape[-2:]
    k = _transfer_kernel(r.shape[1], r.dtype, r.device)
    return F.conv2d(_double_last(r, h, w), k, stride=2, padding=1, groups=r.shape[1]).contiguous()


def _interp_cl(uc: Tensor, h: int, w: int) -> Tensor:
    """:func:`_interp` onto the channels-last fine grid: ``[N,C,(h+1)//2,(w+1)//2]`` ->
    channels-last ``[N,C,h,w]``."""
    C = uc.shape[1]
    k = _transfer_kernel(C, uc.dtype, uc.device)
    p = F.conv_transpose2d(uc.contiguous(memory_format=_CL), k, stride=2, padding=1,
                           output_padding=(1 - h % 2, 1 - w % 2), groups=C)
    return _double_last(p.contiguous(memory_format=_CL), h, w)


_PROBES: Dict[Any, Tuple[Tensor, Tensor, Tensor]] = {}


def _probes(h: int, w: int, dtype: torch.dtype, device: Any) -> Tuple[Tensor, Tensor, Tensor]:
    """The 9 colour probes of a fine grid ``h x w``: the indicators of the coarse points of
    colour ``(I_y mod 3) * 3 + (I_x mod 3)``, interpolated to the fine grid (``[1,9,h,w]``,
    NCHW and channels-last), and ``[9,hc,wc]``: the colour of ``I + offset_k``. Cached."""
    key = (h, w, dtype, str(device))
    if key not in _PROBES:
        hc, wc = (h + 1) // 2, (w + 1) // 2
        iy = torch.arange(hc, device=device).view(hc, 1)
        ix = torch.arange(wc, device=device).view(1, wc)
        colour = (iy % 3) * 3 + (ix % 3)
        e = torch.stack([(colour == k).to(dtype) for k in range(9)])[None]
        fine = _interp(e, h, w)
        idx = torch.stack([((iy + dy) % 3) * 3 + ((ix + dx) % 3) for dy, dx in _OFFSETS])
        if len(_PROBES) > 32:
            _PROBES.clear()
        _PROBES[key] = (fine, fine.contiguous(memory_format=_CL), idx)
    return _PROBES[key]


def _galerkin(apply9: Callable[[Tensor], Tensor], probe: Tensor, idx: Tensor,
              support: Tensor, restrict: Callable[[Tensor], Tensor],
              pick: Optional[Callable[[Tensor], Tensor]] = None) -> Tensor:
    """The coarse stencil ``[N,9,hc,wc]`` of ``P^T A P``, exactly, from 9 probes: coarse points
    of one colour are 3 apart, so each coarse point meets exactly one point of each colour in
    its 3x3 neighbourhood and ``(P^T A P e_colour)(I)`` is the coefficient of that neighbour.
    ``apply9``: ``A`` on 9 fields; ``probe``: the interpolated colours; ``support`` [N,1,h,w];
    ``restrict``: ``P^T`` for the level's layout (:func:`_restrict_cl_` on the fine grid);
    ``pick``: the gather by colour, if not ``torch.gather`` (:func:`road_kernels.pick`)."""
    Z = restrict(apply9(probe * support))  # [N, 9 colours, hc, wc]
    if pick is not None:
        return pick(Z)
    N, _, hc, wc = Z.shape
    return Z.gather(1, idx[None].expand(N, 9, hc, wc))


class _Multigrid:
    """A symmetric multigrid V-cycle preconditioner for the ROAD systems of ``N`` images.

    Levels: the fine system, then vertex-centred coarsenings (bilinear interpolation ``P`` onto
    each level's unknowns, Galerkin operators ``P^T A P`` computed exactly by probing,
    :func:`_galerkin`) until a side is at most ``coarse_size``, solved there by a dense
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
    """

    def __init__(self, fine: _FineOperator, omega: float = 1.0, omega_c: float = 1.8,
                 coarse_size: int = 16) -> None:
        # the compiled-kernel path: every level's fields are contiguous NCHW
        self.kernels = k = isinstance(fine, _KernelFineOperator)
        if not (0 < omega < 1.5 and 0 < omega_c < 2):
            raise ValueError(f"smoothing weights out of their convergent range: omega={omega} "
                             f"(0, 1.5), omega_c={omega_c} (0, 2)")
        dtype, m1 = fine.dtype, fine.m1
        N, _, H, W = m1.shape
        self.ops: List[Any] = [fine]  # level 0: the fine operator; then coarse stencils
        self.support = [fine.m]
        self.sizes = [(H, W)]
        self.dinv = [torch.where(fine.md > 0, omega / fine.md.clamp_min(1e-30),
                                 torch.zeros_like(fine.md))]
        if k:
            m1cl = m1

            def fine9(v: Tensor) -> Tensor:  # the fine operator on 9 fields
                return fine.apply(v.contiguous())
        else:
            lap = fine.laplace[:1].expand(9, 1, 3, 3).contiguous()
            m1cl = m1.contiguous(memory_format=_CL)

            def fine9(v: Tensor) -> Tensor:  # the fine operator on 9 fields (channels-last)
                return fine.add_border(F.conv2d(v, lap, padding=1, groups=9), v).mul_(m1cl)

        restrict_fine, restrict = ((road_kernels.restrict, road_kernels.restrict) if k
                                   else (_restrict_cl_, _restrict))
        pick = road_kernels.pick if k else None
        apply9, h, w = fine9, H, W
        S: Optional[Tensor] = None
        while max(h, w) > coarse_size:
            probe, probe_cl, idx = _probes(h, w, dtype, m1.device)
            S = (_galerkin(fine9, probe if k else probe_cl, idx, m1cl, restrict_fine, pick)
                 if S is None else _galerkin(apply9, probe, idx, self.support[-1], restrict, pick))
            h, w = S.shape[-2:]
            diag = S[:, _CENTRE:_CENTRE + 1]
            op = _StencilOperator(S, kernels=k)
            self.ops.append(op)
            self.support.append((diag > 0).to(dtype).contiguous())
            self.sizes.append((h, w))
            self.dinv.append(torch.where(diag > 0, omega_c / S.abs().sum(1, keepdim=True)
                                         .clamp_min(1e-30), torch.zeros_like(diag)).contiguous())
            apply9 = op.apply
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
        for k, (dy, dx) in enumerate(_OFFSETS):
            jy, jx = iy + dy, ix + dx
            ok = (jy >= 0) & (jy < h) & (jx >= 0) & (jx < w)
            A[:, idx[ok], (jy * w + jx)[ok]] = S[:, k].reshape(N, n)[:, ok].double()
        diag = S[:, _CENTRE].reshape(N, n).double()
        shift = torch.where(diag > 0, 1e-5 * diag, torch.ones_like(diag))
        self.chol = torch.linalg.cholesky(A + torch.diag_embed(shift))

    def __call__(self, r: Tensor, level: int = 0) -> Tensor:
        """Approximate ``A^{-1} r`` for residuals ``r`` ``[N,C,h,w]`` at ``level`` (0 off the
        level's unknowns)."""
        if level == len(self.ops) - 1:  # the coarsest grid (or a single level): exact
            N, C, h, w = r.shape
            z = torch.cholesky_solve(r.reshape(N, C, h * w).transpose(1, 2).double(), self.chol)
            return z.transpose(1, 2).reshape(N, C, h, w).to(r.dtype) * self.support[level]
        op, dinv = self.ops[level], self.dinv[level]
        u = dinv * r
        res = op.residual(r, u)
        if self.kernels:
            road_kernels.interp_add_(u, self(road_kernels.restrict(res), level + 1),
                                     self.support[level])
            return op.jacobi(u, r, dinv)
        if level == 0:  # the channels-last fine grid
            p = _interp_cl(self(_restrict_cl_(res), 1), *self.sizes[0])
        else:
            p = _interp(self(_restrict(res), level + 1), *self.sizes[level])
        u.addcmul_(p, self.support[level])
        u.addcmul_(dinv, op.residual(r, u))
        return u


def _pcg(op: _FineOperator, prec: _Multigrid, b: Tensor, tol: Tensor,
         max_iter: int) -> Tuple[Tensor, int]:
    """Preconditioned conjugate gradients, batched over ``N`` images.

    The ``C`` channels of an image share the matrix; CG runs on their block-diagonal system
    (one step length per image). Image ``i`` stops when ``||r_i|| <= tol_i * ||b_i||`` (the
    recursively updated residual; ``tol`` ``[N,1,1,1]``) and does not move afterwards (step 0),
    so its iterates do not depend on the other images of the batch. Returns ``(u, iterations)``.
    """
    u = torch.zeros_like(b)
    r = b.clone()
    target = tol.square() * _dot(b, b)
    active = _dot(r, r) > target
    if not bool(active.any()):
        return u, 0
    z = prec(r)
    p = z.clone()
    rz = _dot(r, z)
    tiny = torch.finfo(b.dtype).tiny
    zero = torch.zeros((), dtype=b.dtype, device=b.device)
    it = 0
    for it in range(1, max_iter + 1):
        Ap = op.apply(p)
        alpha = torch.where(active, rz / _dot(p, Ap).clamp_min(tiny), zero)
        u.addcmul_(alpha, p)
        r.addcmul_(alpha, Ap, value=-1.0)
        active = active & (_dot(r, r) > target)
        if not bool(active.any()):
            break
        z = prec(r)
        rz_new = _dot(r, z)
        beta = torch.where(active, rz_new / rz.clamp_min(tiny), zero)
        p = p.mul_(beta).add_(z)
        rz = rz_new
    return u, it


def use_kernels(device: Any, kernels: Optional[bool] = None) -> bool:
    """Whether :func:`impute` runs on the compiled CPU kernels: ``kernels=None`` (auto) means
    yes on the CPU when they are available (:func:`road_kernels.available`); ``True`` demands
    them (ValueError off the CPU, RuntimeError where they cannot be built); ``False``: torch."""
    cpu = torch.device(device).type == "cpu"
    if kernels is None:
        return cpu and road_kernels.available()
    if kernels:
        if not cpu:
            raise ValueError(f"the ROAD kernels run on the CPU; the images are on {device}")
        if not road_kernels.available():
            raise RuntimeError(f"ROAD kernels unavailable: {road_kernels.error() or 'disabled'}")
    return bool(kernels)


def impute(x: Tensor, removed: Tensor, tol: float = DEFAULT_TOL, max_iter: int = 100,
           inner_tol: float = 1e-3, info: Optional[Dict[str, Any]] = None,
           kernels: Optional[bool] = None) -> Tensor:
    """Linear imputation (ROAD, noise-free): removed pixels = weighted mean of their 8 neighbours.

    Solves the sparse system of the module docstring for all images and channels at once.

    Args:
        x: images ``[N,C,H,W]`` (camzoo: in [0,1]); float.
        removed: bool ``[N,H,W]``, True = removed (at least one pixel per image must be kept
            for the system to be non-singular; ROAD fractions below 1 guarantee it).
        tol: relative residual of the solution, ``||b - A u||_2 <= tol * ||b||_2`` per image
            (its channels together), computed in float64.
        max_iter: most conjugate-gradient iterations per refinement step.
        inner_tol: relative residual reduction of each float32 refinement step.
        info: if a dict, receives ``outer`` (refinement steps), ``inner`` (total CG
            iterations), ``residual`` (the largest final relative residual) and ``kernels``
            (whether the compiled CPU kernels ran).
        kernels: None (auto: the compiled kernels on the CPU when available), True or False
            (:func:`use_kernels`); both give the same solution to float32 rounding.
    Returns:
        ``[N,C,H,W]`` like ``x``: kept pixels unchanged, removed pixels imputed.
    """
    if removed.shape != (x.shape[0], *x.shape[-2:]):
        raise ValueError(f"removed must be [N,H,W] = {(x.shape[0], *x.shape[-2:])}; got "
                         f"{tuple(removed.shape)}")
    kept = (~removed).reshape(removed.shape[0], -1).any(1)
    if not bool(kept.all()):
        raise ValueError("ROAD imputation needs at least one kept pixel per image")
    removed = removed.to(x.device)
    C = x.shape[1]
    k = use_kernels(x.device, kernels)
    Op = _KernelFineOperator if k else _FineOperator
    fmt = torch.contiguous_format if k else _CL
    fine64 = Op(removed, torch.float64, C)
    fine32 = Op(removed, torch.float32, C)
    x64 = x.to(torch.float64, memory_format=fmt)
    b = fine64.rhs(x64)
    bnorm = _dot(b, b).sqrt().clamp_min(1e-300)
    u = torch.zeros_like(b)
    r = b
    mg = _Multigrid(fine32)
    outer = inner = 0
    rel = _dot(r, r).sqrt() / bnorm  # [N,1,1,1]
    while float(rel.amax()) > tol:
        if outer == 8:
            raise RuntimeError(f"ROAD imputation did not converge: relative residual "
                               f"{float(rel.amax()):.2e} > tol {tol:.0e} after {inner} iterations")
        # each image is refined only while it is above tol (batch-independent results)
        todo = rel > tol
        rhs = r if bool(todo.all()) else r * todo
        step_tol = torch.clamp(tol / rel.clamp_min(1e-300), min=inner_tol).float()
        e, its = _pcg(fine32, mg, rhs.to(torch.float32, memory_format=fmt), step_tol, max_iter)
        outer += 1
        inner += its
        u.add_(e)  # into float64
        r = fine64.residual(b, u)
        rel = _dot(r, r).sqrt() / bnorm
    if info is not None:
        info.update(outer=outer, inner=inner, residual=float(rel.amax()), kernels=k)
    # kept pixels exactly x, removed ones u rounded to x's dtype
    return torch.where(fine64.m > 0, u.to(x.dtype), x.to(memory_format=fmt)).contiguous()


# -- the protocol ----------------------------------------------------------------------------
def random_fields(seed: int, n_fields: int, shape: Tuple[int, ...], scale: float,
                  device=None) -> Tensor:
    """``scale * N(0,1)`` fields ``[n_fields, *shape]`` from a CPU generator seeded with ``seed``
    (the same numbers on every device), moved to ``device``."""
    t = torch.randn((n_fields, *shape), generator=make_generator(seed)) * float(scale)
    return t.to(device)


@torch.inference_mode()
def road_curves(
    scorer: Scorer,
    x01: Tensor,
    V: Tensor,
    c: Tensor,
    normalize: Callable[[Tensor], Tensor],
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    orders: Sequence[str] = ORDERS,
    noise: float = 0.01,
    tie_noise: float = 1e-4,
    seed: int = 0,
    tol: float = DEFAULT_TOL,
    solve_batch: Optional[int] = None,
    timing: Optional[Dict[str, float]] = None,
    kernels: Optional[bool] = None,
) -> Dict[str, Tensor]:
    """ROAD curves of many images, batched across (image, fraction) pairs.

    Pair ``q = i * P + j`` (image ``i``, fraction ``j``) of each order is imputed when its
    chunk of ``solve_batch`` pairs is reached; imputed images are held until they fill a forward
    of ``eval_batch_size`` (counted under family ``"road"``), so at most one forward batch plus
    one chunk of imputed images exists at a time.

    Args:
        scorer: the counting :class:`Scorer` of the evaluated classifier.
        x01: images ``[B,3,H,W]`` in [0,1].
        V: maps ``[B,H,W]``.
        c: LongTensor ``[B]`` classes.
        normalize: ``[N,3,H,W]`` in [0,1] -> the classifier's input.
        fractions: removal fractions in (0, 1) (``P`` of them).
        orders: any of ``"morf"``, ``"lerf"``.
        noise: std of the Gaussian noise added to imputed pixels, in [0,1] units (0 = none).
        tie_noise: std of the tie-breaking noise added to the rescaled map (0 = exact order).
        seed: seeds the tie-breaking and imputation noise (fields shared by all images).
        tol: relative residual of the imputation (:func:`impute`).
        solve_batch: systems solved together (None: ``eval_batch_size``, at most 8 on CPU,
            where smaller batches stay in cache); results do not depend on it.
        timing: if a dict, receives the seconds spent imputing: ``"impute"`` (wall, CUDA
            synchronized) and ``"impute_cpu"`` (this process's CPU time).
        kernels: the imputation's compiled CPU kernels: None = when available on the CPU,
            True = required, False = torch operators (:func:`use_kernels`).
    Returns:
        ``{order: float32 [B, P]}`` softmax probabilities of ``c``.
    """
    B, C, H, W = x01.shape
    if V.shape != (B, H, W):
        raise ValueError(f"V must be [B,H,W] = {(B, H, W)}; got {tuple(V.shape)}")
    fractions = tuple(float(p) for p in fractions)
    if not fractions:
        raise ValueError("ROAD needs at least one removal fraction")
    P = len(fractions)
    bad = [o for o in orders if o not in ORDERS]
    if bad:
        raise ValueError(f"unknown ROAD order(s) {bad}; valid: {', '.join(ORDERS)}")
    dev = x01.device
    c = c.reshape(-1).to(dev)
    chunk = int(solve_batch or (min(scorer.eval_batch_size, 8) if dev.type == "cpu"
                                else scorer.eval_batch_size))
    fwd = int(scorer.eval_batch_size)
    if chunk < 1:
        raise ValueError(f"solve_batch must be >= 1; got {solve_batch}")
    kernels = use_kernels(dev, kernels)  # refuses an impossible demand before any work
    # per order o (index k) and fraction j: tie field [H,W] and noise field [C,H,W]
    n_fields = len(ORDERS) * P
    ties = random_fields(seed, n_fields, (H, W), tie_noise, dev) if tie_noise else None
    noises = random_fields(int(seed) + 1, n_fields, (C, H, W), noise, dev) if noise else None
    out: Dict[str, Tensor] = {}
    spent = spent_cpu = 0.0
    for order in orders:
        k = ORDERS.index(order)
        tf = ties[k * P:(k + 1) * P] if ties is not None else None
        masks = removal_masks(V.to(dev), fractions, order, tf).reshape(B * P, H, W)

        def chunks(masks=masks, k=k):
            nonlocal spent, spent_cpu
            held: List[Tuple[Tensor, Tensor]] = []  # imputed, not yet a full forward batch
            n_held = 0
            for a in range(0, B * P, chunk):
                e = min(B * P, a + chunk)
                q = torch.arange(a, e, device=dev)
                img, frac = q // P, q % P
                t0, c0 = time.perf_counter(), time.process_time()
                rem = masks[a:e]
                imp = impute(x01[img], rem, tol=tol, kernels=kernels)
                if noises is not None:
                    imp = imp + noises[k * P + frac] * rem[:, None].to(imp.dtype)
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                spent += time.perf_counter() - t0
                spent_cpu += time.process_time() - c0
                held.append((normalize(imp), c[img]))
                n_held += e - a
                if n_held >= fwd or e == B * P:  # forwards of eval_batch_size, not of chunk
                    xs, cs = torch.cat([h[0] for h in held]), torch.cat([h[1] for h in held])
                    full = n_held if e == B * P else n_held - n_held % fwd
                    yield xs[:full], cs[:full]
                    held = [(xs[full:], cs[full:])] if full < n_held else []
                    n_held -= full

        out[order] = scorer.probs_stream(chunks(), FAMILY).view(B, P)
    if timing is not None:
        timing["impute"] = timing.get("impute", 0.0) + spent
        timing["impute_cpu"] = timing.get("impute_cpu", 0.0) + spent_cpu
    return out


def road_scores(scorer: Scorer, x01: Tensor, V: Tensor, c: Tensor,
                normalize: Callable[[Tensor], Tensor], **opts: Any) -> Dict[str, Tensor]:
    """Per-image ROAD values: ``road_morf``, ``road_lerf`` (curve means, [B]), ``road``
    ``= (road_lerf - road_morf) / 2`` and the curves ``road_morf_curve``, ``road_lerf_curve``
    ``[B, P]``. Options as :func:`road_curves` (both orders are needed for ``road``)."""
    cur = road_curves(scorer, x01, V, c, normalize, orders=ORDERS, **opts)
    morf, lerf = cur["morf"].mean(1), cur["lerf"].mean(1)
    return {"road_morf": morf, "road_lerf": lerf, "road": (lerf - morf) / 2,
            "road_morf_curve": cur["morf"], "road_lerf_curve": cur["lerf"]}


ROAD_SOURCE = (
    "Rong, Leemann, Borisov, Kasneci, Kasneci, 'A Consistent and Efficient Evaluation Strategy "
    "for Attribution Methods', ICML 2022; code github.com/tleemann/road_evaluation "
    "(road/imputations.py NoisyLinearImputer, road/imputed_dataset.py ImputedDataset)"
)


@register_protocol
class ROADProtocol(Protocol):
    name = "road"
    order = 40
    in_all = False  # --metrics all,road adds it; 'all' stays the three papers' protocols
    summary = ("ROAD: MoRF/LeRF at 10..90% removed, noisy linear imputation (Rong et al. 2022); "
               "not in 'all' (use --metrics all,road)")
    source = ROAD_SOURCE
    defaults = {"fractions": DEFAULT_FRACTIONS, "noise": 0.01, "tie_noise": 1e-4, "seed": 0,
                "tol": DEFAULT_TOL, "solve_batch": None, "kernels": "auto"}
    # rows do not depend on the chunking nor (beyond float32 rounding) on the solver's path
    runtime_options = ("solve_batch", "kernels")
    #: option ``kernels`` -> :func:`impute`'s ``kernels``
    KERNEL_CHOICES = {"auto": None, "c": True, "torch": False}

    def validate(self, opts: Dict[str, Any]) -> None:
        k = opts["kernels"]
        if k not in self.KERNEL_CHOICES:
            raise ValueError(f"protocol 'road': option kernels must be one of "
                             f"{', '.join(self.KERNEL_CHOICES)}; got {k!r}")
        if k == "c" and not road_kernels.available():
            raise ValueError(f"protocol 'road': kernels=c, but the compiled ROAD kernels are "
                             f"unavailable ({road_kernels.error() or 'CAMZOO_ROAD_KERNELS=0'})")

    def metrics(self, **opts: Any) -> List[MetricSpec]:
        self.options(**opts)
        return [
            MetricSpec("road_morf", "ROAD-MoRF", False, 100.0, ROAD_SOURCE + " (MoRF)",
                       "mean prob of c over the MoRF fractions (most relevant removed, imputed), x100"),
            MetricSpec("road_lerf", "ROAD-LeRF", True, 100.0, ROAD_SOURCE + " (LeRF)",
                       "mean prob of c over the LeRF fractions (least relevant removed, imputed), x100"),
            MetricSpec("road", "ROAD", True, 100.0,
                       ROAD_SOURCE + "; combined as pytorch-grad-cam's ROADCombined",
                       "(ROAD-LeRF - ROAD-MoRF) / 2, x100"),
        ]

    def curve_keys(self, **opts: Any) -> List[str]:
        return ["road_morf_curve", "road_lerf_curve"]

    def evaluate(self, inputs: MetricInputs, **opts: Any) -> Dict[str, Tensor]:
        o = self.options(**opts)
        return road_scores(inputs.scorer, inputs.images01(), inputs.V, inputs.c, inputs.normalize,
                           fractions=tuple(o["fractions"]), noise=float(o["noise"]),
                           tie_noise=float(o["tie_noise"]), seed=int(o["seed"]), tol=float(o["tol"]),
                           solve_batch=o["solve_batch"],
                           kernels=self.KERNEL_CHOICES[o["kernels"]])
