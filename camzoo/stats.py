"""Statistics of a bench run: ``camzoo.stats.<function>(run, ...)``, computed from the run's
stored per-image rows (nothing changes a stored value). See docs/stats.md.

    import camzoo
    run = camzoo.bench.Run("results/efficientnet_lite0-...")
    camzoo.stats.intervals(run)              # mean and 95 % bootstrap interval of every cell
    camzoo.stats.pairwise(run, ["ADCC"])     # paired differences, Wilcoxon, Holm, images needed
    ag = camzoo.stats.agreement(run)         # do the metrics rank the methods alike?
    print(camzoo.stats.format_agreement(ag))

The public names of :mod:`camzoo.results.bootstrap`, :mod:`camzoo.results.paired`,
:mod:`camzoo.results.concordance` and :mod:`camzoo.results.formatting` that take a run; the
functions on arrays (``bootstrap_ci``, ``wilcoxon_p``, ``holm``, ``kendall_w``, ...) stay in
those modules.
"""
from .results.bootstrap import intervals
from .results.concordance import Agreement, agreement
from .results.formatting import format_agreement, format_pairwise
from .results.paired import pairwise

__all__ = ["Agreement", "agreement", "format_agreement", "format_pairwise", "intervals", "pairwise"]
