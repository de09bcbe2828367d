"""``camzoo sanity``: the model-randomization sanity check (Adebayo, Gilmer, Muelly,
Goodfellow, Hardt, Kim, "Sanity checks for saliency maps", NeurIPS 2018, Sec. 3).

An explainer that explains the *model* must change when the model's weights are destroyed.
From the logits down, block by block (:func:`camzoo.models.surgery.randomization_blocks`),
the weights of a **copy** of the model are re-initialized (``cascading``: the blocks above
stay random; ``independent``: one block at a time, the others trained), and each method's
maps of the randomized model are compared with its maps of the trained one
(:mod:`camzoo.metrics.similarity`: Spearman with and without absolute values, SSIM, HOG).
A map that ignores the model (Fake-CAM, edge detectors) stays at similarity 1 and fails the
check; Grad-CAM's similarity falls as the head is randomized.

- The user's model is never modified: every randomized model is a
  :func:`~camzoo.models.surgery.clone_backbone` copy.
- Block ``k`` (0 = the one holding the logits) is re-initialized from
  ``torch.manual_seed(init_seed + k)`` (inside ``fork_rng``), so a block gets the same random
  weights in both modes and in every run.
- The explained class is the **trained** model's top-1 for every step, so a map changes
  because the model did, not because the randomized model predicts another class.
- Maps are made through the shared map path (:func:`camzoo.engine.maps.iterate_maps`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import numpy as np
import pandas as pd
import torch

from ..data.datasets import Dataset, open_dataset
from ..metrics.similarity import SIMILARITIES, map_similarities
from ..models.backbone import Backbone
from ..models.zoo import load_backbone
from ..models.surgery import clone_backbone, randomization_blocks, reinit_modules
from ..progress import Progress
from ..utils import atomic_write, markdown_table, split_names
from .maps import MAIN_VIEW, iterate_maps, make_methods

MODES = ("cascading", "independent")
ORIGINAL = "original"
CSV_NAME = "sanity.csv"


@dataclass
class SanityResult:
    """What :func:`run` found.

    Attributes:
        rows: one row per (step, image, method): ``step`` (0 = trained model), ``block``
            (the block randomized at this step, ``"original"`` for step 0), ``mode``,
            ``image_id``, ``method``, ``class`` (the class explained at that step: the trained
            model's top-1), and the similarities
            (:data:`~camzoo.metrics.similarity.SIMILARITIES`) to the trained model's map.
        blocks: the block labels in randomization order (``conv_head+bn2`` ...).
        mode: ``"cascading"`` or ``"independent"``.
        files: name -> path of what was written (``csv``, ``plot_<similarity>``, ``grid``).
    """

    rows: pd.DataFrame
    blocks: List[str]
    mode: str
    files: Dict[str, str] = field(default_factory=dict)

    def summary(self, similarity: str = "spearman") -> pd.DataFrame:
        """Mean ``similarity`` over images: steps (block labels, in order) x methods."""
        t = self.rows.pivot_table(index="step", columns="method", values=similarity, aggfunc="mean")
        t.index = [([ORIGINAL] + self.blocks)[i] for i in t.index]
        return t[list(dict.fromkeys(self.rows.method))]


def format_summary(res: SanityResult, similarity: str = "spearman") -> str:
    """A Markdown table of :meth:`SanityResult.summary`."""
    t = res.summary(similarity)
    rows = [[f"→ {label}" if k > 0 and res.mode == "cascading" else label, *(f"{v:.3f}" for v in row)]
            for k, (label, row) in enumerate(t.iterrows())]
    lines = markdown_table([f"randomized ({res.mode})", *t.columns], rows, "l" + "r" * len(t.columns))
    n = res.rows.image_id.nunique()
    lines.append("")
    lines.append(f"<sub>mean {similarity} similarity to the trained model's map over {n} images; "
                 f"{'cascading: every block from the logits down to the named one is random' if res.mode == 'cascading' else 'independent: only the named block is random'}.</sub>")
    return "\n".join(lines) + "\n"


def _maps(bb: Backbone, ds: Dataset, names: Sequence[str], options, layer, batch_size: int,
          target: str) -> tuple:
    """Every map of every method on ``ds`` through the shared map path: ``({method: {image_id:
    [H,W] float32}}, {image_id: explained class}, {image_id: top-1})``."""
    methods = make_methods(bb, names, options, layer)
    maps: Dict[str, Dict[str, np.ndarray]] = {m: {} for m in names}
    cls: Dict[str, int] = {}
    pred: Dict[str, int] = {}
    batches = iterate_maps(ds, list(enumerate(ds.items)), methods, views={MAIN_VIEW: bb},
                           batch_size=batch_size, target=target)
    with contextlib.closing(batches):
        for batch in batches:
            for m, mp in batch.each_method():
                V = mp.V.detach().float().cpu().numpy()
                for r, j in enumerate(mp.sel):
                    iid = batch.items[j][1].image_id
                    maps[m.name][iid] = V[r]
                    if m.classifier_key == "backbone":
                        cls[iid], pred[iid] = int(mp.clean.c[r]), int(mp.clean.pred[r])
    return maps, cls, pred


def run(backbone: Union[str, Backbone] = "efficientnet_lite0", methods: Union[str, Sequence[str]] = "gradcam",
        data: Optional[str] = None, *, weights: Optional[str] = None, labels: Optional[str] = None,
        limit: Optional[int] = None, seed: int = 0, options: Optional[Dict[str, Dict[str, Any]]] = None,
        layer: Optional[str] = None, mode: str = "cascading", max_blocks: Optional[int] = None,
        init_seed: int = 0, out: Optional[str] = None, batch_size: int = 16, device=None,
        grid_images: int = 2, figures: bool = True, progress: bool = True,
        echo: Callable[[str], None] = print) -> SanityResult:
    """Run the model-randomization sanity check (see the module docstring).

    Args:
        backbone: a name (any :func:`camzoo.load_backbone` form) or a Backbone (left
            untouched); ``weights``, ``device``: for a name.
        methods: explainer names; ``options``: their options; ``layer``: explanation layer.
        data, labels, limit, seed: the images (:func:`camzoo.data.datasets.open_dataset`; default: the
            sample photos).
        mode: ``"cascading"`` (from the logits down, blocks above stay random) or
            ``"independent"`` (one block at a time).
        max_blocks: randomize only the first (top) N blocks.
        init_seed: seed of the re-initialization (block k: ``init_seed + k``).
        out: folder for ``sanity.csv``, ``sanity_<similarity>.png`` and ``sanity_cascade.png``
            (nothing written when None).
        grid_images: images in the cascade overlay grid.
    Returns:
        :class:`SanityResult`.
    Raises:
        ValueError for unknown names, modes or options (listing the valid ones).
    """
    if mode not in MODES:
        raise ValueError(f"unknown randomization mode {mode!r}; valid: {', '.join(MODES)}")
    names = split_names(methods)
    if not names:
        raise ValueError("no methods given")
    options = options or {}
    bb = backbone if isinstance(backbone, Backbone) else load_backbone(backbone, weights=weights, device=device)
    blocks = _blocks(bb, max_blocks)
    labels_ = ["+".join(b) for b in blocks]
    ds = open_dataset(data, labels, limit, seed)
    make_methods(bb, names, options, layer)  # validate names and options before any work

    bar = None
    if progress:
        bar = Progress(len(blocks) + 1, f"sanity ({mode})", unit="step")
    ref, cls0, pred = _maps(bb, ds, names, options, layer, batch_size, "pred")
    if bar:
        bar.update(1)
    # every step explains the trained model's top-1: the items carry it as their label
    keep = [it for it in ds.items if it.image_id in pred]
    fixed = dataclasses.replace(ds, items=[dataclasses.replace(it, label=pred[it.image_id]) for it in keep])
    ids = [it.image_id for it in keep]
    grid = {iid: {m: [ref[m][iid]] for m in names} for iid in ids[: max(0, int(grid_images))]}
    recs = _compare(0, ORIGINAL, mode, names, ids, ref, ref, cls0)
    work = clone_backbone(bb) if mode == "cascading" else None
    for k, blk in enumerate(blocks):
        if mode == "independent":
            work = clone_backbone(bb)
        reinit_modules(work, blk, init_seed + k)
        maps, explained, _ = _maps(work, fixed, names, options, layer, batch_size, "gt")
        recs += _compare(k + 1, labels_[k], mode, names, ids, ref, maps, explained)
        _add_to_grid(grid, names, maps)
        if mode == "independent":
            work = None
        if bar:
            bar.update(1)
    if bar:
        bar.close()
    res = SanityResult(pd.DataFrame(recs), labels_, mode)
    if out is not None:
        res.files.update(_write(res, bb, fixed, grid, out, names, figures))
    return res


def _blocks(bb: Backbone, max_blocks: Optional[int]) -> List[List[str]]:
    """The blocks of ``bb`` in randomization order (from the logits down), the first
    ``max_blocks`` of them when given (``ValueError`` below 1)."""
    blocks = randomization_blocks(bb.model)
    if max_blocks is not None:
        if int(max_blocks) < 1:
            raise ValueError(f"max_blocks must be >= 1; got {max_blocks}")
        blocks = blocks[: int(max_blocks)]
    return blocks


def _compare(step: int, block: str, mode: str, names: Sequence[str], ids: Sequence[str],
             ref: Dict[str, Dict[str, np.ndarray]], maps: Dict[str, Dict[str, np.ndarray]],
             explained: Dict[str, int]) -> List[Dict[str, Any]]:
    """The rows of one step: each method's maps of the images ``ids`` it has (``maps``:
    method -> image_id -> ``[H, W]`` map) compared with its trained model's maps ``ref``."""
    recs: List[Dict[str, Any]] = []
    for m in names:
        have = [iid for iid in ids if iid in maps[m]]
        if not have:
            continue
        V = torch.from_numpy(np.stack([maps[m][i] for i in have]))
        V0 = torch.from_numpy(np.stack([ref[m][i] for i in have]))
        sims = map_similarities(V, V0)
        for r, iid in enumerate(have):
            recs.append({"step": step, "block": block, "mode": mode, "image_id": iid, "method": m,
                         "class": explained[iid], **{k: float(sims[k][r]) for k in SIMILARITIES}})
    return recs


def _add_to_grid(grid: Dict[str, Dict[str, List[np.ndarray]]], names: Sequence[str],
                 maps: Dict[str, Dict[str, np.ndarray]]) -> None:
    """Append one randomized step's maps to the overlay grid (image_id -> method -> maps)."""
    for m in names:
        for iid in grid:
            if iid in maps[m]:
                grid[iid][m].append(maps[m][iid])


def _write(res: SanityResult, bb: Backbone, ds: Dataset, grid, out: str, names,
           figures: bool) -> Dict[str, str]:
    """``sanity.csv`` in ``out`` and, with ``figures``, the plots and the grid; returns
    name -> path."""
    os.makedirs(out, exist_ok=True)
    p = os.path.join(out, CSV_NAME)
    atomic_write(p, res.rows.to_csv(index=False, float_format="%.6g"))
    files = {"csv": p}
    if figures:
        files.update(_figures(res, bb, ds, grid, out, names))
    return files


def _figures(res: SanityResult, bb: Backbone, ds: Dataset, grid, out: str, names) -> Dict[str, str]:
    from ..results.plots import overlay_grid, similarity_curves

    files = {}
    for s in SIMILARITIES:
        p = os.path.join(out, f"sanity_{s}.png")
        t = res.rows.groupby(["method", "step"])[s]
        similarity_curves({m: (t.mean()[m].to_numpy(), t.std(ddof=0)[m].to_numpy()) for m in names},
                          [ORIGINAL] + res.blocks, p,
                          f"{s} similarity to the trained model's map ({res.mode} randomization)", s)
        files[f"plot_{s}"] = p
    if grid:
        by_id = {it.image_id: it for it in ds.items}
        imgs, rows, titles = [], [], []
        for iid, per in grid.items():
            x = bb.preprocess(ds.load(by_id[iid])).unsqueeze(0)
            img = bb.denormalize(x.to(bb.device))[0].clamp(0, 1).permute(1, 2, 0).cpu().numpy()
            for m in names:
                imgs.append(img)
                rows.append(per[m])
                titles.append(f"{iid.rsplit('/', 1)[-1]}\n{m}")  # the grid fits its labels
        cols = [ORIGINAL] + [("" if res.mode == "independent" else "→ ") + b for b in res.blocks]
        p = os.path.join(out, "sanity_cascade.png")
        overlay_grid(imgs, rows, titles, cols[: max(len(r) for r in rows)], p)
        files["grid"] = p
    return files
