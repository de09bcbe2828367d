"""The model-randomization sanity check (Adebayo et al., NeurIPS 2018) in one call::

    import camzoo
    res = camzoo.sanity.run("efficientnet_lite0", "gradcam,fakecam", limit=4, out="out/sanity")
    res.summary("spearman")        # steps x methods: mean similarity to the trained model's maps

A facade over :mod:`camzoo.engine.randomization`; see docs/stats.md.
"""
from .engine.randomization import MODES, SanityResult, format_summary, run
from .metrics.similarity import SIMILARITIES, map_similarities
from .models.surgery import randomization_blocks

__all__ = ["MODES", "SIMILARITIES", "SanityResult", "format_summary", "map_similarities",
           "randomization_blocks", "run"]
