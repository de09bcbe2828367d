"""``camzoo train lcam``: train an L-CAM-Fm / L-CAM-Img head on a frozen backbone.

A thin layer over :func:`camzoo.train.lcam.train_lcam` and
:func:`camzoo.train.data.training_data`. Multi-process: ``torchrun --nproc_per_node N -m
camzoo train lcam ...`` (DistributedDataParallel; NCCL on CUDA, gloo on CPU).
"""
from __future__ import annotations

import click

from .cli import train


@train.command("lcam")
@click.option("--backbone", default="efficientnet_lite0", show_default=True)
@click.option("--weights", default=None, help="backbone state_dict file ('random' for smoke tests)")
@click.option("--variant", type=click.Choice(["fm", "img"]), required=True,
              help="fm: mask the feature maps; img: mask the image (paper: Img is better)")
@click.option("--layer", default=None, help="explanation layer (default: the backbone's; "
              "vgg16 --layer pool5 is the paper's L-CAM-Img-dagger)")
@click.option("--ce-only", is_flag=True, help="ablation L-CAM-Fm* / L-CAM-Img*: cross-entropy only")
@click.option("--data", "data", required=True, type=click.Path(exists=True, file_okay=False),
              help="image folder (labels.csv, wnid folders or plain images)")
@click.option("--labels", type=click.Choice(["model", "gt"]), default="model", show_default=True,
              help="train on the frozen model's top-1 (paper) or on the ground truth")
@click.option("--labels-file", default=None, type=click.Path(exists=True, dir_okay=False),
              help="ground-truth file for a flat folder (see docs/bench.md)")
@click.option("--epochs", type=int, default=None,
              help="default: 7 for vgg16, 25 otherwise (paper: ResNet-50)")
@click.option("--batch-size", type=int, default=64, show_default=True, help="global batch size")
@click.option("--lr", type=float, default=1e-4, show_default=True)
@click.option("--lr-decay", type=float, default=None,
              help="lr factor per epoch; default 0.75 for vgg16, 0.95 otherwise")
@click.option("--momentum", type=float, default=0.9, show_default=True)
@click.option("--weight-decay", type=float, default=5e-4, show_default=True)
@click.option("--val-fraction", type=float, default=0.2, show_default=True,
              help="images held out (by image) for per-epoch loss and AD/IC(100%)")
@click.option("--limit", type=int, default=None, help="use a deterministic subset of N images")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="checkpoint (.pt)")
@click.option("--resume", is_flag=True, help="continue from --out")
@click.option("--overwrite", is_flag=True, help="replace an existing --out")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--workers", type=int, default=0, show_default=True, help="DataLoader workers")
@click.option("--device", default=None, help="cpu, cuda, cuda:1 ... (default: auto)")
@click.option("--no-progress", is_flag=True, help="no progress bar")
def lcam_cmd(backbone, weights, variant, layer, ce_only, data, labels, labels_file, epochs,
             batch_size, lr, lr_decay, momentum, weight_decay, val_fraction, limit, out, resume,
             overwrite, seed, workers, device, no_progress) -> None:
    """Train an L-CAM head (paper recipe: SGD + Nesterov, lr 1e-4 decayed per epoch)."""
    from .backbones import load_backbone
    from .train.data import training_data
    from .train.lcam import train_lcam
    from .train.loop import distributed, rank_and_world

    try:
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
                             log=echo)
    except (ValueError, KeyError, FileNotFoundError, FileExistsError, NotImplementedError) as exc:
        raise click.ClickException(str(exc)) from None
    echo(f"wrote {out} ({res['epoch']} epochs); use it with "
         f"--methods lcam-{variant} --opt lcam-{variant}.checkpoint={out}")
