"""``camzoo explain``: explain image files (or the sample photos) and write figures + raw maps.

The maps come from the shared image-to-map path (:func:`camzoo.engine.maps.iterate_maps`),
one image at a time; this module only chooses the targets and writes the files.
"""
from __future__ import annotations

import os
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..data.datasets import Dataset, files_dataset, open_dataset
from ..data.datasets import read_labels_csv
from ..models.backbone import Backbone
from ..models.zoo import load_backbone
from ..models.weights import backbone_label
from ..progress import Progress
from ..registry import file_name
from ..results.plots import explanation_grid
from ..utils import atomic_write
from .maps import MAIN_VIEW, MapBatch, iterate_maps, make_methods


def _gt_labels(paths: Sequence[str]) -> List[int]:
    """Each file's class from the ``labels.csv`` (``file,class_index``) in its folder."""
    tables: Dict[str, Dict[str, int]] = {}
    out = []
    for path in paths:
        folder = os.path.dirname(os.path.abspath(path))
        if folder not in tables:
            lab = os.path.join(folder, "labels.csv")
            if not os.path.isfile(lab):
                raise ValueError(f"--target gt needs a labels.csv (file,class_index) next to {path}")
            tables[folder] = {os.path.normpath(f): c for f, c, _ in read_labels_csv(lab)}
        name = os.path.basename(path)
        if name not in tables[folder]:
            raise ValueError(f"{name} has no row in {os.path.join(folder, 'labels.csv')}")
        out.append(tables[folder][name])
    return out


def _target(target: str) -> Union[str, int]:
    if target in ("pred", "gt"):
        return target
    try:
        return int(target)
    except ValueError:
        raise ValueError(f"--target must be pred, gt or a class index; got {target!r}") from None


def explain_files(
    images: List[str],
    *,
    backbone: str = "efficientnet_lite0",
    weights: Optional[str] = None,
    methods: List[str],
    out_dir: str,
    target: str = "pred",
    layer: Optional[str] = None,
    device: Optional[str] = None,
    options: Optional[Dict[str, dict]] = None,
    echo: Callable[[str], None] = print,
    progress: bool = True,
) -> Tuple[int, List[str]]:
    """Explain each image with each method; write ``<id>.png`` grids and ``<id>/<method>.npy``.

    Args:
        images: image files (empty: the scikit-image sample photos).
        backbone, weights, layer, device: the classifier (any :func:`camzoo.load_backbone`
            name form, ``py:module:function`` included).
        methods: explainer names; ``options``: their options.
        out_dir: output folder.
        target: ``"pred"`` (top-1), ``"gt"`` (``labels.csv`` beside the images) or a class index.
    Returns:
        ``(number of images written, error messages)``. Unreadable images are reported and
        skipped; everything else (unknown names, bad targets) raises ``ValueError`` before
        anything is written.
    """
    tgt = _target(target)
    if not images and tgt == "gt":
        raise ValueError("--target gt needs image files with a labels.csv; the sample photos have none")
    bb = load_backbone(backbone, weights=weights, device=device)
    if layer is not None:
        bb.layer(layer)  # validate early, listing the valid layers
    if isinstance(tgt, int):
        bb.check_classes(torch.tensor([tgt]))
    mm = make_methods(bb, methods, options or {}, layer)
    ds: Dataset = files_dataset(images, _gt_labels(images) if tgt == "gt" else None) if images \
        else open_dataset(None)
    items = list(enumerate(ds.items))

    bar = None
    if progress:
        bar = Progress(len(items), "explain", unit="img")
    os.makedirs(out_dir, exist_ok=True)
    errors: List[str] = []
    n_ok = 0
    batches = iterate_maps(ds, items, mm, views={MAIN_VIEW: bb}, batch_size=1, target=tgt)
    try:
        for batch in batches:
            for e in batch.errors:
                errors.append(e[3])
                echo(f"error: {e[3]}")
            if batch.items:
                _write_image(batch, bb, out_dir)
                n_ok += 1
            if bar:
                bar.update(len(batch.items) + len(batch.errors))
    finally:
        batches.close()
        if bar:
            bar.close()
    return n_ok, errors


def _write_image(batch: MapBatch, bb: Backbone, out_dir: str) -> None:
    """The files of a batch of one image: ``<id>/<method>.npy`` (its ``[H, W]`` float32 map in
    [0, 1]) for each method, and the ``<id>.png`` grid of the image with every map."""
    (_, item), = batch.items
    maps, titles = [], []
    for m, mp in batch.each_method():
        v = mp.V[0].cpu().numpy().astype(np.float32)
        atomic_write(os.path.join(out_dir, item.image_id, f"{file_name(m.name)}.npy"),
                     lambda tmp, v=v: np.save(tmp, v))
        c = int(mp.clean.c[0])
        maps.append(v)
        titles.append(f"{m.name}\n{bb.class_names[c][:22]} p={float(mp.clean.Y[0]):.2f}")
    os.makedirs(os.path.join(out_dir, item.image_id), exist_ok=True)
    x01 = batch.x01[MAIN_VIEW][0].permute(1, 2, 0).cpu().numpy()
    explanation_grid(x01, maps, titles, os.path.join(out_dir, f"{item.image_id}.png"),
                     suptitle=f"{item.image_id} — {backbone_label(bb.name, bb.weights_id)}")
