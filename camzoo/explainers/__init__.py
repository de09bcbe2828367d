"""Explainers behind one call: ``explain(method, model, x, y=None, **options)``.

Built-ins register with :func:`register_explainer`; plugins come from the
``camzoo.explainers`` entry-point group (an :class:`Explainer` subclass per entry point).

Modules: :mod:`.base` (the Explainer class, map post-processing), :mod:`.perturb` (shared by
the perturbation methods), one module per family (:mod:`.gradient`, :mod:`.scorecam`,
:mod:`.rise`, :mod:`.fakecam`) and :mod:`.learned` (L-CAM, LFI-CAM and their checkpoints).
"""
from __future__ import annotations

from typing import Any, List, Optional

from torch import Tensor

from .base import EXPLAINERS, Explainer, cam_to_map, minmax, register_explainer, upsample
from . import fakecam, gradient, learned, rise, scorecam  # noqa: F401  (registers the built-ins)

__all__ = ["EXPLAINERS", "Explainer", "explain", "get_explainer", "list_explainers",
           "register_explainer", "minmax", "upsample", "cam_to_map"]


def get_explainer(name: str, **options: Any) -> Explainer:
    """Instantiate the explainer ``name`` with ``options`` (unknown names/options list the valid ones)."""
    cls = EXPLAINERS.get(name)
    return cls(**options)


def list_explainers() -> List[str]:
    """Names of all registered explainers, built-in and plugins."""
    return EXPLAINERS.names()


def explain(method: str, model, x: Tensor, y: Optional[Tensor] = None, **options: Any) -> Tensor:
    """Saliency maps of ``model`` for the batch ``x``.

    Args:
        method: explainer name, e.g. ``"gradcam"`` (see :func:`list_explainers`).
        model: a :class:`camzoo.Backbone`.
        x: normalized float batch ``[B,3,H,W]`` on the model's device.
        y: LongTensor ``[B]`` of classes; ``None`` explains the model's top-1 ("model truth").
        **options: explainer options, e.g. ``layer="conv5"``, ``n_masks=8000``.
    Returns:
        float32 ``[B,H,W]`` maps in [0,1] at input resolution; a constant map is all zeros.
    """
    return get_explainer(method, **options).explain(model, x, y)
