"""The protocol ``road``: MoRF / LeRF curves of noisy imputed images, their table columns.

Each imputed image is scored twice from its one forward: the softmax probability of ``c``
and whether ``c`` is still its top-1 class. The paper's ROAD is the *accuracy* (the fraction of
images still classified as their class: ``res_acc`` of the authors' ``road/road.py``
``run_road``, from ``road/retraining.py`` ``road_eval``); the probability curves are
pytorch-grad-cam's scale. The protocol stores both and shows the accuracy by default.
"""
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
    "(road/imputations.py NoisyLinearImputer, road/imputed_dataset.py ImputedDataset, "
    "road/road.py run_road, road/retraining.py road_eval)"
)
#: which columns the table shows (option ``scale``; every value is stored either way)
SCALES = ("accuracy", "probability", "both")


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
                last: bool) -> Tuple[Tensor, Tensor, List[Tuple[Tensor, Tensor]]]:
    """Score the held ``(normalized images, classes)`` in forwards of ``eval_batch_size``: all
    of them when ``last``, else the full forwards only. Returns the probabilities of the
    classes, the hits (top-1 == class, from the same forwards) and what stays held."""
    xs, cs = torch.cat([h[0] for h in held]), torch.cat([h[1] for h in held])
    n = xs.shape[0]
    full = n if last else n - n % scorer.eval_batch_size
    probs, hits = scorer.probs(xs[:full], cs[:full], FAMILY, hits=True)
    return probs, hits, ([(xs[full:], cs[full:])] if full < n else [])


def _order_scores(scorer: Scorer, x01: Tensor, c: Tensor, masks: Tensor, noise: Optional[Tensor],
                  normalize: Callable[[Tensor], Tensor], P: int, chunk: int, tol: float,
                  clock: _Clock) -> Tuple[Tensor, Tensor]:
    """Probabilities ``[B*P]`` of class ``c`` on the noisy imputed images of one order, and
    hits ``[B*P]`` (bool: ``c`` is the imputed image's top-1), both from the same forwards.

    Pair ``q = i * P + j`` (image ``i``, fraction ``j``, removed pixels ``masks[q]``) is imputed
    when its chunk of ``chunk`` pairs is reached, plus ``noise[j]`` (``[P,C,H,W]`` or None) at
    its removed pixels; imputed images are held until they fill a forward of
    ``eval_batch_size``, so at most one forward batch plus one chunk of them exists at a time.
    """
    n = masks.shape[0]
    probs: List[Tensor] = []
    hits: List[Tensor] = []
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
            p, h, held = _score_held(scorer, held, last=e == n)
            probs.append(p)
            hits.append(h)
            n_held -= p.shape[0]
    return torch.cat(probs), torch.cat(hits)


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
    ``eval_batch_size`` (counted under family ``"road"``); see :func:`_order_scores`. Each
    forward gives both curves of its images: the probability of ``c`` and the accuracy (1 where
    ``c`` is still the top-1 class), so the accuracy costs no forward.

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
        ``{order: float32 [B, P]}`` softmax probabilities of ``c`` and
        ``{order + "_acc": float32 [B, P]}`` accuracies: 1.0 where ``c`` is the imputed image's
        top-1 class (the first maximum of its float32 softmax), else 0.0.
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
        probs, hits = _order_scores(scorer, x01, c, masks.reshape(B * P, H, W),
                                    None if noises is None else noises[own], normalize, P, chunk,
                                    tol, clock)
        out[order] = probs.view(B, P)
        out[order + "_acc"] = hits.view(B, P).to(torch.float32)
    if timing is not None:
        timing["impute"] = timing.get("impute", 0.0) + clock.wall
        timing["impute_cpu"] = timing.get("impute_cpu", 0.0) + clock.cpu
    return out


#: per-image keys (values, curves) of the accuracy scale (the paper's) and of the probability scale
ACC_VALUES = ("road_acc_morf", "road_acc_lerf", "road_acc")
ACC_CURVES = ("road_acc_morf_curve", "road_acc_lerf_curve")
PROB_VALUES = ("road_morf", "road_lerf", "road")
PROB_CURVES = ("road_morf_curve", "road_lerf_curve")


def road_scores(scorer: Scorer, x01: Tensor, V: Tensor, c: Tensor,
                normalize: Callable[[Tensor], Tensor], accuracy: bool = True,
                **opts: Any) -> Dict[str, Tensor]:
    """Per-image ROAD values of both scales, from the same forwards.

    Accuracy (the paper's scale): ``road_acc_morf``, ``road_acc_lerf`` (the means over the
    fractions of 1.0 / 0.0 = ``c`` still top-1 or not, ``[B]``), ``road_acc = (road_acc_lerf -
    road_acc_morf) / 2`` and the curves ``road_acc_morf_curve``, ``road_acc_lerf_curve``
    ``[B, P]``. Probability of ``c``: ``road_morf``, ``road_lerf``, ``road`` and the curves
    ``road_morf_curve``, ``road_lerf_curve``. ``accuracy=False`` leaves the accuracy keys out
    (the layout of runs stored before they existed). Options as :func:`road_curves` (both
    orders are needed for the combined values)."""
    cur = road_curves(scorer, x01, V, c, normalize, orders=ORDERS, **opts)
    out: Dict[str, Tensor] = {}
    for (m_key, l_key, comb), (m_curve, l_curve), suffix in (
            (ACC_VALUES, ACC_CURVES, "_acc"), (PROB_VALUES, PROB_CURVES, "")):
        if suffix and not accuracy:
            continue
        morf, lerf = cur["morf" + suffix], cur["lerf" + suffix]
        out.update({m_key: morf.mean(1), l_key: lerf.mean(1), comb: (lerf.mean(1) - morf.mean(1)) / 2,
                    m_curve: morf, l_curve: lerf})
    return out


def _specs(scale_values: Sequence[str], curve_name: str, suffix: str, what: str,
           in_table: bool) -> List[MetricSpec]:
    """The three columns of one scale: MoRF, LeRF, combined."""
    morf, lerf, comb = scale_values
    return [
        MetricSpec(morf, "ROAD-MoRF" + suffix, False, 100.0, ROAD_SOURCE + " (MoRF)",
                   f"{what} over the MoRF fractions (most relevant removed, imputed), x100",
                   in_table=in_table),
        MetricSpec(lerf, "ROAD-LeRF" + suffix, True, 100.0, ROAD_SOURCE + " (LeRF)",
                   f"{what} over the LeRF fractions (least relevant removed, imputed), x100",
                   in_table=in_table),
        MetricSpec(comb, "ROAD" + suffix, True, 100.0,
                   ROAD_SOURCE + "; combined as pytorch-grad-cam's ROADCombined",
                   f"(ROAD-LeRF{suffix} - ROAD-MoRF{suffix}) / 2 ({curve_name}), x100", in_table=in_table),
    ]


@register_protocol
class ROADProtocol(Protocol):
    name = "road"
    order = 40
    in_all = False  # --metrics all,road adds it; 'all' stays the three papers' protocols
    summary = ("ROAD: accuracy on MoRF/LeRF images with 10..90% removed by noisy linear imputation "
               "(Rong et al. 2022; probability of c with road.scale=probability|both); not in 'all' "
               "(use --metrics all,road)")
    source = ROAD_SOURCE
    defaults = {"fractions": DEFAULT_FRACTIONS, "noise": 0.01, "tie_noise": 1e-4, "seed": 0,
                "tol": DEFAULT_TOL, "solve_batch": None, "accuracy": True, "scale": "accuracy"}
    #: options of earlier versions and the values they took: accepted and ignored, so that
    #: runs stored with them resume and their tables are read. ``kernels`` (auto|c|torch)
    #: chose compiled CPU kernels for the imputation, removed: the torch solver, which gave
    #: the same values to float32 rounding, is the only path.
    retired_options = {"kernels": ("auto", "c", "torch")}
    #: options added after runs of this protocol were stored, with the value such a run had in
    #: effect (:meth:`stored_options`): ``accuracy`` -- runs stored before the accuracy curves
    #: existed hold the probability values only, and keep that layout when read and resumed.
    added_options = {"accuracy": False}
    # not part of a run's identity: the chunking (rows do not depend on it), which stored
    # values the table shows (scale), the retired options
    runtime_options = ("solve_batch", "scale", *retired_options)

    def options(self, **opts: Any) -> Dict[str, Any]:
        """As :meth:`Protocol.options`, after dropping the :attr:`retired_options` (their
        values checked)."""
        for k, valid in self.retired_options.items():
            v = opts.pop(k, valid[0])
            if v not in valid:
                raise ValueError(f"protocol 'road': option {k} (deprecated, no effect) must be "
                                 f"one of {', '.join(valid)}; got {v!r}")
        return super().options(**opts)

    def validate(self, opts: Dict[str, Any]) -> None:
        if opts["scale"] not in SCALES:
            raise ValueError(f"protocol 'road': option scale must be one of {', '.join(SCALES)} "
                             f"(which stored values the table shows); got {opts['scale']!r}")

    def metrics(self, **opts: Any) -> List[MetricSpec]:
        """Both scales' columns: accuracy (the paper's; with ``accuracy``) and probability of
        ``c`` (headers ``...(p)``). ``scale`` says which are in the table (``in_table``): both
        are stored either way. Without accuracy values only the probability columns exist, and
        they are shown whatever ``scale`` says."""
        o = self.options(**opts)
        acc = bool(o["accuracy"])
        scale = o["scale"] if acc else "probability"
        specs = _specs(ACC_VALUES, "accuracy", "", "fraction of imputed images whose top-1 class is still c, "
                       "mean", scale in ("accuracy", "both")) if acc else []
        return specs + _specs(PROB_VALUES, "probability of c", "(p)", "mean softmax probability of c",
                              scale in ("probability", "both"))

    def curve_keys(self, **opts: Any) -> List[str]:
        o = self.options(**opts)
        return [*(ACC_CURVES if o["accuracy"] else ()), *PROB_CURVES]

    def forwards_per_image(self, **opts: Any) -> int:
        return len(ORDERS) * len(self.options(**opts)["fractions"])  # one imputed image per point

    def evaluate(self, inputs: MetricInputs, **opts: Any) -> Dict[str, Tensor]:
        o = self.options(**opts)
        return road_scores(inputs.scorer, inputs.images01(), inputs.V, inputs.c, inputs.normalize,
                           accuracy=bool(o["accuracy"]), fractions=tuple(o["fractions"]),
                           noise=float(o["noise"]), tie_noise=float(o["tie_noise"]), seed=int(o["seed"]),
                           tol=float(o["tol"]), solve_batch=o["solve_batch"])
