"""``camzoo stats``: a thin layer over :mod:`camzoo.stats` (``camzoo.stats``)."""
from __future__ import annotations

import os

import click

from .options import emit, names, user_errors


@click.command("stats")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--metric", "metrics", multiple=True,
              help="only these metrics (table column names, e.g. ADCC or 'AD(100%)'; repeatable "
                   "or comma-separated) [default: every table metric]")
@click.option("--agreement", is_flag=True,
              help="instead: how far the metrics agree on the ranking of the methods (Spearman, "
                   "Kendall, Kendall's W) and agreement.png in the run directory")
@click.option("--reliability", is_flag=True,
              help="instead: metric reliability (Tomsett et al., AAAI 2020): inter-rater "
                   "(Krippendorff's alpha of the per-image method rankings), inter-method and "
                   "internal consistency (Spearman) with bootstrap intervals over images, and "
                   "reliability.png in the run directory")
@click.option("--format", "fmt", default="markdown", show_default=True, type=click.Choice(["markdown", "csv"]),
              help="output format")
@click.option("--resamples", default=None, type=click.IntRange(min=2),
              help="bootstrap resamples of the intervals [default: 10000; 1000 with --reliability]")
@click.option("--ci-seed", default=None, type=int, help="seed of the bootstrap resamples [default: 0]")
@click.option("--alpha", default=None, type=click.FloatRange(0, 1, min_open=True, max_open=True),
              help="test level [default: 0.05]")
@click.option("--power", default=None, type=click.FloatRange(0, 1, min_open=True, max_open=True),
              help="power of the images-needed estimate [default: 0.8]")
@click.option("--output", "-o", default=None, type=click.Path(), help="write to a file instead of stdout")
def stats_cmd(run_dir, metrics, agreement, reliability, fmt, resamples, ci_seed, alpha, power, output) -> None:
    """Per metric, every pair of methods of a bench run: mean paired difference with its 95 %
    interval, p-value of the paired test of the mean (exact McNemar for 0/1 columns such as IC),
    Holm-adjusted over all pairs, and the images needed to separate
    them; or, with --agreement, whether the metrics rank the methods alike; or, with
    --reliability, how reliable each metric is."""
    from ..results.run import Run
    from ..results import concordance, formatting, paired

    if agreement and reliability:
        raise click.UsageError("--agreement and --reliability are two different reports; give one of them")
    chosen = [m for v in metrics for m in names(v)] or None
    with user_errors():
        r = Run(run_dir)
        if reliability:
            from ..results import reliability as rel
            from ..results.plots import reliability_bars

            kw = {k: v for k, v in (("n_resamples", resamples), ("seed", ci_seed)) if v is not None}
            res = rel.reliability(r, chosen, **kw)
            path = os.path.join(r.dir, "reliability.png")
            reliability_bars(res, path, f"{r.config['backbone']['name']}: metric reliability "
                                        f"({len(res.methods)} methods)")
            text = formatting.format_reliability(res, fmt)
            if fmt != "csv":
                text += f"\nfigure: {path}\n"
        elif agreement:
            from ..results.plots import agreement_heatmap

            ag = concordance.agreement(r, chosen)
            path = os.path.join(r.dir, "agreement.png")
            agreement_heatmap(ag.spearman, path, f"{r.config['backbone']['name']}: Spearman "
                                                 f"correlation of method rankings")
            text = formatting.format_agreement(ag, fmt)
            if fmt != "csv":
                text += f"\nheatmap: {path}\n"
        else:
            kw = {k: v for k, v in (("n_resamples", resamples), ("seed", ci_seed), ("alpha", alpha),
                                    ("power", power)) if v is not None}
            df = paired.pairwise(r, chosen, **kw)
            text = formatting.format_pairwise(df, fmt, alpha=kw.get("alpha", paired.ALPHA),
                                         power=kw.get("power", paired.POWER))
    emit(text, output)
