"""The HTML report of bench runs (``camzoo report``): one self-contained page, rendered from data.

:mod:`camzoo.engine.report` gathers what a page shows (the runs, the photos and maps of the
images shown, a sanity-check folder) into :class:`RunReport` objects; this module picks the
images (:func:`extreme_images`), draws the figures (:func:`run_figures`, through
:mod:`camzoo.results.plots`) and writes the page (:func:`render`). Nothing here builds a model
or makes a map.

The page holds no reference outside itself: every image is a ``data:`` URI (photos and overlays
JPEG, figures PNG), the style sheet and the one small script (sorting the tables) are inline.

Which images are shown: for every method and every table column, the ``n`` best and the ``n``
worst of the method's stored rows by that column's per-image value (the column's direction,
``MetricSpec.higher_is_better``, says which end is best; images without a value are left out;
ties are broken by image id, ascending, in both lists; with fewer than ``2 n`` images the two
lists share images).
"""
from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from ..models.weights import RANDOM_MARK, is_random
from . import tables
from .run import Run

#: the message where a shown image has no map (stored maps only, ``--no-recompute``)
NO_MAP = "no stored map: rerun with --save-maps or drop --no-recompute"
#: how a metric cell is written: the Markdown table's strings, with HTML marks
#: (the interval in a span of its own, shown smaller on a second line; the text is the same)
HTML_CELL = tables.CellStyle("<strong>{}</strong>", "<u>{}</u>", '<span class="ci"> \u00b1 {}</span>',
                             f'<span class="ci"> \u00b1 {tables.NO_CI}</span>',
                             f'<span class="near"> {tables.NEAR}</span>',
                             wrap='<div class="cell">{}</div>', interval='<span class="ci"> [{}, {}]</span>')
#: pixel sizes of the embedded images: the photo and the method's overlay, the other overlays
MAIN_PX, OTHER_PX = 150, 104
#: failure rows listed per run (the rest: ``camzoo errors RUN``)
MAX_FAILURES = 200


@dataclass
class Figure:
    """One figure of the report: ``uri`` a PNG ``data:`` URI, or None with the reason in ``note``."""

    title: str
    uri: Optional[str]
    note: str = ""
    wide: bool = False  # a row of its own


@dataclass
class ImageView:
    """One shown image: the photo as the classifier saw it and each method's map.

    Attributes:
        image_id: the run's image id.
        photo: ``[H, W, 3]`` in [0, 1] after the backbone's resize and crop (None: not available).
        maps: method -> ``[H, W]`` map in [0, 1].
        source: method -> where its map came from (``"stored, float32"``, ``"stored, float16"``,
            ``"recomputed"``).
        missing: method -> why it has no map.
    """

    image_id: str
    photo: Optional[np.ndarray] = None
    maps: Dict[str, np.ndarray] = field(default_factory=dict)
    source: Dict[str, str] = field(default_factory=dict)
    missing: Dict[str, str] = field(default_factory=dict)


@dataclass
class SanityView:
    """A ``camzoo sanity`` output folder as the report shows it.

    Attributes:
        folder: the folder.
        summary: per similarity, mean over images: steps (block labels) x methods.
        mode: ``cascading`` / ``independent``.
        n_images: images compared.
        figures: ``(file name, PNG bytes)`` of its figures.
    """

    folder: str
    summary: Dict[str, pd.DataFrame]
    mode: str
    n_images: int
    figures: List[Tuple[str, bytes]]


@dataclass
class RunReport:
    """What the report shows of one run.

    Attributes:
        run: the run.
        table: its :func:`camzoo.results.tables.summary` table.
        picks: :func:`extreme_images` of the run.
        images: image_id -> :class:`ImageView` of every picked image.
        figures: :func:`run_figures` of the run.
        class_names: the backbone's class names (None: not loaded).
        note: why photos or maps are missing, if they are (shown above the images).
    """

    run: Run
    table: tables.Table
    picks: Dict[str, Dict[str, Tuple[List[str], List[str]]]]
    images: Dict[str, ImageView]
    figures: List[Figure]
    class_names: Optional[Sequence[str]] = None
    note: str = ""


# -- picking the images -------------------------------------------------------------------------
def extremes(rows: pd.DataFrame, method: str, spec, n: int) -> Tuple[List[str], List[str]]:
    """``(best, worst)``: the image ids of ``method``'s ``n`` best and ``n`` worst rows by
    ``spec.key`` (a :class:`~camzoo.metrics.MetricSpec`), best first and worst first. Rows
    without a value are left out; ties go by image id, ascending, in both lists."""
    mine = rows[rows.method == method]
    df = pd.DataFrame({"image_id": mine.image_id.astype(str).to_numpy(),
                       "v": pd.to_numeric(mine[spec.key], errors="coerce").to_numpy(np.float64)}).dropna()
    hib = bool(spec.higher_is_better)
    best = df.sort_values(["v", "image_id"], ascending=[not hib, True], kind="mergesort")
    worst = df.sort_values(["v", "image_id"], ascending=[hib, True], kind="mergesort")
    return best.image_id.head(n).tolist(), worst.image_id.head(n).tolist()


def extreme_images(run: Run, n: int) -> Dict[str, Dict[str, Tuple[List[str], List[str]]]]:
    """method -> table column header -> :func:`extremes` of the run's stored rows."""
    rows = run.rows()
    return {m: {s.header: extremes(rows, m, s, n) for s in run.specs()} for m in run.methods}


def picked_ids(picks: Dict[str, Dict[str, Tuple[List[str], List[str]]]]) -> Dict[str, List[str]]:
    """method -> the distinct image ids of its picks, in the order they are first listed."""
    return {m: list(dict.fromkeys(i for best, worst in per.values() for i in (*best, *worst)))
            for m, per in picks.items()}


# -- figures -------------------------------------------------------------------------------------
def png_uri(data: bytes) -> str:
    """A PNG file's bytes as a ``data:`` URI."""
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def jpeg_uri(img01: np.ndarray, px: int) -> str:
    """An ``[H, W, 3]`` image in [0, 1] as a JPEG ``data:`` URI, its longer side ``px`` pixels."""
    from PIL import Image

    im = Image.fromarray((np.clip(img01, 0, 1) * 255 + 0.5).astype(np.uint8))
    w, h = im.size
    scale = px / max(w, h)
    im = im.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BICUBIC)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=82, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _drawn(draw, folder: str, name: str) -> str:
    """Run ``draw(path)`` (a :mod:`camzoo.results.plots` function writing a PNG) and return the
    PNG as a ``data:`` URI."""
    path = os.path.join(folder, name)
    draw(path)
    with open(path, "rb") as f:
        return png_uri(f.read())


def stored_curves(run: Run, keys: Dict[str, str]) -> Dict[str, Dict[str, np.ndarray]]:
    """method -> ``{name: [N, L] curves}`` of the run's stored curve columns ``keys`` (name ->
    column); methods without any are left out."""
    out = {}
    for m in run.methods:
        cs = {k: run.store.curves(m, col) for k, col in keys.items()}
        cs = {k: v for k, v in cs.items() if v is not None}
        if cs:
            out[m] = cs
    return out


def _road_scales(run: Run) -> List[Tuple[str, Dict[str, str]]]:
    """``(label, {"morf": column, "lerf": column})`` of the ROAD curves the run's table shows
    (its ``road.scale``; accuracy, the paper's, and / or the probability of ``c``)."""
    from ..metrics.road.curves import ACC_CURVES, PROB_CURVES

    opts = run.config["protocols"]["road"]["options"]
    acc = bool(opts.get("accuracy", False))
    scale = opts.get("scale", "accuracy") if acc else "probability"
    out = []
    if scale in ("accuracy", "both"):
        out.append(("accuracy", dict(zip(("morf", "lerf"), ACC_CURVES))))
    if scale in ("probability", "both"):
        out.append(("probability of c", dict(zip(("morf", "lerf"), PROB_CURVES))))
    return out


def curve_figures(run: Run, folder: str) -> List[Figure]:
    """The mean insertion / deletion curves and the mean ROAD curves of the run's stored
    curves (:func:`~camzoo.results.plots.mean_curves`, ``road_mean_curves``)."""
    from . import plots

    label = tables.run_backbone_label(run)
    title = "Insertion / deletion curves"
    curves = stored_curves(run, {"insertion": "ins_curve", "deletion": "del_curve"})
    out = [Figure(title, _drawn(lambda p: plots.mean_curves(curves, p, title=label), folder, "insdel.png"),
                  "mean over images per method; the legend gives the AUC x100") if curves else
           Figure(title, None, "not in this run (protocol rise not computed)")]
    if "road" not in run.config["protocols"]:
        return out + [Figure("ROAD curves", None, "not in this run (protocol road: --metrics all,road)")]
    fractions = run.config["protocols"]["road"]["options"].get("fractions")
    for k, (scale, keys) in enumerate(_road_scales(run)):
        road = stored_curves(run, keys)
        t = f"ROAD curves ({scale})"
        ylabel = "accuracy (top-1 is still c)" if scale == "accuracy" else "softmax probability of c"
        out.append(Figure(t, _drawn(lambda p: plots.road_mean_curves(road, p, title=label, ylabel=ylabel,
                                                                     fractions=fractions), folder, f"road{k}.png"),
                          "mean over images per method, MoRF and LeRF; the legend gives the mean x100")
                   if road else Figure(t, None, "no stored ROAD curves"))
    return out


def agreement_figure(run: Run, folder: str) -> Figure:
    """Do the metrics rank the methods alike (:func:`camzoo.results.concordance.agreement`,
    drawn by ``agreement_heatmap``); skipped, saying why, when the run is too small."""
    from .concordance import agreement
    from .plots import agreement_heatmap

    title = "Metric agreement"
    try:
        ag = agreement(run)
    except ValueError as exc:
        return Figure(title, None, f"skipped: {exc}")
    if len(ag.metrics) < 2 or ag.n_w == 0:
        return Figure(title, None, "skipped: needs 2 or more metric columns and an image where the "
                                   "methods' rankings are defined")
    uri = _drawn(lambda p: agreement_heatmap(ag.spearman, p, "Spearman correlation of the per-image "
                                                             "method rankings"), folder, "agreement.png")
    return Figure(title, uri, f"mean over images of the Spearman correlation between two metrics' rankings "
                              f"of the methods; Kendall's W of all metrics {ag.kendall_w:.2f} over "
                              f"{ag.n_w} images (camzoo stats --agreement)")


def reliability_figure(run: Run, folder: str, n_resamples: int = 1000) -> Figure:
    """Tomsett et al.'s metric reliability (:func:`camzoo.results.reliability.reliability`,
    drawn by ``reliability_bars``); skipped, saying why, when the run is too small."""
    from .plots import reliability_bars
    from .reliability import reliability

    title = "Metric reliability"
    try:
        res = reliability(run, n_resamples=n_resamples)
    except ValueError as exc:
        return Figure(title, None, f"skipped: {exc}")
    uri = _drawn(lambda p: reliability_bars(res, p), folder, "reliability.png")
    return Figure(title, uri, f"Tomsett et al. 2020, {int(100 * res.level)} % percentile intervals over "
                              f"{n_resamples:,} bootstrap resamples of the images (camzoo stats --reliability)",
                  wide=True)


def run_figures(run: Run) -> List[Figure]:
    """Every figure of a run's report: curves, metric agreement, metric reliability."""
    with tempfile.TemporaryDirectory(prefix="camzoo-report-") as d:
        return [*curve_figures(run, d), agreement_figure(run, d), reliability_figure(run, d)]


# -- HTML pieces ---------------------------------------------------------------------------------
def esc(s: Any) -> str:
    """HTML-escaped ``str(s)``."""
    return html.escape(str(s), quote=True)


def _num(v: Any) -> str:
    """A cell's sort key (``data-v``): the float, empty for NaN."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return ""
    return "" if math.isnan(f) else repr(f)


def table_html(table: tables.Table, tid: str) -> str:
    """A :class:`~camzoo.results.tables.Table` as a sortable HTML table: the cells of
    ``camzoo table``'s Markdown (value, ``± half-width`` or ``[lo, hi]``, ``≈``) with best bold
    and second underlined, each cell's mean in ``data-v`` (the sort key), a ``<tbody>`` per
    backbone block (sorting stays within a block), then the legend and footnotes."""
    df = table.df
    multi = isinstance(df.index, pd.MultiIndex)
    heads = ['<th scope="col">Method</th>']
    for j, col in enumerate(df.columns):
        hib = table.higher_is_better.get(col, False)  # #FW and s/img: lower first
        heads.append(f'<th scope="col" class="sortable" data-col="{j + 1}" data-hib="{int(hib)}" '
                     f'title="sort by the mean">{esc(col)}</th>')
    bodies: Dict[Any, List[str]] = {}
    for i, key in enumerate(df.index):
        block, method = key if multi else (None, key)
        cells = tables.cells(table, i, HTML_CELL.cell, esc)
        tds = "".join(f'<td data-v="{_num(df.iloc[i][c])}">{s}</td>' for c, s in zip(df.columns, cells))
        bodies.setdefault(block, []).append(f'<tr data-method="{esc(method)}"><th scope="row">{esc(method)}'
                                            f'</th>{tds}</tr>')
    body = "".join("<tbody>" + (f'<tr class="block"><th colspan="{len(df.columns) + 1}">{esc(b)}</th></tr>'
                                if multi else "") + "".join(rows) + "</tbody>" for b, rows in bodies.items())
    notes = "".join(f'<p class="note">{esc(n)}</p>' for n in tables.legend(table) + table.footnotes)
    return (f'<div class="scroll"><table class="results sortable" id="{tid}"><thead><tr>{"".join(heads)}'
            f'</tr></thead>{body}</table></div>{notes}')


def frame_html(df: pd.DataFrame, fmt: str = "{:.3f}", index: bool = True, cls: str = "plain") -> str:
    """A small DataFrame as an HTML table (floats through ``fmt``; text escaped)."""
    def cell(v):
        return esc(fmt.format(v)) if isinstance(v, (float, np.floating)) and not math.isnan(v) else \
            ("-" if isinstance(v, (float, np.floating)) else esc(v))

    head = ([esc(df.index.name or "")] if index else []) + [esc(c) for c in df.columns]
    rows = ["<tr>" + (f"<th scope='row'>{esc(k)}</th>" if index else "") +
            "".join(f"<td>{cell(v)}</td>" for v in r) + "</tr>" for k, r in zip(df.index, df.itertuples(index=False))]
    return (f'<div class="scroll"><table class="{cls}"><thead><tr>' + "".join(f"<th>{h}</th>" for h in head)
            + "</tr></thead><tbody>" + "".join(rows) + "</tbody></table></div>")


def figure_html(fig: Figure) -> str:
    """One figure (or the reason it is not there)."""
    if fig.uri is None:
        return f'<div class="fig skipped"><h4>{esc(fig.title)}</h4><p class="note">{esc(fig.note)}</p></div>'
    return (f'<figure class="fig{" wide" if fig.wide else ""}"><h4>{esc(fig.title)}</h4><img src="{fig.uri}" '
            f'alt="{esc(fig.title)}">'
            f'<figcaption>{esc(fig.note)}</figcaption></figure>')


# -- the images ----------------------------------------------------------------------------------
class _Thumbs:
    """The encoded photos and overlays of one run, each made once however often it is shown."""

    def __init__(self, images: Dict[str, ImageView]) -> None:
        self.images = images
        self._cache: Dict[Tuple[str, str, int], str] = {}

    def _base(self, v: ImageView, shape: Tuple[int, int]) -> np.ndarray:
        return v.photo if v.photo is not None else np.full((*shape, 3), 0.5)

    def photo(self, iid: str) -> Optional[str]:
        v = self.images[iid]
        if v.photo is None:
            return None
        key = (iid, "", MAIN_PX)
        if key not in self._cache:
            self._cache[key] = jpeg_uri(v.photo, MAIN_PX)
        return self._cache[key]

    def overlay(self, iid: str, method: str, px: int) -> Optional[str]:
        """The method's map over the photo (over gray when there is no photo), or None."""
        from .plots import overlay

        v = self.images[iid]
        if method not in v.maps:
            return None
        key = (iid, method, px)
        if key not in self._cache:
            V = np.asarray(v.maps[method], dtype=np.float32)
            base = self._base(v, V.shape)
            if base.shape[:2] != V.shape:
                from PIL import Image

                V = np.asarray(Image.fromarray(V).resize(base.shape[1::-1], Image.BILINEAR))
            self._cache[key] = jpeg_uri(overlay(base, V), px)
        return self._cache[key]


def _thumb(uri: Optional[str], caption: str, cls: str, why: str) -> str:
    """One thumbnail with its caption, or the reason there is none."""
    inner = (f'<img src="{uri}" alt="{esc(caption)}">' if uri else f'<div class="nomap">{esc(why)}</div>')
    return f'<figure class="{cls}">{inner}<figcaption>{esc(caption)}</figcaption></figure>'


def _class_text(row: pd.Series, class_names: Optional[Sequence[str]]) -> str:
    """``"class 281 tabby, p = 0.52"`` (and the top-1 when it is another class)."""
    def name(c):
        c = int(c)
        return f"{c} {class_names[c]}" if class_names is not None and 0 <= c < len(class_names) else str(c)

    s = f"class {name(row['c'])}, p = {float(row['Y']):.3f}"
    if int(row["pred"]) != int(row["c"]):
        s += f" (top-1: {name(row['pred'])})"
    return s


def _values_html(rr: RunReport, row: pd.Series, marks: Dict[str, str]) -> str:
    """The method's row values of one image in table units, a box per table column; ``marks``:
    column -> ``"best"`` / ``"worst"`` / ``"best worst"`` where the image is among those shown."""
    boxes = []
    for s in rr.run.specs():
        v = tables.format_value(s.header, s.scale * float(row[s.key]))
        boxes.append(f'<div class="kv {marks.get(s.header, "")}" data-col="{esc(s.header)}"><span class="k">'
                     f'{esc(s.header)}</span><span class="val">{esc(v)}</span></div>')
    return f'<div class="vals">{"".join(boxes)}</div>'


def _card(rr: RunReport, thumbs: _Thumbs, method: str, iid: str, anchor: str, row: Optional[pd.Series],
          marks: Dict[str, str]) -> str:
    """An image as ``method`` sees it: photo, its overlay, the other methods' overlays, and its
    row values (table units; coloured where the image is among the best / worst shown)."""
    v = rr.images[iid]
    own = method + (f" ({v.source[method]})" if method in v.source else "")
    parts = [_thumb(thumbs.photo(iid), "photo", "main", rr.note or "no photo"),
             _thumb(thumbs.overlay(iid, method, MAIN_PX), own, "main own", v.missing.get(method, NO_MAP))]
    parts += [_thumb(thumbs.overlay(iid, m, OTHER_PX), m, "other", v.missing.get(m, NO_MAP))
              for m in rr.run.methods if m != method]
    head = f"<h4>{esc(iid)}</h4>"
    vals = ""
    if row is not None:
        head += f'<p class="cls">{esc(_class_text(row, rr.class_names))}</p>'
        vals = _values_html(rr, row, marks)
    else:
        vals = f'<p class="note">{esc(method)} has no stored row for this image (see Failures).</p>'
    return (f'<article class="card" id="{anchor}" data-image="{esc(iid)}" data-method="{esc(method)}">{head}'
            f'<div class="strip">{"".join(parts)}</div>{vals}</article>')


def _method_images(rr: RunReport, thumbs: _Thumbs, prefix: str, mi: int, method: str,
                   rows: pd.DataFrame) -> str:
    """One method's best and worst images: a table of links per column, then the cards."""
    picks = rr.picks[method]
    ids = picked_ids(rr.picks)[method]
    anchor = {iid: f"{prefix}-m{mi}-i{k}" for k, iid in enumerate(ids)}
    marks: Dict[str, Dict[str, str]] = {iid: {} for iid in ids}
    lines = []
    specs = {s.header: s for s in rr.run.specs()}
    for col, (best, worst) in picks.items():
        for iid in ids:
            marks[iid][col] = " ".join(k for k, lst in (("best", best), ("worst", worst)) if iid in lst)

        def links(lst):
            return " ".join(f'<a href="#{anchor[i]}">{esc(i)}</a>&nbsp;<span class="v">'
                            f'{esc(tables.format_value(col, specs[col].scale * float(rows.loc[(method, i), specs[col].key])))}'
                            f'</span>' for i in lst) or "-"

        lines.append(f"<tr><th scope='row'>{esc(col)}</th><td class='best'>{links(best)}</td>"
                     f"<td class='worst'>{links(worst)}</td></tr>")
    n = max((len(b) for b, _ in picks.values()), default=0)
    table = (f'<div class="scroll"><table class="extremes"><thead><tr><th>column</th><th>best {n}</th>'
             f'<th>worst {n}</th></tr></thead><tbody>{"".join(lines)}</tbody></table></div>')
    cards = "".join(_card(rr, thumbs, method, iid, anchor[iid],
                          rows.loc[(method, iid)] if (method, iid) in rows.index else None, marks[iid])
                    for iid in ids)
    return (f'<details class="method" id="{prefix}-m{mi}"{" open" if mi == 0 else ""}><summary>{esc(method)}'
            f' <span class="count">{len(ids)} images</span></summary>{table}<div class="cards">{cards}</div>'
            f'</details>')


def images_html(rr: RunReport, prefix: str) -> str:
    """The report's image section of one run: per method, its best and worst images."""
    if not rr.picks or not any(ids for ids in picked_ids(rr.picks).values()):
        return '<p class="note">No image to show (no stored rows).</p>'
    rows = rr.run.rows().set_index(["method", "image_id"])
    thumbs = _Thumbs(rr.images)
    intro = ('<p class="note">For each method and table column, the images of its best and worst '
             'per-image values (the column\'s arrow says which end is best; ties by image id). Each '
             "card shows the photo as the classifier saw it (the backbone's resize and crop), the "
             "method's map over it, the other methods' maps of the same image, and the method's row "
             'values in table units: <span class="kv best">green</span> where the image is among the '
             'method\'s best of that column, <span class="kv worst">red</span> among its worst.</p>')
    note = f'<p class="warn">{esc(rr.note)}</p>' if rr.note else ""
    return intro + note + "".join(_method_images(rr, thumbs, prefix, mi, m, rows)
                                  for mi, m in enumerate(rr.run.methods))


# -- failures, provenance ------------------------------------------------------------------------
def failures_html(run: Run) -> str:
    """The run's unreadable images and the (method, image, protocol) units a method failed on."""
    errs, fails = run.errors(), run.failures()
    out = []
    if len(errs):
        out.append(f"<h4>Unreadable images ({len(errs)})</h4>"
                   + frame_html(errs[["image_id", "path", "reason"]], index=False))
    if len(fails):
        f = fails.assign(protocol=fails.protocol.fillna("").replace("", "(map)"),
                         message=fails.message.fillna("").str.slice(0, 300))
        cols = ["method", "image_id", "protocol", "kind", "error", "message"]
        more = (f'<p class="note">{len(f) - MAX_FAILURES} more: camzoo errors {esc(run.dir)}</p>'
                if len(f) > MAX_FAILURES else "")
        out.append(f"<h4>Failures and invalid maps ({len(f)})</h4>"
                   + frame_html(f[cols].head(MAX_FAILURES), index=False) + more)
    return "".join(out) or '<p class="note">None: every image was read and every method evaluated it.</p>'


#: ``config.json`` fields shown when a run records them (``(key, label)``)
OPTIONAL_FIELDS = (("cudnn_version", "cuDNN"), ("torchvision_version", "torchvision"), ("timm_version", "timm"),
                   ("hostname", "host"))


def _timing_text(run: Run) -> str:
    """The run's wall time: ``config.json``'s ``wall_s`` (all its processes) when recorded,
    else the last process's engine loop (``timings.json``)."""
    if isinstance(run.config.get("wall_s"), (int, float)):
        return f"{float(run.config['wall_s']):.1f} s (config.json: every process of the run)"
    p = run.timings.get("process", {})
    if "loop_wall_s" not in p:
        return "not recorded"
    shards = run.timings.get("shards")
    return (f"{float(p['loop_wall_s']):.1f} s: the engine loop of the last process (timings.json)"
            + (f", {len(shards)} shards" if shards else ""))


def provenance(run: Run, env: Dict[str, str]) -> List[Tuple[str, str]]:
    """``(field, value)`` lines saying what the run was and ran on; a field the run did not
    record is taken from ``env`` (the reporting process) and marked "at report time"."""
    c, b, d = run.config, run.config["backbone"], run.config["data"]

    def rec(key: str, now: str) -> str:
        if c.get(key) not in (None, ""):
            return str(c[key])
        return f"{env.get(now, '?')} (at report time; not recorded by the run)"

    weights = f"{b.get('weights') or 'default'} (weights_id {b.get('weights_id')})"
    if b.get("weights_sha256"):
        weights += f", sha256 {b['weights_sha256']}"
    data = ", ".join(f"{k} {d[k]}" for k in ("layout", "root", "labels_file", "devkit", "subset", "limit")
                     if d.get(k) not in (None, "", 0))
    return [
        ("backbone", tables.run_backbone_label(run)), ("weights", weights),
        ("layer", f"{b.get('layer')} (input {b.get('input_size')} px, {b.get('num_classes')} classes)"),
        ("explained class", "ground truth" if c.get("target") == "gt" else "the classifier's top-1"),
        ("images", f"{d['n_images']} ({data}; seed {d.get('seed', 0)}; manifest {d['manifest_hash']}), "
                   f"{len(run.errors())} unreadable"),
        ("device", f"{c.get('device', '?')} ({c.get('device_name', '?')}), {c.get('torch_threads', '?')} torch "
                   f"threads, amp {c.get('amp') or 'fp32'}, tf32 {c.get('tf32')}, world size {c.get('world_size', 1)}"),
        ("camzoo", rec("camzoo_version", "camzoo")), ("torch", rec("torch_version", "torch")),
        ("CUDA", rec("cuda_version", "cuda")), ("Python", rec("python", "python")),
        ("platform", rec("platform", "platform")),
        *((label, str(c[key])) for key, label in OPTIONAL_FIELDS if c.get(key) not in (None, "")),
        ("created", str(c.get("created", "not recorded"))),
        *((("resumed", ", ".join(map(str, c["resumed"]))),) if c.get("resumed") else ()),
        *((("merged", str(c["merged"])),) if c.get("merged") else ()),
        *((("finished", str(c["finished"])),) if c.get("finished") else ()),
        ("wall time", _timing_text(run)), ("run directory", os.path.abspath(run.dir)),
        ("report", f"written {env.get('date', '?')} by camzoo {env.get('camzoo', '?')}, torch {env.get('torch', '?')}"),
    ]


def provenance_html(run: Run, env: Dict[str, str]) -> str:
    """Provenance lines, then the methods' and protocols' full options."""
    lines = "".join(f"<tr><th scope='row'>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in provenance(run, env))
    meth = pd.DataFrame([{"method": m, "class": v.get("class", ""), "#FW": v.get("forward_passes"),
                          "options": json.dumps(v.get("options", {}), sort_keys=True),
                          "classifier": v.get("classifier", {}).get("name", "")}
                         for m, v in run.config["methods"].items()]).set_index("method")
    prot = pd.DataFrame([{"protocol": p, "options": json.dumps(v.get("options", {}), sort_keys=True)}
                         for p, v in run.config["protocols"].items()]).set_index("protocol")
    return (f'<table class="prov"><tbody>{lines}</tbody></table><h4>Methods</h4>{frame_html(meth, "{:g}")}'
            f'<h4>Protocols</h4>{frame_html(prot)}')


def sanity_html(s: SanityView) -> str:
    """A ``camzoo sanity`` folder: its summary table per similarity and its figures."""
    out = [f'<p class="note">{esc(os.path.abspath(s.folder))}: {s.mode} model randomization, {s.n_images} images; '
           "mean similarity of each method's map of the randomized model to its map of the trained one "
           "(a method that explains the model falls as the blocks are randomized).</p>"]
    for sim, t in s.summary.items():
        out.append(f"<h4>{esc(sim)}</h4>" + frame_html(t.rename_axis(f"randomized ({s.mode})")))
    for name, data in s.figures:
        out.append(f'<figure class="fig"><img src="{png_uri(data)}" alt="{esc(name)}">'
                   f"<figcaption>{esc(name)}</figcaption></figure>")
    return "".join(out)


# -- the page ------------------------------------------------------------------------------------
CSS = """
:root{--fg:#1d2330;--mut:#5d6677;--line:#dfe3ea;--bg:#f6f7f9;--acc:#2457c5}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);
background:var(--bg)}
main{max-width:1440px;margin:0 auto;padding:0 20px 40px}header{background:#1f2a44;color:#fff;padding:18px 20px}
header .in{max-width:1400px;margin:0 auto}header h1{margin:0;font-size:21px;font-weight:600}
header p{margin:4px 0 0;color:#c9d3ea}
nav.toc{position:sticky;top:0;z-index:2;background:#fff;border-bottom:1px solid var(--line);padding:7px 20px}
nav.toc a{margin-right:16px;color:var(--acc);text-decoration:none;font-weight:500}
section{background:#fff;border:1px solid var(--line);border-radius:8px;padding:14px 18px;margin:16px 0}
h2{font-size:17px;margin:0 0 10px}h3{font-size:15px}h4{font-size:13px;margin:12px 0 6px}
.warn{background:#fff3cd;border:1px solid #f0d27a;border-radius:6px;padding:8px 12px}
.note{color:var(--mut);font-size:12.5px;margin:4px 0}.scroll{overflow-x:auto}
table{border-collapse:collapse;font-variant-numeric:tabular-nums}
th,td{padding:4px 6px;border-bottom:1px solid var(--line);text-align:right;white-space:nowrap}
th[scope=row],td:first-child,thead th:first-child{text-align:left}
thead th{background:#f0f2f6;position:sticky;top:0}table.results{font-size:13px}
table.results tbody tr:hover{background:#fafbfd}table.results strong{color:#0b3a9c}
th.sortable{cursor:pointer;user-select:none}th.sortable:hover{background:#e3e8f2}
th.sortable:hover:after{content:"\\21C5";color:#9aa3b5;font-size:11px}
th[aria-sort=ascending]:after{content:" \\25B2";color:var(--acc)}
th[aria-sort=descending]:after{content:" \\25BC";color:var(--acc)}
tr.block th{background:#e8ecf4;text-align:left}.figs{display:flex;flex-wrap:wrap;gap:14px}
.fig{margin:0;flex:1 1 460px;max-width:100%}
.fig img{max-width:100%;max-height:460px;border:1px solid var(--line);border-radius:4px}
.fig.wide{flex-basis:100%}.fig figcaption{color:var(--mut);font-size:12px}
.fig.skipped{flex:1 1 260px;align-self:flex-start;background:var(--bg);border-radius:6px;padding:2px 10px}
details.method{border:1px solid var(--line);border-radius:6px;margin:10px 0;padding:6px 12px}
details.method summary{cursor:pointer;font-weight:600;font-size:14.5px}
.count{color:var(--mut);font-weight:400;font-size:12px}
table.extremes td,table.extremes th{text-align:left;white-space:normal}table.extremes a{color:var(--acc)}
.v{color:var(--mut);font-size:12px}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(520px,1fr));gap:12px;margin-top:10px}
.card{border:1px solid var(--line);border-radius:6px;padding:8px 10px;background:#fcfcfd}
.card:target{outline:2px solid var(--acc)}.card h4{margin:0;font-size:13px}
.cls{margin:0;color:var(--mut);font-size:12px}
.strip{display:flex;flex-wrap:wrap;gap:6px;align-items:flex-end;margin:6px 0}
.strip figure{margin:0;text-align:center}
.strip figcaption{font-size:11px;color:var(--mut);max-width:150px;overflow:hidden}
.strip .main img,.strip .main .nomap{width:150px;height:150px}
.strip .other img,.strip .other .nomap{width:104px;height:104px}.strip img{display:block;border-radius:3px}
.strip .own figcaption{color:var(--fg);font-weight:600}
.nomap{display:flex;align-items:center;justify-content:center;background:#eef0f4;color:var(--mut);
font-size:10.5px;padding:6px;text-align:center;border-radius:3px}
.vals{display:flex;flex-wrap:wrap;gap:3px}
.kv{display:inline-flex;flex-direction:column;border:1px solid var(--line);border-radius:4px;padding:1px 6px;
min-width:64px;background:#fff}
.kv .k{font-size:10.5px;color:var(--mut)}.kv .val{font-size:12.5px;font-variant-numeric:tabular-nums}
p .kv{display:inline;padding:0 4px;min-width:0}.kv.best{background:#e3f4e6;border-color:#9fd3a9}
.kv.worst{background:#fde8e6;border-color:#f0aaa2}
.kv.best.worst{background:linear-gradient(90deg,#e3f4e6 50%,#fde8e6 50%)}
.cell{display:grid;grid-template-columns:auto auto;justify-content:end;align-items:baseline}
.ci{grid-row:2;grid-column:1/3;text-align:right;font-size:10.5px;color:var(--mut)}
.near{grid-row:1;grid-column:2;font-size:12px;margin-left:2px}
table.prov th{text-align:left;color:var(--mut);font-weight:500;vertical-align:top}
table.prov td{text-align:left;white-space:normal}
table.plain td,table.plain th{white-space:normal;text-align:left}
"""

#: sorts a table's rows within each <tbody> by the clicked column's data-v (best first, then toggles)
JS = """
document.querySelectorAll("table.sortable").forEach(function(t){
 t.querySelectorAll("th[data-col]").forEach(function(th){th.addEventListener("click",function(){
  var c=+th.dataset.col,s=th.getAttribute("aria-sort"),d=s?s==="ascending":th.dataset.hib==="1";
  t.querySelectorAll("th[data-col]").forEach(function(h){h.removeAttribute("aria-sort")});
  th.setAttribute("aria-sort",d?"descending":"ascending");
  t.querySelectorAll("tbody").forEach(function(b){
   var r=[].slice.call(b.querySelectorAll("tr[data-method]"));
   r.sort(function(x,y){var a=parseFloat(x.cells[c].dataset.v),z=parseFloat(y.cells[c].dataset.v);
    if(isNaN(a))return isNaN(z)?0:1;if(isNaN(z))return -1;return d?z-a:a-z});
   r.forEach(function(e){b.appendChild(e)})})})})});
"""


def _section(sid: str, title: str, body: str) -> str:
    return f'<section id="{sid}"><h2>{esc(title)}</h2>{body}</section>'


def run_html(rr: RunReport, k: int, env: Dict[str, str], several: bool) -> str:
    """Every section of one run (prefixed ``r<k>``)."""
    p = f"r{k}"
    figs = "".join(figure_html(f) for f in rr.figures)
    title = (lambda t: f"{t}: {tables.run_backbone_label(rr.run)}") if several else (lambda t: t)
    return "".join([
        _section(f"{p}-table", title("Results"), table_html(rr.table, f"{p}-results")
                 + '<p class="note">Click a column header to sort by its mean (best first, click again to '
                   "reverse); bold: best, underlined: second, as in camzoo table.</p>"),
        _section(f"{p}-figures", title("Curves and metric statistics"), f'<div class="figs">{figs}</div>'),
        _section(f"{p}-images", title("Best and worst images"), images_html(rr, p)),
        _section(f"{p}-failures", title("Failures and unreadable images"), failures_html(rr.run)),
        _section(f"{p}-provenance", title("Provenance"), provenance_html(rr.run, env)),
    ])


def _header(reports: Sequence[RunReport], env: Dict[str, str]) -> str:
    if len(reports) == 1:
        r = reports[0].run
        sub = (f"{len(r.methods)} methods x {r.config['data']['n_images']} images; "
               f"{', '.join(r.config['protocols'])}; {os.path.abspath(r.dir)}")
        title = tables.run_backbone_label(r)
    else:
        title = " vs ".join(tables.run_backbone_label(r.run) for r in reports)
        sub = f"{len(reports)} runs"
    return (f'<header><div class="in"><h1>camzoo report: {esc(title)}</h1><p>{esc(sub)} &middot; written '
            f'{esc(env.get("date", ""))} by camzoo {esc(env.get("camzoo", ""))}</p></div></header>')


def _toc(reports: Sequence[RunReport], compare: bool, sanity: bool) -> str:
    links = [("cmp", "Comparison")] if compare else []
    if len(reports) == 1:
        links += [("r0-table", "Results"), ("r0-figures", "Curves"), ("r0-images", "Images"),
                  ("r0-failures", "Failures"), ("r0-provenance", "Provenance")]
    else:
        links += [(f"r{k}-table", tables.run_backbone_label(r.run)) for k, r in enumerate(reports)]
    if sanity:
        links.append(("sanity", "Sanity check"))
    return '<nav class="toc">' + "".join(f'<a href="#{a}">{esc(t)}</a>' for a, t in links) + "</nav>"


def render(reports: Sequence[RunReport], compare: Optional[tables.Table] = None,
           sanity: Optional[SanityView] = None, env: Optional[Dict[str, str]] = None) -> str:
    """The whole page: header, a random-weights warning where a run has random weights, the
    comparison table (several runs), each run's sections, the sanity check; self-contained."""
    env = env or {}
    warn = [f'<p class="warn"><strong>{esc(RANDOM_MARK.upper())}</strong>: {esc(r.run.config["backbone"]["name"])} '
            "was run untrained (--weights random); these numbers say nothing about a trained classifier.</p>"
            for r in reports if is_random(r.run.config["backbone"].get("weights_id"))]
    body = "".join(warn)
    if compare is not None:
        body += _section("cmp", "Comparison (camzoo compare)", table_html(compare, "cmp-results"))
    body += "".join(run_html(r, k, env, len(reports) > 1) for k, r in enumerate(reports))
    if sanity is not None:
        body += _section("sanity", "Sanity check (camzoo sanity)", sanity_html(sanity))
    foot = (f'<p class="note">Self-contained: every image is embedded; nothing outside this file is read. '
            f'Report written {esc(env.get("date", ""))}.</p>')
    return ('<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<title>camzoo report</title><style>{CSS}</style></head><body>'
            f'{_header(reports, env)}{_toc(reports, compare is not None, sanity is not None)}'
            f'<main>{body}{foot}</main><script>{JS}</script></body></html>\n')
