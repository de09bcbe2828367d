"""Explainers behind one call: ``explain(method, model, x, y=None, **options)``.

Built-ins register with :func:`register_explainer`; plugins come from the
``camzoo.explainers`` entry-point group (an :class:`Explainer` subclass per entry point).

Modules: :mod:`.base` (the Explainer class, map post-processing), :mod:`.perturb` (shared by
the perturbation methods), one module per family (:mod:`.gradient`, :mod:`.eigen`,
:mod:`.scorecam`, :mod:`.ablation`, :mod:`.fullgrad`, :mod:`.rise`, :mod:`.fakecam`) and
:mod:`.learned` (L-CAM, LFI-CAM and their checkpoints).
"""
from . import ablation, eigen, fakecam, fullgrad, gradient, learned, rise, scorecam  # noqa: F401  (registers the built-ins)
from . import controls  # noqa: F401  (the controls blur:<method>, centre, random; docs/explainers.md)
