"""The protocol ``road``: MoRF / LeRF curves of noisy imputed images, their table columns."""
from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ..protocol import MetricInputs, MetricSpec, Protocol, register_protocol
from ..scorer import Scorer
from .masks import ORDERS, random_fields, removal_masks
from .solver import DEFAULT_TOL, impute

FAMILY = "road"
DEFAULT_FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
ROAD_SOURCE = (
    "Rong, Leemann, Borisov, Kasneci, Kasneci, 'A Consistent and Efficient Evaluation Strategy "
    "for Attribution Methods', ICML 2022; code github.com/tleemann/road_evaluation "
    "(road/imputations.py NoisyLinearImputer, road/imputed_dataset.py ImputedDataset)"
)


class _Clock:
    """Seconds spent inside its ``with`` blocks: ``wall`` (CUDA synchronized at the block's
    end) and ``cpu`` (this process's CPU time)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.wall = self.cpu = 0.0
        self._start = (0.0, 0.0)

    def __enter__(self) -> "_Clock":
        self._start = (time.perf_counter(), time.process_time())
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.wall += time.perf_counter() - self._start[0]
        self.cpu += time.process_time() - self._start[1]


def _checked_fractions(x01: Tensor, V: Tensor, fractions: Sequence[float],
                       orders: Sequence[str]) -> Tuple[float, ...]:
    """``fractions`` as floats, after checking the shapes, fractions and orders."""
    B, _, H, W = x01.shape
    if V.shape != (B, H, W):
        raise ValueError(f"V must be [B,H,W] = {(B, H, W)}; got {tuple(V.shape)}")
    fractions = tuple(float(p) for p in fractions)
    if not fractions:
        raise ValueError("ROAD needs at least one removal fraction")
    bad = [o for o in orders if o not in ORDERS]
    if bad:
        raise ValueError(f"unknown ROAD order(s) {bad}; valid: {', '.join(ORDERS)}")
    return fractions


def _solve_batch(scorer: Scorer, device: torch.device, solve_batch: Optional[int]) -> int:
    """Systems imputed together: ``solve_batch``, or ``eval_batch_size`` (at most 8 on CPU,
    where smaller batches stay in cache)."""
    chunk = int(solve_batch or (min(scorer.eval_batch_size, 8) if device.type == "cpu"
                                else scorer.eval_batch_size))
    if chunk < 1:
        raise ValueError(f"solve_batch must be >= 1; got {solve_batch}")
    return chunk


def _score_held(scorer: Scorer, held: List[Tuple[Tensor, Tensor]],
                last: bool) -> Tuple[Tensor, List[Tuple[Tensor, Tensor]]]:
    """Score the held ``(normalized images, classes)`` in forwards of ``eval_batch_size``: all
    of them when ``last``, else the full forwards only. Returns the probabilities and what
    stays held."""
    xs, cs = torch.cat([h[0] for h in held]), torch.cat([h[1] for h in held])
    n = xs.shape[0]
    full = n if last else n - n % scorer.eval_batch_size
    probs = scorer.probs(xs[:full], cs[:full], FAMILY)
    return probs, ([(xs[full:], cs[full:])] if full < n else [])


def _order_probs(scorer: Scorer, x01: Tensor, c: Tensor, masks: Tensor, noise: Optional[Tensor],
                 normalize: Callable[[Tensor], Tensor], P: int, chunk: int, tol: float,
                 clock: _Clock) -> Tensor:
    """Probabilities ``[B*P]`` of class ``c`` on the noisy imputed images of one order.

    Pair ``q = i * P + j`` (image ``i``, fraction ``j``, removed pixels ``masks[q]``) is imputed
    when its chunk of ``chunk`` pairs is reached, plus ``noise[j]`` (``[P,C,H,W]`` or None) at
    its removed pixels; imputed images are held until they fill a forward of
    ``eval_batch_size``, so at most one forward batch plus one chunk of them exists at a time.
    """
    n = masks.shape[0]
    probs: List[Tensor] = []
    held: List[Tuple[Tensor, Tensor]] = []
    n_held = 0
    for a in range(0, n, chunk):
        e = min(n, a + chunk)
        q = torch.arange(a, e, device=x01.device)
        img, frac = q // P, q % P
        with clock:
            rem = masks[a:e]
            imp = impute(x01[img], rem, tol=tol)
            if noise is not None:
                imp = imp + noise[frac] * rem[:, None].to(imp.dtype)
        held.append((normalize(imp), c[img]))
        n_held += e - a
        if n_held >= scorer.eval_batch_size or e == n:
            p, held = _score_held(scorer, held, last=e == n)
            probs.append(p)
            n_held -= p.shape[0]
    return torch.cat(probs)


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
) -> Dict[str, Tensor]:
    """ROAD curves of many images, batched across (image, fraction) pairs.

    The pairs of each order are imputed in chunks of ``solve_batch`` and scored in forwards of
    ``eval_batch_size`` (counted under family ``"road"``); see :func:`_order_probs`.

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
        tol: relative residual of the imputation (:func:`~.solver.impute`).
        solve_batch: systems solved together (None: ``eval_batch_size``, at most 8 on CPU,
            where smaller batches stay in cache); results do not depend on it.
        timing: if a dict, receives the seconds spent imputing: ``"impute"`` (wall, CUDA
            synchronized) and ``"impute_cpu"`` (this process's CPU time), added to its values.
    Returns:
        ``{order: float32 [B, P]}`` softmax probabilities of ``c``.
    """
    B, C, H, W = x01.shape
    fractions = _checked_fractions(x01, V, fractions, orders)
    P = len(fractions)
    dev = x01.device
    c = c.reshape(-1).to(dev)
    chunk = _solve_batch(scorer, dev, solve_batch)
    # per order o (index k) and fraction j: tie field [H,W] and noise field [C,H,W]
    n_fields = len(ORDERS) * P
    ties = random_fields(seed, n_fields, (H, W), tie_noise, dev) if tie_noise else None
    noises = random_fields(int(seed) + 1, n_fields, (C, H, W), noise, dev) if noise else None
    clock = _Clock(dev)
    out: Dict[str, Tensor] = {}
    for order in orders:
        k = ORDERS.index(order)
        own = slice(k * P, (k + 1) * P)
        masks = removal_masks(V.to(dev), fractions, order, None if ties is None else ties[own])
        out[order] = _order_probs(scorer, x01, c, masks.reshape(B * P, H, W),
                                  None if noises is None else noises[own], normalize, P, chunk,
                                  tol, clock).view(B, P)
    if timing is not None:
        timing["impute"] = timing.get("impute", 0.0) + clock.wall
        timing["impute_cpu"] = timing.get("impute_cpu", 0.0) + clock.cpu
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


@register_protocol
class ROADProtocol(Protocol):
    name = "road"
    order = 40
    in_all = False  # --metrics all,road adds it; 'all' stays the three papers' protocols
    summary = ("ROAD: MoRF/LeRF at 10..90% removed, noisy linear imputation (Rong et al. 2022); "
               "not in 'all' (use --metrics all,road)")
    source = ROAD_SOURCE
    defaults = {"fractions": DEFAULT_FRACTIONS, "noise": 0.01, "tie_noise": 1e-4, "seed": 0,
                "tol": DEFAULT_TOL, "solve_batch": None}
    #: options of earlier versions and the values they took: accepted and ignored, so that
    #: runs stored with them resume and their tables are read. ``kernels`` (auto|c|torch)
    #: chose compiled CPU kernels for the imputation, removed: the torch solver, which gave
    #: the same values to float32 rounding, is the only path.
    retired_options = {"kernels": ("auto", "c", "torch")}
    # not part of a run's identity: the chunking (rows do not depend on it), the retired options
    runtime_options = ("solve_batch", *retired_options)

    def options(self, **opts: Any) -> Dict[str, Any]:
        """As :meth:`Protocol.options`, after dropping the :attr:`retired_options` (their
        values checked)."""
        for k, valid in self.retired_options.items():
            v = opts.pop(k, valid[0])
            if v not in valid:
                raise ValueError(f"protocol 'road': option {k} (deprecated, no effect) must be "
                                 f"one of {', '.join(valid)}; got {v!r}")
        return super().options(**opts)

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
                           solve_batch=o["solve_batch"])
