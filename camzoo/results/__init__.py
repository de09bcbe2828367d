"""What a run leaves behind and everything computed from it: the per-image result store
(:mod:`.store`), the :class:`Run` reader of a run directory (:mod:`.run`), paper-style
tables (:mod:`.tables`) and figures (:mod:`.plots`).

Internal: import from the module that defines a name; the public API is :mod:`camzoo`,
:mod:`camzoo.bench`, :mod:`camzoo.stats`, :mod:`camzoo.sanity`, :mod:`camzoo.metrics` and
:mod:`camzoo.train` (docs/architecture.md, "Public API").
"""
