"""``camzoo analyze``: a thin layer over :func:`camzoo.engine.analyze.analyze`."""
from __future__ import annotations

import click

from .options import names, user_errors


@click.command("analyze")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--methods", default=None, help="comma-separated methods of the run [default: all]")
@click.option("--top", default=0.15, show_default=True, type=click.FloatRange(0, 1, min_open=True),
              help="fraction of pixels of the top regions compared by IoU")
@click.option("--related-iou", default=0.5, show_default=True, type=click.FloatRange(0, 1, min_open=True),
              help="IoU at or above which a misclassification is 'related classes' (else 'multi-object')")
@click.option("--max-figures", default=24, show_default=True, type=int,
              help="misclassified images that get a figure")
@click.option("--out", default=None, type=click.Path(file_okay=False), help="[default: RUN_DIR/analysis]")
@click.option("--batch-size", default=16, show_default=True, type=int, help="images per batch")
@click.option("--device", default=None, help="cpu, cuda, ... (default: auto)")
def analyze_cmd(run_dir, methods, top, related_iou, max_figures, out, batch_size, device) -> None:
    """Misclassification and class-bias analysis of a bench run made with ground-truth labels
    (L-CAM paper, Sec. 4.4): ground-truth vs predicted-class maps of every misclassified
    image, their similarity and category, a per-class table, figures and a Markdown report."""
    from ..engine.analyze import analyze

    with user_errors():
        res = analyze(run_dir, methods=names(methods) or None, top=top, related_iou=related_iou,
                      max_figures=max_figures, out=out, batch_size=batch_size, device=device,
                      echo=click.echo)
    n = res.misclassified.image_id.nunique() if len(res.misclassified) else 0
    click.echo(f"{res.n_images} images, accuracy {res.accuracy:.3f}, {n} misclassified")
    if n:
        cnt = res.misclassified.drop_duplicates("image_id").image_category.value_counts()
        click.echo("categories: " + ", ".join(f"{k}: {v}" for k, v in cnt.items()))
    click.echo(f"report: {res.files['report']}")
