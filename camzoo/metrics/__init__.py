"""Metric protocols as pure batch-first torch functions (any device), and stability.

- ``lcam``: AD / IC at nu = 100, 50, 15 % (L-CAM paper and code) -- :mod:`.lcam_protocol`
- ``rise``: insertion / deletion AUC (RISE paper and code) -- :mod:`.rise_protocol`
- ``adcc``: Average Drop of ``E = x*V``, Coherency, Complexity, ADCC (ADCC paper and code)
  -- :mod:`.adcc`
- ``road``: ROAD MoRF / LeRF with noisy linear imputation (ROAD paper and code; not in
  ``all``) -- :mod:`.road`
- ``localization``: pointing game, energy-based pointing game, localization error against
  ground-truth boxes (``--boxes``; not in ``all``) -- :mod:`.localization`
- stability of maps across models (LFI-CAM paper): binarized IoU -- :mod:`.stability`

:class:`Scorer` (:mod:`.scorer`) does every forward (batched, counted per family).
``PROTOCOLS`` (:mod:`.protocol`) maps protocol names to :class:`Protocol` objects naming
their table columns, directions and sources; other packages add protocols through the
``camzoo.protocols`` entry-point group. See docs/metrics.md for every protocol choice.
"""
from .lcam_protocol import average_drop, increase_in_confidence, lcam_scores, masked_confidence
from .adcc import adcc, adcc_scores, coherency, complexity
from .rise_protocol import auc, insertion_deletion, rise_scores
from .protocol import PROTOCOLS, MetricInputs, MetricSpec, Protocol, register_protocol, table_metrics
from .road.solver import impute
from .road.masks import removal_masks
from .road.curves import road_curves, road_scores
from . import localization  # noqa: F401  (registers the protocol 'localization')
from .scorer import Scorer

__all__ = [
    "PROTOCOLS", "MetricInputs", "MetricSpec", "Protocol", "register_protocol", "table_metrics", "Scorer",
    "average_drop", "increase_in_confidence", "lcam_scores", "masked_confidence",
    "adcc", "adcc_scores", "coherency", "complexity", "auc", "insertion_deletion", "rise_scores",
    "impute", "removal_masks", "road_curves", "road_scores",
]
