"""``camzoo train lcam`` and ``camzoo train lficam``: thin layers over :mod:`camzoo.train`.

Multi-process: ``torchrun --nproc_per_node N -m camzoo train lcam|lficam ...``
(DistributedDataParallel through the shared loop; NCCL on CUDA, gloo on CPU).
"""
from __future__ import annotations

import click

from ..engine.config import WEIGHTS_HELP
from .options import user_errors


@click.group("train")
def train() -> None:
    """Train learned explainers (L-CAM heads, LFI-CAM)."""


def _cache_arg(cache_dir, no_cache, views):
    """``--cache DIR`` / ``--no-cache`` -> the ``cache=`` argument of the training API
    (``--views`` checked up front)."""
    from ..train.cache import parse_views

    if no_cache and cache_dir:
        raise click.UsageError("--cache DIR and --no-cache contradict each other; give one")
    try:
        parse_views(views)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--views") from None
    return None if no_cache else (cache_dir or True)


def _process_and_cache_options(scope: str):
    """The options both training commands share: ``--workers``, ``--device``,
    ``--no-progress``, ``--cache``, ``--no-cache``, ``--views`` (``scope`` prefixes the cache
    options' help, e.g. ``"frozen mode: "``)."""
    options = [
        click.option("--workers", type=int, default=0, show_default=True, help="DataLoader workers"),
        click.option("--device", default=None, help="cpu, cuda, cuda:1 ... (default: auto)"),
        click.option("--no-progress", is_flag=True, help="no progress bar"),
        click.option("--cache", "cache_dir", default=None, type=click.Path(file_okay=False),
                     help=f"{scope}feature cache root (default: feature_cache/ beside --out)"),
        click.option("--no-cache", is_flag=True,
                     help=f"{scope}no feature cache: run the classifier every step, fresh random "
                          "crops per epoch"),
        click.option("--views", default="center+flip", show_default=True,
                     help=f"{scope}cached views per image: center, center+flip, or random:N (the "
                          "random crops of the first N epochs)"),
    ]

    def decorate(fn):
        for opt in reversed(options):
            fn = opt(fn)
        return fn
    return decorate


@train.command("lcam")
@click.option("--backbone", default="efficientnet_lite0", show_default=True,
              help="backbone name (camzoo list), timm:<model>, or py:module:function")
@click.option("--weights", default=None, help=WEIGHTS_HELP)
@click.option("--variant", type=click.Choice(["fm", "img"]), required=True,
              help="fm: mask the feature maps; img: mask the image (paper: Img is better)")
@click.option("--layer", default=None, help="explanation layer (default: the backbone's; "
              "vgg16 --layer pool5 is the paper's L-CAM-Img-dagger)")
@click.option("--ce-only", is_flag=True, help="ablation L-CAM-Fm* / L-CAM-Img*: cross-entropy only")
@click.option("--data", "data", required=True, type=click.Path(exists=True, file_okay=False),
              help="image folder (labels.csv, wnid folders or plain images)")
@click.option("--target", "labels", type=click.Choice(["pred", "gt"]), default="pred", show_default=True,
              help="train to explain the frozen model's top-1 class (paper) or the ground-truth class")
@click.option("--labels", "labels_file", default=None, type=click.Path(exists=True, dir_okay=False),
              help="ground-truth file for a flat folder (see docs/bench.md)")
@click.option("--epochs", type=int, default=None,
              help="default: 7 for vgg16, 25 otherwise (paper: ResNet-50)")
@click.option("--batch-size", type=int, default=64, show_default=True, help="global batch size")
@click.option("--lr", type=float, default=1e-4, show_default=True, help="SGD learning rate (paper: 1e-4)")
@click.option("--lr-decay", type=float, default=None,
              help="lr factor per epoch; default 0.75 for vgg16, 0.95 otherwise")
@click.option("--momentum", type=float, default=0.9, show_default=True, help="SGD momentum (Nesterov)")
@click.option("--weight-decay", type=float, default=5e-4, show_default=True, help="SGD weight decay")
@click.option("--val-fraction", type=float, default=0.2, show_default=True,
              help="images held out (by image) for per-epoch loss and AD/IC(100%)")
@click.option("--limit", type=int, default=None, help="use a deterministic subset of N images")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="checkpoint (.pt)")
@click.option("--resume", is_flag=True, help="continue from --out")
@click.option("--overwrite", is_flag=True, help="replace an existing --out")
@click.option("--seed", type=int, default=0, show_default=True,
              help="seed of the head's initialization, the split and the data order")
@_process_and_cache_options("")
@click.option("--amp", type=click.Choice(["auto", "bf16", "none"]), default="auto",
              show_default=True, help="autocast of the classifier's forwards (auto: bf16 on CUDA)")
@click.option("--regularizer", type=click.Choice(["paper", "authors"]), default="paper",
              show_default=True, help="TV/AV as the paper's equations (each image's own mask) or "
                                      "as the authors' code (the masks of all batch labels)")
@click.option("--init-from", default=None, type=click.Path(exists=True, dir_okay=False),
              help="start from this L-CAM head (same backbone/layer), e.g. Img from a trained Fm")
def lcam_cmd(backbone, weights, variant, layer, ce_only, data, labels, labels_file, epochs,
             batch_size, lr, lr_decay, momentum, weight_decay, val_fraction, limit, out, resume,
             overwrite, seed, workers, device, no_progress, cache_dir, no_cache, views,
             amp, regularizer, init_from) -> None:
    """Train an L-CAM head (paper recipe: SGD + Nesterov, lr 1e-4 decayed per epoch).

    By default the explanation layer's features of fixed views of every image are computed
    once and cached (--cache, --views); --no-cache trains on fresh random crops. Beside
    --out NAME.pt: NAME.best.pt (lowest held-out loss), NAME.train_log.csv, NAME.training.png.
    """
    from ..models.zoo import load_backbone
    from ..train.data import training_data
    from ..train.lcam import train_lcam
    from ..train.loop import distributed, rank_and_world

    labels = "model" if labels == "pred" else labels  # the training tasks' name of --target pred
    cache = _cache_arg(cache_dir, no_cache, views)
    with user_errors():
        with distributed(device) as dev:
            rank = rank_and_world()[0]
            echo = click.echo if rank == 0 else (lambda *a, **k: None)
            bb = load_backbone(backbone, weights=weights, device=dev)
            tr, va = training_data(data, bb, val_fraction=val_fraction, seed=seed, limit=limit,
                                   need_labels=labels == "gt", labels_file=labels_file)
            echo(f"L-CAM-{variant.capitalize()}{'*' if ce_only else ''} on {bb.name} "
                 f"layer {layer or bb.default_layer}: {len(tr)} training / {len(va)} held-out "
                 f"images, labels={labels}, device={dev}, processes={rank_and_world()[1]}")
            res = train_lcam(bb, tr, va, variant=variant, layer=layer, labels=labels,
                             ce_only=ce_only, epochs=epochs, batch_size=batch_size, lr=lr,
                             lr_decay=lr_decay, momentum=momentum, weight_decay=weight_decay,
                             out=out, resume=resume, overwrite=overwrite, seed=seed,
                             num_workers=workers, progress=not no_progress and rank == 0,
                             log=echo, cache=cache, views=views,
                             amp=None if amp == "none" else amp, regularizer=regularizer,
                             init_from=init_from)
    echo(f"wrote {out} ({res['epoch']} epochs); use it with "
         f"--methods lcam-{variant} --opt lcam-{variant}.checkpoint={out}")


@train.command("lficam")
@click.option("--backbone", default="efficientnet_lite0", show_default=True,
              help="backbone name (camzoo list), timm:<model>, or py:module:function")
@click.option("--weights", default=None, help=WEIGHTS_HELP + "; --init random needs none")
@click.option("--mode", type=click.Choice(["end-to-end", "frozen", "baseline"]), default="frozen",
              show_default=True,
              help="end-to-end: backbone + FIN + classifier (the paper); frozen: only the FIN, "
                   "on the unchanged backbone; baseline: the same recipe without the FIN")
@click.option("--init", type=click.Choice(["pretrained", "random"]), default="pretrained",
              show_default=True, help="end-to-end / baseline: start from the backbone's weights or "
                                      "from a seeded random initialization")
@click.option("--num-classes", type=int, default=None,
              help="end-to-end / baseline: a new classifier with N classes (the data's labels "
                   "are mapped to 0..N-1 in sorted order), e.g. 10 for imagenette")
@click.option("--layer", default=None, help="explanation layer (default: the backbone's)")
@click.option("--data", "data", required=True, type=click.Path(exists=True, file_okay=False),
              help="image folder (labels.csv, wnid folders or plain images)")
@click.option("--target", "labels", type=click.Choice(["pred", "gt"]), default=None,
              help="frozen mode: train on the frozen model's top-1 class (default) or the ground truth; "
                   "end-to-end / baseline always use the ground truth")
@click.option("--labels", "labels_file", default=None, type=click.Path(exists=True, dir_okay=False),
              help="ground-truth file for a flat folder (see docs/bench.md)")
@click.option("--epochs", type=int, default=10, show_default=True,
              help="lr divided by 10 after 50 % and 75 % of them (paper: 300 small datasets, 90 ImageNet)")
@click.option("--batch-size", type=int, default=64, show_default=True, help="global batch size")
@click.option("--lr", type=float, default=0.1, show_default=True, help="SGD learning rate (paper: 0.1)")
@click.option("--momentum", type=float, default=0.9, show_default=True, help="SGD momentum")
@click.option("--weight-decay", type=float, default=None,
              help="default 1e-4, 5e-4 for small images (--image-size <= 64)")
@click.option("--image-size", type=int, default=None,
              help="training / held-out resolution (default: the backbone's input size)")
@click.option("--fin-depth", type=int, default=4, show_default=True, help="FIN conv blocks")
@click.option("--val-fraction", type=float, default=0.2, show_default=True,
              help="images held out (by image) for per-epoch top-1")
@click.option("--limit", type=int, default=None, help="use a deterministic subset of N images")
@click.option("--split-seed", type=int, default=0, show_default=True,
              help="seed of --limit and of the held-out split (keep it fixed across --seed runs)")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="checkpoint (.pt)")
@click.option("--resume", is_flag=True, help="continue from --out")
@click.option("--overwrite", is_flag=True, help="replace an existing --out")
@click.option("--seed", type=int, default=0, show_default=True,
              help="seeds the FIN / new classifier / random init, the batch order and augmentation")
@_process_and_cache_options("frozen mode: ")
def lficam_cmd(backbone, weights, mode, init, num_classes, layer, data, labels, labels_file,
               epochs, batch_size, lr, momentum, weight_decay, image_size, fin_depth, val_fraction,
               limit, split_seed, out, resume, overwrite, seed, workers, device,
               no_progress, cache_dir, no_cache, views) -> None:
    """Train LFI-CAM (paper recipe: SGD momentum 0.9, lr 0.1 / 10 at 50 % and 75 %).

    Frozen mode caches the layer's features and gray images of fixed views by default
    (--cache, --views; --no-cache for fresh random crops); end-to-end and baseline train the
    backbone and never cache. Beside --out NAME.pt: NAME.best.pt (lowest held-out loss),
    NAME.train_log.csv, NAME.training.png.
    """
    from ..models.zoo import load_backbone
    from ..train.lficam import lficam_data, train_lficam
    from ..train.loop import distributed, rank_and_world

    cache = _cache_arg(cache_dir, no_cache, views)
    with user_errors():
        with distributed(device) as dev:
            rank = rank_and_world()[0]
            echo = click.echo if rank == 0 else (lambda *a, **k: None)
            w = "random" if weights is None and init == "random" else weights
            bb = load_backbone(backbone, weights=w, device=dev)
            lab = {"pred": "model", None: "model" if mode == "frozen" else "gt"}.get(labels, labels)
            if mode != "frozen" and cache_dir:
                raise ValueError(f"--cache needs --mode frozen: mode {mode!r} trains the backbone, "
                                 "so its features change every step")
            cache = cache if mode == "frozen" else None
            tr, va, info = lficam_data(data, bb, num_classes=num_classes, val_fraction=val_fraction,
                                       seed=seed, split_seed=split_seed, limit=limit,
                                       image_size=image_size, need_labels=lab == "gt",
                                       labels_file=labels_file)
            echo(f"LFI-CAM {mode} on {bb.name} layer {layer or bb.default_layer}: {len(tr)} "
                 f"training / {len(va)} held-out images ({tr.size}px), labels={lab}, "
                 f"init={init}, classes={num_classes or bb.num_classes}, device={dev}, "
                 f"processes={rank_and_world()[1]}")
            res = train_lficam(bb, tr, va, mode=mode, layer=layer, labels=lab,
                               num_classes=num_classes, class_map=info["class_map"],
                               class_names=info["class_names"], init=init, depth=fin_depth,
                               image_size=tr.size, epochs=epochs, batch_size=batch_size, lr=lr,
                               momentum=momentum, weight_decay=weight_decay, out=out,
                               resume=resume, overwrite=overwrite, seed=seed, num_workers=workers,
                               device=dev, progress=not no_progress and rank == 0, log=echo,
                               cache=cache, views=views)
    val = res["history"][-1]["val"] if res["history"] else {}
    if "top1" in val:
        extra = f", backbone {val['backbone_top1']:.4f}" if "backbone_top1" in val else ""
        echo(f"held-out top-1: {val['top1']:.4f}{extra}")
    hint = ("" if mode == "baseline" else
            f"; use it with --methods lficam --opt lficam.checkpoint={out}"
            + (f" --backbone {backbone} --weights random" if mode == "end-to-end" else ""))
    echo(f"wrote {out} ({res['epoch']} epochs){hint}")
