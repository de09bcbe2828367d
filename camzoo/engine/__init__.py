"""The engine: :class:`BenchConfig` with presets and resume rules (:mod:`.config`), the bench
runner (:mod:`.runner`), the one image-to-map path every command uses (:mod:`.maps`), and the
``explain`` and ``stability`` runs built on it (:mod:`.explain`, :mod:`.stability`)."""
from .config import PRESETS, BenchConfig, resolve_methods, resolve_protocols
from .runner import Plan, merge, prepare, run

__all__ = ["PRESETS", "BenchConfig", "Plan", "merge", "prepare", "resolve_methods", "resolve_protocols", "run"]
