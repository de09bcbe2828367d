"""Statistics of a bench run: ``camzoo.stats.<function>(run, ...)``, computed from the run's
stored per-image rows (nothing changes a stored value). See docs/stats.md.

    import camzoo
    run = camzoo.bench.Run("results/efficientnet_lite0-...")
    camzoo.stats.intervals(run)              # mean and 95 % bootstrap interval of every cell
    camzoo.stats.pairwise(run, ["ADCC"])     # paired differences, Wilcoxon, Holm, images needed
    ag = camzoo.stats.agreement(run)         # do the metrics rank the methods alike?

A facade over :mod:`camzoo.results.stats` (the functions on arrays are there too).
"""
from .results.stats import (ALPHA, DEFAULT_RESAMPLES, DEFAULT_SEED, LEVEL, POWER, Agreement,
                            agreement, agreement_of, bootstrap_ci, bootstrap_means, format_agreement,
                            format_pairwise, holm, intervals, kendall_w, noether_n, pairwise,
                            pairwise_tests, per_image_matrix, rankings, wilcoxon_p)

__all__ = ["ALPHA", "DEFAULT_RESAMPLES", "DEFAULT_SEED", "LEVEL", "POWER", "Agreement", "agreement",
           "agreement_of", "bootstrap_ci", "bootstrap_means", "format_agreement", "format_pairwise",
           "holm", "intervals", "kendall_w", "noether_n", "pairwise", "pairwise_tests",
           "per_image_matrix", "rankings", "wilcoxon_p"]
