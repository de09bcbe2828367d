"""The engine: :class:`BenchConfig` with presets and resume rules (:mod:`.config`), a bench
run's checked plan (:mod:`.plan`) and its runner (:mod:`.runner`), the one image-to-map path
every command uses (:mod:`.maps`), and the ``explain``, ``stability``, ``sanity`` and
``analyze`` runs built on it (:mod:`.explain`, :mod:`.cross_model`, :mod:`.randomization`,
:mod:`.analyze`).

Internal: import from the module that defines a name; the public API is :mod:`camzoo`,
:mod:`camzoo.bench`, :mod:`camzoo.stats`, :mod:`camzoo.sanity`, :mod:`camzoo.metrics` and
:mod:`camzoo.train` (docs/architecture.md, "Public API").
"""
