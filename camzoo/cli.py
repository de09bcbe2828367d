"""The ``camzoo`` command line: a thin layer over the Python API."""
from __future__ import annotations

import os
import sys
from typing import List, Optional, Tuple

import click


def _split(s: str) -> List[str]:
    return [p.strip() for p in s.split(",") if p.strip()]


def parse_opts(opts: Tuple[str, ...]) -> dict:
    """``("rise.n_masks=8000", "scorecam.variant=grad-cam")`` -> ``{"rise": {"n_masks": 8000}, ...}``."""
    from .config import parse_value

    out: dict = {}
    for o in opts:
        if "=" not in o or "." not in o.split("=", 1)[0]:
            raise click.BadParameter(f"{o!r}: expected METHOD.OPTION=VALUE", param_hint="--opt")
        key, val = o.split("=", 1)
        method, opt = key.split(".", 1)
        out.setdefault(method, {})[opt] = parse_value(val)
    return out


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="camzoo")
def main() -> None:
    """camzoo: benchmark CAM-style explainers of CNN image classifiers."""


@main.command("list")
def list_cmd() -> None:
    """List explainers, backbones and their explanation layers."""
    from .backbones import BACKBONE_LAYERS
    from .explainers import EXPLAINERS

    click.echo("explainers:")
    for name in EXPLAINERS.names():
        cls = EXPLAINERS.get(name)
        extra = " (needs checkpoint=PATH)" if getattr(cls, "needs_checkpoint", False) else ""
        click.echo(f"  {name:18s} {getattr(cls, 'summary', '')}{extra}")
    for name, err in EXPLAINERS.plugin_errors.items():
        click.echo(f"  {name:18s} [plugin failed to load: {err}]")
    click.echo("backbones (layers, default marked *):")
    for name, (layers, default) in BACKBONE_LAYERS.items():
        ls = ", ".join(f"{l}*" if l == default else l for l in layers)
        click.echo(f"  {name:18s} {ls}")
    click.echo("  timm:<model>       any timm model: its feature stages, default the last")


@main.command("explain")
@click.argument("images", nargs=-1, type=click.Path())
@click.option("--backbone", default="efficientnet_lite0", show_default=True)
@click.option("--weights", default=None, help="state_dict file (or 'random' for smoke tests)")
@click.option("--methods", default="gradcam,gradcam++,scorecam", show_default=True,
              help="comma-separated explainer names")
@click.option("--out", "out_dir", default="out/explain", show_default=True, type=click.Path())
@click.option("--target", default="pred", show_default=True,
              help="pred (top-1), gt (from a labels.csv next to the images) or a class index")
@click.option("--layer", default=None, help="explanation layer (default: the backbone's)")
@click.option("--device", default=None, help="cpu, cuda, cuda:1 ... (default: auto)")
@click.option("--opt", "opts", multiple=True, help="METHOD.OPTION=VALUE, repeatable")
def explain_cmd(images, backbone, weights, methods, out_dir, target, layer, device, opts) -> None:
    """Explain IMAGES (default: scikit-image's sample photos) and write grids + raw maps."""
    from .explain_files import explain_files

    try:
        n_ok, errors = explain_files(
            list(images), backbone=backbone, weights=weights, methods=_split(methods),
            out_dir=out_dir, target=target, layer=layer, device=device,
            options=parse_opts(opts), echo=click.echo,
        )
    except (ValueError, KeyError, FileNotFoundError, NotImplementedError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"wrote {n_ok} image(s) to {out_dir}" + (f"; {len(errors)} failed" if errors else ""))
    if errors and n_ok == 0:
        sys.exit(1)


@main.group("train")
def train() -> None:
    """Train learned explainers (L-CAM heads, LFI-CAM)."""


# Sub-commands living in their own modules register themselves on import (one line each).
from . import cli_bench  # noqa: E402,F401
from . import cli_lcam  # noqa: E402,F401
from . import cli_lficam  # noqa: E402,F401

if __name__ == "__main__":  # pragma: no cover
    main()
