"""What a training run leaves beside its checkpoint: the per-step log, its curves, the best
checkpoint.

For a checkpoint ``DIR/NAME.pt`` (:func:`fit`'s ``out``), :func:`run_files` names

- ``DIR/NAME.best.pt``: the checkpoint of the epoch with the best held-out metric
  (``TrainTask.best_metric``, e.g. the lowest held-out ``loss``; ties keep the earlier epoch);
- ``DIR/NAME.train_log.csv``: one row per training step (``split=train``: that step's loss
  terms, on rank 0's batch) and one per epoch for the held-out split (``split=val``: the
  task's held-out metrics, e.g. AD(100%) / IC(100%) for L-CAM);
- ``DIR/NAME.training.png``: the curves of that log (:func:`camzoo.results.plots.training_curves`).

The names keep several heads trained into one folder apart. The log is rewritten atomically
after every epoch, so it always matches the last checkpoint; a resumed run reads it back and
drops rows of epochs the checkpoint does not have.
"""
from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Union

from ..utils import atomic_write

#: the columns every row has, first; the loss terms and metrics follow in first-seen order
LEADING_COLUMNS = ("epoch", "step", "split", "lr")


@dataclass(frozen=True)
class RunFiles:
    """Paths of the files written beside a checkpoint (see the module docstring)."""

    last: str
    best: str
    log: str
    plot: str


def run_files(out: Union[str, os.PathLike]) -> RunFiles:
    """The files of checkpoint ``out``: ``NAME.pt`` -> ``NAME.best.pt``, ``NAME.train_log.csv``,
    ``NAME.training.png`` (``NAME`` = ``out`` without its ``.pt``/``.pth`` extension)."""
    out = os.fspath(out)
    root, ext = os.path.splitext(out)
    if ext not in (".pt", ".pth"):
        root, ext = out, ".pt"
    return RunFiles(last=out, best=f"{root}.best{ext}", log=f"{root}.train_log.csv",
                    plot=f"{root}.training.png")


def columns(rows: Sequence[Dict[str, Any]]) -> List[str]:
    """:data:`LEADING_COLUMNS`, then every other key in the order it first appears."""
    cols = list(LEADING_COLUMNS)
    for r in rows:
        for k in r:
            if k not in cols:
                cols.append(k)
    return cols


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else str(v)
    return str(v)


def write_log(rows: Sequence[Dict[str, Any]], path: Union[str, os.PathLike]) -> None:
    """Write ``rows`` as CSV (columns: :func:`columns`; a key a row lacks is an empty cell),
    atomically."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    cols = columns(rows)
    w.writerow(cols)
    for r in rows:
        w.writerow([_cell(r.get(c)) for c in cols])
    atomic_write(path, buf.getvalue())


def _parse(v: str) -> Any:
    if v == "":
        return None
    try:
        return int(v)
    except ValueError:
        pass
    try:
        return float(v)
    except ValueError:
        return v


def read_log(path: Union[str, os.PathLike], upto_epoch: Optional[int] = None) -> List[Dict[str, Any]]:
    """Rows of a log written by :func:`write_log` (numbers parsed, empty cells dropped);
    with ``upto_epoch``, only rows of epochs ``<= upto_epoch``. A missing file gives ``[]``."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        return []
    with open(path, newline="") as f:
        rows = [{k: _parse(v) for k, v in r.items() if v != ""} for r in csv.DictReader(f)]
    if upto_epoch is not None:
        rows = [r for r in rows if int(r.get("epoch", 0)) <= upto_epoch]
    return rows


def better(value: float, best: Optional[float], mode: str) -> bool:
    """Is ``value`` strictly better than ``best`` (``None``: nothing yet) under ``mode``
    (``"min"`` or ``"max"``)? A NaN is never better."""
    if mode not in ("min", "max"):
        raise ValueError(f"best-checkpoint mode must be 'min' or 'max'; got {mode!r}")
    if value is None or not math.isfinite(value):
        return False
    if best is None:
        return True
    return value < best if mode == "min" else value > best
