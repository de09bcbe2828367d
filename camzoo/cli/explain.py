"""``camzoo explain``: a thin layer over :func:`camzoo.engine.explain.explain_files`."""
from __future__ import annotations

import sys

import click

from ..engine.config import WEIGHTS_HELP
from .options import method_options, names, user_errors


@click.command("explain")
@click.argument("images", nargs=-1, type=click.Path())
@click.option("--backbone", default="efficientnet_lite0", show_default=True,
              help="backbone name (camzoo list), timm:<model>, or py:module:function")
@click.option("--weights", default=None, help=WEIGHTS_HELP)
@click.option("--methods", default="gradcam,gradcam++,scorecam", show_default=True,
              help="comma-separated explainer names")
@click.option("--out", "out_dir", default="out/explain", show_default=True, type=click.Path(),
              help="folder for one PNG per image and the maps as <image>/<method>.npy")
@click.option("--target", default="pred", show_default=True,
              help="pred (top-1), gt (from a labels.csv next to the images) or a class index")
@click.option("--layer", default=None, help="explanation layer (default: the backbone's)")
@click.option("--device", default=None, help="cpu, cuda, cuda:1 ... (default: auto)")
@click.option("--opt", "opts", multiple=True, help="METHOD.OPTION=VALUE, repeatable")
def explain_cmd(images, backbone, weights, methods, out_dir, target, layer, device, opts) -> None:
    """Explain IMAGES (default: scikit-image's sample photos) and write grids + raw maps."""
    from ..engine.explain import explain_files

    with user_errors():
        n_ok, errors = explain_files(
            list(images), backbone=backbone, weights=weights, methods=names(methods),
            out_dir=out_dir, target=target, layer=layer, device=device,
            options=method_options(opts), echo=click.echo,
        )
    click.echo(f"wrote {n_ok} image(s) to {out_dir}" + (f"; {len(errors)} failed" if errors else ""))
    if errors and n_ok == 0:
        sys.exit(1)
