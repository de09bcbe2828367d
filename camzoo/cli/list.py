"""``camzoo list``: explainers, backbones and their layers, metric protocols."""
from __future__ import annotations

import click


@click.command("list")
def list_cmd() -> None:
    """List explainers, backbones and their explanation layers, and metric protocols."""
    from ..explainers.base import EXPLAINERS
    from ..metrics.protocol import PROTOCOLS, all_protocols
    from ..models.zoo import BACKBONE_LAYERS
    from ..models.zoo import default_weights

    click.echo("explainers:")
    for name in EXPLAINERS.names():
        cls = EXPLAINERS.get(name)
        extra = " (needs checkpoint=PATH)" if getattr(cls, "needs_checkpoint", False) else ""
        click.echo(f"  {name:20s} {getattr(cls, 'summary', '')}{extra}")
    for fam in EXPLAINERS.families().values():  # parametrized names, once per family
        click.echo(f"  {fam.pattern:20s} {fam.summary}; e.g. {fam.example}")
    for name, err in EXPLAINERS.plugin_errors.items():
        click.echo(f"  {name:20s} [plugin failed to load: {err}]")
    click.echo("backbones (layers, default marked *; weights without --weights):")
    for name, (layers, default) in BACKBONE_LAYERS.items():
        ls = ", ".join(f"{l}*" if l == default else l for l in layers)
        click.echo(f"  {name:20s} {ls}; weights: {default_weights(name)}")
    click.echo("  timm:<model>       any timm CNN: its feature stages, default the last; timm's pretrained")
    click.echo("                     weights (hub cache; timm:hf-hub:org/name too), --weights FILE")
    click.echo("  timm:<vit|deit|..> ViT-style: blocks.<i>, blocks.<last>.norm1* (pytorch-grad-cam's advice);")
    click.echo("                     tokens -> [B,D,h,w] on the model's patch grid, class tokens dropped")
    click.echo("  timm:<swin...>     Swin: layers.<i>, layers.<last>.blocks.<last>.norm1*, norm;")
    click.echo("                     [B,H,W,C] -> [B,C,H,W]")
    click.echo("  py:module:function your own: a function returning a camzoo Backbone")
    click.echo("  (--weights random: random weights for smoke tests, marked in every output)")
    click.echo("metric protocols (--metrics; 'all' = " + ",".join(all_protocols()) + "):")
    for name in PROTOCOLS.names():
        click.echo(f"  {name:20s} {PROTOCOLS.get(name).summary}")
    for name, err in PROTOCOLS.plugin_errors.items():
        click.echo(f"  {name:20s} [plugin failed to load: {err}]")
