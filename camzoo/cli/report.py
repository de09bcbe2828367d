"""``camzoo report``: a thin layer over :func:`camzoo.engine.report.write_report`."""
from __future__ import annotations

import click

from .options import user_errors


@click.command("report")
@click.argument("runs", nargs=-1, required=True, type=click.Path(), metavar="RUN [RUN ...]")
@click.option("--out", default=None, type=click.Path(dir_okay=False),
              help="the HTML file [default: RUN/report.html; several runs: beside the first, "
                   "report-<run1>-vs-<run2>.html]")
@click.option("--images", "n_images", default=3, show_default=True, type=click.IntRange(min=0),
              help="best and worst images shown per method and table column")
@click.option("--sanity", default=None, type=click.Path(),
              help="a camzoo sanity output folder to include (its summary and figures)")
@click.option("--no-recompute", is_flag=True,
              help="show only the maps the run stored (grid/, --save-maps' maps/); no model is run")
@click.option("--device", default=None, help="device of the maps recomputed (default: auto)")
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(min=1),
              help="images per batch of the maps recomputed")
def report_cmd(runs, out, n_images, sanity, no_recompute, device, batch_size) -> None:
    """One self-contained HTML page of bench runs: the table (camzoo table; several runs:
    camzoo compare), the curves and metric statistics, each method's best and worst images with
    every method's maps, failures and provenance (docs/report.md)."""
    from ..engine.report import write_report

    with user_errors():
        write_report(list(runs), out, n_images=n_images, sanity=sanity, recompute=not no_recompute,
                     device=device, batch_size=batch_size, echo=click.echo)
