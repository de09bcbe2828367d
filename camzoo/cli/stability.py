"""``camzoo stability``: a thin layer over :mod:`camzoo.engine.cross_model`."""
from __future__ import annotations

import json

import click

from ..utils import split_names
from ..engine.config import WEIGHTS_HELP
from .options import method_options, user_errors


@click.command("stability")
@click.argument("checkpoints", nargs=-1, type=click.Path(exists=True, dir_okay=False))
@click.option("--data", "data", default=None, type=click.Path(exists=True, file_okay=False),
              help="image folder (default: the sample photos)")
@click.option("--labels", "labels_file", default=None, type=click.Path(exists=True, dir_okay=False),
              help="ground-truth file for a flat --data folder (see docs/bench.md)")
@click.option("--limit", type=int, default=None, help="a deterministic subset of N images")
@click.option("--seed", type=int, default=0, show_default=True, help="seed of --limit")
@click.option("--methods", default=None,
              help="compare these explainers' maps on one model instead of checkpoints "
                   "(the first is the baseline unless --baseline)")
@click.option("--backbone", default="efficientnet_lite0", show_default=True,
              help="the model for --methods")
@click.option("--weights", default=None, help=WEIGHTS_HELP + " (frozen checkpoints and --methods)")
@click.option("--opt", "opts", multiple=True, help="METHOD.OPTION=VALUE for --methods, repeatable")
@click.option("--threshold", type=float, default=None,
              help="high attention = map >= threshold (default 127/255, the paper's >= 127)")
@click.option("--baseline", default=None, help="force the baseline (checkpoint file name or method)")
@click.option("--measure-accuracy", is_flag=True,
              help="measure each model's top-1 on --data (needs labels) instead of reading it "
                   "from the checkpoints")
@click.option("--batch-size", type=int, default=16, show_default=True, help="images per batch")
@click.option("--device", default=None, help="cpu, cuda, ... (default: auto)")
@click.option("--json", "json_out", default=None, type=click.Path(dir_okay=False),
              help="also write the result as JSON")
def stability_cmd(checkpoints, data, labels_file, limit, seed, methods, backbone, weights, opts,
                  threshold, baseline, measure_accuracy, batch_size, device, json_out) -> None:
    """Stability of explanations (LFI-CAM paper): mean IoU of binarized maps vs the most
    accurate model, for CHECKPOINTS of learned explainers (LFI-CAM, L-CAM; the explainer is read
    from each checkpoint) or for --methods on one model."""
    from ..engine.cross_model import (format_result, run_stability, sources_from_checkpoints,
                                    sources_from_methods)
    from ..metrics.stability import DEFAULT_THRESHOLD

    with user_errors():
        if checkpoints and methods:
            raise ValueError("give checkpoints or --methods, not both")
        if methods:
            from ..models.zoo import load_backbone

            bb = load_backbone(backbone, weights=weights, device=device)
            names = split_names(methods)
            sources = sources_from_methods(names, bb, method_options(opts))
            baseline = baseline or names[0]
        else:
            sources = sources_from_checkpoints(list(checkpoints), weights=weights, device=device)
        res = run_stability(sources, data, labels=labels_file, limit=limit, seed=seed,
                            batch_size=batch_size,
                            threshold=DEFAULT_THRESHOLD if threshold is None else threshold,
                            baseline=baseline, measure_accuracy=measure_accuracy, echo=click.echo)
    click.echo(format_result(res, sources))
    if json_out:
        with open(json_out, "w") as f:
            json.dump({"baseline": res.baseline, "per_model": res.per_model, "overall": res.overall,
                       "accuracy": res.accuracy, "n_images": res.n_images,
                       "threshold": res.threshold,
                       "classifiers": {s.name: s.classifier.name for s in sources}}, f, indent=2)
