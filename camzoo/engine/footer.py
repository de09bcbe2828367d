"""What a finished ``camzoo bench`` says under its table: notes that keep a first reader from
misreading it, and the commands to try next (:func:`footer`).

- A method that makes its maps without a single forward of the model (Fake-CAM, whose
  ``forward_passes`` is 0) is a model-independent baseline: a metric that ranks it best is
  not measuring the model (Poppi et al.'s point in the ADCC paper).
- Two methods whose stored values are equal on every image and every column are the same
  method at this layer; Grad-CAM and XGrad-CAM coincide where the layer's gradient is the same
  at every position (Fu et al. 2020), which reads as a bug unless said.
- A run of few images gets wide intervals and many ``≈``: said, with the command that tells
  how many images a difference needs.
"""
from __future__ import annotations

from itertools import combinations
from typing import List, Sequence, Tuple

import numpy as np

#: below this many images, the footer says the intervals are wide
FEW_IMAGES = 30


def model_independent(run) -> List[str]:
    """The run's methods that make their maps with no forward of the model."""
    methods = run.config.get("methods", {})
    return [m for m in run.methods if methods.get(m, {}).get("forward_passes", 1) == 0]


def identical_methods(run, rows=None) -> List[Tuple[str, str, int]]:
    """``(a, b, n_images)`` for each pair of methods whose every table value is equal, to
    float32 rounding (relative 1e-4), on every image both were evaluated on (at least 2
    images): maps equal up to rounding give values equal up to rounding, not bit for bit.
    ``rows``: ``run.rows()`` when the caller has them."""
    rows = run.rows() if rows is None else rows
    keys = [s.key for s in run.specs() if s.key in rows.columns]
    if not keys or not len(rows):
        return []
    wide = {m: g.set_index("image_id")[keys].sort_index() for m, g in rows.groupby("method")}
    out = []
    for a, b in combinations([m for m in run.methods if m in wide], 2):
        ids = wide[a].index.intersection(wide[b].index)
        if len(ids) < 2:
            continue
        va, vb = (wide[m].loc[ids].to_numpy(dtype=np.float64) for m in (a, b))
        if np.allclose(va, vb, rtol=1e-4, atol=1e-6, equal_nan=True):
            out.append((a, b, len(ids)))
    return out


def _same_reason(a: str, b: str, layer: str) -> str:
    if {a, b} == {"gradcam", "xgradcam"}:
        return (f"not a bug: where the gradient of the class score is the same at every position of "
                f"the layer ({layer}, before global average pooling), XGrad-CAM's channel weights "
                "equal Grad-CAM's (Fu et al. 2020), so their maps coincide; --layer picks another")
    return f"their maps coincide at layer {layer}"


def footer(run, commands: Sequence[str] = ()) -> List[str]:
    """The lines printed under a finished run's table: the notes that apply to ``run`` and
    the next commands (``commands`` first, then the usual ones on ``run.dir``)."""
    lines = []
    for m in model_independent(run):
        lines.append(f"note: {m} makes its maps without looking at the model (a model-independent "
                     "baseline, here to calibrate the metrics): a metric that ranks it best is not "
                     "measuring the model's explanations.")
    layer = (run.config.get("backbone") or {}).get("layer") or "the explained layer"
    rows = run.rows()
    for a, b, n in identical_methods(run, rows):
        lines.append(f"note: {a} and {b} have the same values on all {n} images (to float rounding): "
                     f"{_same_reason(a, b, layer)}.")
    n_images = int(rows["image_id"].nunique()) if len(rows) else 0
    if 0 < n_images < FEW_IMAGES:
        lines.append(f"note: {n_images} images give wide intervals, so most cells are ≈ (not "
                     f"significantly worse than the best); `camzoo stats {run.dir}` says how many "
                     "images a difference needs.")
    d = run.dir
    lines += ["next:", *(f"  {c}" for c in commands),
              f"  camzoo report {d}    one HTML page: the table, best and worst images, curves",
              f"  camzoo stats {d}     paired tests, images needed, metric agreement",
              f"  camzoo table {d} --format latex    the table for a paper (--per-image: every row)",
              "  camzoo explain PHOTO.jpg --methods gradcam,rise    maps of your own photos"]
    return lines
