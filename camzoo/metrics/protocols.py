"""Named metric protocols: what each computes per image, its table columns and its source.

``PROTOCOLS.get("lcam" | "adcc" | "rise")`` returns a :class:`Protocol` instance. The engine
builds one :class:`MetricInputs` per (method, batch) and calls ``protocol.evaluate(inputs,
**options)``; the returned per-image values go to the result store under
``protocol.row_keys(**options)`` and the tables aggregate them with ``protocol.metrics()``:
table value = ``spec.scale * mean over images of row[spec.key]``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Dict, Iterable, List, Optional, Sequence, Tuple

from torch import Tensor

from ..registry import Registry
from .adcc import adcc_scores
from .lcam import DEFAULT_NUS, lcam_scores, nu_label
from .rise import MODES, rise_scores
from .scoring import Scorer

LCAM_SOURCE = (
    "Gkartzonika, Gkalelis, Mezaris, 'Learning visual explanations for DCNN-based image "
    "classifiers using an attention mechanism', ECCV Workshops 2022, Eqs. (10)-(11), Table 1; "
    "code github.com/bmezaris/L-CAM utils/Metrics.py (AD, IC, drop_Npercent)"
)
ADCC_SOURCE = (
    "Poppi, Cornia, Baraldi, Cucchiara, 'Revisiting the Evaluation of Class Activation Mapping "
    "for Explainability: A Novel Metric and Experimental Analysis', CVPR Workshops 2021, "
    "Eqs. (3)-(5), Table 2; code github.com/aimagelab/ADCC metrics/"
)
RISE_SOURCE = (
    "Petsiuk, Das, Saenko, 'RISE: Randomized Input Sampling for Explanation of Black-box "
    "Models', BMVC 2018, Sec. 4.1; code github.com/eclique/RISE evaluation.py "
    "(CausalMetric, gkern, auc)"
)


@dataclass(frozen=True)
class MetricSpec:
    """One table column.

    Attributes:
        key: the per-image value in the result row it aggregates.
        column: table header (``"AD(100%)"``, ``"Ins"``, ...).
        higher_is_better: direction (tables show an arrow, bold = best).
        scale: table value = ``scale * mean_i row[key]`` (1 for values already in percent,
            100 for fractions).
        source: paper and authors' code the definition follows.
        description: one line for docs and ``--help``.
        in_table: False for values stored per image but not in the default table.
    """

    key: str
    column: str
    higher_is_better: bool
    scale: float
    source: str
    description: str = ""
    in_table: bool = True

    @property
    def arrow(self) -> str:
        return "\u2191" if self.higher_is_better else "\u2193"


@dataclass
class MetricInputs:
    """Everything a protocol may need for one batch of one method.

    Attributes:
        scorer: counting :class:`Scorer` of the evaluated classifier.
        x: normalized images ``[B,3,H,W]``.
        V: the method's maps ``[B,H,W]`` in [0,1] for classes ``c``.
        c: LongTensor ``[B]`` evaluated classes.
        Y: float ``[B]`` softmax prob of ``c`` on ``x`` (the engine's clean forward).
        normalize: ``[N,3,H,W]`` in [0,1] -> normalized (``Backbone.normalize``).
        denormalize: normalized -> [0,1] (``Backbone.denormalize``).
        explain_fn: ``(E [B,3,H,W], c [B]) -> [B,H,W]`` the same explainer (needed by ``adcc``).
        x01: images in [0,1] ``[B,3,H,W]``; ``denormalize(x)`` when not given.
        mean_std: ``(mean [3], std [3])`` when ``normalize`` is ``(z - mean) / std`` per
            channel: lets the ``lcam`` protocol build each masked image in one fused pass.
    """

    scorer: Scorer
    x: Tensor
    V: Tensor
    c: Tensor
    Y: Tensor
    normalize: Callable[[Tensor], Tensor]
    denormalize: Optional[Callable[[Tensor], Tensor]] = None
    explain_fn: Optional[Callable[[Tensor, Tensor], Tensor]] = None
    x01: Optional[Tensor] = None
    mean_std: Optional[Tuple[Tensor, Tensor]] = None

    def images01(self) -> Tensor:
        if self.x01 is not None:
            return self.x01
        if self.denormalize is None:
            raise ValueError("MetricInputs needs x01 or denormalize for the lcam protocol")
        return self.denormalize(self.x)


class Protocol:
    """Base class: a named evaluation protocol with options, metrics and a batch evaluator."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    source: ClassVar[str] = ""
    defaults: ClassVar[Dict[str, Any]] = {}

    def options(self, **opts: Any) -> Dict[str, Any]:
        """Defaults updated with ``opts``; unknown options raise, listing the valid ones."""
        unknown = set(opts) - set(self.defaults)
        if unknown:
            raise ValueError(
                f"protocol {self.name!r} has no option(s) {', '.join(sorted(unknown))}; "
                f"options: {', '.join(f'{k}={v!r}' for k, v in self.defaults.items()) or 'none'}"
            )
        return {**self.defaults, **opts}

    def families(self, **opts: Any) -> Tuple[str, ...]:
        """Scorer families the forwards of this protocol are counted under."""
        raise NotImplementedError

    def metrics(self, **opts: Any) -> List[MetricSpec]:
        """Table columns, in table order."""
        raise NotImplementedError

    def row_keys(self, **opts: Any) -> List[str]:
        """Names of the per-image scalar values :meth:`evaluate` returns (each ``[B]``)."""
        raise NotImplementedError

    def curve_keys(self, **opts: Any) -> List[str]:
        """Names of per-image curves ``[B,L]`` :meth:`evaluate` also returns (may be empty)."""
        return []

    def evaluate(self, inputs: MetricInputs, **opts: Any) -> Dict[str, Tensor]:
        """Per-image values for one batch: ``{key: [B]}`` for :meth:`row_keys` plus curves."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<protocol {self.name}: {self.summary}>"


class LCAMProtocol(Protocol):
    name = "lcam"
    summary = "AD/IC at nu in {100,50,15}%: x01 * top-nu(V), black elsewhere (L-CAM paper)"
    source = LCAM_SOURCE
    defaults = {"nus": DEFAULT_NUS}

    def families(self, **opts: Any) -> Tuple[str, ...]:
        return ("lcam",)

    def metrics(self, **opts: Any) -> List[MetricSpec]:
        nus = self.options(**opts)["nus"]
        specs = []
        for nu in nus:
            L = nu_label(nu)
            specs.append(MetricSpec(f"ad_{L}", f"AD({L}%)", False, 1.0, LCAM_SOURCE + ", Eq. (10)",
                                    f"Average Drop (%) with the top {L}% of the map kept"))
            specs.append(MetricSpec(f"ic_{L}", f"IC({L}%)", True, 1.0, LCAM_SOURCE + ", Eq. (11)",
                                    f"Increase in Confidence (%) with the top {L}% kept"))
        return specs

    def row_keys(self, **opts: Any) -> List[str]:
        nus = self.options(**opts)["nus"]
        return [f"{k}_{nu_label(nu)}" for nu in nus for k in ("O", "ad", "ic")]

    def evaluate(self, inputs: MetricInputs, **opts: Any) -> Dict[str, Tensor]:
        o = self.options(**opts)
        return lcam_scores(inputs.scorer, inputs.images01(), inputs.V, inputs.c, inputs.Y,
                           inputs.normalize, tuple(o["nus"]), inputs.mean_std)


class ADCCProtocol(Protocol):
    name = "adcc"
    summary = "Coherency, Complexity and ADCC of E = x * V (ADCC paper)"
    source = ADCC_SOURCE
    defaults = {"nan_correlation": 0.0}

    def families(self, **opts: Any) -> Tuple[str, ...]:
        return ("adcc",)

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

    def evaluate(self, inputs: MetricInputs, **opts: Any) -> Dict[str, Tensor]:
        o = self.options(**opts)
        if inputs.explain_fn is None:
            raise ValueError("the adcc protocol needs MetricInputs.explain_fn (maps of E = x * V)")
        r = adcc_scores(inputs.scorer, inputs.x, inputs.V, inputs.c, inputs.Y, inputs.explain_fn,
                        nan_correlation=float(o["nan_correlation"]))
        return {"adcc_O": r["O"], "adcc_ad": r["average_drop"], "coherency": r["coherency"],
                "complexity": r["complexity"], "adcc": r["adcc"]}


class RISEProtocol(Protocol):
    name = "rise"
    summary = "insertion (from blur) / deletion (to 0) AUC over steps+1 points (RISE paper)"
    source = RISE_SOURCE
    defaults = {"steps": 224, "modes": MODES, "kernel_size": 11, "sigma": 5.0, "kernel": "rise"}

    def families(self, **opts: Any) -> Tuple[str, ...]:
        return tuple(self.options(**opts)["modes"])

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

    def row_keys(self, **opts: Any) -> List[str]:
        return [s.key for s in self.metrics(**opts)]

    def curve_keys(self, **opts: Any) -> List[str]:
        return [f"{m[:3]}_curve" for m in self.options(**opts)["modes"]]

    def evaluate(self, inputs: MetricInputs, **opts: Any) -> Dict[str, Tensor]:
        o = self.options(**opts)
        return rise_scores(inputs.scorer, inputs.x, inputs.V, inputs.c, int(o["steps"]),
                           tuple(o["modes"]), int(o["kernel_size"]), float(o["sigma"]),
                           o["kernel"])


PROTOCOLS: Registry[Protocol] = Registry("metric protocol")
for _p in (LCAMProtocol(), ADCCProtocol(), RISEProtocol()):
    PROTOCOLS.add(_p.name, _p)

#: column order of the papers' tables: AD/IC pairs, Ins, Del, Coherency, Complexity, ADCC
TABLE_ORDER = ("lcam", "rise", "adcc")


def table_metrics(protocols: Iterable[str] = TABLE_ORDER,
                  options: Optional[Dict[str, Dict[str, Any]]] = None,
                  include_hidden: bool = False) -> List[MetricSpec]:
    """The table columns of the given protocols, in the papers' column order.

    Args:
        protocols: protocol names (any order; unknown names raise listing the valid ones).
        options: per-protocol options (``{"lcam": {"nus": (1.0, 0.5)}}``).
        include_hidden: also return specs with ``in_table=False``.
    """
    options = options or {}
    names = list(protocols)
    for n in names:
        PROTOCOLS.get(n)  # raises with the valid names
    ordered = [n for n in TABLE_ORDER if n in names] + [n for n in names if n not in TABLE_ORDER]
    specs: List[MetricSpec] = []
    for n in ordered:
        specs += [s for s in PROTOCOLS.get(n).metrics(**options.get(n, {}))
                  if include_hidden or s.in_table]
    return specs


def evaluate_all(inputs: MetricInputs, protocols: Sequence[str] = TABLE_ORDER,
                 options: Optional[Dict[str, Dict[str, Any]]] = None) -> Dict[str, Tensor]:
    """Run several protocols on one batch and merge their per-image outputs (keys are unique)."""
    options = options or {}
    out: Dict[str, Tensor] = {}
    for n in protocols:
        out.update(PROTOCOLS.get(n).evaluate(inputs, **options.get(n, {})))
    return out
