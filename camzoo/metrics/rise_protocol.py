"""Protocol ``rise``: insertion and deletion curves and their AUC (RISE authors' code).

Source: V. Petsiuk, A. Das, K. Saenko, "RISE: Randomized Input Sampling for Explanation of
Black-box Models", BMVC 2018, Sec. 4.1 (causal metrics); authors' code github.com/eclique/RISE
(``evaluation.py``: ``CausalMetric``, ``gkern``, ``auc``; the notebook uses step 224,
``substrate_fn=blur`` for insertion and ``torch.zeros_like`` for deletion, softmax outputs).

Pixels are ordered by ``V`` descending (stable sort: among equal values the pixel earlier in
raster order goes first). Point ``k`` of ``steps + 1`` has ``n_k = floor(k * H*W / steps)``
pixels changed (224 per step at 224x224 with the default 224 steps):

- deletion: those pixels set to 0 in normalized space (all three channels);
- insertion: start from ``blur(x)`` and put those pixels of ``x`` back.

Each point's score is the softmax probability of ``c`` (the clean image's class).
``AUC = (sum - first/2 - last/2) / (len - 1)`` per image (trapezoid rule on [0,1]).
"""
from __future__ import annotations

import functools
from typing import Any, Dict, List, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .protocol import MetricInputs, MetricSpec, Protocol, register_protocol
from .scorer import Scorer, pair_chunks

MODES = ("insertion", "deletion")
BLUR_KERNELS = ("rise", "gaussian")


@functools.lru_cache(maxsize=16)
def _kernel_1d(kernel_size: int, sigma: float, kind: str) -> Tensor:
    n = int(kernel_size)
    if n < 1 or sigma <= 0:
        raise ValueError(f"blur needs kernel_size >= 1 and sigma > 0; got {kernel_size}, {sigma}")
    if kind == "gaussian":
        t = torch.arange(n, dtype=torch.float64) - (n - 1) / 2
        w = torch.exp(-0.5 * (t / sigma) ** 2)
        return (w / w.sum()).float()
    if kind != "rise":
        raise ValueError(f"unknown blur kernel {kind!r}; valid: {', '.join(BLUR_KERNELS)}")
    # RISE's gkern: scipy.ndimage.gaussian_filter (truncate=4, mode='reflect') applied to a
    # Dirac at the centre of an n x n grid. The 41-tap Gaussian (sigma 5) is wider than the
    # grid, so its tails fold back by half-sample reflection: the kernel is nearly flat.
    radius = int(4.0 * float(sigma) + 0.5)
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    w = torch.exp(-0.5 * (t / sigma) ** 2)
    w = w / w.sum()
    pos = torch.arange(n, dtype=torch.int64)[:, None] + t.long()[None, :]  # [n, taps]
    r = pos.remainder(2 * n)
    src = torch.where(r < n, r, 2 * n - 1 - r)  # half-sample symmetric extension
    k = (w[None, :] * (src == n // 2)).sum(dim=1)
    return k.float()


def blur_kernel(kernel_size: int = 11, sigma: float = 5.0, kind: str = "rise") -> Tensor:
    """The 2-D blur kernel ``[k,k]`` (float32, sums to 1).

    Args:
        kernel_size: side ``k`` of the kernel.
        sigma: Gaussian standard deviation in pixels.
        kind: ``"rise"`` (default) reproduces RISE's ``gkern(11, 5)`` exactly: scipy's
            ``gaussian_filter`` of a Dirac, whose reflected tails make it nearly flat;
            ``"gaussian"``: the plain ``k x k`` Gaussian normalized to sum 1.
    """
    k1 = _kernel_1d(int(kernel_size), float(sigma), kind)
    return torch.outer(k1, k1)


def blur(x: Tensor, kernel_size: int = 11, sigma: float = 5.0, kind: str = "rise") -> Tensor:
    """Per-channel Gaussian blur with zero padding ``kernel_size // 2`` (RISE's insertion start).

    Args:
        x: normalized images ``[B,C,H,W]`` (the blur, and its zero padding, act in
            normalized space, as in the RISE code).
        kernel_size, sigma, kind: see :func:`blur_kernel`.
    Returns:
        ``[B,C,H,W]``, same dtype and device as ``x``.
    """
    C = x.shape[1]
    k = blur_kernel(kernel_size, sigma, kind).to(device=x.device, dtype=x.dtype)
    weight = k.expand(C, 1, *k.shape).contiguous()
    return F.conv2d(x, weight, padding=int(kernel_size) // 2, groups=C)


def step_counts(n_pixels: int, steps: int, device=None) -> Tensor:
    """Pixels changed at each of the ``steps + 1`` points: ``floor(k * n_pixels / steps)``.

    Returns:
        int64 ``[steps+1]`` from 0 to ``n_pixels``.
    """
    steps = int(steps)
    if not 1 <= steps <= n_pixels:
        raise ValueError(f"steps must be in [1, H*W={n_pixels}]; got {steps}")
    return torch.arange(steps + 1, device=device, dtype=torch.int64) * n_pixels // steps


def descending_rank(V: Tensor) -> Tensor:
    """Position of every pixel in the stable descending sort of its map.

    Args:
        V: maps ``[B,H,W]``.
    Returns:
        int32 ``[B,H*W]``: 0 for the most salient pixel; ties keep raster order.
    """
    flat = V.reshape(V.shape[0], -1)
    order = torch.sort(flat, dim=1, descending=True, stable=True).indices
    ar = torch.arange(flat.shape[1], device=flat.device, dtype=torch.int32).expand(order.shape)
    return torch.empty(order.shape, dtype=torch.int32, device=flat.device).scatter_(1, order, ar)


@torch.inference_mode()
def insertion_deletion(
    scorer: Scorer,
    x: Tensor,
    V: Tensor,
    c: Tensor,
    steps: int = 224,
    modes: Sequence[str] = MODES,
    kernel_size: int = 11,
    sigma: float = 5.0,
    kernel: str = "rise",
) -> Dict[str, Tensor]:
    """Insertion and/or deletion curves of many images, batched across (image, step) pairs.

    Pair ``p = i * (steps+1) + k`` (image ``i``, point ``k``) is built only when its chunk of
    ``scorer.eval_batch_size`` pairs is fed to the model, as
    ``where(rank_i < n_k, x_i, blur(x)_i)`` (insertion) or ``where(rank_i < n_k, 0, x_i)``
    (deletion), with each image's rank map computed once by a stable sort. A chunk holds a few
    runs of consecutive points of one image; each run is one broadcast ``where`` written into
    a reused channels_last buffer (no per-pair gathers, no fresh multi-MB allocations). At most
    one chunk of perturbed images exists at a time. Forwards count under the family named by
    the mode.

    Args:
        scorer: the counting :class:`Scorer` of the evaluated classifier.
        x: normalized images ``[B,3,H,W]``.
        V: maps ``[B,H,W]`` (any real values; only their order matters).
        c: LongTensor ``[B]``, the clean images' classes.
        steps: number of steps; the curves have ``steps + 1`` points.
        modes: any of ``"insertion"``, ``"deletion"``.
        kernel_size, sigma, kernel: the insertion blur (see :func:`blur`).
    Returns:
        ``{mode: float32 [B, steps+1]}`` softmax probabilities of ``c`` in [0,1].
    """
    B, C, H, W = x.shape
    if V.shape != (B, H, W):
        raise ValueError(f"V must be [B,H,W] = {(B, H, W)}; got {tuple(V.shape)}")
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise ValueError(f"unknown mode(s) {bad}; valid: {', '.join(MODES)}")
    n = H * W
    S1 = int(steps) + 1
    bs = scorer.eval_batch_size
    counts = step_counts(n, steps, x.device)
    rank = descending_rank(V.to(x.device))
    c = c.reshape(-1).to(x.device)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    # one reusable chunk buffer (fresh multi-MB allocations page-fault on CPU) and mask buffer;
    # a buffer is rewritten only after the forward that read it was issued (stream order)
    buf = torch.empty((min(bs, B * S1), C, H, W), dtype=x.dtype, device=x.device,
                      memory_format=torch.channels_last)
    mbuf = torch.empty((min(bs, B * S1), n), dtype=torch.bool, device=x.device)
    out: Dict[str, Tensor] = {}
    for mode in modes:
        base = (blur(x, kernel_size, sigma, kernel).contiguous(memory_format=torch.channels_last)
                if mode == "insertion" else None)

        def chunks(base=base):
            # pairs are image-major: a chunk is a few runs (image b, points k0..k1-1), each
            # built by broadcasting image b against the run's masks -- no gathers
            for a, e, runs in pair_chunks(B, S1, bs):
                for b, k0, k1, r0 in runs:
                    r1 = r0 + k1 - k0
                    m4 = torch.lt(rank[b][None], counts[k0:k1, None], out=mbuf[r0:r1])
                    m4 = m4.view(-1, 1, H, W)
                    if base is None:  # deletion: changed pixels -> 0
                        torch.where(m4, zero, x_cl[b:b + 1], out=buf[r0:r1])
                    else:  # insertion: changed pixels -> original, others blurred
                        torch.where(m4, x_cl[b:b + 1], base[b:b + 1], out=buf[r0:r1])
                yield buf[:e - a], c[torch.arange(a, e, device=x.device) // S1]

        out[mode] = scorer.probs_stream(chunks(), mode).view(B, S1)
    return out


def auc(curve: Tensor) -> Tensor:
    """Normalized area under curves sampled at equal steps on [0,1] (RISE's ``auc``).

    Args:
        curve: float ``[..., L]`` with ``L >= 2`` points.
    Returns:
        float ``[...]``: ``(sum - first/2 - last/2) / (L - 1)``.
    """
    L = curve.shape[-1]
    if L < 2:
        raise ValueError(f"auc needs at least 2 points; got {L}")
    return (curve.sum(-1) - curve[..., 0] / 2 - curve[..., -1] / 2) / (L - 1)


def rise_scores(
    scorer: Scorer,
    x: Tensor,
    V: Tensor,
    c: Tensor,
    steps: int = 224,
    modes: Sequence[str] = MODES,
    kernel_size: int = 11,
    sigma: float = 5.0,
    kernel: str = "rise",
) -> Dict[str, Tensor]:
    """Per-image AUCs and curves: ``{"ins_auc","del_auc": [B], "ins_curve","del_curve": [B,steps+1]}``.

    Only the requested ``modes`` appear. AUCs are in [0,1] (tables show means x100).
    """
    curves = insertion_deletion(scorer, x, V, c, steps, modes, kernel_size, sigma, kernel)
    out: Dict[str, Tensor] = {}
    for mode, cur in curves.items():
        short = mode[:3]
        out[f"{short}_auc"] = auc(cur)
        out[f"{short}_curve"] = cur
    return out


RISE_SOURCE = (
    "Petsiuk, Das, Saenko, 'RISE: Randomized Input Sampling for Explanation of Black-box "
    "Models', BMVC 2018, Sec. 4.1; code github.com/eclique/RISE evaluation.py "
    "(CausalMetric, gkern, auc)"
)


@register_protocol
class RISEProtocol(Protocol):
    name = "rise"
    order = 20
    shorthands = {"steps": "insertion/deletion steps of the rise protocol [default: the preset's, else 224]"}
    summary = "insertion (from blur) / deletion (to 0) AUC over steps+1 points (RISE paper)"
    source = RISE_SOURCE
    defaults = {"steps": 224, "modes": MODES, "kernel_size": 11, "sigma": 5.0, "kernel": "rise"}

    def validate(self, opts: Dict[str, Any]) -> None:
        if int(opts["steps"]) < 1:
            raise ValueError(f"protocol 'rise': option steps must be >= 1 (points = steps + 1; "
                             f"the paper: 224); got {opts['steps']!r}")
        bad = [m for m in opts["modes"] if m not in MODES]
        if bad or not opts["modes"]:
            raise ValueError(f"protocol 'rise': option modes takes one or both of {', '.join(MODES)}; "
                             f"got {list(opts['modes'])}")
        if int(opts["kernel_size"]) < 1 or float(opts["sigma"]) <= 0:
            raise ValueError(f"protocol 'rise': the blur needs kernel_size >= 1 and sigma > 0; got "
                             f"kernel_size={opts['kernel_size']!r}, sigma={opts['sigma']!r}")
        if opts["kernel"] not in BLUR_KERNELS:
            raise ValueError(f"protocol 'rise': option kernel takes {', '.join(BLUR_KERNELS)}; "
                             f"got {opts['kernel']!r}")

    def check_backbone(self, opts: Dict[str, Any], backbone: Any) -> None:
        n = int(backbone.input_size) ** 2
        if int(opts["steps"]) > n:
            raise ValueError(f"protocol 'rise': option steps={opts['steps']} is more than the "
                             f"{n} pixels of {backbone.name}'s {backbone.input_size}px inputs")

    def metrics(self, **opts: Any) -> List[MetricSpec]:
        modes = self.options(**opts)["modes"]
        specs = []
        if "insertion" in modes:
            specs.append(MetricSpec("ins_auc", "Ins", True, 100.0, RISE_SOURCE + " (mode 'ins')",
                                    "insertion AUC from the blurred image, x100"))
        if "deletion" in modes:
            specs.append(MetricSpec("del_auc", "Del", False, 100.0, RISE_SOURCE + " (mode 'del')",
                                    "deletion AUC (pixels set to 0 in normalized space), x100"))
        return specs

    def curve_keys(self, **opts: Any) -> List[str]:
        return [f"{m[:3]}_curve" for m in self.options(**opts)["modes"]]

    def families(self, **opts: Any) -> Tuple[str, ...]:
        return tuple(self.options(**opts)["modes"])  # the scorer counts each curve under its mode

    def forwards_per_image(self, **opts: Any) -> int:
        o = self.options(**opts)
        return len(o["modes"]) * (int(o["steps"]) + 1)  # every point of every curve

    def evaluate(self, inputs: MetricInputs, **opts: Any) -> Dict[str, Tensor]:
        o = self.options(**opts)
        return rise_scores(inputs.scorer, inputs.x, inputs.V, inputs.c, int(o["steps"]),
                           tuple(o["modes"]), int(o["kernel_size"]), float(o["sigma"]),
                           o["kernel"])
