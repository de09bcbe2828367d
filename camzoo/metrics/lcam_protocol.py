"""Protocol ``lcam``: Average Drop / Increase in Confidence at thresholds nu (L-CAM paper).

Source: I. Gkartzonika, N. Gkalelis, V. Mezaris, "Learning visual explanations for DCNN-based
image classifiers using an attention mechanism", ECCV 2022 Workshops, Eqs. (10)-(11) and
Table 1; authors' code github.com/bmezaris/L-CAM (``utils/Metrics.py``: ``drop_Npercent``,
``AD``, ``IC``; ``Evaluation_L_CAM_*.py``: images in [0,1], masked before normalization).

For an image ``x01`` in [0,1], its map ``V`` and class ``c``::

    O_nu = softmax(f(normalize(x01 * phi_nu(V))))[c]
    AD(nu) = 100 * mean_i max(0, Y_i - O_i) / Y_i        IC(nu) = 100 * mean_i [O_i > Y_i]

``phi_nu`` keeps the ``ceil(nu*H*W)`` highest pixels of ``V`` with their soft values and sets
the rest to 0; pixels tied at the threshold are dropped in raster (row-major) order first, as
the authors' ``drop_Npercent`` does, so exactly ``ceil(nu*H*W)`` pixels stay.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .protocol import MetricInputs, MetricSpec, Protocol, register_protocol
from .scorer import Scorer, pair_chunks

DEFAULT_NUS = (1.0, 0.5, 0.15)
FAMILY = "lcam"


def nu_label(nu: float) -> str:
    """Label of a threshold: ``1.0 -> "100"``, ``0.15 -> "15"``, ``0.125 -> "12.5"``."""
    return f"{round(float(nu) * 100, 6):g}"


def keep_count(nu: float, n: int) -> int:
    """Pixels kept by ``phi_nu`` out of ``n``: ``ceil(nu * n)``, robust to float noise.

    ``0.15 * 100`` is ``15.000000000000002`` in floating point; rounding to 9 decimals first
    makes it 15 (not 16). Raises for ``nu`` outside (0, 1].
    """
    nu = float(nu)
    if not 0.0 < nu <= 1.0:
        raise ValueError(f"nu must be in (0, 1] (fraction of pixels kept); got {nu}")
    return min(n, max(1, math.ceil(round(nu * n, 9))))


def ascending_rank(V: Tensor) -> Tensor:
    """Rank of every pixel in a stable ascending sort of its map.

    Args:
        V: maps ``[B,H,W]`` (any real values).
    Returns:
        int64 ``[B,H*W]``: 0 for the lowest pixel, ``H*W-1`` for the highest; among equal
        values the pixel earlier in raster order has the lower rank.
    """
    flat = V.reshape(V.shape[0], -1)
    order = torch.sort(flat, dim=1, stable=True).indices
    rank = torch.empty_like(order)
    ar = torch.arange(flat.shape[1], device=flat.device).expand_as(order)
    return rank.scatter_(1, order, ar)


def keep_mask(V: Tensor, nu: float) -> Optional[Tensor]:
    """The pixels ``phi_nu`` keeps: the top ``ceil(nu*H*W)`` of each map.

    Equivalent to ``ascending_rank(V) >= H*W - ceil(nu*H*W)`` without a full sort: the
    threshold is each map's k-th largest value (``torch.kthvalue``, linear time); every pixel
    above it is kept, and of the pixels equal to it the *last* ones in raster order are kept
    (the earlier ones are dropped first, as in the authors' ``drop_Npercent``), so that exactly
    ``ceil(nu*H*W)`` pixels stay.

    Args:
        V: maps ``[B,H,W]`` (any real values; a map with NaN gets the sort's order, NaN
            highest, as :func:`ascending_rank`).
        nu: fraction of pixels kept, in (0, 1].
    Returns:
        bool ``[B,H*W]``, or ``None`` when every pixel is kept (``ceil(nu*H*W) == H*W``).
    """
    flat = V.reshape(V.shape[0], -1)
    n = flat.shape[1]
    k = keep_count(nu, n)
    if k == n:
        return None
    # the k-th largest value is the (n-k+1)-th smallest
    try:
        t = torch.kthvalue(flat, n - k + 1, dim=1, keepdim=True).values
    except NotImplementedError:  # a backend without kthvalue (e.g. MPS): the definition
        return ascending_rank(V) >= n - k
    at_least = flat >= t
    if bool((at_least.sum(dim=1) == k).all()):  # the common case: no map splits its ties
        return at_least
    above = flat > t
    tied = at_least & ~above
    n_tied = tied.sum(dim=1, keepdim=True)
    need = k - above.sum(dim=1, keepdim=True)  # tied pixels to keep, in [1, n_tied]
    if not bool(((need >= 1) & (need <= n_tied)).all()):
        # only NaN breaks this (it compares False): the definition ranks NaN highest
        return ascending_rank(V) >= n - k
    # keep a tied pixel iff fewer than `need` tied pixels come after it in raster order
    return above | (tied & (tied.cumsum(dim=1) > n_tied - need))


def keep_top(V: Tensor, nu: float) -> Tensor:
    """``phi_nu(V)``: keep the top ``ceil(nu*H*W)`` pixels of each map with their soft values.

    Args:
        V: maps ``[B,H,W]`` in [0,1].
        nu: fraction of pixels kept, in (0, 1]; ``nu = 1`` returns ``V`` unchanged.
    Returns:
        float ``[B,H,W]``: ``V`` on the kept pixels, 0 elsewhere. Exactly ``ceil(nu*H*W)``
        pixels are kept per map; among pixels tied at the threshold, those earlier in raster
        order are dropped first (the L-CAM code's ``drop_Npercent``). See :func:`keep_mask`.
    """
    keep = keep_mask(V, nu)
    if keep is None:
        return V
    return torch.where(keep, V.reshape(V.shape[0], -1), 0.0).reshape(V.shape)


@torch.inference_mode()
def masked_confidence(
    scorer: Scorer,
    x01: Tensor,
    V: Tensor,
    c: Tensor,
    normalize: Callable[[Tensor], Tensor],
    nus: Sequence[float] = DEFAULT_NUS,
    mean_std: Optional[Tuple[Tensor, Tensor]] = None,
) -> Tensor:
    """``O[i, j]`` = prob of ``c[i]`` on ``normalize(x01[i] * phi_{nus[j]}(V[i]))``.

    The (image, nu) pairs are packed into forwards of ``scorer.eval_batch_size`` images
    (counted under family ``"lcam"``), written lazily chunk by chunk into one reused
    channels_last buffer; each map's kept pixels are found once per threshold
    (:func:`keep_mask`).

    Args:
        scorer: the counting :class:`Scorer` of the evaluated classifier.
        x01: images ``[B,3,H,W]`` in [0,1].
        V: maps ``[B,H,W]`` in [0,1].
        c: LongTensor ``[B]``, the classes evaluated.
        normalize: ``[N,3,H,W]`` in [0,1] -> the classifier's normalized input
            (``Backbone.normalize``).
        nus: fractions of pixels kept, each in (0, 1].
        mean_std: optional ``(mean [C], std [C])`` with ``normalize(z) == (z - mean) / std``
            per channel (``(Backbone.mean, Backbone.std)``). When given, ``normalize`` is not
            called: each masked image is written in one fused pass as
            ``x01 / std * phi(V) - mean / std`` (equal up to float rounding, ~1e-7).
    Returns:
        float32 ``[B, len(nus)]`` in [0,1].
    """
    B = x01.shape[0]
    if V.shape != (B, *x01.shape[2:]):
        raise ValueError(f"V must be [B,H,W] = {(B, *x01.shape[2:])}; got {tuple(V.shape)}")
    C, H, W = x01.shape[1:]
    Vd = V.to(x01.device, x01.dtype)
    # phi_nu(V) for every threshold, single-channel [B,1,H,W] (nu = 1 keeps V as is)
    phis = []
    for nu in nus:
        keep = keep_mask(Vd, nu)
        phis.append(Vd.unsqueeze(1) if keep is None
                    else torch.where(keep, Vd.reshape(B, -1), 0.0).view(B, 1, H, W))
    J = len(nus)
    c = c.reshape(-1).to(x01.device)
    bs = scorer.eval_batch_size
    if mean_std is not None:
        mean, std = (t.to(x01.device, x01.dtype).reshape(1, C, 1, 1) for t in mean_std)
        scaled = (x01 / std).contiguous(memory_format=torch.channels_last)  # once per image
        shift = -mean / std

        def fill(j: int, i0: int, i1: int, out: Tensor) -> None:  # one fused pass
            torch.addcmul(shift, scaled[i0:i1], phis[j][i0:i1], out=out)
    else:
        def fill(j: int, i0: int, i1: int, out: Tensor) -> None:
            out.copy_(normalize(x01[i0:i1] * phis[j][i0:i1]))

    # one reused buffer: it is rewritten only after the forward that read it was issued
    # (stream order)
    buf = torch.empty((min(bs, J * B), C, H, W), dtype=x01.dtype, device=x01.device,
                      memory_format=torch.channels_last)

    def chunks():
        # pairs p = j * B + i (threshold-major): a chunk is a few runs of consecutive images
        # at one threshold, each written from slices (no gathers)
        for a, e, runs in pair_chunks(J, B, bs):
            for j, i0, i1, r0 in runs:
                fill(j, i0, i1, buf[r0:r0 + i1 - i0])
            yield buf[:e - a], c[torch.arange(a, e, device=c.device) % B]

    return scorer.probs_stream(chunks(), FAMILY).view(J, B).t().contiguous()


def average_drop(Y: Tensor, O: Tensor, scale: float = 100.0) -> Tensor:
    """Per-image Average Drop terms ``scale * max(0, Y - O) / Y`` (percent by default).

    The one definition of the drop both protocols use: ``lcam`` in percent (``scale=100``,
    AD(nu) is the mean of these terms over images), ``adcc`` as a fraction (``scale=1``).

    Args:
        Y: float ``[B]`` prob of c on the clean image, in (0,1].
        O: float ``[B]`` or ``[B,n]`` prob of c on the masked image(s), in [0,1].
        scale: 100 (percent) or 1 (fraction).
    Returns:
        float ``[B]`` or ``[B,n]`` in [0, scale] (0 where ``Y == 0``: nothing can drop).
    """
    Yb = Y.reshape(-1, *([1] * (O.ndim - 1))).to(O.dtype)
    drop = (Yb - O).clamp(min=0.0)
    num = drop if scale == 1 else scale * drop
    return torch.where(Yb > 0, num / Yb.clamp(min=torch.finfo(O.dtype).tiny), 0.0)


def increase_in_confidence(Y: Tensor, O: Tensor) -> Tensor:
    """Per-image Increase-in-Confidence terms ``100 * [O > Y]`` (strict), float.

    Args:
        Y: float ``[B]``; O: float ``[B]`` or ``[B,n]`` (as in :func:`average_drop`).
    Returns:
        float ``[B]`` or ``[B,n]`` with values 0 or 100; ``IC(nu)`` is their mean.
    """
    Yb = Y.reshape(-1, *([1] * (O.ndim - 1))).to(O.dtype)
    return (O > Yb).to(O.dtype) * 100.0


def lcam_scores(
    scorer: Scorer,
    x01: Tensor,
    V: Tensor,
    c: Tensor,
    Y: Tensor,
    normalize: Callable[[Tensor], Tensor],
    nus: Sequence[float] = DEFAULT_NUS,
    mean_std: Optional[Tuple[Tensor, Tensor]] = None,
) -> dict:
    """All per-image quantities of the protocol, keyed for the result store.

    ``mean_std``: see :func:`masked_confidence` (the engine passes the classifier's).

    Returns:
        ``{"O_<L>": [B], "ad_<L>": [B], "ic_<L>": [B]}`` for each nu with label
        ``L = nu_label(nu)`` (``"100"``, ``"50"``, ``"15"``): O in [0,1], AD and IC terms in
        [0,100]; table values are their means.
    """
    O = masked_confidence(scorer, x01, V, c, normalize, nus, mean_std)
    ad = average_drop(Y, O)
    ic = increase_in_confidence(Y, O)
    out = {}
    for j, nu in enumerate(nus):
        L = nu_label(nu)
        out[f"O_{L}"] = O[:, j]
        out[f"ad_{L}"] = ad[:, j]
        out[f"ic_{L}"] = ic[:, j]
    return out


LCAM_SOURCE = (
    "Gkartzonika, Gkalelis, Mezaris, 'Learning visual explanations for DCNN-based image "
    "classifiers using an attention mechanism', ECCV Workshops 2022, Eqs. (10)-(11), Table 1; "
    "code github.com/bmezaris/L-CAM utils/Metrics.py (AD, IC, drop_Npercent)"
)


@register_protocol
class LCAMProtocol(Protocol):
    name = "lcam"
    order = 10
    summary = "AD/IC at nu in {100,50,15}%: x01 * top-nu(V), black elsewhere (L-CAM paper)"
    source = LCAM_SOURCE
    defaults = {"nus": DEFAULT_NUS}

    def validate(self, opts: Dict[str, Any]) -> None:
        nus = opts["nus"]
        if not nus:
            raise ValueError("protocol 'lcam': option nus needs at least one threshold")
        for nu in nus:
            if isinstance(nu, bool) or not isinstance(nu, (int, float)) or not 0.0 < float(nu) <= 1.0:
                raise ValueError(f"protocol 'lcam': option nus takes fractions of pixels kept, each "
                                 f"in (0, 1] (e.g. 1,0.5,0.15); got {nu!r}")
        labels = [nu_label(nu) for nu in nus]
        if len(set(labels)) != len(labels):
            raise ValueError(f"protocol 'lcam': option nus lists a threshold twice: {list(nus)}")

    def metrics(self, **opts: Any) -> List[MetricSpec]:
        nus = self.options(**opts)["nus"]
        specs = []
        for nu in nus:
            L = nu_label(nu)
            specs.append(MetricSpec(f"ad_{L}", f"AD({L}%)", False, 1.0, LCAM_SOURCE + ", Eq. (10)",
                                    f"Average Drop (%) with the top {L}% of the map kept"))
            specs.append(MetricSpec(f"ic_{L}", f"IC({L}%)", True, 1.0, LCAM_SOURCE + ", Eq. (11)",
                                    f"Increase in Confidence (%) with the top {L}% kept", binary=True))
        return specs

    def row_keys(self, **opts: Any) -> List[str]:
        nus = self.options(**opts)["nus"]
        return [f"{k}_{nu_label(nu)}" for nu in nus for k in ("O", "ad", "ic")]

    def forwards_per_image(self, **opts: Any) -> int:
        return len(self.options(**opts)["nus"])  # one masked image per threshold

    def evaluate(self, inputs: MetricInputs, **opts: Any) -> Dict[str, Tensor]:
        o = self.options(**opts)
        return lcam_scores(inputs.scorer, inputs.images01(), inputs.V, inputs.c, inputs.Y,
                           inputs.normalize, tuple(o["nus"]), inputs.mean_std)
