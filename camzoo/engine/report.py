"""``camzoo report``: a bench run (or several) as one self-contained HTML page.

This module gathers what the page shows; :mod:`camzoo.results.report_html` renders it:

- the run's table (``camzoo table``'s cells and marks), for several runs the ``camzoo compare``
  table first; the stored insertion / deletion and ROAD curves, the metric agreement and
  reliability figures; the failures and unreadable images; the provenance;
- per method and table column, the ``n_images`` best and worst images
  (:func:`~camzoo.results.report_html.extremes`), each with the photo, every method's map and
  the method's row values;
- a ``camzoo sanity`` folder's summary and figures (``sanity``).

**Maps.** A shown image's map is read from the run when stored: ``maps/<method>/<id>.npy``
(``--save-maps``, float32) first, else ``grid/<method>/<id>.npy`` (the grid figure's first
``grid_images`` images, float16). The others are made again through the one image-to-map path
(:func:`camzoo.engine.maps.iterate_maps`) with the run's backbone, weights, layer, method
options, target and amp, rebuilt as ``camzoo analyze`` rebuilds them (the weights must be the
run's, the images' manifest hash the run's); with ``recompute=False`` such an image shows
:data:`~camzoo.results.report_html.NO_MAP` instead.

**Photos** are the run's images (its data as ``config.json`` names it) through the backbone's
own ``preprocess`` (resize, crop), so a map lies on the pixels it was made for. When the data or
the backbone cannot be opened here, the page says why and shows the stored maps over gray.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import glob
import os
import platform
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Set, Tuple, Union

import numpy as np
import pandas as pd
import torch

from ..explainers.base import valid_maps
from ..metrics.similarity import SIMILARITIES
from ..models.backbone import Backbone
from ..results import tables
from ..results.report_html import (ImageView, RunReport, SanityView, extreme_images, picked_ids, render,
                                   run_figures)
from ..results.run import Run, map_path
from ..utils import atomic_write
from ..version import __version__
from .analyze import run_dataset, rebuild_run
from .maps import MAIN_VIEW, iterate_maps, make_methods
from .randomization import CSV_NAME, SanityResult

#: the report's file name in a run directory (one run, no ``out``)
REPORT_NAME = "report.html"
#: images per method and column shown by default (best and worst each)
DEFAULT_IMAGES = 3
Echo = Callable[[str], None]
Pair = Tuple[str, str]  # (method, image_id)


def _as_list(runs) -> list:
    """One run (a directory or a :class:`Run`) or an iterable of them, as a list."""
    return [runs] if isinstance(runs, (str, os.PathLike, Run)) else list(runs)


def default_out(runs: Sequence[Run]) -> str:
    """``<run>/report.html`` for one run; for several, beside the first run:
    ``report-<name1>-vs-<name2>....html`` (``report-<name1>-vs-<k>-runs.html`` when the names
    make a file name over 150 characters)."""
    if len(runs) == 1:
        return os.path.join(runs[0].dir, REPORT_NAME)
    first = os.path.abspath(runs[0].dir)
    names = [os.path.basename(os.path.abspath(r.dir)) for r in runs]
    name = "report-" + "-vs-".join(names) + ".html"
    if len(name) > 150:
        name = f"report-{names[0][:100]}-vs-{len(runs) - 1}-runs.html"
    return os.path.join(os.path.dirname(first), name)


def stored_map(run_dir: str, method: str, image_id: str) -> Optional[Tuple[np.ndarray, str]]:
    """``(map [H, W] float32, where from)`` of a stored map (``maps/`` float32 before ``grid/``
    float16), or None."""
    for kind, what in (("maps", "stored, float32"), ("grid", "stored, float16")):
        p = map_path(run_dir, kind, method, image_id)
        if os.path.isfile(p):
            return np.load(p).astype(np.float32), what
    return None


def photos(bb: Backbone, ds, ids: Set[str]) -> Dict[str, np.ndarray]:
    """image_id -> ``[H, W, 3]`` in [0, 1]: the images ``ids`` of dataset ``ds`` as ``bb``
    sees them (its ``preprocess``: resize, crop), unreadable ones left out."""
    out = {}
    for it in ds.items:
        if it.image_id not in ids:
            continue
        try:
            out[it.image_id] = bb.picture(ds.load(it))
        except Exception:  # unreadable now: the card says "no photo"
            continue
    return out


def recompute_maps(run: Run, bb: Backbone, options: Dict[str, Dict[str, Any]], ds, pairs: Set[Pair],
                   batch_size: int = 16, echo: Echo = print) -> Tuple[Dict[Pair, np.ndarray], Dict[Pair, str]]:
    """The maps of ``pairs`` (method, image_id) made again through the shared map path with the
    run's method ``options`` (:func:`~camzoo.engine.analyze` ``rebuild_run``), target and amp.

    Returns:
        ``(maps, why)``: ``[H, W]`` float32 maps in [0, 1] per pair, and per pair that got none
        the reason (the method failed on its batch, an invalid map, an unreadable image).
    """
    names = [m for m in run.methods if any(p[0] == m for p in pairs)]
    ids = {iid for _, iid in pairs}
    items = [(i, it) for i, it in enumerate(ds.items) if it.image_id in ids]
    done = {(m, it.image_id) for m in names for _, it in items if (m, it.image_id) not in pairs}
    mm = make_methods(bb, names, {m: options[m] for m in names})
    maps: Dict[Pair, np.ndarray] = {}
    why: Dict[Pair, str] = {}
    batches = iterate_maps(ds, items, mm, views={MAIN_VIEW: bb}, batch_size=batch_size,
                           target=run.config["target"], done=done, amp=run.config.get("amp"))
    with contextlib.closing(batches):
        for batch in batches:
            for e in batch.errors:
                echo(f"report: skipped {e[3]}")
            for m in mm:
                try:
                    mp = batch.maps_of(m)
                except Exception as exc:  # the method fails here as in the run: say so on the card
                    for j in batch.pending(m):
                        why[(m.name, batch.items[j][1].image_id)] = f"recomputing failed: {type(exc).__name__}: {exc}"
                    continue
                if mp is None:
                    continue
                V, ok = mp.V.detach().float().cpu().numpy(), valid_maps(mp.V).tolist()
                for k, j in enumerate(mp.sel):
                    pair = (m.name, batch.items[j][1].image_id)
                    if ok[k]:
                        maps[pair] = V[k]
                    else:
                        why[pair] = "invalid map (not finite or outside [0,1])"
    return maps, why


def rebuild(run: Run, backbone: Optional[Backbone] = None, device=None, echo: Echo = print):
    """``(backbone, method options, dataset, None)`` of the run as ``camzoo analyze`` rebuilds
    them (``backbone``: the run's, when it was made with an object), or ``(None, None, None,
    reason)`` when that fails here (data moved, weights missing or changed), said through ``echo``."""
    try:
        bb, opts = rebuild_run(run, backbone, device)
        return bb, opts, run_dataset(run), None
    except Exception as exc:  # the tables and stored maps need neither
        reason = f"the run's backbone or images cannot be opened here ({type(exc).__name__}: {exc})"
        echo(f"report: note: {reason}; no photos, no recomputed maps")
        return None, None, None, reason


def gather_images(run: Run, ids: Sequence[str], *, recompute: bool = True, backbone: Optional[Backbone] = None,
                  device=None, batch_size: int = 16,
                  echo: Echo = print) -> Tuple[Dict[str, ImageView], Optional[List[str]], str]:
    """The photos and every method's map of the images ``ids`` (see the module docstring).

    Returns:
        ``(views, class names, note)``: image_id -> :class:`ImageView`; the backbone's class
        names (None when it could not be rebuilt); why photos or maps are missing ("" if not).
    """
    views = {iid: ImageView(iid) for iid in ids}
    missing: Set[Pair] = set()
    for iid in ids:
        for m in run.methods:
            got = stored_map(run.dir, m, iid)
            if got is None:
                missing.add((m, iid))
            else:
                views[iid].maps[m], views[iid].source[m] = got
    if not ids:
        return views, None, ""
    bb, opts, ds, note = rebuild(run, backbone, device, echo)
    if bb is None:
        for m, iid in missing:
            views[iid].missing[m] = "no stored map, and it cannot be recomputed here"
        return views, None, note
    for iid, img in photos(bb, ds, set(ids)).items():
        views[iid].photo = img
    if recompute and missing:
        echo(f"report: recomputing {len(missing)} map(s) of {len({i for _, i in missing})} image(s)")
        maps, why = recompute_maps(run, bb, opts, ds, missing, batch_size, echo)
        for (m, iid), V in maps.items():
            views[iid].maps[m], views[iid].source[m] = V, "recomputed"
        for (m, iid), w in why.items():
            views[iid].missing[m] = w
    return views, list(bb.class_names), ""


def load_sanity(folder: str) -> SanityView:
    """A ``camzoo sanity`` output folder: ``sanity.csv`` (its mean similarity per step and
    method, per similarity) and its PNG figures; ``FileNotFoundError`` when it has no
    ``sanity.csv``."""
    path = os.path.join(os.fspath(folder), CSV_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{folder} is not a camzoo sanity folder (no {CSV_NAME})")
    rows = pd.read_csv(path)
    need = {"step", "block", "mode", "image_id", "method"}
    if not need <= set(rows.columns):
        raise ValueError(f"{path} is not a camzoo sanity.csv (columns {', '.join(sorted(need))} needed)")
    blocks = rows.drop_duplicates("step").sort_values("step").block.astype(str).tolist()[1:]
    res = SanityResult(rows, blocks, str(rows["mode"].iloc[0]) if len(rows) else "cascading")
    summary = {s: res.summary(s) for s in SIMILARITIES if s in rows.columns}
    pngs = sorted(glob.glob(os.path.join(glob.escape(os.fspath(folder)), "sanity_*.png")),
                  key=lambda p: (p.endswith("_cascade.png"), p))
    figures = []
    for p in pngs:
        with open(p, "rb") as f:
            figures.append((os.path.basename(p), f.read()))
    return SanityView(os.fspath(folder), summary, res.mode, int(rows.image_id.nunique()), figures)


def report_env() -> Dict[str, str]:
    """The reporting process: camzoo, torch, CUDA, Python, platform and the date (what the page
    says "at report time" for what a run did not record)."""
    return {"camzoo": __version__, "torch": torch.__version__,
            "cuda": torch.version.cuda or "none (torch built without CUDA)",
            "python": platform.python_version(), "platform": platform.platform(),
            "date": _dt.datetime.now().isoformat(timespec="seconds")}


def gather(run: Run, n_images: int = DEFAULT_IMAGES, *, recompute: bool = True,
           backbone: Optional[Backbone] = None, device=None, batch_size: int = 16,
           echo: Echo = print) -> RunReport:
    """Everything the report shows of one run (:class:`~camzoo.results.report_html.RunReport`)."""
    table = tables.summary(run)
    picks = extreme_images(run, n_images)
    ids = list(dict.fromkeys(i for lst in picked_ids(picks).values() for i in lst))
    views, class_names, note = gather_images(run, ids, recompute=recompute, backbone=backbone, device=device,
                                             batch_size=batch_size, echo=echo)
    return RunReport(run, table, picks, views, run_figures(run), class_names, note)


def write_report(run_dirs_or_runs: Union[str, os.PathLike, Run, Iterable[Union[str, os.PathLike, Run]]],
                 out: Optional[str] = None, *, n_images: int = DEFAULT_IMAGES, sanity: Optional[str] = None,
                 recompute: bool = True, backbone: Optional[Backbone] = None, device=None,
                 batch_size: int = 16, echo: Echo = print) -> str:
    """Write the HTML report of one or several bench runs; return its path.

    Args:
        run_dirs_or_runs: a run directory or :class:`~camzoo.bench.Run`, or several (then the
            ``camzoo compare`` table comes first, then each run's sections).
        out: the HTML file [default: ``<run>/report.html``; several runs: beside the first,
            ``report-<name1>-vs-<name2>.html``, see :func:`default_out`].
        n_images: best and worst images shown per method and table column (0: none).
        sanity: a ``camzoo sanity`` output folder to show (its summary and figures).
        recompute: make the maps a run did not store (see the module docstring); False shows
            "no stored map" instead.
        backbone: the run's Backbone when it was made with an object (Python API), or to
            reuse one already loaded (one run only).
        device, batch_size: of the recomputation.
        echo: progress lines.
    Raises:
        FileNotFoundError: a folder is not a camzoo run, ``sanity`` not a sanity folder.
        ValueError: ``n_images`` < 0, ``out`` a folder, a damaged ``config.json``.
    """
    if int(n_images) < 0:
        raise ValueError(f"n_images must be >= 0; got {n_images}")
    items = _as_list(run_dirs_or_runs)
    if not items:
        raise ValueError("report needs at least one run")
    with contextlib.ExitStack() as opened:  # the runs opened here are closed on every exit
        runs = [r if isinstance(r, Run) else opened.enter_context(Run(os.fspath(r))) for r in items]
        path = os.fspath(out) if out else default_out(runs)
        if os.path.isdir(path):
            raise ValueError(f"{path} is a folder; give the report's file name "
                             f"(e.g. {os.path.join(path, REPORT_NAME)})")
        san = load_sanity(sanity) if sanity else None
        reports = [gather(r, int(n_images), recompute=recompute, backbone=backbone if len(runs) == 1 else None,
                          device=device, batch_size=batch_size, echo=echo) for r in runs]
        page = render(reports, tables.compare(runs) if len(runs) > 1 else None, san, report_env())
    atomic_write(path, page)
    echo(f"report: {path} ({len(page.encode()) / 1e6:.1f} MB)")
    return path
