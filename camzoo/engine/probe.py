"""The probe behind a run's estimate (:mod:`camzoo.engine.estimate`): a few seconds on the run's
first images, on this device, before the run starts.

It measures the seconds per image of the clean forward, of one metric forward (a full chunk of
``eval_batch_size`` images, the best of two), of every method's map and of every protocol whose
forwards on those images fit in :data:`PROBE_BUDGET_S` at that rate (the others are priced by
their forwards). Nothing it computes is stored: the run makes those images' maps again. It
works through a :class:`~camzoo.engine.runner.Runner` of its own (given by the caller), so its
clock, scorers and forward counts stay apart from the run's.
"""
from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from typing import Any, Optional, Sequence, Tuple

from ..metrics.protocol import PROTOCOLS
from ..metrics.scorer import Scorer
from ..utils import synchronize
from .estimate import UnitTimes, cheap, probe_images
from .maps import MAIN_VIEW, MapBatch, MapMethod, Maps, iterate_maps

#: seconds the probe may spend on each map or protocol it times
PROBE_BUDGET_S = 2.0


def probe(runner, pending: Sequence[Tuple[int, Any]], budget_s: float = PROBE_BUDGET_S) -> UnitTimes:
    """Seconds per image of the run's parts, measured on the first few ``pending`` images
    (``(manifest index, ImageItem)``): 2 on CPU, where the probe's seconds are the run's, 4 on
    a GPU. ``runner``: a fresh :class:`~camzoo.engine.runner.Runner` of the run's plan."""
    plan, config = runner.plan, runner.config
    t0 = time.perf_counter()
    b = probe_images(len(pending), plan.batch_size, 2 if plan.device.type == "cpu" else 4)
    batches = iterate_maps(plan.dataset, list(pending[:b]), plan.methods,
                           views={MAIN_VIEW: plan.backbone}, batch_size=b, target=config.target,
                           clock=runner.clock, warmup=True, amp=config.amp,
                           model_of=plan.forward_model, workers=0)
    with contextlib.closing(batches):
        batch = next((bt for bt in batches if bt.items), None)
        if batch is None:  # no readable image among them: nothing to measure
            return UnitTimes(forward=0.0, clean=0.0, probe_seconds=time.perf_counter() - t0)
        n = len(batch.items)
        times = UnitTimes(forward=forward_seconds(runner, batch),
                          clean=runner.clock.wall.get("clean", 0.0) / n)
        base: Optional[Tuple[MapMethod, Maps]] = None
        for m in plan.methods:
            if cheap(m.forward_passes, times.forward, n, budget_s):
                with contextlib.suppress(Exception):  # a failing method fails in the run
                    maps = batch.maps_of(m)
                    times.maps[m.name] = maps.seconds
                    if base is None or maps.seconds < times.maps[base[0].name]:
                        base = (m, maps)
        if base is not None:
            _protocols(runner, batch, base, times, budget_s)
    times.probe_seconds = time.perf_counter() - t0
    return times


def forward_seconds(runner, batch: MapBatch) -> float:
    """Seconds per image of one metric forward: ``eval_batch_size`` copies of the batch's
    images (at most 32 on CPU) through the classifier, as the protocols' forwards go; the best
    of two (the first pays the allocations of a full chunk)."""
    plan = runner.plan
    x, c = batch.x[MAIN_VIEW], batch.clean[plan.methods[0].classifier_key].c
    k = min(plan.eval_batch_size, 32 if x.device.type == "cpu" else plan.eval_batch_size)
    reps = -(-k // x.shape[0])
    xx, cc = x.repeat(reps, 1, 1, 1)[:k], c.repeat(reps)[:k]
    scorer = Scorer(plan.forward_model(plan.backbone), k, amp=runner.config.amp)
    best = float("inf")
    for _ in range(2):
        synchronize(x.device)
        t = time.perf_counter()
        scorer.probs(xx, cc, "probe")
        synchronize(x.device)
        best = min(best, time.perf_counter() - t)
    return best / k


def _protocols(runner, batch: MapBatch, base: Tuple[MapMethod, Maps], times: UnitTimes,
               budget_s: float) -> None:
    """The protocols' own seconds per image (and, when undeclared, forwards per image) on the
    cheapest method's probe maps."""
    m, maps = base
    n = len(maps.sel)
    items = [batch.items[j][1] for j in maps.sel]
    for p in runner.plan.protocols:
        declared = PROTOCOLS.get(p).forwards_per_image(**runner.plan.protocol_options[p])
        if not cheap(declared, times.forward, n, budget_s):
            continue
        before = runner.scorers[m.name].total
        with contextlib.suppress(Exception):  # a failing protocol fails in the run
            runner.evaluate(m, p, maps, defaultdict(int), items)
            times.protocols[p] = runner.clock.wall.get(f"metric/{p}", 0.0) / n
            if declared is None:
                times.protocol_forwards[p] = (runner.scorers[m.name].total - before) / n
