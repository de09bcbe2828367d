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
from typing import Dict, Optional

from ..progress import clock_text
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
