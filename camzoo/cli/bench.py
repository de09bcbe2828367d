"""``camzoo bench``, ``camzoo merge``, ``camzoo table``, ``camzoo compare`` and ``camzoo
errors``: thin layers over :func:`camzoo.bench.run`, :func:`camzoo.bench.merge` and
:mod:`camzoo.results`."""
from __future__ import annotations

import click

from .options import WEIGHTS_HELP, ci_kwargs, ci_options, emit, given, user_errors

#: ``camzoo bench`` exit status when the run finished but some (method, image) pairs failed
EXIT_FAILURES = 3


@click.command("bench")
@click.option("--backbone", default="efficientnet_lite0", show_default=True,
              help="backbone name (camzoo list), timm:<model>, or py:module:function")
@click.option("--weights", default=None, help=WEIGHTS_HELP)
@click.option("--layer", default=None, help="explanation layer for every method (default: the backbone's)")
@click.option("--methods", default=None,
              help="'all' (every explainer needing no checkpoint) or comma-separated names "
                   "[default: all; the quick preset skips scorecam]")
@click.option("--data", default=None, type=click.Path(),
              help="image folder (labels.csv / wnid folders / flat + --labels / any); default: sample photos")
@click.option("--labels", default=None, type=click.Path(),
              help="ground-truth file for a flat --data folder: FILE,LABEL rows, Kaggle's "
                   "LOC_val_solution.csv, or the devkit's ILSVRC2012_validation_ground_truth.txt (with --devkit)")
@click.option("--devkit", default=None, type=click.Path(),
              help="ImageNet devkit folder or ILSVRC2012_devkit_t12.tar.gz (maps the devkit's 1-based "
                   "ILSVRC2012_IDs to class indices through its meta.mat)")
@click.option("--subset", default=None,
              help="evaluate exactly the images of a list found under --data, with the list's labels: "
                   "lcam-2000 (the L-CAM paper's 2,000 val images) or a file of 'FILE LABEL' lines")
@click.option("--allow-missing", is_flag=True,
              help="run a --subset whose images are not all under --data (refused otherwise)")
@click.option("--metrics", default=None,
              help="'all' (lcam,rise,adcc and plugins) and/or comma-separated protocol names "
                   "(camzoo list): e.g. road, or all,road for all plus road [default: all; the "
                   "preset's]")
@click.option("--limit", default=None, type=int, help="deterministic subset of N images")
@click.option("--seed", default=0, show_default=True, type=int, help="seed of the --limit subset")
@click.option("--steps", default=None, type=int, help="insertion/deletion steps (protocol default 224)")
@click.option("--batch-size", default=None, type=int,
              help="images per engine batch [default: 16 on CPU; on CUDA the largest that fits]")
@click.option("--eval-batch-size", default=None, type=int,
              help="perturbed images per metric forward [default: 64 on CPU; on CUDA the largest that fits]")
@click.option("--device", default=None,
              help="cpu, cuda, cuda:1 ... (default: CUDA when available; torchrun: cuda:LOCAL_RANK)")
@click.option("--amp", default=None, type=click.Choice(["bf16", "fp16"]),
              help="every forward under autocast in this precision (default: fp32)")
@click.option("--compile", "compile", is_flag=True,
              help="torch.compile the classifier's forward (clean and metric forwards)")
@click.option("--shard", default=None, metavar="I/N",
              help="evaluate shard I (0-based) of N only, into its own store; then camzoo merge RUN "
                   "(job arrays; under torchrun the shard is the process's rank)")
@click.option("--workers", default=None, type=int,
              help="image-decoding worker processes [default: 0 on CPU, up to 8 on CUDA]")
@click.option("--out", default=None, type=click.Path(), help="run directory (default results/<backbone>-<time>)")
@click.option("--resume", is_flag=True, help="continue the run in --out (options not given are read from it)")
@click.option("--save-maps", is_flag=True, help="write maps/<method>/<image_id>.npy")
@click.option("--target", default="pred", show_default=True, type=click.Choice(["pred", "gt"]),
              help="explain/evaluate the model's top-1 or the ground-truth class")
@click.option("--opt", "opts", multiple=True, help="METHOD.OPTION=VALUE, repeatable (e.g. rise.n_masks=8000)")
@click.option("--metric-opt", "metric_opts", multiple=True,
              help="PROTOCOL.OPTION=VALUE, repeatable (e.g. lcam.nus=1,0.5,0.15)")
@click.option("--preset", default=None, type=click.Choice(["quick", "full", "lcam-table1"]),
              help="quick = the fast demo settings (default without --data); full = protocol defaults "
                   "(default with --data); lcam-table1 = the L-CAM paper's Table 1 protocol (its "
                   "2,000 val images, AD/IC, its methods and RISE masks; needs --data)")
@click.option("--max-failed-batches", type=int, default=3, show_default=True,
              help="stop a method whose first N batches all fail (its other images are skipped)")
@click.option("--no-progress", is_flag=True, help="no progress bars")
@click.pass_context
def bench_cmd(ctx, opts, metric_opts, no_progress, **_) -> None:
    """Run every method x every metric protocol over a dataset; write tables and figures.

    Exit status: 0 when every (method, image) pair was evaluated, 3 when the run finished but
    some failed (an explainer raised, or made an invalid map: see `camzoo errors RUN`), 1 for
    an error that stopped it (bad options, a full disk, ...), 2 for bad usage."""
    from ..engine.config import BenchConfig
    from ..engine.runner import run

    fields = {k: v for k, v in given(ctx).items() if k not in ("opts", "metric_opts", "no_progress")}
    fields["progress"] = not no_progress
    with user_errors():
        r = run(BenchConfig.from_cli(fields, opts, metric_opts), echo=click.echo)
        n_failed = len(r.failures())
    _exit_status(ctx, r, n_failed)


def _exit_status(ctx, r, n_failed: int) -> None:
    if n_failed:
        click.echo(f"finished with errors: {n_failed} (method, image) pair(s) not evaluated; see "
                   f"`camzoo errors {r.dir}`, fix the cause and rerun with --resume", err=True)
        ctx.exit(EXIT_FAILURES)


@click.command("merge")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--no-figures", is_flag=True, help="tables only")
@click.pass_context
def merge_cmd(ctx, run_dir, no_figures) -> None:
    """Merge the shards of a sharded bench run (--shard I/N, or torchrun) into rows.sqlite
    and write its tables and figures. Refuses, naming them, while shards are missing or
    incomplete. Exit status 3 when some (method, image) pairs failed, as camzoo bench."""
    from ..engine.runner import merge

    with user_errors():
        r = merge(run_dir, echo=click.echo, figures=not no_figures)
        n_failed = len(r.failures())
    _exit_status(ctx, r, n_failed)


@click.command("table")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--format", "fmt", default="markdown", show_default=True,
              type=click.Choice(["csv", "latex", "markdown"]))
@click.option("--per-image", is_flag=True, help="export the stored per-image rows (CSV) instead")
@click.option("--output", "-o", default=None, type=click.Path(), help="write to a file instead of stdout")
@ci_options
def table_cmd(run_dir, fmt, per_image, output, no_ci, resamples, ci_seed) -> None:
    """Print the table of a bench run (RUN_DIR = its results/<run> directory): means with
    their 95 % bootstrap intervals, best bold, second underlined, ≈ = not significantly
    different from the best."""
    from ..results import Run
    from ..results.tables import per_image_csv, summary

    if per_image and fmt != "csv" and "fmt" in given(click.get_current_context()):
        raise click.UsageError("--per-image exports the stored rows as CSV only; drop --format")
    with user_errors():
        r = Run(run_dir)
        text = per_image_csv(r) if per_image else \
            summary(r, **ci_kwargs(no_ci, resamples, ci_seed)).to(fmt)
    emit(text, output)


@click.command("compare")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--format", "fmt", default="markdown", show_default=True,
              type=click.Choice(["csv", "latex", "markdown"]))
@click.option("--output", "-o", default=None, type=click.Path(), help="write to a file instead of stdout")
@click.option("--reference", default=None, type=click.Choice(["lcam-table1"]),
              help="instead: each run beside a published table (lcam-table1: the L-CAM paper's Table 1): "
                   "camzoo's mean and interval, the published value, the difference, inside or not")
@click.option("--reference-backbone", default=None,
              help="with --reference: the paper's backbone (vgg16, resnet50) for a run loaded under another name")
@ci_options
def compare_cmd(run_dirs, fmt, output, reference, reference_backbone, no_ci, resamples, ci_seed) -> None:
    """Stack bench runs (e.g. one per backbone) into one table, a block per run (intervals,
    marks and tests within each block); with --reference, compare each run with a published
    table instead."""
    from ..results import Run
    from ..results.tables import compare

    if reference_backbone and not reference:
        raise click.UsageError("--reference-backbone needs --reference")
    with user_errors():
        runs = [Run(d) for d in run_dirs]
        if reference:
            from ..results.reference import compare_to_reference

            text = "\n".join(compare_to_reference(r, reference, backbone=reference_backbone,
                                                   **ci_kwargs(no_ci, resamples, ci_seed)).to(fmt)
                             for r in runs)
        else:
            text = compare(runs, **ci_kwargs(no_ci, resamples, ci_seed)).to(fmt)
    emit(text, output)


@click.command("errors")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--traceback", "show_tb", is_flag=True, help="also print each failure's traceback")
def errors_cmd(run_dir, show_tb) -> None:
    """List what a bench run could not evaluate: unreadable images, and (method, image) pairs
    whose explainer or metric raised, whose map was invalid, or that were skipped."""
    from ..results import Run

    with user_errors():
        r = Run(run_dir)
        unreadable, fails = r.errors(), r.failures()
    if not len(unreadable) and not len(fails):
        click.echo(f"{run_dir}: no errors")
        return
    for e in unreadable.itertuples():
        click.echo(f"unreadable  {e.image_id}: {e.reason}")
    for f in fails.itertuples():
        click.echo(f"{f.kind:<10s}  {f.method} {f.image_id}: {f.error}: {f.message}")
        if show_tb and f.traceback:
            click.echo("    " + str(f.traceback).rstrip().replace("\n", "\n    "))
    by = fails.groupby(["method", "kind"]).size() if len(fails) else {}
    click.echo(f"{len(unreadable)} unreadable image(s); " + ", ".join(
        f"{m}: {int(n)} {k}" for (m, k), n in by.items()) if len(fails) else
        f"{len(unreadable)} unreadable image(s)")
