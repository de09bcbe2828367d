"""``camzoo explain``: explain image files (or the sample photos) and write figures + maps."""
from __future__ import annotations

import csv
import os
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from .backbones import load_backbone
from .explainers import get_explainer
from .images import ImageReadError, load_image, sample_photos
from .plots import explanation_grid


def _gt_label(path: str, cache: Dict[str, Dict[str, int]]) -> int:
    folder = os.path.dirname(os.path.abspath(path))
    if folder not in cache:
        lab = os.path.join(folder, "labels.csv")
        if not os.path.isfile(lab):
            raise ValueError(f"--target gt needs a labels.csv (file,class_index) next to {path}")
        with open(lab, newline="") as f:
            cache[folder] = {r["file"]: int(r["class_index"]) for r in csv.DictReader(f)}
    name = os.path.basename(path)
    if name not in cache[folder]:
        raise ValueError(f"{name} has no row in {os.path.join(folder, 'labels.csv')}")
    return cache[folder][name]


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
) -> Tuple[int, List[str]]:
    """Explain each image with each method; write ``<id>.png`` grids and ``<id>/<method>.npy``.

    Returns ``(number of images written, error messages)``. Unreadable images are reported
    and skipped; everything else (unknown names, bad targets) raises ``ValueError``.
    """
    from tqdm.auto import tqdm

    options = options or {}
    bb = load_backbone(backbone, weights=weights, device=device)
    if layer is not None:
        bb.layer(layer)  # validate early, listing the valid layers
    explainers = []
    for m in methods:
        opts = dict(options.get(m, {}))
        ex_cls = get_explainer(m, **opts).__class__
        if layer is not None and "layer" in ex_cls.defaults and "layer" not in opts:
            opts["layer"] = layer
        explainers.append(get_explainer(m, **opts))
    fixed_target: Optional[int] = None
    if target not in ("pred", "gt"):
        try:
            fixed_target = int(target)
        except ValueError:
            raise ValueError(f"--target must be pred, gt or a class index; got {target!r}") from None
        bb.check_classes(torch.tensor([fixed_target]))
    if not images and target == "gt":
        raise ValueError("--target gt needs image files with a labels.csv; the sample photos have none")

    items = [(n, None) for n in images] if images else [(n, im) for n, im in sample_photos()]
    os.makedirs(out_dir, exist_ok=True)
    errors: List[str] = []
    labels_cache: Dict[str, Dict[str, int]] = {}
    n_ok = 0
    for name, img in tqdm(items, desc="explain", unit="img"):
        try:
            img = img if img is not None else load_image(name)
        except ImageReadError as exc:
            errors.append(str(exc))
            echo(f"error: {exc}")
            continue
        image_id = os.path.splitext(os.path.basename(name))[0]
        x = bb.preprocess(img).unsqueeze(0).to(bb.device)
        with torch.inference_mode():
            probs = bb.model(x).softmax(dim=1)[0]
        if fixed_target is not None:
            c = fixed_target
        elif target == "gt":
            c = _gt_label(name, labels_cache)
        else:
            c = int(probs.argmax())
        y = torch.tensor([c], device=bb.device)
        maps, titles = [], []
        map_dir = os.path.join(out_dir, image_id)
        os.makedirs(map_dir, exist_ok=True)
        for ex in explainers:
            v = ex.explain(bb, x, y)[0].cpu().numpy().astype(np.float32)
            np.save(os.path.join(map_dir, f"{ex.name}.npy"), v)
            maps.append(v)
            titles.append(f"{ex.name}\n{bb.class_names[c][:22]} p={float(probs[c]):.2f}")
        x01 = bb.denormalize(x)[0].clamp(0, 1).permute(1, 2, 0).cpu().numpy()
        explanation_grid(x01, maps, titles, os.path.join(out_dir, f"{image_id}.png"),
                         suptitle=f"{image_id} — {bb.name}")
        n_ok += 1
    return n_ok, errors
