"""Protocol ``adcc``: Average Drop, Coherency, Complexity and their harmonic mean ADCC.

Source: S. Poppi, M. Cornia, L. Baraldi, R. Cucchiara, "Revisiting the Evaluation of Class
Activation Mapping for Explainability: A Novel Metric and Experimental Analysis", CVPR
Workshops 2021, Eqs. (3)-(5) and Table 2; authors' code github.com/aimagelab/ADCC
(``metrics/average_drop.py``, ``coherency.py``, ``complexity.py``, ``adcc.py``).

Per image ``i`` with normalized image ``x``, map ``V`` and class ``c``::

    E  = x * V                       (normalized space, soft map, no thresholding)
    O  = softmax(f(E))[c]
    AverageDrop = max(0, Y - O) / Y                     in [0,1]
    Coherency   = (pearson(V, V') + 1) / 2              V' = same explainer's map of E for c
    Complexity  = mean(V)                               (L1 norm / (H*W))
    ADCC        = 3 / (1/Coherency + 1/(1-Complexity) + 1/(1-AverageDrop)), 0 if a term is 0

A correlation that is undefined (a constant V or V', or a non-finite value) counts as 0, so
Coherency = 0.5 there (the issue's rule; see docs/metrics.md for how the authors' code
differs). Tables report the mean over images of the per-image values, x100.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List

import torch
from torch import Tensor

from .lcam_protocol import average_drop
from .protocol import MetricInputs, MetricSpec, Protocol, register_protocol
from .scorer import Scorer

FAMILY = "adcc"


def explanation_map(x: Tensor, V: Tensor) -> Tensor:
    """``E = x * V``: the normalized image weighted by its map (no thresholding).

    Args:
        x: normalized images ``[B,3,H,W]``.
        V: maps ``[B,H,W]`` in [0,1].
    Returns:
        ``[B,3,H,W]`` (normalized space; where ``V = 0`` the pixel is the dataset mean color).
    """
    return x * V.unsqueeze(1).to(x.dtype)


def pearson(A: Tensor, B: Tensor, nan_value: float = 0.0, dtype: torch.dtype = torch.float32) -> Tensor:
    """Per-sample Pearson correlation of flattened maps.

    Args:
        A, B: ``[N,...]`` maps of equal shape.
        nan_value: returned where the correlation is undefined (either map constant, or a
            non-finite value).
        dtype: the precision it is computed in (float64 for ranks of large maps).
    Returns:
        ``dtype`` ``[N]`` in [-1,1].
    """
    a = A.reshape(A.shape[0], -1).to(dtype)
    b = B.reshape(B.shape[0], -1).to(dtype)
    if a.shape != b.shape:
        raise ValueError(f"maps differ in shape: {tuple(A.shape)} vs {tuple(B.shape)}")
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    num = (a * b).sum(dim=1)
    den = a.square().sum(dim=1).sqrt() * b.square().sum(dim=1).sqrt()
    r = num / den
    # exactly constant maps (float noise in the mean could fake a correlation) -> undefined
    const = (A.reshape(A.shape[0], -1).amax(1) == A.reshape(A.shape[0], -1).amin(1)) | (
        B.reshape(B.shape[0], -1).amax(1) == B.reshape(B.shape[0], -1).amin(1))
    ok = torch.isfinite(r) & ~const & (den > 0)
    return torch.where(ok, r.clamp(-1.0, 1.0), torch.full_like(r, float(nan_value)))


def coherency(V: Tensor, V2: Tensor, nan_correlation: float = 0.0) -> Tensor:
    """Coherency ``(pearson(V, V2) + 1) / 2`` over the flattened input-resolution maps.

    Args:
        V: maps ``[B,H,W]`` of the images.
        V2: maps ``[B,H,W]`` of the explanation maps ``E = x * V`` for the same classes.
        nan_correlation: the correlation used where it is undefined (a constant map):
            0 by default (the issue's rule), giving Coherency 0.5.
    Returns:
        float32 ``[B]`` in [0,1].
    """
    return (pearson(V, V2, nan_value=nan_correlation) + 1.0) / 2.0


def complexity(V: Tensor) -> Tensor:
    """Complexity ``||V||_1 / (H*W)`` = mean of the map (maps are non-negative).

    Args:
        V: maps ``[B,H,W]`` in [0,1].
    Returns:
        float32 ``[B]`` in [0,1].
    """
    return V.reshape(V.shape[0], -1).float().abs().mean(dim=1)


def adcc(average_drop01: Tensor, coherency: Tensor, complexity: Tensor) -> Tensor:
    """Per-image ADCC, the harmonic mean of Coherency, 1 - Complexity and 1 - AverageDrop.

    Args:
        average_drop01: ``[B]`` AverageDrop as a fraction in [0,1].
        coherency: ``[B]`` in [0,1].
        complexity: ``[B]`` in [0,1].
    Returns:
        float32 ``[B]`` in [0,1]: ``3 / (1/coh + 1/(1-cpx) + 1/(1-ad))``, defined as 0 when
        any of the three terms is 0 (the limit of the harmonic mean).
    """
    terms = torch.stack([coherency.float(), 1.0 - complexity.float(),
                         1.0 - average_drop01.float()])
    positive = (terms > 0).all(dim=0)
    inv = (1.0 / terms.clamp(min=torch.finfo(torch.float32).tiny)).sum(dim=0)
    return torch.where(positive, 3.0 / inv, torch.zeros_like(inv))


def adcc_scores(
    scorer: Scorer,
    x: Tensor,
    V: Tensor,
    c: Tensor,
    Y: Tensor,
    explain_fn: Callable[[Tensor, Tensor], Tensor],
    nan_correlation: float = 0.0,
) -> Dict[str, Tensor]:
    """Every per-image quantity of the protocol.

    Args:
        scorer: the counting :class:`Scorer` (the forwards on ``E`` count under ``"adcc"``;
            the explainer's own forwards for ``V'`` are not seen by the scorer).
        x: normalized images ``[B,3,H,W]``.
        V: their maps ``[B,H,W]`` in [0,1] for classes ``c``.
        c: LongTensor ``[B]``.
        Y: float ``[B]`` prob of ``c`` on ``x`` (from the engine's clean forward).
        explain_fn: ``(E [B,3,H,W], c [B]) -> V' [B,H,W]`` in [0,1], the same explainer with
            the same options (and seed) as for ``V``.
        nan_correlation: see :func:`coherency`.
    Returns:
        ``{"O", "average_drop", "coherency", "complexity", "adcc"}``, each float32 ``[B]``
        in [0,1] (fractions; tables show means x100).
    """
    E = explanation_map(x, V)
    O = scorer.probs(E, c, FAMILY)
    ad = average_drop(Y.to(O.device), O, scale=1.0)
    V2 = explain_fn(E, c)
    coh = coherency(V, V2.to(V.device), nan_correlation=nan_correlation).to(O.device)
    cpx = complexity(V).to(O.device)
    return {"O": O, "average_drop": ad, "coherency": coh, "complexity": cpx,
            "adcc": adcc(ad, coh, cpx)}


ADCC_SOURCE = (
    "Poppi, Cornia, Baraldi, Cucchiara, 'Revisiting the Evaluation of Class Activation Mapping "
    "for Explainability: A Novel Metric and Experimental Analysis', CVPR Workshops 2021, "
    "Eqs. (3)-(5), Table 2; code github.com/aimagelab/ADCC metrics/"
)


@register_protocol
class ADCCProtocol(Protocol):
    name = "adcc"
    order = 30
    summary = "Coherency, Complexity and ADCC of E = x * V (ADCC paper)"
    source = ADCC_SOURCE
    defaults = {"nan_correlation": 0.0}

    def validate(self, opts: Dict[str, Any]) -> None:
        if not -1.0 <= float(opts["nan_correlation"]) <= 1.0:
            raise ValueError(f"protocol 'adcc': option nan_correlation is a correlation in [-1, 1]; "
                             f"got {opts['nan_correlation']!r}")

    def metrics(self, **opts: Any) -> List[MetricSpec]:
        return [
            MetricSpec("adcc_ad", "AvgDrop(E)", False, 100.0, ADCC_SOURCE + ", Sec. 3 (Avg Drop)",
                       "Average Drop (%) of E = x * V (normalized space)", in_table=False),
            MetricSpec("coherency", "Coherency", True, 100.0, ADCC_SOURCE + ", Eq. (3)",
                       "(Pearson(V, V') + 1) / 2, V' = map of E, x100"),
            MetricSpec("complexity", "Complexity", False, 100.0, ADCC_SOURCE + ", Eq. (4)",
                       "mean of V, x100"),
            MetricSpec("adcc", "ADCC", True, 100.0, ADCC_SOURCE + ", Eq. (5)",
                       "mean over images of the per-image harmonic mean, x100"),
        ]

    def row_keys(self, **opts: Any) -> List[str]:
        return ["adcc_O", "adcc_ad", "coherency", "complexity", "adcc"]

    def forwards_per_image(self, **opts: Any) -> int:
        return 1  # E = x * V

    def explanations_per_image(self, **opts: Any) -> int:
        return 1  # the map of E (Coherency)

    def evaluate(self, inputs: MetricInputs, **opts: Any) -> Dict[str, Tensor]:
        o = self.options(**opts)
        if inputs.explain_fn is None:
            raise ValueError("the adcc protocol needs MetricInputs.explain_fn (maps of E = x * V)")
        r = adcc_scores(inputs.scorer, inputs.x, inputs.V, inputs.c, inputs.Y, inputs.explain_fn,
                        nan_correlation=float(o["nan_correlation"]))
        return {"adcc_O": r["O"], "adcc_ad": r["average_drop"], "coherency": r["coherency"],
                "complexity": r["complexity"], "adcc": r["adcc"]}
