"""Classifiers: the :class:`Backbone` type and :func:`capture` (:mod:`.backbone`), every
builder and name form (:mod:`.zoo`), surgery on copies (:mod:`.surgery`), and tiny models and
the synthetic known-answer task for tests (:mod:`.testing`, :mod:`.synthetic`).

Internal: import from the module that defines a name; the public API is :mod:`camzoo`,
:mod:`camzoo.bench`, :mod:`camzoo.stats`, :mod:`camzoo.sanity`, :mod:`camzoo.metrics` and
:mod:`camzoo.train` (docs/architecture.md, "Public API").
"""
