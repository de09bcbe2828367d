"""``camzoo bench``, ``camzoo table`` and ``camzoo compare``: thin layers over camzoo.bench/tables."""
from __future__ import annotations

import json
import os
from typing import Any, Dict, Tuple

import click
from click.core import ParameterSource

from .cli import main, parse_opts

#: what a bare ``camzoo bench`` (no --data: the six sample photos) runs, so that it finishes
#: in about 3 minutes on a 2-core CPU (a Lite0 forward costs ~30 ms per image there); every
#: value here is overridden by an explicit option
QUICK_PRESET: Dict[str, Any] = {
    "steps": 16,                                  # insertion/deletion: 17 points instead of 225
    "skip_methods": ["scorecam"],                 # 2 x 1281 forwards per image on Lite0 (map + coherency)
    "options": {"rise": {"n_masks": 64}},         # instead of 4000 (map + Coherency map)
}
FULL_HINT = ("full protocol: camzoo bench --data DIR [--labels FILE] --limit 2000 (or --preset full "
             "on the sample photos): 224 insertion/deletion steps, every method incl. scorecam at its "
             "defaults (e.g. --opt rise.n_masks=8000 for ResNet-50 as in the L-CAM paper)")


def _parse_metric_opts(opts: Tuple[str, ...]) -> Dict[str, Dict[str, Any]]:
    """``lcam.nus=1,0.5`` -> ``{"lcam": {"nus": [1.0, 0.5]}}`` (commas make lists)."""
    from .config import parse_value

    out: Dict[str, Dict[str, Any]] = {}
    for o in opts:
        if "=" not in o or "." not in o.split("=", 1)[0]:
            raise click.BadParameter(f"{o!r}: expected PROTOCOL.OPTION=VALUE", param_hint="--metric-opt")
        key, val = o.split("=", 1)
        proto, opt = key.split(".", 1)
        out.setdefault(proto, {})[opt] = ([parse_value(v) for v in val.split(",")] if "," in val
                                          else parse_value(val))
    return out


def _given(ctx: click.Context, name: str) -> bool:
    return ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)


@main.command("bench")
@click.option("--backbone", default="efficientnet_lite0", show_default=True,
              help="backbone name (camzoo list), timm:<model>, or py:module:function")
@click.option("--weights", default=None, help="state_dict file, or 'random' (smoke tests)")
@click.option("--layer", default=None, help="explanation layer for every method (default: the backbone's)")
@click.option("--methods", default="all", show_default=True,
              help="'all' (every explainer needing no checkpoint) or comma-separated names")
@click.option("--data", default=None, type=click.Path(),
              help="image folder (labels.csv / wnid folders / flat + --labels / any); default: sample photos")
@click.option("--labels", default=None, type=click.Path(), help="ground-truth file for a flat --data folder")
@click.option("--metrics", default="all", show_default=True, help="'all' or comma-separated: lcam,adcc,rise")
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
def bench_cmd(ctx, backbone, weights, layer, methods, data, labels, metrics, limit, seed, steps,
              batch_size, eval_batch_size, device, out, resume, save_maps, target, opts, metric_opts,
              preset, no_progress) -> None:
    """Run every method x every metric protocol over a dataset; write tables and figures."""
    from .bench import CONFIG_NAME, BenchConfig, run

    fields = dict(backbone=backbone, weights=weights, layer=layer, methods=methods, data=data,
                  labels=labels, metrics=metrics, limit=limit, seed=seed, steps=steps,
                  batch_size=batch_size, eval_batch_size=eval_batch_size, device=device,
                  save_maps=save_maps, target=target)
    options = parse_opts(opts)
    metric_options = _parse_metric_opts(metric_opts)
    cfg_path = os.path.join(out, CONFIG_NAME) if out else None
    if resume:
        if not cfg_path or not os.path.isfile(cfg_path):
            raise click.ClickException("--resume needs --out pointing at an existing run directory")
        with open(cfg_path) as f:
            stored = json.load(f)["bench_config"]
        for name in fields:  # options not given on the command line come from the stored run
            param = name
            if not _given(ctx, param) and name in stored:
                fields[name] = stored[name]
        for given, key in ((options, "options"), (metric_options, "metric_options")):
            for name, o in stored.get(key, {}).items():  # given options override stored ones
                given[name] = {**o, **given.get(name, {})}
        preset = "full"  # the stored config already holds the preset's values
    else:
        if preset is None:
            preset = "quick" if data is None else "full"
        if preset == "quick":
            picked = []
            if not _given(ctx, "steps"):
                fields["steps"] = QUICK_PRESET["steps"]
                picked.append(f"--steps {fields['steps']}")
            from .bench import resolve_methods

            try:
                names = resolve_methods(fields["methods"], options)
            except (KeyError, ValueError) as exc:
                raise click.ClickException(str(exc)) from None
            if not _given(ctx, "methods"):
                skipped = [m for m in names if m in QUICK_PRESET["skip_methods"] and m not in options]
                names = [m for m in names if m not in skipped]
                fields["methods"] = ",".join(names)
                if skipped:
                    picked.append(f"--methods {fields['methods']} (skipped: {', '.join(skipped)})")
            for m, o in QUICK_PRESET["options"].items():
                if m in names:
                    for k, v in o.items():
                        if k not in options.get(m, {}):
                            options.setdefault(m, {})[k] = v
                            picked.append(f"--opt {m}.{k}={v}")
            click.echo("quick preset (camzoo bench without --data): " + " ".join(picked), err=True)
            click.echo(FULL_HINT, err=True)
    config = BenchConfig(**fields, options=options, metric_options=metric_options, out=out,
                         resume=resume, progress=not no_progress)
    try:
        run(config, echo=click.echo)
    except (ValueError, KeyError, FileNotFoundError, FileExistsError, NotImplementedError) as exc:
        raise click.ClickException(str(exc)) from None


@main.command("table")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--format", "fmt", default="markdown", show_default=True,
              type=click.Choice(["csv", "latex", "markdown"]))
@click.option("--per-image", is_flag=True, help="export the stored per-image rows (CSV) instead")
@click.option("--output", "-o", default=None, type=click.Path(), help="write to a file instead of stdout")
def table_cmd(run_dir, fmt, per_image, output) -> None:
    """Print the table of a bench run (RUN_DIR = its results/<run> directory)."""
    from .bench import Run
    from .tables import per_image_csv, summary

    try:
        r = Run(run_dir)
    except (FileNotFoundError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    text = per_image_csv(r) if per_image else summary(r).to(fmt)
    _emit(text, output)


@main.command("compare")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--format", "fmt", default="markdown", show_default=True,
              type=click.Choice(["csv", "latex", "markdown"]))
@click.option("--output", "-o", default=None, type=click.Path(), help="write to a file instead of stdout")
def compare_cmd(run_dirs, fmt, output) -> None:
    """Stack bench runs (e.g. one per backbone) into one table, a block per run."""
    from .bench import Run
    from .tables import compare

    try:
        runs = [Run(d) for d in run_dirs]
    except (FileNotFoundError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    _emit(compare(runs).to(fmt), output)


def _emit(text: str, output) -> None:
    if output:
        with open(output, "w") as f:
            f.write(text)
    else:
        click.echo(text, nl=False)
