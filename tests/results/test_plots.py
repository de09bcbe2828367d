"""The figures (camzoo.results.plots) as a paper takes them: every drawn text inside the figure,
the overlay grid with one row per grid image, its row labels and one colour bar, plain tick
labels on the training curves, the ROAD curves' means at the run's removal fractions, and
bench_figures on a small run."""
import os
from types import SimpleNamespace
from unittest import mock

import numpy as np
import pandas as pd
import pytest
from matplotlib.lines import Line2D
from matplotlib.text import Text

from camzoo.results import plots
from tests.conftest import SAMPLES
from tests.helpers import TINY1000

#: the title camzoo sanity gives its line plots (cut off at the figure's edge before)
SANITY_TITLE = "spearman_abs similarity to the trained model's map (independent randomization)"
#: as camzoo stats --agreement gives it
AGREEMENT_TITLE = "efficientnet_lite0: Spearman correlation of method rankings"
#: wider than any of the figures at its font size: it must be wrapped
LONG = "timm:vit_base_patch16_224 (random weights), a title a caption would rather hold, " * 3


# -- helpers ----------------------------------------------------------------------------------
class Saved(dict):
    """``{file name: Figure}`` of the figures saved during a test (kept open), and ``clipped``:
    ``{file name: [texts outside the figure as it was saved]}``."""

    def __init__(self):
        super().__init__()
        self.clipped = {}


def _recording(drawn):
    """A ``Text.draw`` that appends ``(text, its window extent, the canvas' (width, height))``
    of every text it draws (visible, not empty) to ``drawn``, measured by the drawing renderer."""
    draw = Text.draw

    def recording(self, renderer):
        draw(self, renderer)
        if self.get_visible() and self.get_text().strip():
            drawn.append((self, self.get_window_extent(renderer), (renderer.width, renderer.height)))

    return recording


def _outside(drawn):
    """The drawn texts that leave the canvas they were drawn on (half a pixel of slack)."""
    return [f"{t.get_text()!r} at {tuple(np.round(b.extents, 1))} (canvas {w:.0f} x {h:.0f})"
            for t, b, (w, h) in drawn if b.x0 < -0.5 or b.y0 < -0.5 or b.x1 > w + 0.5 or b.y1 > h + 0.5]


@pytest.fixture
def saved(monkeypatch):
    """The figures the plots module saves during the test (:class:`Saved`): each kept open as
    saved, its texts checked as drawn into the file; closed at the end."""
    figs, drawn = Saved(), []

    def done(fig, path):
        name = os.path.basename(path)
        figs[name] = fig
        figs.clipped[name] = _outside([d for d in drawn if d[0].figure is fig])
        drawn.clear()

    monkeypatch.setattr(Text, "draw", _recording(drawn))
    monkeypatch.setattr(plots, "_done", done)
    yield figs
    for fig in figs.values():
        plots._plt().close(fig)


def drawn_texts(fig):
    """Draw ``fig`` again (the layout and every artist, no pixels); return ``(text, window
    extent, canvas size)`` of every text drawn (visible, not empty)."""
    drawn = []
    with mock.patch.object(Text, "draw", _recording(drawn)):
        fig.draw_without_rendering()
    return drawn


def assert_no_text_clipped(saved, name):
    """Every text of figure ``name`` lies inside it: as drawn into the file, and drawn again."""
    assert not saved.clipped[name], f"{name}: clipped in the file:\n" + "\n".join(saved.clipped[name])
    drawn = drawn_texts(saved[name])
    assert drawn
    out = _outside(drawn)
    assert not out, f"{name}: clipped:\n" + "\n".join(out)


def assert_no_text_overlaps(fig):
    """No two texts drawn in ``fig`` overlap (the title, column titles, row labels, colour bar)."""
    boxes = [(t.get_text(), b) for t, b, _ in drawn_texts(fig)]
    hits = [(s, u) for i, (s, a) in enumerate(boxes) for u, b in boxes[i + 1:] if a.overlaps(b)]
    assert not hits, hits


def assert_row_labels_left_of_the_images(fig):
    """Each row label of the grid lies left of its row's first image (drawn, not overlapping)."""
    drawn_texts(fig)
    r = fig.canvas.get_renderer()
    for row in grid_parts(fig)[0]:
        label, first = row[0].yaxis.label, row[0].get_window_extent(r)
        assert label.get_window_extent(r).x1 <= first.x0 + 0.5, label.get_text()


def grid_parts(fig):
    """The overlay grid's image axes by row (top to bottom; each row by x), its colour bars
    (axes labelled ``saliency``), its row labels."""
    image_axes = [ax for ax in fig.axes if ax.images]
    rows = {}
    for ax in image_axes:
        rows.setdefault(round(ax.get_position().y0, 3), []).append(ax)
    rows = [sorted(r, key=lambda a: a.get_position().x0) for _, r in sorted(rows.items(), reverse=True)]
    bars = [ax for ax in fig.axes if ax.get_ylabel() == "saliency" and not ax.images]
    labels = [r[0].get_ylabel() for r in rows]
    return rows, bars, labels


NAMES = ["tench", "goldfish", "great white shark, white shark, man-eater, man-eating shark",
         "a rather long class name that goes on and on"]


# -- the overlay grid -------------------------------------------------------------------------
def test_grid_has_a_row_per_image_labels_and_one_colour_bar(tmp_path, saved):
    rng = np.random.default_rng(0)
    n, methods = 5, ["gradcam", "gradcam++", "smoothgradcampp"]
    imgs = [rng.random((24, 24, 3)) for _ in range(n)]
    maps = [[rng.random((24, 24)) for _ in methods] for _ in range(n)]
    maps[1][2] = None  # a method without a map for this image: an empty cell
    labels = [plots.grid_row_label(f"n01440764/n01440764_{i:05d}_a_very_long_file_name.JPEG", i % 4,
                                   0.25 * i, (i % 4) if i != 3 else -1, i % 4, NAMES) for i in range(n)]
    plots.overlay_grid(imgs, maps, labels, methods, str(tmp_path / "grid.png"), title="a backbone")
    assert (tmp_path / "grid.png").stat().st_size > 0
    fig = saved["grid.png"]
    rows, bars, row_labels = grid_parts(fig)
    assert len(rows) == n and [len(r) for r in rows] == [4, 3, 4, 4, 4]
    assert len(bars) == 1
    assert row_labels == labels
    assert "explained: great white shark (p=0.50)" in row_labels[2] and "true: great white shark" in row_labels[2]
    assert "true: ?" in row_labels[3]
    assert [ax.get_title() for ax in rows[0]] == ["input", *methods]
    assert any(t.get_text() == "no map" for t in rows[1][0].figure.findobj(Text))
    assert_no_text_clipped(saved, "grid.png")
    assert_no_text_overlaps(fig)
    assert_row_labels_left_of_the_images(fig)


def test_grid_row_label():
    lab = plots.grid_row_label("n01440764_10026.JPEG", 0, 0.934, 0, 0, NAMES)
    assert lab == "n01440764_10026.JPEG\nexplained: tench (p=0.93)\ntrue: tench"
    # the first synonym of a long name; another top-1 named; an unknown label in every form
    lab = plots.grid_row_label("x.png", 2, 0.5, 1, 1, NAMES)
    assert lab.splitlines()[1:] == ["explained: great white shark (p=0.50)", "top-1: goldfish", "true: goldfish"]
    for missing in (None, -1, float("nan"), np.nan, pd.NA):
        assert plots.grid_row_label("x.png", 1, 0.5, missing, 1, NAMES).endswith("\ntrue: ?")
    # long ids and names are cut in the middle / at the end, never longer than the limit
    lab = plots.grid_row_label("dir/" + "a" * 60 + ".JPEG", 3, 0.5, 3, 3, NAMES).splitlines()
    assert len(lab[0]) == 26 and lab[0].startswith("aaa") and lab[0].endswith("a.JPEG") and "…" in lab[0]
    assert lab[1] == f"explained: {plots._short(NAMES[3], 22)} (p=0.50)" and len(plots._short(NAMES[3], 22)) == 22


# -- no title or label cut off in any figure --------------------------------------------------
def test_no_figure_clips_a_text(tmp_path, saved):
    rng = np.random.default_rng(1)
    img = rng.random((20, 20, 3))
    plots.explanation_grid(img, [rng.random((20, 20)) for _ in range(3)],
                           [f"method {i} with a long name\ngreat white shark p=0.93" for i in range(3)],
                           str(tmp_path / "explain.png"), suptitle=LONG)
    curves = {f"method_{k}": {"insertion": rng.random((4, 9)), "deletion": rng.random((4, 9))} for k in range(3)}
    plots.mean_curves(curves, str(tmp_path / "curves.png"), title=LONG)
    road = {f"method_{k}": {"morf": rng.random((4, 9)), "lerf": rng.random((4, 9))} for k in range(3)}
    plots.road_mean_curves(road, str(tmp_path / "road.png"), title=LONG)
    for name, title, k in (("sanity_spearman_abs.png", SANITY_TITLE, 2), ("sanity_ssim.png", LONG, 6)):
        steps = ["original"] + [f"features.{i}.block.conv" for i in range(k)]
        plots.similarity_curves({m: (rng.random(k + 1) * 2 - 1, rng.random(k + 1) * 0.2)
                                 for m in ("gradcam", "scorecam")}, steps, str(tmp_path / name), title, "ssim")
    names = ["AD(100%)↓", "IC(15%)↑", "Ins↑", "ROAD-MoRF(p)↓"]
    M = pd.DataFrame(rng.uniform(-1, 1, (4, 4)), index=names, columns=names)
    plots.agreement_heatmap(M, str(tmp_path / "agreement.png"), AGREEMENT_TITLE)
    plots.agreement_heatmap(M.iloc[:2, :2], str(tmp_path / "agreement2.png"), LONG)
    def bars(k, name, **cols):  # values in [-0.8, 0.8] and their intervals
        v = rng.uniform(-0.8, 0.8, k)
        return pd.DataFrame({**cols, name: v, "lo": v - 0.2, "hi": v + 0.2}, index=names[:k] if not cols else None)

    res = SimpleNamespace(inter_rater=bars(4, "alpha"), inter_method=bars(4, "rho"),
                          internal_mean=bars(2, "rho", metric_a=names[:2], metric_b=names[2:]))
    plots.reliability_bars(res, str(tmp_path / "reliability.png"), LONG)
    plots.training_curves(_training_rows(), str(tmp_path / "training.png"), LONG)
    want = {"explain.png", "curves.png", "road.png", "sanity_spearman_abs.png", "sanity_ssim.png", "agreement.png",
            "agreement2.png", "reliability.png", "training.png"}
    assert set(saved) == want and all((tmp_path / f).stat().st_size > 0 for f in want)
    for name, fig in saved.items():
        title = {"sanity_spearman_abs.png": SANITY_TITLE, "agreement.png": AGREEMENT_TITLE}.get(name, LONG)
        assert any(" ".join(t.get_text().split()) == title.strip() for t, _, _ in drawn_texts(fig)), name
        assert_no_text_clipped(saved, name)


# -- training curves: plain ticks -------------------------------------------------------------
def _training_rows():
    """Two epochs of a training log whose values differ in the 4th digit (matplotlib's default
    ticks would read ``+2.6356e1``), steps in the hundreds of thousands."""
    rng = np.random.default_rng(2)
    rows = []
    for e in range(2):
        for s in range(6):
            step = 250000 + 10 * (e * 6 + s)
            rows.append({"epoch": e, "step": step, "split": "train", "loss": 26.356 + 1e-4 * rng.random(),
                         "area": 1e-6 * rng.random(), "lr": 1e-4})
        rows.append({"epoch": e, "step": step, "split": "val", "loss": 26.356 + 1e-4 * rng.random(),
                     "ad100": 12.5 + 1e-3 * e})
    return rows


def test_training_curves_have_no_offset_and_no_scientific_ticks(tmp_path, saved):
    plots.training_curves(_training_rows(), str(tmp_path / "t.png"), "training")
    fig = saved["t.png"]
    drawn_texts(fig)
    panels = [ax for ax in fig.axes if ax.lines]
    assert [ax.get_title() for ax in panels] == ["loss", "area", "ad100"]
    for ax in panels:
        for axis in (ax.xaxis, ax.yaxis):
            assert axis.get_offset_text().get_text() == "", (ax.get_title(), axis.axis_name)
            labels = [t.get_text() for t in axis.get_ticklabels()]
            assert labels and not any("e" in s.lower() or "×" in s for s in labels), labels
    assert_no_text_clipped(saved, "t.png")


# -- ROAD curves --------------------------------------------------------------------------------
def test_road_mean_curves_plot_the_means_at_the_fractions(tmp_path, saved):
    rng = np.random.default_rng(3)
    curves = {"gradcam": {"morf": rng.random((5, 4)), "lerf": rng.random((5, 4))},
              "fakecam": {"morf": rng.random((3, 4))}}
    curves["gradcam"]["lerf"][2, 1] = np.nan  # a missing value is left out of the mean
    fr = [0.05, 0.25, 0.5, 0.95]
    plots.road_mean_curves(curves, str(tmp_path / "road.png"), "t", "probability", fractions=fr)
    fig = saved["road.png"]
    morf, lerf = [ax for ax in fig.axes if ax.lines]
    assert morf.get_title().startswith("MoRF") and lerf.get_title().startswith("LeRF")
    assert morf.get_ylabel() == "probability"
    for ax, kind in ((morf, "morf"), (lerf, "lerf")):
        lines = {ln.get_label().split(" (")[0]: ln for ln in ax.get_lines() if isinstance(ln, Line2D)}
        want = {m: cs[kind] for m, cs in curves.items() if kind in cs}
        assert set(lines) == set(want)
        for m, c in want.items():
            mean = np.array([np.mean(c[~np.isnan(c[:, j]), j]) for j in range(c.shape[1])])
            np.testing.assert_allclose(lines[m].get_ydata(), mean, rtol=1e-12)
            np.testing.assert_allclose(lines[m].get_xdata(), fr)
            assert lines[m].get_label() == f"{m} ({100 * mean.mean():.1f})"
        assert [float(t) for t in ax.get_xticks()] == fr
    assert_no_text_clipped(saved, "road.png")
    # without fractions: the protocol's default (0.1 .. 0.9) for 9 points, else k / (P + 1)
    plots.road_mean_curves({"a": {"morf": np.ones((2, 9)), "lerf": np.zeros((2, 4))}}, str(tmp_path / "r2.png"))
    a, b = [ax for ax in saved["r2.png"].axes if ax.lines]
    np.testing.assert_allclose(a.get_lines()[0].get_xdata(), np.arange(1, 10) / 10)
    np.testing.assert_allclose(b.get_lines()[0].get_xdata(), np.arange(1, 5) / 5)
    with pytest.raises(ValueError, match="3 fractions for curves of 4 points"):
        plots.road_mean_curves(curves, str(tmp_path / "r3.png"), fractions=fr[:3])


# -- bench_figures on a small run -----------------------------------------------------------
@pytest.fixture(scope="module")
def road_run(tmp_path_factory):
    """The 1000-class tiny CNN, gradcam + fakecam, rise + road (3 fractions) on 3 photos, the
    first 2 in the grid (no figures yet: the tests draw them)."""
    from camzoo.bench import BenchConfig, run

    out = str(tmp_path_factory.mktemp("plots") / "run")
    return run(BenchConfig(backbone=TINY1000, weights="random", methods="gradcam,fakecam", metrics="rise,road",
                           metric_options={"rise": {"steps": 4}, "road": {"fractions": [0.25, 0.5, 0.75]}},
                           data=SAMPLES, limit=3, seed=3, grid_images=2, out=out, progress=False, figures=False),
               echo=lambda s: None)


def _dataset_and_backbone(run):
    from camzoo.data.datasets import open_dataset
    from tests.helpers import tiny1000

    return open_dataset(SAMPLES, limit=3, seed=3), tiny1000()


def test_bench_figures_grid_road_and_curves(road_run, saved, monkeypatch):
    import shutil

    from camzoo.results.run import map_path

    ds, bb = _dataset_and_backbone(road_run)
    written = plots.bench_figures(road_run, ds, bb, n_images=8)
    assert [os.path.basename(p) for p in written] == ["curves.png", "road.png", "grid.png"]
    rows = road_run.rows().set_index(["method", "image_id"])
    ids = [it.image_id for it in ds.items]
    # the grid: a row per grid image (the first 2), every method's overlay, labels from the rows
    grid, bars, labels = grid_parts(saved["grid.png"])
    assert len(grid) == 2 and all(len(r) == 3 for r in grid) and len(bars) == 1
    for iid, lab in zip(ids[:2], labels):
        r = rows.loc[("gradcam", iid)]
        assert lab.splitlines() == [iid, f"explained: {bb.class_names[r.c]} (p={r.Y:.2f})"] + (
            [] if r.pred == r.c else [f"top-1: {bb.class_names[r.pred]}"]) + [f"true: {bb.class_names[r.label]}"]
    # ROAD: the accuracy curves' means at the run's fractions
    morf, lerf = [ax for ax in saved["road.png"].axes if ax.lines]
    assert morf.get_ylabel().startswith("accuracy")
    for ax, col in ((morf, "road_acc_morf_curve"), (lerf, "road_acc_lerf_curve")):
        for ln in ax.get_lines():
            m = ln.get_label().split(" (")[0]
            np.testing.assert_allclose(ln.get_xdata(), [0.25, 0.5, 0.75])
            np.testing.assert_allclose(ln.get_ydata(), road_run.store.curves(m, col).mean(0), rtol=1e-6)
    for name in saved:
        assert_no_text_clipped(saved, name)
    assert_no_text_overlaps(saved["grid.png"])
    assert_row_labels_left_of_the_images(saved["grid.png"])
    # fewer asked: the first ones; every image with grid maps shown, whichever they are
    for f in ("mean_curves", "road_mean_curves"):
        monkeypatch.setattr(plots, f, lambda *a, **k: None)
    saved.clear()
    plots.bench_figures(road_run, ds, bb, n_images=1)
    assert len(grid_parts(saved["grid.png"])[0]) == 1
    for m in road_run.methods:
        os.remove(map_path(road_run.dir, "grid", m, ids[0]))
        shutil.copy(map_path(road_run.dir, "grid", m, ids[1]), map_path(road_run.dir, "grid", m, ids[2]))
    saved.clear()
    plots.bench_figures(road_run, ds, bb, n_images=2)
    assert [lab.splitlines()[0] for lab in grid_parts(saved["grid.png"])[2]] == ids[1:3]
