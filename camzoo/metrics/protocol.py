"""Metric protocols as plugins: :class:`Protocol`, :class:`MetricSpec`, :class:`MetricInputs`.

A protocol is a registry entry of ``PROTOCOLS`` (built-ins register with
:func:`register_protocol`; other packages expose a :class:`Protocol` subclass or instance in
the ``camzoo.protocols`` entry-point group). The engine knows no protocol by name: for each
(method, batch) it builds one :class:`MetricInputs` and calls ``protocol.evaluate(inputs,
**options)``; the per-image values go to the result store under ``protocol.row_keys(...)``
and the tables aggregate them with ``protocol.metrics(...)``:
table value = ``spec.scale * mean over images of row[spec.key]``. Table columns follow the
protocols' ``order`` (then their names), and within a protocol the order of its specs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Dict, Iterable, List, Optional, Sequence, Tuple

from torch import Tensor

from ..registry import PROTOCOL_ENTRY_POINT_GROUP, Registry
from ..utils import check_options, file_hashes
from .scorer import Scorer


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
        binary: the per-image values are indicators, 0 or 100 in table units (``scale *
            value``), so the column is a percentage of images (IC): its cells get exact
            Clopper-Pearson intervals and its comparisons the exact McNemar test.
    """

    key: str
    column: str
    higher_is_better: bool
    scale: float
    source: str
    description: str = ""
    in_table: bool = True
    binary: bool = False

    @property
    def arrow(self) -> str:
        return "\u2191" if self.higher_is_better else "\u2193"

    @property
    def header(self) -> str:
        """The table header: ``column`` and its direction arrow, ``"AD(100%)↓"``."""
        return f"{self.column}{self.arrow}"


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
        explain_fn: ``(E [B,3,H,W], c [B]) -> [B,H,W]`` the same explainer with the same
            options on other inputs (e.g. ``adcc``'s Coherency); its forwards are counted
            by the engine under ``<protocol>_explain``.
        x01: images in [0,1] ``[B,3,H,W]``; ``denormalize(x)`` when not given.
        mean_std: ``(mean [3], std [3])`` when ``normalize`` is ``(z - mean) / std`` per
            channel: lets the ``lcam`` protocol build each masked image in one fused pass.
        classifier: the evaluated :class:`camzoo.Backbone` (layers, class names, ...), for
            protocols that need more than the scorer.
        pred: LongTensor ``[B]``, the classifier's top-1 on ``x`` (the engine's clean forward).
        labels: LongTensor ``[B]``, the ground-truth classes, -1 where the data has none.
        image_ids: the images' ids (``ImageItem.image_id``), e.g. to find their annotations.
        paths: the images' files (``ImageItem.path``; ``None`` for an in-memory image).
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
    classifier: Any = None
    pred: Optional[Tensor] = None
    labels: Optional[Tensor] = None
    image_ids: Optional[Sequence[str]] = None
    paths: Optional[Sequence[Optional[str]]] = None

    def images01(self) -> Tensor:
        """The images in [0,1] ``[B,3,H,W]`` (``x01``, or ``denormalize(x)``)."""
        if self.x01 is not None:
            return self.x01
        if self.denormalize is None:
            raise ValueError("MetricInputs needs x01 or denormalize for this protocol")
        return self.denormalize(self.x)


class Protocol:
    """Base class: a named evaluation protocol with options, metrics and a batch evaluator.

    Class attributes:
        name: registry name (``--metrics NAME``).
        summary: one line for ``camzoo list``.
        source: paper and authors' code.
        defaults: every option with its default (``--metric-opt NAME.OPTION=VALUE``).
        order: position of its columns in tables (built-ins: lcam 10, rise 20, adcc 30).
        in_all: included in ``--metrics all``.
        shorthands: options of this protocol that ``camzoo bench`` also takes as a flag of
            their own, with its help: ``{"steps": "insertion/deletion steps"}`` makes
            ``--steps N`` mean ``--metric-opt rise.steps=N`` (the flag's type is the default's;
            see :func:`shorthand_flags`).
        runtime_options: options that change how the values are computed, not what they are
            (the same rows to float rounding: chunk sizes, a solver's code path): not part of
            a run's identity, so a run resumes with other values of them, or with options of
            this kind added after it was stored.
        added_options: options added after runs of this protocol were stored, with the value
            such a run had in effect (an option that changes the stored keys, say): a stored
            run whose options lack one is read and resumed with that value
            (:meth:`stored_options`), so it keeps its layout and its identity.
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    source: ClassVar[str] = ""
    defaults: ClassVar[Dict[str, Any]] = {}
    order: ClassVar[float] = 100.0
    in_all: ClassVar[bool] = True
    shorthands: ClassVar[Dict[str, str]] = {}
    runtime_options: ClassVar[Tuple[str, ...]] = ()
    added_options: ClassVar[Dict[str, Any]] = {}

    def stored_options(self, opts: Dict[str, Any]) -> Dict[str, Any]:
        """A stored run's options (its ``config.json``'s) as they were in effect: ``opts``
        completed with the :attr:`added_options` they lack."""
        return {**{k: v for k, v in self.added_options.items() if k not in opts}, **opts}

    def options(self, **opts: Any) -> Dict[str, Any]:
        """Defaults updated with ``opts``, checked: unknown options and values of the wrong
        type raise ``ValueError`` naming the option (:func:`camzoo.utils.check_options`), then
        :meth:`validate` checks the ranges."""
        o = check_options(f"protocol {self.name!r}", self.defaults, opts)
        self.validate(o)
        return o

    def validate(self, opts: Dict[str, Any]) -> None:
        """Raise ``ValueError`` naming the option when a value is out of range (override)."""

    def check_backbone(self, opts: Dict[str, Any], backbone: Any) -> None:
        """Raise ``ValueError`` when the options cannot work with ``backbone`` (e.g. more
        steps than pixels); the engine calls it before a run starts (override)."""

    def file_hashes(self, opts: Dict[str, Any]) -> Dict[str, str]:
        """``{option: sha256}`` of the content of each option naming a file the values depend
        on, for ``config.json`` and the run identity, so that a resume never mixes two files'
        rows (default: every option whose value names an existing file; ``localization``
        overrides it for a folder of boxes)."""
        return file_hashes(opts)

    def families(self, **opts: Any) -> Tuple[str, ...]:
        """Scorer families the forwards of this protocol are counted under."""
        return (self.name,)

    def metrics(self, **opts: Any) -> List[MetricSpec]:
        """Table columns, in table order."""
        raise NotImplementedError

    def row_keys(self, **opts: Any) -> List[str]:
        """Names of the per-image scalar values :meth:`evaluate` returns (each ``[B]``);
        default: the keys of :meth:`metrics`."""
        return [s.key for s in self.metrics(**opts)]

    def curve_keys(self, **opts: Any) -> List[str]:
        """Names of per-image curves ``[B,L]`` :meth:`evaluate` also returns (may be empty)."""
        return []

    def forwards_per_image(self, **opts: Any) -> Optional[int]:
        """Images this protocol sends through the classifier per evaluated image (its scorer
        forwards, every family together), for the run's plan and estimate; None when it is not
        known in advance (the engine then measures it on its probe). The built-ins' counts
        equal the forwards the engine stores (tested)."""
        return None

    def explanations_per_image(self, **opts: Any) -> int:
        """Maps the protocol asks the method for per image, besides the evaluated one (the
        ADCC protocol's Coherency map of ``x * V``: 1); each costs the method's forwards."""
        return 0

    def evaluate(self, inputs: MetricInputs, **opts: Any) -> Dict[str, Tensor]:
        """Per-image values for one batch: ``{key: [B]}`` for :meth:`row_keys` plus curves."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<protocol {self.name}: {self.summary}>"


def _as_protocol(obj: Any) -> Protocol:
    """An entry point's object as a Protocol instance (a subclass is instantiated)."""
    if isinstance(obj, type) and issubclass(obj, Protocol):
        obj = obj()
    if not isinstance(obj, Protocol):
        raise TypeError(f"expected a camzoo Protocol subclass or instance; got {obj!r}")
    if not obj.name:
        raise TypeError(f"protocol {type(obj).__name__} has no name")
    return obj


PROTOCOLS: Registry[Protocol] = Registry("metric protocol", PROTOCOL_ENTRY_POINT_GROUP,
                                        convert=_as_protocol)


def register_protocol(cls: type) -> type:
    """Class decorator adding (an instance of) a :class:`Protocol` subclass by its ``name``."""
    PROTOCOLS.add(cls.name, _as_protocol(cls))
    return cls


def ordered_protocols(names: Iterable[str]) -> List[str]:
    """``names`` (validated) in table order: by ``Protocol.order``, then by name."""
    names = list(dict.fromkeys(names))
    protos = {n: PROTOCOLS.get(n) for n in names}  # unknown names raise, listing the valid ones
    return sorted(names, key=lambda n: (protos[n].order, n))


def shorthand_flags() -> Dict[str, Tuple[str, type, str]]:
    """``camzoo bench``'s flags that set a protocol option: option name -> (protocol, type, help),
    from the registered protocols' :attr:`Protocol.shorthands`. Two protocols declaring the
    same shorthand raise ``ValueError`` (the flag would be ambiguous)."""
    out: Dict[str, Tuple[str, type, str]] = {}
    for n in PROTOCOLS.names():
        proto = PROTOCOLS.get(n)
        for opt, help_ in proto.shorthands.items():
            if opt in out:
                raise ValueError(f"protocols {out[opt][0]} and {n} both declare the shorthand --{opt}")
            kind = type(proto.defaults[opt])
            out[opt] = (n, kind, f"{help_} (= --metric-opt {n}.{opt}={'N' if kind is int else opt.upper()})")
    return out


def all_protocols() -> List[str]:
    """What ``--metrics all`` runs: every registered protocol with ``in_all``, in table order."""
    return ordered_protocols(n for n in PROTOCOLS.names() if PROTOCOLS.get(n).in_all)


def table_metrics(protocols: Optional[Iterable[str]] = None,
                  options: Optional[Dict[str, Dict[str, Any]]] = None,
                  include_hidden: bool = False) -> List[MetricSpec]:
    """The table columns of the given protocols (default: :func:`all_protocols`), in table order.

    Args:
        protocols: protocol names (any order; unknown names raise listing the valid ones).
        options: per-protocol options (``{"lcam": {"nus": (1.0, 0.5)}}``).
        include_hidden: also return specs with ``in_table=False``.
    """
    options = options or {}
    names = all_protocols() if protocols is None else ordered_protocols(protocols)
    specs: List[MetricSpec] = []
    for n in names:
        specs += [s for s in PROTOCOLS.get(n).metrics(**options.get(n, {}))
                  if include_hidden or s.in_table]
    return specs


def evaluate_all(inputs: MetricInputs, protocols: Optional[Sequence[str]] = None,
                 options: Optional[Dict[str, Dict[str, Any]]] = None) -> Dict[str, Tensor]:
    """Run several protocols (default: :func:`all_protocols`) on one batch and merge their
    per-image outputs (keys are unique)."""
    options = options or {}
    out: Dict[str, Tensor] = {}
    for n in (all_protocols() if protocols is None else protocols):
        out.update(PROTOCOLS.get(n).evaluate(inputs, **options.get(n, {})))
    return out
