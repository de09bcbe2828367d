"""``camzoo bench``, ``camzoo table`` and ``camzoo compare``: thin layers over
:func:`camzoo.bench.run` and :mod:`camzoo.results`."""
from __future__ import annotations

import click

from .options import emit, given, user_errors


@click.command("bench")
@click.option("--backbone", default="efficientnet_lite0", show_default=True,
              help="backbone name (camzoo list), timm:<model>, or py:module:function")
@click.option("--weights", default=None, help="state_dict file, or 'random' (smoke tests)")
@click.option("--layer", default=None, help="explanation layer for every method (default: the backbone's)")
@click.option("--methods", default=None,
              help="'all' (every explainer needing no checkpoint) or comma-separated names "
                   "[default: all; the quick preset skips scorecam]")
@click.option("--data", default=None, type=click.Path(),
              help="image folder (labels.csv / wnid folders / flat + --labels / any); default: sample photos")
@click.option("--labels", default=None, type=click.Path(), help="ground-truth file for a flat --data folder")
@click.option("--metrics", default="all", show_default=True,
              help="'all' (lcam,rise,adcc and plugins) and/or comma-separated protocol names "
                   "(camzoo list): e.g. road, or all,road for all plus road")
@click.option("--limit", default=None, type=int, help="deterministic subset of N images")
@click.option("--seed", default=0, show_default=True, type=int, help="seed of the --limit subset")
@click.option("--steps", default=None, type=int, help="insertion/deletion steps (protocol default 224)")
@click.option("--batch-size", default=16, show_default=True, type=int, help="images per engine batch")
@click.option("--eval-batch-size", default=64, show_default=True, type=int,
              help="perturbed images per metric forward")
@click.option("--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA when available)")
@click.option("--out", default=None, type=click.Path(), help="run directory (default results/<backbone>-<time>)")
@click.option("--resume", is_flag=True, help="continue the run in --out (options not given are read from it)")
@click.option("--save-maps", is_flag=True, help="write maps/<method>/<image_id>.npy")
@click.option("--target", default="pred", show_default=True, type=click.Choice(["pred", "gt"]),
              help="explain/evaluate the model's top-1 or the ground-truth class")
@click.option("--opt", "opts", multiple=True, help="METHOD.OPTION=VALUE, repeatable (e.g. rise.n_masks=8000)")
@click.option("--metric-opt", "metric_opts", multiple=True,
              help="PROTOCOL.OPTION=VALUE, repeatable (e.g. lcam.nus=1,0.5,0.15)")
@click.option("--preset", default=None, type=click.Choice(["quick", "full"]),
              help="quick = the fast demo settings (default without --data); full = protocol defaults "
                   "(default with --data)")
@click.option("--no-progress", is_flag=True, help="no progress bars")
@click.pass_context
def bench_cmd(ctx, opts, metric_opts, no_progress, **_) -> None:
    """Run every method x every metric protocol over a dataset; write tables and figures."""
    from ..engine.config import BenchConfig
    from ..engine.runner import run

    fields = {k: v for k, v in given(ctx).items() if k not in ("opts", "metric_opts", "no_progress")}
    fields["progress"] = not no_progress
    with user_errors():
        run(BenchConfig.from_cli(fields, opts, metric_opts), echo=click.echo)


@click.command("table")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--format", "fmt", default="markdown", show_default=True,
              type=click.Choice(["csv", "latex", "markdown"]))
@click.option("--per-image", is_flag=True, help="export the stored per-image rows (CSV) instead")
@click.option("--output", "-o", default=None, type=click.Path(), help="write to a file instead of stdout")
def table_cmd(run_dir, fmt, per_image, output) -> None:
    """Print the table of a bench run (RUN_DIR = its results/<run> directory)."""
    from ..results import Run
    from ..results.tables import per_image_csv, summary

    with user_errors():
        r = Run(run_dir)
        text = per_image_csv(r) if per_image else summary(r).to(fmt)
    emit(text, output)


@click.command("compare")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--format", "fmt", default="markdown", show_default=True,
              type=click.Choice(["csv", "latex", "markdown"]))
@click.option("--output", "-o", default=None, type=click.Path(), help="write to a file instead of stdout")
def compare_cmd(run_dirs, fmt, output) -> None:
    """Stack bench runs (e.g. one per backbone) into one table, a block per run."""
    from ..results import Run
    from ..results.tables import compare

    with user_errors():
        runs = [Run(d) for d in run_dirs]
        text = compare(runs).to(fmt)
    emit(text, output)
