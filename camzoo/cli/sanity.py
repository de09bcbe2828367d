"""``camzoo sanity``: a thin layer over :func:`camzoo.engine.randomization.run`."""
from __future__ import annotations

import click

from ..engine.config import WEIGHTS_HELP
from .options import method_options, user_errors


@click.command("sanity")
@click.option("--backbone", default="efficientnet_lite0", show_default=True,
              help="backbone name (camzoo list), timm:<model>, or py:module:function")
@click.option("--weights", default=None, help=WEIGHTS_HELP)
@click.option("--methods", default="gradcam,fakecam", show_default=True, help="comma-separated explainers")
@click.option("--data", default=None, type=click.Path(exists=True, file_okay=False),
              help="image folder (default: the sample photos)")
@click.option("--labels", default=None, type=click.Path(exists=True, dir_okay=False),
              help="ground-truth file for a flat --data folder")
@click.option("--limit", default=None, type=int, help="deterministic subset of N images")
@click.option("--seed", default=0, show_default=True, type=int, help="seed of the --limit subset")
@click.option("--layer", default=None, help="explanation layer for every method")
@click.option("--opt", "opts", multiple=True, help="METHOD.OPTION=VALUE, repeatable")
@click.option("--mode", default="cascading", show_default=True, type=click.Choice(["cascading", "independent"]),
              help="cascading: from the logits down, the blocks above stay random; independent: "
                   "one block at a time")
@click.option("--max-blocks", default=None, type=click.IntRange(min=1),
              help="randomize only the top N blocks")
@click.option("--init-seed", default=0, show_default=True, type=int,
              help="seed of the re-initialization (block k: seed + k)")
@click.option("--out", default="results/sanity", show_default=True, type=click.Path(file_okay=False),
              help="folder for sanity.csv and the figures")
@click.option("--grid-images", default=2, show_default=True, type=int, help="images in the cascade grid")
@click.option("--batch-size", default=16, show_default=True, type=int, help="images per batch")
@click.option("--device", default=None, help="cpu, cuda, ... (default: auto)")
@click.option("--no-progress", is_flag=True, help="no progress bar")
def sanity_cmd(backbone, weights, methods, data, labels, limit, seed, layer, opts, mode, max_blocks,
               init_seed, out, grid_images, batch_size, device, no_progress) -> None:
    """Model-randomization sanity check (Adebayo and co-authors, NeurIPS 2018): re-initialize
    a copy of the model block by block from the logits down and compare each method's maps
    with those of the trained model (Spearman, SSIM, HOG); a method that ignores the model
    stays at similarity 1."""
    from ..engine.randomization import format_summary, run

    with user_errors():
        res = run(backbone, methods, data, weights=weights, labels=labels, limit=limit, seed=seed,
                  options=method_options(opts), layer=layer, mode=mode, max_blocks=max_blocks,
                  init_seed=init_seed, out=out, batch_size=batch_size, device=device,
                  grid_images=grid_images, progress=not no_progress, echo=click.echo)
    for s in ("spearman", "ssim"):
        click.echo(format_summary(res, s))
    for k, p in res.files.items():
        click.echo(f"{k}: {p}")
