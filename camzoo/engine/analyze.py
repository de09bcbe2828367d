"""``camzoo analyze``: misclassification and class-bias analysis of a bench run (L-CAM paper,
Gkartzonika et al. 2022, Sec. 4.4, Figs. 5-9).

For a run made with ground-truth labels:

1. **Misclassified images** (the benchmarked classifier's top-1 differs from the label): for
   each method, its map of the ground-truth class beside its map of the predicted class,
   made again through the shared map path (:func:`camzoo.engine.maps.iterate_maps`, targets
   ``gt`` and ``pred``) with the run's backbone, layer and method options; their similarity:
   Spearman rank correlation of the maps and IoU of their top-15 % regions (exactly
   ``ceil(0.15 H W)`` pixels each, :func:`camzoo.metrics.lcam_protocol.keep_mask`).
2. **Category**, by a stated rule: a pair with IoU >= ``related_iou`` (default 0.5: the two
   classes are explained by the same region) is *related classes* (the paper's category i,
   e.g. two dog breeds); below it, *multi-object* (category ii: the classifier found another
   object of the image). A method whose two maps are identical (it ignores the class, e.g.
   Fake-CAM) says nothing about the category (``class-independent``); the image's category
   applies the same rule to the median IoU of the other methods. When the classes are
   ImageNet-1k classes their wnids are listed; camzoo ships no WordNet hierarchy (none is
   available offline), so closeness in WordNet is not part of the rule.
3. **Per-class table** (the class-bias study, category iii): for each ground-truth class the
   image count, the classifier's accuracy and each method's mean of every table metric, from
   the stored per-image rows; the report lists the classes where the classifier, and each
   explainer, does worst.

Everything is written to ``<run>/analysis/``: ``misclassified.csv``, ``per_class.csv``, one
figure per misclassified image (``misclassified_<k>.png``) and ``report.md`` linking them.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple, Union

import numpy as np
import pandas as pd
import torch

from ..data.datasets import open_dataset
from ..metrics.lcam_protocol import keep_mask
from ..metrics.similarity import rank_correlation
from ..metrics.stability import iou
from ..models.backbone import Backbone
from ..models.zoo import load_backbone
from ..results.run import Run
from ..utils import atomic_write, markdown_table
from .maps import MAIN_VIEW, MapBatch, iterate_maps, make_methods

RELATED = "related classes"
MULTI = "multi-object"
NONE = "class-independent"
DIR_NAME = "analysis"


@dataclass
class Analysis:
    """What :func:`analyze` found.

    Attributes:
        misclassified: one row per (misclassified image, method): ``image_id``, ``label``,
            ``pred`` and their class names, ``method``, ``spearman``, ``iou``, ``category``
            (per method), ``class_dependent`` (the two maps differ), ``image_category``
            (the rule on the median IoU of the class-dependent methods), ``figure``.
        per_class: one row per ground-truth class: ``class``, ``class_name``, ``n``,
            ``accuracy``, then ``<method>:<metric>`` means (table units).
        accuracy: the classifier's top-1 over the run's images.
        files: name -> path of what was written.
    """

    misclassified: pd.DataFrame
    per_class: pd.DataFrame
    accuracy: float
    n_images: int
    files: Dict[str, str] = field(default_factory=dict)


def _categories(df: pd.DataFrame, related_iou: float) -> pd.DataFrame:
    df["category"] = np.where(~df.class_dependent, NONE, np.where(df.iou >= related_iou, RELATED, MULTI))
    cons = {}
    for iid, g in df.groupby("image_id", sort=False):
        ious = g.iou[g.class_dependent]
        cons[iid] = NONE if ious.empty else RELATED if float(ious.median()) >= related_iou else MULTI
    df["image_category"] = df.image_id.map(cons)
    return df


def _benchmarked(rows: pd.DataFrame) -> pd.DataFrame:
    """One stored row per image: the benchmarked classifier's (``classifier == "backbone"``),
    else any method's (every method then has its own classifier)."""
    main = rows[rows.classifier == "backbone"].drop_duplicates("image_id")
    if main.empty:
        main = rows.drop_duplicates("image_id")
    return main


def per_class_table(run: Run, names: Sequence[str]) -> pd.DataFrame:
    """The class-bias table from the stored rows: per ground-truth class, ``n``, the
    benchmarked classifier's ``accuracy`` and each method's mean of every table metric
    (``"<method>:<column>"``, table units)."""
    rows = run.rows()
    main = _benchmarked(rows)
    acc = main.assign(ok=(main.pred == main.label).astype(float)).groupby("label").agg(
        n=("image_id", "size"), accuracy=("ok", "mean"))
    out = acc.reset_index().rename(columns={"label": "class"})
    out["class"] = out["class"].astype(int)
    out.insert(1, "class_name", [names[c] if 0 <= c < len(names) else str(c) for c in out["class"]])
    specs = run.specs()
    for m in run.methods:
        mine = rows[rows.method == m]
        for s in specs:
            col = pd.to_numeric(mine[s.key], errors="coerce").groupby(mine["label"]).mean()
            out[f"{m}:{s.header}"] = s.scale * out["class"].map(col).to_numpy(np.float64)
    return out


def rebuild_run(run: Run, backbone: Optional[Backbone], device):
    """``(backbone, {method: options})`` of a stored run, rebuilt from its ``config.json``
    (``backbone`` given: used instead of loading it); shared by ``camzoo analyze`` and
    ``camzoo report``."""
    cfg = run.config
    b = cfg["backbone"]
    if backbone is None:
        if str(b["name"]).startswith("<object") or str(cfg["bench_config"].get("backbone", "")).startswith("<object"):
            raise ValueError(f"{run.dir} was made with a Backbone object (Python API); pass it: "
                             "analyze(run, backbone=bb)")
        backbone = load_backbone(cfg["bench_config"]["backbone"], weights=cfg["bench_config"].get("weights"),
                                 device=device)
    if backbone.weights_id != b["weights_id"]:
        raise ValueError(f"the backbone's weights ({backbone.weights_id}) are not the run's ({b['weights_id']})")
    opts = {m: dict(v["options"]) for m, v in cfg["methods"].items()}
    return backbone, opts


def run_dataset(run: Run):
    """The stored run's dataset, opened again from its ``config.json`` (its manifest's images)."""
    d = run.config["data"]
    bc = run.config["bench_config"]
    data = d["root"] if bc.get("data") is None else bc["data"]  # torchvision's layout: root is ROOT/val
    ds = open_dataset(data, bc.get("labels"), d.get("limit"), d.get("seed", 0), devkit=bc.get("devkit"),
                      subset=bc.get("subset"), allow_missing=bool(bc.get("allow_missing")))
    if ds.manifest_hash() != d["manifest_hash"]:
        raise ValueError(f"the images of {run.dir} have changed since the run (manifest hash "
                         f"{ds.manifest_hash()} vs {d['manifest_hash']})")
    return ds


def analyze(run: Union[str, Run], *, methods: Optional[Sequence[str]] = None, top: float = 0.15,
            related_iou: float = 0.5, backbone: Optional[Backbone] = None, device=None,
            batch_size: int = 16, max_figures: int = 24, worst: int = 5, out: Optional[str] = None,
            echo: Callable[[str], None] = print) -> Analysis:
    """Misclassification and class-bias analysis of a bench run (see the module docstring).

    Args:
        run: a run directory or :class:`~camzoo.bench.Run` made with ground-truth labels.
        methods: the methods to analyze (default: every method of the run).
        top: fraction of pixels of the top regions compared by IoU.
        related_iou: the category threshold.
        backbone: the run's Backbone when the run was made with an object (Python API).
        max_figures: misclassified images that get a figure (the first in manifest order).
        worst: classes listed per ranking in the report.
        out: output folder (default ``<run>/analysis``).
    Raises:
        ValueError: the run has no labels, names a method it does not have, or its images or
            weights changed.
    """
    r = run if isinstance(run, Run) else Run(run)
    rows = r.rows()
    names = _check_request(r, rows, methods, related_iou)
    out = out or os.path.join(r.dir, DIR_NAME)
    os.makedirs(out, exist_ok=True)
    main = _benchmarked(rows).sort_values("idx")
    wrong = main[main.pred != main.label]
    accuracy = float((main.pred == main.label).mean())

    bb = None
    recs: List[Dict[str, Any]] = []
    figs: Dict[str, tuple] = {}
    if len(wrong):
        bb, opts = rebuild_run(r, backbone, device)
        remade = _remake(r, bb, opts, names, wrong, batch_size, max_figures, echo)
        recs = _pair_records(wrong, names, remade, bb, top)
        figs = remade.figures(names)
    mis = _misclassified_frame(recs, related_iou)
    names_all = bb.class_names if bb is not None else _class_names(r)
    pc = per_class_table(r, names_all)
    res = Analysis(mis, pc, accuracy, len(main))
    res.files.update(_write(res, r, figs, names, out, top, related_iou, worst))
    return res


def _check_request(r: Run, rows: pd.DataFrame, methods: Optional[Sequence[str]],
                   related_iou: float) -> List[str]:
    """The methods to analyze (default: the run's); refused (``ValueError``) when the run lacks
    a label, a method is not the run's, or ``related_iou`` is not in (0, 1]."""
    if rows.empty or rows.label.isna().any():
        raise ValueError(f"{r.dir} has no ground-truth labels for every image; analyze needs a run "
                         "made with labels (--data DIR with labels.csv / wnid folders, or --labels FILE)")
    names = list(methods) if methods else list(r.methods)
    bad = [m for m in names if m not in r.methods]
    if bad:
        raise ValueError(f"method(s) {', '.join(bad)} not in the run; methods: {', '.join(r.methods)}")
    if not 0 < related_iou <= 1:
        raise ValueError(f"related_iou must be in (0, 1]; got {related_iou}")
    return names


@dataclass
class _Remade:
    """The maps of the misclassified images, made again for both targets.

    Attributes:
        maps: target (``"gt"`` / ``"pred"``) -> method -> image_id -> its map, ``[H, W]``
            float32 in [0, 1].
        cls: target -> image_id -> the class explained.
        x01: image_id -> the image as the backbone sees it, ``[H, W, 3]`` in [0, 1] (the images
            that get a figure only).
    """

    maps: Dict[str, Dict[str, Dict[str, np.ndarray]]] = field(default_factory=lambda: {"gt": {}, "pred": {}})
    cls: Dict[str, Dict[str, int]] = field(default_factory=lambda: {"gt": {}, "pred": {}})
    x01: Dict[str, np.ndarray] = field(default_factory=dict)

    def add(self, batch: MapBatch, target: str, fig_ids: Set[str], echo: Callable[[str], None]) -> None:
        """Keep one batch's maps of ``target`` (and the images of ``fig_ids``); its unreadable
        images are said through ``echo``."""
        for e in batch.errors:
            echo(f"skipped: {e[3]}")
        for j, (_, it) in enumerate(batch.items):
            if it.image_id in fig_ids and it.image_id not in self.x01:
                self.x01[it.image_id] = batch.x01[MAIN_VIEW][j].permute(1, 2, 0).cpu().numpy()
        for m, mp in batch.each_method():
            V = mp.V.detach().float().cpu().numpy()
            for k, j in enumerate(mp.sel):
                iid = batch.items[j][1].image_id
                self.maps[target].setdefault(m.name, {})[iid] = V[k]
                self.cls[target][iid] = int(mp.clean.c[k])

    def figures(self, names: Sequence[str]) -> Dict[str, tuple]:
        """What each figure shows: image_id -> ``(image, {method: (map of the ground-truth
        class, map of the predicted class)})``."""
        return {iid: (self.x01[iid], {m: (self.maps["gt"][m][iid], self.maps["pred"][m][iid]) for m in names})
                for iid in self.x01}


def _remake(r: Run, bb: Backbone, opts: Dict[str, Dict[str, Any]], names: Sequence[str],
            wrong: pd.DataFrame, batch_size: int, max_figures: int,
            echo: Callable[[str], None]) -> _Remade:
    """Each method's maps of the ``wrong`` images for the ground-truth and the predicted class,
    through the shared map path with the run's options (``opts``, complete: a ``--layer`` of
    the run is in them)."""
    ds = run_dataset(r)
    ids = set(wrong.image_id)
    items = [(i, it) for i, it in enumerate(ds.items) if it.image_id in ids]
    mm = make_methods(bb, names, {m: opts[m] for m in names})
    fig_ids = set(wrong.image_id.tolist()[: max(0, int(max_figures))])
    remade = _Remade()
    for target in ("gt", "pred"):
        batches = iterate_maps(ds, items, mm, views={MAIN_VIEW: bb}, batch_size=batch_size, target=target)
        with contextlib.closing(batches):
            for batch in batches:
                remade.add(batch, target, fig_ids, echo)
    return remade


def _pair_records(wrong: pd.DataFrame, names: Sequence[str], remade: _Remade, bb: Backbone,
                  top: float) -> List[Dict[str, Any]]:
    """One record per (misclassified image with maps, method): the classes, their names and
    wnids, and the similarity of the method's two maps (``top``: fraction of pixels for IoU)."""
    class_names = bb.class_names
    wnids = _wnids(bb)
    recs: List[Dict[str, Any]] = []
    for _, w in wrong.iterrows():
        iid = w.image_id
        if iid not in remade.cls["gt"]:
            continue
        label, pred = int(w.label), int(remade.cls["pred"][iid])
        for m in names:
            gt_map, pred_map = remade.maps["gt"][m][iid], remade.maps["pred"][m][iid]
            rho, io = _similarity(gt_map, pred_map, top)
            recs.append({"image_id": iid, "label": label, "pred": pred,
                         "label_name": class_names[label], "pred_name": class_names[pred],
                         "label_wnid": wnids[label] if wnids else "",
                         "pred_wnid": wnids[pred] if wnids else "",
                         "method": m, "spearman": rho, "iou": io,
                         "class_dependent": not np.array_equal(gt_map, pred_map)})
    return recs


def _similarity(a: np.ndarray, b: np.ndarray, top: float) -> Tuple[float, float]:
    """``(Spearman rank correlation, IoU of the top-``top`` regions)`` of two ``[H, W]`` maps
    (IoU 1 when :func:`keep_mask` keeps every pixel)."""
    ta, tb = torch.from_numpy(a)[None], torch.from_numpy(b)[None]
    ka = keep_mask(ta, top)
    kb = keep_mask(tb, top)
    io = 1.0 if ka is None else float(iou(ka, kb)[0])
    return float(rank_correlation(ta, tb)[0]), io


def _misclassified_frame(recs: List[Dict[str, Any]], related_iou: float) -> pd.DataFrame:
    """The records as :attr:`Analysis.misclassified` (before ``figure``), with the categories."""
    cols = ["image_id", "label", "pred", "label_name", "pred_name", "label_wnid", "pred_wnid", "method",
            "spearman", "iou", "class_dependent"]
    mis = pd.DataFrame(recs, columns=cols)
    return _categories(mis, related_iou) if len(mis) else mis.assign(category=[], image_category=[])


def _wnids(bb: Backbone) -> Optional[List[str]]:
    if bb.num_classes != 1000:
        return None
    try:
        from ..data.imagenet import imagenet_wnids

        return imagenet_wnids()
    except Exception:  # pragma: no cover - timm's list missing
        return None


def _class_names(r: Run) -> List[str]:
    n = int(r.config["backbone"].get("num_classes", 0))
    return [f"class_{i}" for i in range(n)]


def _write(res: Analysis, r: Run, figs, names, out: str, top: float, related_iou: float,
           worst: int) -> Dict[str, str]:
    from ..results.plots import overlay_grid

    files: Dict[str, str] = {}
    mis = res.misclassified
    figure_of: Dict[str, str] = {}
    for k, (iid, (img, per)) in enumerate(figs.items()):
        g = mis[mis.image_id == iid].set_index("method")
        name = f"misclassified_{k:03d}.png"
        p = os.path.join(out, name)
        row0 = g.iloc[0]
        titles = [f"{m}\nIoU {g.loc[m, 'iou']:.2f}, rho {g.loc[m, 'spearman']:.2f}" for m in names]
        overlay_grid([img] * len(names), [list(per[m]) for m in names], titles,
                     [f"gt: {row0.label_name[:20]}", f"pred: {row0.pred_name[:20]}"], p)
        figure_of[iid] = name
        files[f"figure_{k}"] = p
    if len(mis):
        mis["figure"] = mis.image_id.map(figure_of).fillna("")
    p = os.path.join(out, "misclassified.csv")
    atomic_write(p, mis.to_csv(index=False, float_format="%.6g"))
    files["misclassified"] = p
    p = os.path.join(out, "per_class.csv")
    atomic_write(p, res.per_class.to_csv(index=False, float_format="%.6g"))
    files["per_class"] = p
    p = os.path.join(out, "report.md")
    atomic_write(p, _report(res, r, names, top, related_iou, worst))
    files["report"] = p
    return files


def _report(res: Analysis, r: Run, names, top: float, related_iou: float, worst: int) -> str:
    """``report.md``: the rule, the misclassified images and the per-class rankings."""
    mis = res.misclassified
    n_wrong = mis.image_id.nunique() if len(mis) else 0
    bbn = r.config["backbone"]["name"]
    L = [f"# Misclassification and class-bias analysis: {bbn}", "",
         f"Run `{r.dir}`: {res.n_images} images, top-1 accuracy **{res.accuracy:.3f}**, "
         f"{n_wrong} misclassified. Methods: {', '.join(names)}.", "",
         "## Misclassified images (L-CAM paper, Sec. 4.4, Figs. 5-6)", "",
         f"For each method, its map of the ground-truth class beside its map of the predicted class; "
         f"similarity: Spearman rank correlation (rho) and IoU of the top-{100 * top:g} % regions. "
         f"Rule: IoU >= {related_iou:g} -> *{RELATED}* (both classes are explained by the same region), "
         f"else *{MULTI}*; a method whose two maps are identical ignores the class and does not vote "
         f"({NONE}); the image's category applies the rule to the median IoU of the others.", ""]
    L += _misclassified_section(mis, names) if n_wrong else ["No image is misclassified.", ""]
    return "\n".join(L + _per_class_section(res.per_class, r, names, worst)) + "\n"


def _with_wnid(name: str, wnid: str) -> str:
    """``"name (wnid)"``, or ``name`` when there is no wnid."""
    return f"{name} ({wnid})" if wnid else name


def _misclassified_section(mis: pd.DataFrame, names: Sequence[str]) -> List[str]:
    """The report's lines on the misclassified images: one table row per image, the count per
    category, and the per-method means over the class-dependent methods."""
    rows = []
    for iid, g in mis.groupby("image_id", sort=False):
        g = g.set_index("method")
        row0 = g.iloc[0]
        fig = f"[{row0.figure}]({row0.figure})" if row0.figure else "-"
        rows.append([iid, _with_wnid(row0.label_name, row0.label_wnid), _with_wnid(row0.pred_name, row0.pred_wnid),
                     *(f"{g.loc[m, 'iou']:.2f} / {g.loc[m, 'spearman']:.2f}" for m in names),
                     row0.image_category, fig])
    header = ["image", "ground truth", "predicted", *(f"{m} IoU / rho" for m in names), "category", "figure"]
    L = markdown_table(header, rows, "lll" + "r" * len(names) + "ll")
    cnt = mis.drop_duplicates("image_id").image_category.value_counts()
    L += ["", "Categories: " + ", ".join(f"{k}: {v}" for k, v in cnt.items()) + ".", ""]
    by = mis[mis.class_dependent].groupby("method")
    if len(by):
        L += markdown_table(["method", "mean IoU", "mean rho", "related", "multi-object"],
                            [[m, f"{g.iou.mean():.3f}", f"{g.spearman.mean():.3f}", (g.category == RELATED).sum(),
                              (g.category == MULTI).sum()] for m, g in by], "lrrrr")
        L.append("")
    return L


def _per_class_section(pc: pd.DataFrame, r: Run, names: Sequence[str], worst: int) -> List[str]:
    """The report's lines on the per-class table: the classes of lowest accuracy, and each
    method's worst classes by the run's ADCC column (else its first table column)."""
    L = ["## Per-class table (class bias, L-CAM paper Figs. 7-9)", "",
         f"`per_class.csv`: for each of the {len(pc)} ground-truth classes the image count, the "
         f"classifier's accuracy and each method's mean of every table metric.", ""]
    if not len(pc):
        return L
    low = pc.sort_values(["accuracy", "n"], ascending=[True, False]).head(worst)
    L += [f"Lowest accuracy (up to {worst} classes):", ""]
    L += markdown_table(["class", "n", "accuracy"],
                        [[f"{c.class_name} ({c['class']})", c.n, f"{c.accuracy:.2f}"] for _, c in low.iterrows()],
                        "lrr")
    L.append("")
    specs = r.specs()
    key = next((s for s in specs if s.column == "ADCC"), specs[0] if specs else None)
    if key is not None:
        L += [f"Worst classes per method by {key.header} (up to {worst}):", ""]
        rows = []
        for m in names:
            col = f"{m}:{key.header}"
            if col not in pc:
                continue
            w = pc.dropna(subset=[col]).sort_values(col, ascending=key.higher_is_better).head(worst)
            rows.append([m, ", ".join(f"{c.class_name} ({c[col]:.1f})" for _, c in w.iterrows())])
        L += markdown_table(["method", "classes (value)"], rows, "ll")
        L.append("")
    return L
