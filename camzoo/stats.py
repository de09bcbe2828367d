"""Statistics of a bench run: ``camzoo.stats.<function>(run, ...)``, computed from the run's
stored per-image rows (nothing changes a stored value). See docs/stats.md.

    import camzoo
    run = camzoo.bench.Run("results/efficientnet_lite0-...")
    camzoo.stats.intervals(run)              # mean and 95 % bootstrap interval of every cell
    camzoo.stats.pairwise(run, ["ADCC"])     # paired differences, tests of the mean, Holm, images needed
    ag = camzoo.stats.agreement(run)         # do the metrics rank the methods alike?
    print(camzoo.stats.format_agreement(ag))
    rel = camzoo.stats.reliability(run)      # how reliable is each metric (Tomsett et al. 2020)?
    print(camzoo.stats.format_reliability(rel))

The public names of :mod:`camzoo.results.bootstrap`, :mod:`camzoo.results.paired`,
:mod:`camzoo.results.concordance`, :mod:`camzoo.results.reliability` and
:mod:`camzoo.results.formatting` that take a run; the functions on arrays (``bootstrap_ci``,
``wilcoxon_p``, ``holm``, ``kendall_w``, ``krippendorff_alpha``, ...) stay in those modules.
"""
from .results.bootstrap import intervals
from .results.concordance import Agreement, agreement
from .results.formatting import format_agreement, format_pairwise, format_reliability
from .results.paired import pairwise
from .results.reliability import Reliability, reliability

__all__ = ["Agreement", "Reliability", "agreement", "format_agreement", "format_pairwise", "format_reliability",
           "intervals", "pairwise", "reliability"]
