"""Metric protocols of the three papers, as pure batch-first torch functions (any device).

- ``lcam``: AD / IC at nu = 100, 50, 15 % (L-CAM paper and code) -- :mod:`.lcam`
- ``adcc``: Average Drop of ``E = x*V``, Coherency, Complexity, ADCC (ADCC paper and code)
  -- :mod:`.adcc`
- ``rise``: insertion / deletion AUC (RISE paper and code) -- :mod:`.rise`

:class:`Scorer` does every forward (batched, counted per family). ``PROTOCOLS`` maps the names
above to :class:`Protocol` objects naming their table columns, directions and sources.
See docs/metrics.md for every protocol choice.
"""
from .adcc import adcc, adcc_scores, average_drop_fraction, coherency, complexity, explanation_map, pearson
from .lcam import (
    DEFAULT_NUS, ascending_rank, average_drop, increase_in_confidence, keep_count, keep_mask, keep_top,
    lcam_scores, masked_confidence, nu_label,
)
from .protocols import (
    PROTOCOLS, TABLE_ORDER, MetricInputs, MetricSpec, Protocol, evaluate_all, table_metrics,
)
from .rise import auc, blur, blur_kernel, descending_rank, insertion_deletion, rise_scores, step_counts
from .scoring import Scorer

__all__ = [
    "PROTOCOLS", "TABLE_ORDER", "MetricInputs", "MetricSpec", "Protocol", "evaluate_all",
    "table_metrics", "Scorer",
    "DEFAULT_NUS", "ascending_rank", "average_drop", "increase_in_confidence", "keep_count",
    "keep_mask", "keep_top", "lcam_scores", "masked_confidence", "nu_label",
    "adcc", "adcc_scores", "average_drop_fraction", "coherency", "complexity",
    "explanation_map", "pearson",
    "auc", "blur", "blur_kernel", "descending_rank", "insertion_deletion", "rise_scores",
    "step_counts",
]
