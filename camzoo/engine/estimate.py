"""The plan of a bench run and its estimated time, printed before the run starts.

The engine knows, before it evaluates anything, exactly how many forwards each method and each
protocol costs per image (:meth:`Explainer.forward_passes`,
:meth:`Protocol.forwards_per_image`, :meth:`Protocol.explanations_per_image`) and which
(method, image, protocol) units a run still lacks. A short probe on this device
(:func:`camzoo.engine.probe.probe`) measures the seconds per image of what is cheap to
measure (the clean forward, one classifier forward at the metric batch size, the maps of the
methods that need few forwards, the protocols that need few); the rest is priced at its
forwards times the measured forward. :func:`estimate` multiplies the two; nothing here runs a
model.

The estimate covers the evaluation loop (maps, metrics, the store), not loading the model or
writing the tables; ``benchmarks/speed/estimate_accuracy.py`` compares it with measured runs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..metrics.protocol import PROTOCOLS
from ..progress import Progress, clock_text
from ..utils import markdown_table


@dataclass
class UnitTimes:
    """Seconds per image measured by the probe.

    Attributes:
        forward: one image through the classifier at the metric batch size (what a metric or a
            perturbation explainer's forward costs).
        clean: the clean forward of one image (with loading and preprocessing).
        maps: method -> seconds per map, for the methods the probe ran.
        protocols: protocol -> its own seconds per image (without re-explanations), for the
            protocols the probe ran.
        protocol_forwards: protocol -> forwards per image measured by the probe, for protocols
            that do not declare theirs.
        probe_seconds: what the probe took.
    """

    forward: float
    clean: float
    maps: Dict[str, float] = field(default_factory=dict)
    protocols: Dict[str, float] = field(default_factory=dict)
    protocol_forwards: Dict[str, float] = field(default_factory=dict)
    probe_seconds: float = 0.0


@dataclass
class Work:
    """What a run still lacks.

    Attributes:
        images: images whose clean forward runs.
        maps: method -> images whose map it makes.
        units: method -> protocol -> images that protocol evaluates on the method's maps.
        map_forwards: method -> forwards per map (its ``forward_passes``).
        protocol_forwards: protocol -> declared forwards per image (None: not declared).
        explanations: protocol -> extra maps per image it asks the method for.
    """

    images: int
    maps: Dict[str, int]
    units: Dict[str, Dict[str, int]]
    map_forwards: Dict[str, int]
    protocol_forwards: Dict[str, Optional[int]]
    explanations: Dict[str, int]


@dataclass
class Estimate:
    """A run's plan and estimated seconds, per method (see :func:`estimate`)."""

    work: Work
    times: UnitTimes
    seconds: Dict[str, float]
    clean_seconds: float
    measured: Dict[str, bool]

    @property
    def total(self) -> float:
        """Estimated seconds of the whole evaluation loop."""
        return self.clean_seconds + sum(self.seconds.values())

    def per_map(self, method: str) -> float:
        """Estimated seconds of one map of ``method``: measured by the probe, else its
        forwards times one forward."""
        return self.times.maps.get(method, self.work.map_forwards[method] * self.times.forward)

    def per_unit(self, method: str, protocol: str) -> float:
        """Estimated seconds of ``protocol`` on one map of ``method``: the protocol's own time
        (measured, else its forwards times one forward) and its re-explanations."""
        own = self.times.protocols.get(protocol)
        if own is None:
            own = self._protocol_forwards(protocol) * self.times.forward
        return own + self.work.explanations.get(protocol, 0) * self.per_map(method)

    def forwards(self, method: str) -> float:
        """Forwards per image of ``method``: its map, each protocol's, re-explanations."""
        w = self.work
        n = w.map_forwards[method]
        for p in w.units.get(method, {}):
            n += self._protocol_forwards(p) + w.explanations.get(p, 0) * w.map_forwards[method]
        return n

    def _protocol_forwards(self, p: str) -> float:
        declared = self.work.protocol_forwards.get(p)
        return float(declared if declared is not None else self.times.protocol_forwards.get(p, 0.0))

    def text(self) -> str:
        """The plan as a Markdown table (forwards per image per method and protocol, images,
        estimated time) and one line with the total."""
        w = self.work
        protocols = list(dict.fromkeys(p for u in w.units.values() for p in u))
        header = ["method", "map", *protocols, "forwards/img", "images", "est. time"]
        rows = []
        for m in w.maps:
            cells = [m, _fw(w.map_forwards[m], self.measured.get(m, False))]
            for p in protocols:
                if p not in w.units.get(m, {}):
                    cells.append("-")
                    continue
                extra = w.explanations.get(p, 0)
                cells.append(f"{self._protocol_forwards(p):.0f}" + (f" + {extra} map" if extra else ""))
            n_img = max([w.maps[m], *w.units.get(m, {}).values()])
            rows.append(cells + [f"{self.forwards(m):.0f}", str(n_img), clock_text(self.seconds[m])])
        lines = markdown_table(header, rows, "l" + "r" * (len(header) - 1))
        lines.append(f"estimated time: {clock_text(self.total)} for the evaluation (probe: "
                     f"{self.times.probe_seconds:.1f} s on this device; one forward "
                     f"{1000 * self.times.forward:.1f} ms/img; an estimate, not a promise)")
        return "\n".join(lines)


def _fw(n: int, measured: bool) -> str:
    return f"{n}" + ("" if measured else " (est.)")


def estimate(work: Work, times: UnitTimes) -> Estimate:
    """Seconds of ``work`` at ``times``: per method, its maps plus each protocol's own time
    and re-explanations; a map or protocol the probe did not run is priced at its forwards
    times the measured forward."""
    est = Estimate(work, times, {}, work.images * times.clean, {m: m in times.maps for m in work.maps})
    for m, n_maps in work.maps.items():
        est.seconds[m] = n_maps * est.per_map(m) + sum(
            n * est.per_unit(m, p) for p, n in work.units.get(m, {}).items())
    return est


def cheap(forwards_per_image: Optional[float], forward_s: float, images: int, budget_s: float) -> bool:
    """Whether the probe runs something of ``forwards_per_image`` on ``images`` images within
    ``budget_s`` seconds at ``forward_s`` per forward (unknown forwards: yes, on one image)."""
    return forwards_per_image is None or forwards_per_image * forward_s * images <= budget_s


def probe_images(n_available: int, batch_size: int, limit: int = 4) -> int:
    """Images the probe uses: a few, never more than the run has or a batch holds."""
    return max(1, min(n_available, batch_size, limit))


def lacking(methods: Sequence[Any], protocol_options: Dict[str, Dict[str, Any]],
            pending: Sequence[Tuple[int, Any]], done: set,
            missing: Dict[Tuple[str, str], List[str]]) -> Work:
    """What a run lacks: the maps and (method, protocol) units of its ``pending`` images
    (``(index, ImageItem)``); ``done``: the (method, image_id) pairs that lack nothing;
    ``missing``: (method, image_id) -> the protocols it lacks; ``methods``: the run's
    :class:`~camzoo.engine.maps.MapMethod` s."""
    maps = {m.name: sum((m.name, it.image_id) not in done for _, it in pending) for m in methods}
    units: Dict[str, Dict[str, int]] = {}
    for m in methods:
        for _, it in pending:
            for p in missing.get((m.name, it.image_id), ()):
                units.setdefault(m.name, {}).setdefault(p, 0)
                units[m.name][p] += 1
    protos = {p: PROTOCOLS.get(p) for p in protocol_options}
    return Work(images=len(pending), maps=maps, units=units,
                map_forwards={m.name: int(m.forward_passes) for m in methods},
                protocol_forwards={p: pr.forwards_per_image(**protocol_options[p]) for p, pr in protos.items()},
                explanations={p: pr.explanations_per_image(**protocol_options[p]) for p, pr in protos.items()})


class WorkMeter:
    """A run's one progress display, advanced in estimated seconds of work: each unit (a
    method's maps of a batch, a protocol on them, the batch's clean forwards) starts with its
    estimated seconds (:meth:`Estimate.per_map`, :meth:`Estimate.per_unit`); the forwards
    reported inside it (:meth:`forwards`, the engine's ``forward_meter``) advance the display
    by their estimated seconds, and the rest of the unit is shown when the next one starts.
    The time left is the display's own, from the rate so far. ``show=False``: no display."""

    def __init__(self, est: Estimate, n_images: int, show: bool = True) -> None:
        self.est, self.n_images, self.done_images, self.left = est, n_images, 0, 0.0
        self.bar: Optional[Progress] = Progress(est.total, "bench") if show else None

    def _begin(self, what: str, seconds: float) -> None:
        if self.bar is None:
            return
        if self.left > 0:
            self.bar.update(self.left)
        self.left = seconds
        self.bar.describe(what)

    def maps(self, method: str, n: int) -> None:
        """``method`` starts its maps of ``n`` images."""
        self._begin(f"{method}: maps", n * self.est.per_map(method))

    def protocol(self, method: str, protocol: str, n: int) -> None:
        """``protocol`` starts on ``method``'s maps of ``n`` images."""
        self._begin(f"{method}: {protocol}", n * self.est.per_unit(method, protocol))

    def clean(self, n: int) -> None:
        """The clean forwards of ``n`` images are done."""
        if self.bar is not None:
            self.bar.update(n * self.est.times.clean)

    def forwards(self, n: int) -> None:
        """``n`` forwards done inside the unit at work."""
        if self.bar is not None and self.left > 0:
            step = min(self.left, n * self.est.times.forward)
            self.left -= step
            self.bar.update(step)

    def images(self, n: int) -> None:
        """A batch of ``n`` images is stored."""
        self.done_images += n
        if self.bar is not None:
            self._begin(self.bar.desc, 0.0)
            self.bar.describe(self.bar.desc, f"{self.done_images}/{self.n_images} images")

    def finish(self) -> None:
        """The loop ended: what failed or was skipped is not left to do."""
        if self.bar is not None:
            self._begin("bench", 0.0)
            self.bar.update(max(0.0, self.bar.total - self.bar.n))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
