"""``camzoo bench``, ``camzoo merge``, ``camzoo table``, ``camzoo compare`` and ``camzoo
errors``: thin layers over :func:`camzoo.bench.run`, :func:`camzoo.bench.merge` and
:mod:`camzoo.results`."""
from __future__ import annotations

import click

from .options import ci_kwargs, ci_options, emit, given, user_errors

#: ``camzoo bench`` exit status when the run finished but some (method, image) pairs failed
EXIT_FAILURES = 3


def config_options(command):
    """Add one click option per :class:`~camzoo.engine.config.BenchConfig` field, from its
    declaration (:func:`camzoo.engine.config.option`): flag, type, default, choices and help;
    then one per protocol shorthand (``--steps``), declared by its protocol
    (:func:`camzoo.metrics.protocol.shorthand_flags`)."""
    import dataclasses

    from ..engine.config import BenchConfig, cli_flag
    from ..metrics.protocol import shorthand_flags

    for opt, (_, kind, help_) in shorthand_flags().items():
        command = click.option(f"--{opt}", opt, type=kind, default=None, help=help_)(command)

    for f in reversed(dataclasses.fields(BenchConfig)):
        m = f.metadata
        default = f.default if f.default is not dataclasses.MISSING else None
        kw = {"help": m["help"], "metavar": m["metavar"]}
        decls = [cli_flag(f), f.name]
        if m["kind"] is bool:
            if default is True:
                decls[0] = f"--{f.name.replace('_', '-')}/--no-{f.name.replace('_', '-')}"
                kw.update(default=True, show_default=True)
            else:
                kw.update(is_flag=True, default=False)
        elif m["kind"] == "dotted":
            kw.update(multiple=True)
        else:
            kw["type"] = (click.Choice(list(m["choices"])) if m["choices"] else int if m["kind"] is int
                          else click.Path() if m["kind"] == "path" else str)
            kw.update(default=default, show_default=default is not None)
        command = click.option(*decls, **kw)(command)
    return command


@click.command("bench")
@config_options
@click.pass_context
def bench_cmd(ctx, **_) -> None:
    """Run every method x every metric protocol over a dataset; write tables and figures.

    Exit status: 0 when every (method, image) pair was evaluated, 3 when the run finished but
    some failed (an explainer raised, or made an invalid map: see `camzoo errors RUN`), 1 for
    an error that stopped it (bad options, a full disk, ...), 2 for bad usage."""
    from ..engine.config import BenchConfig
    from ..engine.runner import run

    with user_errors():
        r = run(BenchConfig.from_cli(given(ctx)), echo=click.echo)
        if r is None:  # --dry-run: the plan was printed, nothing written
            return
        n_failed = len(r.failures()[["method", "image_id"]].drop_duplicates())
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
        n_failed = len(r.failures()[["method", "image_id"]].drop_duplicates())
    _exit_status(ctx, r, n_failed)


@click.command("table")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--format", "fmt", default="markdown", show_default=True,
              type=click.Choice(["csv", "latex", "markdown"]), help="table format")
@click.option("--per-image", is_flag=True, help="export the stored per-image rows (CSV) instead")
@click.option("--output", "-o", default=None, type=click.Path(), help="write to a file instead of stdout")
@ci_options
def table_cmd(run_dir, fmt, per_image, output, no_ci, resamples, ci_seed) -> None:
    """Print the table of a bench run (RUN_DIR = its results/<run> directory): means with
    their 95 % bootstrap intervals, best bold, second underlined, ≈ = not significantly
    different from the best."""
    from ..results.run import Run
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
              type=click.Choice(["csv", "latex", "markdown"]), help="table format")
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
    from ..results.run import Run
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
    from ..results.run import Run

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
