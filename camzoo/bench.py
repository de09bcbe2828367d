"""The benchmark API in one place: ``camzoo.bench.run(BenchConfig(...)) -> Run``, and
``camzoo.bench.merge(run_dir) -> Run`` for the shards of a sharded run.

A facade over :mod:`camzoo.engine` (the runner, its configuration and presets) and
:mod:`camzoo.results` (the :class:`Run` reader of a run directory); see docs/bench.md.
"""
from .engine.config import BenchConfig, PRESETS
from .engine.runner import merge, run
from .results.run import Run

__all__ = ["BenchConfig", "PRESETS", "Run", "merge", "run"]
