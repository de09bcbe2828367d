"""The localization protocol: pointing game, energy-based pointing game and localization error
on maps with known answers, the protocol's options and checks, and a bench run whose stored
values equal an independent computation from its saved maps."""
import os

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from camzoo.metrics.localization import (box_iou, energy_pointing_game, largest_component_boxes,
                                         localization_error, localization_scores, pointing_game)
from camzoo.metrics.protocol import PROTOCOLS, MetricInputs, shorthand_flags
from tests.helpers import TINY1000

H = W = 64
NAN = float("nan")


def boxes_of(*bs, label=0):
    """One image's pixel boxes ``(x0, y0, x1, y1)`` -> ``boxes [1,K,4]``, ``valid [1,K]``."""
    return torch.tensor([list(bs)], dtype=torch.long), torch.ones(1, len(bs), dtype=torch.bool)


def peak(r, c, value=1.0):
    V = torch.zeros(1, H, W)
    V[0, r, c] = value
    return V


def same(a, b):
    """Tensor equality with NaN equal to NaN."""
    return torch.equal(torch.isnan(a), torch.isnan(b)) and torch.equal(a.nan_to_num(-7), b.nan_to_num(-7))


# -- pointing game ---------------------------------------------------------------------------------
BOX = (20, 10, 30, 40)  # columns 20..30, rows 10..40


@pytest.mark.parametrize("r, c, hit", [
    (25, 25, 1.0),             # inside
    (25, 30 + 15, 1.0),        # 15 px right of the box's last column: within the tolerance
    (25, 30 + 16, 0.0),        # 16 px: outside
    (40 + 15, 25, 1.0),        # 15 px below
    (40 + 16, 25, 0.0),
    (40 + 10, 30 + 11, 1.0),   # diagonal: 10^2 + 11^2 = 221 <= 225
    (40 + 11, 30 + 11, 0.0),   # 11^2 + 11^2 = 242 > 225
    (10, 20 - 15, 1.0),        # 15 px left
    (0, 20 - 11, 1.0),         # above-left: 11^2 + 10^2 = 221
    (0, 20 - 12, 0.0),         # 12^2 + 10^2 = 244
])
def test_pointing_game_with_a_15_pixel_tolerance(r, c, hit):
    b, v = boxes_of(BOX)
    assert pointing_game(peak(r, c), b, v, tolerance=15).tolist() == [hit]


def test_pointing_tolerance_is_in_image_pixels():
    """Boxes on an input at half the image's resolution: 15 image pixels are 7.5 input pixels."""
    b, v = boxes_of(BOX)
    half = torch.tensor([[0.5, 0.5]])
    assert pointing_game(peak(25, 30 + 7), b, v, 15, scale=half).tolist() == [1.0]   # 14 image px
    assert pointing_game(peak(25, 30 + 8), b, v, 15, scale=half).tolist() == [0.0]   # 16 image px
    assert pointing_game(peak(25, 30 + 8), b, v, 15).tolist() == [1.0]               # 8 input px


def test_pointing_ties_go_to_the_first_maximum_in_row_major_order():
    b, v = boxes_of(BOX)
    V = peak(60, 60)
    V[0, 25, 25] = 1.0  # the same maximum inside the box, earlier in row-major order
    assert pointing_game(V, b, v, 0).tolist() == [1.0]
    V = peak(25, 25)
    V[0, 2, 60] = 1.0  # earlier, outside
    assert pointing_game(V, b, v, 0).tolist() == [0.0]
    # a constant map points at its first pixel (0, 0), as the authors' np.argmax
    assert pointing_game(torch.ones(1, H, W), *boxes_of((0, 0, 0, 0)), tolerance=0).tolist() == [1.0]


def test_an_image_without_a_box_of_the_class_is_not_scored():
    b = torch.tensor([[BOX, BOX]])
    V = peak(25, 25).repeat(2, 1, 1)
    boxes = b.repeat(2, 1, 1)
    valid = torch.tensor([[True, False], [False, False]])
    assert same(pointing_game(V, boxes, valid), torch.tensor([1.0, NAN]))
    assert same(energy_pointing_game(V, boxes, valid), torch.tensor([1.0, NAN]))
    err, iou = localization_error(V, boxes, valid)
    assert torch.isnan(err[1]) and torch.isnan(iou[1]) and not torch.isnan(err[0])


# -- energy-based pointing game --------------------------------------------------------------------
def test_energy_inside_the_boxes_over_the_total():
    V = torch.zeros(1, H, W)
    V[0, 25, 25] = 0.7  # inside
    V[0, 60, 60] = 0.3  # outside
    assert energy_pointing_game(V, *boxes_of(BOX)).tolist() == [pytest.approx(0.7)]


def test_energy_counts_overlapping_boxes_once():
    """A uniform 10x10 map, boxes over columns 0..4 and 3..6: their union is 70 of 100 pixels."""
    V = torch.ones(1, 10, 10)
    assert energy_pointing_game(V, *boxes_of((0, 0, 4, 9), (3, 0, 6, 9))).tolist() == [pytest.approx(0.7)]
    assert energy_pointing_game(torch.zeros(1, 10, 10), *boxes_of((0, 0, 4, 9))).tolist() == [0.0]


# -- localization error ----------------------------------------------------------------------------
def blob(*rects, value=1.0, V=None):
    V = torch.zeros(1, H, W) if V is None else V
    for x0, y0, x1, y1 in rects:
        V[0, y0:y1 + 1, x0:x1 + 1] = value
    return V


GT = (10, 10, 29, 29)  # 20 x 20 = 400 pixels


@pytest.mark.parametrize("rect, iou, err", [
    ((15, 10, 34, 29), 300 / 500, 0.0),   # shifted 5 px: 15 x 20 overlap
    ((20, 10, 39, 29), 200 / 600, 1.0),   # shifted 10 px
    ((10, 10, 29, 49), 400 / 800, 0.0),   # IoU exactly 0.5 is correct (ILSVRC: error if < 0.5)
    ((10, 10, 29, 50), 400 / 820, 1.0),
])
def test_the_largest_component_box_against_the_ground_truth(rect, iou, err):
    e, i = localization_error(blob(rect), *boxes_of(GT))
    assert e.tolist() == [err] and i.tolist() == [pytest.approx(iou)]


def test_the_largest_component_decides():
    small_in_box = (12, 12, 27, 27)        # 256 px, IoU 0.64 with GT
    large_elsewhere = (35, 35, 60, 60)     # 676 px
    e, _ = localization_error(blob(small_in_box, large_elsewhere), *boxes_of(GT))
    assert e.tolist() == [1.0]
    e, _ = localization_error(blob(small_in_box, (40, 40, 50, 50)), *boxes_of(GT))  # 121 px elsewhere
    assert e.tolist() == [0.0]
    # equal sizes: the component whose first pixel comes first in row-major order
    pb = largest_component_boxes(blob((40, 2, 44, 6), (2, 40, 6, 44)))
    assert pb.tolist() == [[40, 2, 44, 6]]


def test_components_are_8_connected_and_strictly_above_the_threshold():
    # two squares touching at a corner are one component: its box spans both
    assert largest_component_boxes(blob((5, 5, 9, 9), (10, 10, 14, 14))).tolist() == [[5, 5, 14, 14]]
    # a faint ring at 0.25 of the max: left out at threshold 0.25 (strictly above), kept below it
    V = blob((20, 20, 40, 40), value=0.25)
    V = blob((25, 25, 35, 35), V=V)
    assert largest_component_boxes(V, 0.25).tolist() == [[25, 25, 35, 35]]
    assert largest_component_boxes(V, 0.2).tolist() == [[20, 20, 40, 40]]
    # nothing above: no box, an error
    assert largest_component_boxes(torch.zeros(2, 8, 8)).tolist() == [[-1] * 4] * 2
    assert localization_error(torch.zeros(1, H, W), *boxes_of(GT))[0].tolist() == [1.0]


def test_iou_counts_pixels():
    a = torch.tensor([[0, 0, 9, 9]])
    b = torch.tensor([[[5, 0, 14, 9], [10, 10, 12, 12], [0, 0, 9, 9]]])
    assert box_iou(a, b).tolist() == [[50 / 150, 0.0, 1.0]]
    assert box_iou(torch.tensor([[-1, -1, -1, -1]]), b).tolist() == [[0.0, 0.0, 0.0]]


def test_top1_localization_error():
    """Image 0: right prediction and box -> 0; 1: wrong prediction, right box -> 1; 2: the
    map of another class than the (right) prediction -> NaN; 3: no label -> NaN; 4: no box of
    the label -> NaN."""
    V = blob((15, 10, 34, 29)).repeat(5, 1, 1)  # IoU 0.6 with GT
    boxes = torch.tensor([[GT]] * 5)
    box_labels = torch.tensor([[3], [3], [3], [3], [8]])
    c = torch.tensor([3, 3, 5, 3, 3])
    pred = torch.tensor([3, 4, 3, 3, 3])
    labels = torch.tensor([3, 3, 3, -1, 3])
    out = localization_scores(V, c, boxes, box_labels, pred, labels)
    assert same(out["top1_loc_error"], torch.tensor([0.0, 1.0, NAN, NAN, NAN]))
    assert same(out["loc_error"], torch.tensor([0.0, 0.0, NAN, 0.0, NAN]))  # boxes of c only
    assert set(out) == {"pointing", "energy_pointing", "loc_error", "loc_iou", "top1_loc_error"}
    no_labels = localization_scores(V, c, boxes, box_labels)
    assert torch.isnan(no_labels["top1_loc_error"]).all()


# -- the protocol ----------------------------------------------------------------------------------
PROTO = PROTOCOLS.get("localization")


def test_protocol_declarations():
    specs = PROTO.metrics()
    assert [(s.key, s.column, s.higher_is_better, s.binary) for s in specs if s.in_table] == [
        ("pointing", "Pointing", True, True), ("energy_pointing", "EnergyPG", True, False),
        ("loc_error", "LocErr", False, True), ("top1_loc_error", "Top1LocErr", False, True)]
    assert all(s.scale == 100.0 and s.source for s in specs)
    assert not PROTO.in_all and PROTO.forwards_per_image(boxes="x.csv") == 0
    assert shorthand_flags()["boxes"][:2] == ("localization", str)


def test_options_need_boxes_and_sane_values():
    with pytest.raises(ValueError, match="needs ground-truth boxes: --boxes PATH"):
        PROTO.options()
    with pytest.raises(ValueError, match="tolerance"):
        PROTO.options(boxes="b.csv", tolerance=-1)
    with pytest.raises(ValueError, match="threshold"):
        PROTO.options(boxes="b.csv", threshold=1.0)
    # made absolute: a resume from another folder names the same file
    assert PROTO.options(boxes="b.csv") == {"boxes": os.path.abspath("b.csv"), "tolerance": 15, "threshold": 0.15}
    from camzoo.engine.config import BenchConfig

    assert BenchConfig.from_cli({"boxes": "b.csv"}).metric_options == {"localization": {"boxes": "b.csv"}}


def test_check_backbone_refuses_bad_boxes_before_a_run(tmp_path, tiny):
    p = tmp_path / "b.csv"
    with pytest.raises(ValueError, match=r"boxes='.*b\.csv'.*no such file"):
        PROTO.check_backbone(PROTO.options(boxes=str(p)), tiny)
    p.write_text("file,xmin,ymin,xmax,ymax,class\na.png,0,0,1,1,12\n")
    with pytest.raises(ValueError, match=r"b\.csv:2: class 12 is not a class of tiny \(10 classes\)"):
        PROTO.check_backbone(PROTO.options(boxes=str(p)), tiny)
    p.write_text("file,xmin,ymin,xmax,ymax,class\na.png,0,0,1,1,2\n")
    PROTO.check_backbone(PROTO.options(boxes=str(p)), tiny)
    tiny.preprocess = lambda img: torch.zeros(3, 32, 32)
    with pytest.raises(ValueError, match="cannot read the resize and crop"):
        PROTO.check_backbone(PROTO.options(boxes=str(p)), tiny)


def test_a_batch_whose_images_are_all_unlisted_is_an_error(tmp_path, tiny):
    p = tmp_path / "b.csv"
    p.write_text("file,xmin,ymin,xmax,ymax,class\nother.png,0,0,1,1,2\n")
    V = torch.rand(2, 32, 32)
    inputs = MetricInputs(None, torch.zeros(2, 3, 32, 32), V, torch.tensor([2, 2]), torch.ones(2),
                          tiny.normalize, classifier=tiny, image_ids=["a", "b"], paths=[None, None])
    with pytest.raises(ValueError, match=r"none of this batch's images \('a', 'b'\) is listed in the boxes"):
        PROTO.evaluate(inputs, boxes=str(p))


# -- a bench run -----------------------------------------------------------------------------------
SIZES = {"a": (64, 48), "b": (40, 60), "c": (50, 50)}
#: the run's pointing tolerance (image pixels): small enough on 32 px maps for hits and misses
TOLERANCE = 1


def _geometry(w, h, s=32):
    """torchvision's Resize(s) (shorter side) + CenterCrop(s), written out: (sx, sy, tx, ty)."""
    nw, nh = (s, int(s * h / w)) if w <= h else (int(s * w / h), s)
    return nw / w, nh / h, -int(round((nw - s) / 2)), -int(round((nh - s) / 2))


def _reference(V, boxes, c, label, pred, w, h, tolerance=15, threshold=0.15):
    """One image's values, computed pixel by pixel (numpy), from its map and its boxes in image
    coordinates ``[(xmin, ymin, xmax, ymax, class)]``."""
    from scipy import ndimage

    sx, sy, tx, ty = _geometry(w, h)
    n = V.shape[0]
    cy, cx = np.mgrid[0:n, 0:n] + 0.5  # pixel centres

    def mask(b):
        x0, x1 = np.clip([b[0] * sx + tx, b[2] * sx + tx], 0, n)
        y0, y1 = np.clip([b[1] * sy + ty, b[3] * sy + ty], 0, n)
        if x1 <= x0 or y1 <= y0:
            return None  # outside the crop
        return (cx >= x0) & (cx <= x1) & (cy >= y0) & (cy <= y1)

    def boxes_of_class(k):
        return [m for m in (mask(b) for b in boxes if b[4] == k) if m is not None]

    def loc_err(ms):
        mx = V.max()
        fg = (V.astype(np.float64) > threshold * mx) if mx > 0 else np.zeros_like(V, bool)
        lab, k = ndimage.label(fg, structure=np.ones((3, 3)))
        if not k:
            return 1.0, 0.0
        sizes = np.bincount(lab.ravel())[1:]
        ys, xs = np.nonzero(lab == 1 + int(np.argmax(sizes)))
        pm = np.zeros_like(fg)
        pm[ys.min():ys.max() + 1, xs.min():xs.max() + 1] = True
        best = 0.0
        for m in ms:
            ys, xs = np.nonzero(m)
            gm = np.zeros_like(fg)
            gm[ys.min():ys.max() + 1, xs.min():xs.max() + 1] = True
            best = max(best, (pm & gm).sum() / (pm | gm).sum())
        return float(best < 0.5), best

    ms = boxes_of_class(c)
    if not ms:
        out = dict(pointing=NAN, energy_pointing=NAN, loc_error=NAN, loc_iou=NAN)
    else:
        r, q = np.unravel_index(np.argmax(V), V.shape)
        ys, xs = np.nonzero(np.any(ms, axis=0))
        d2 = ((xs - q) / sx) ** 2 + ((ys - r) / sy) ** 2
        union = np.any(ms, axis=0)
        err, iou = loc_err(ms)
        out = dict(pointing=float(d2.min() <= tolerance ** 2),
                   energy_pointing=V[union].sum() / V.sum() if V.sum() > 0 else 0.0,
                   loc_error=err, loc_iou=iou)
    gt = boxes_of_class(label)
    out["top1_loc_error"] = (NAN if not gt else 1.0 if pred != label else
                             (loc_err(gt)[0] if c == label else NAN))
    return out


@pytest.fixture(scope="module")
def loc_run(tmp_path_factory):
    """gradcam + fakecam on the 1000-class tiny CNN, 3 images of different shapes, labels
    chosen so that image a is classified right and b wrong; boxes: a has two of its class (one
    partly outside the crop) and one of another, b one of its label and one of another class,
    c only one of another class (not scored)."""
    from camzoo.bench import BenchConfig, run
    from tests.helpers import tiny1000

    root = tmp_path_factory.mktemp("loc")
    data = root / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    bb = tiny1000()
    preds = {}
    for name, (w, h) in SIZES.items():
        img = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        img.save(data / f"{name}.png")
        with torch.inference_mode():
            preds[name] = int(bb.model(bb.preprocess(img).unsqueeze(0)).argmax())
    labels = {"a": preds["a"], "b": (preds["b"] + 1) % 1000, "c": (preds["c"] + 2) % 1000}
    (data / "labels.csv").write_text("file,class_index\n" + "".join(f"{k}.png,{v}\n" for k, v in labels.items()))
    boxes = {"a": [(2, 2, 60, 44, labels["a"]), (0, 30, 12, 48, labels["a"]), (5, 5, 20, 20, 999 - labels["a"])],
             "b": [(4, 10, 30, 50, labels["b"]), (0, 0, 40, 20, preds["b"])],
             "c": [(10, 10, 40, 40, (labels["c"] + 1) % 1000)]}
    csv = root / "boxes.csv"
    csv.write_text("file,xmin,ymin,xmax,ymax,class\n" + "".join(
        f"{k}.png,{x0},{y0},{x1},{y1},{cl}\n" for k, bs in boxes.items() for x0, y0, x1, y1, cl in bs))
    out = str(root / "run")
    r = run(BenchConfig(backbone=TINY1000, weights="random", data=str(data), methods="gradcam,fakecam",
                        metrics="localization",
                        metric_options={"localization": {"boxes": str(csv), "tolerance": TOLERANCE}},
                        target="gt", save_maps=True, out=out, progress=False, figures=False),
            echo=lambda s: None)
    return r, boxes, labels, preds


def test_bench_values_equal_an_independent_computation_from_the_saved_maps(loc_run):
    from camzoo.results.run import map_path

    r, boxes, labels, preds = loc_run
    rows = r.rows()
    assert len(rows) == 6
    keys = ["pointing", "energy_pointing", "loc_error", "loc_iou", "top1_loc_error"]
    for _, row in rows.iterrows():
        V = np.load(map_path(r.dir, "maps", row.method, row.image_id))
        assert row.label == labels[row.image_id] and row.pred == preds[row.image_id] and row.c == row.label
        want = _reference(V, boxes[row.image_id], int(row.c), int(row.label), int(row.pred), *SIZES[row.image_id],
                          tolerance=TOLERANCE)
        for k in keys:
            got = row[k]
            assert (np.isnan(got) and np.isnan(want[k])) or got == pytest.approx(want[k], abs=1e-6), \
                (row.method, row.image_id, k, got, want[k])
    a = rows[rows.image_id == "a"]
    assert (a.top1_loc_error == a.loc_error).all()  # classified right: its box decides
    b = rows[rows.image_id == "b"]
    assert (b.top1_loc_error == 1.0).all()          # classified wrong
    c = rows[rows.image_id == "c"]
    assert c[keys].isna().all().all()               # no box of its class: not scored
    assert rows[rows.image_id != "c"][["pointing", "energy_pointing", "loc_error"]].notna().all().all()
    # the run shows both outcomes of the 0/1 values
    assert set(rows.pointing.dropna()) == {0.0, 1.0} and set(rows.loc_error.dropna()) == {0.0, 1.0}


def test_tables_average_the_scored_images_only(loc_run):
    from camzoo.results.tables import summary

    r, *_ = loc_run
    t = summary(r, ci=False, tests=False)
    rows = r.rows()
    for m in ("gradcam", "fakecam"):
        sub = rows[rows.method == m]
        assert t.df.loc[m, "EnergyPG↑"] == pytest.approx(100 * sub.energy_pointing.dropna().mean())
        assert t.df.loc[m, "Top1LocErr↓"] == pytest.approx(100 * sub.top1_loc_error.dropna().mean())
        assert t.n_images.loc[m, "Pointing↑"] == 2 and t.n_images.loc[m, "Top1LocErr↓"] == 2
    # the footnote says so (the images line counts every image: 3)
    assert "Pointing↑, EnergyPG↑, LocErr↓, Top1LocErr↓: means over the 2 of 3 images the protocol scored " \
           "(no value for the others, e.g. no box of the explained class)" in t.footnotes


def test_camzoo_bench_takes_boxes(loc_run, tmp_path):
    from click.testing import CliRunner

    from camzoo.cli import main
    from camzoo.results.run import Run

    r, *_ = loc_run
    cfg = r.config
    data, boxes = cfg["data"]["root"], cfg["protocols"]["localization"]["options"]["boxes"]
    out = str(tmp_path / "cli")
    res = CliRunner().invoke(main, ["bench", "--backbone", TINY1000, "--weights", "random", "--no-progress",
                                    "--data", data, "--methods", "fakecam", "--metrics", "localization",
                                    "--target", "gt",
                                    "--boxes", boxes, "--metric-opt", f"localization.tolerance={TOLERANCE}",
                                    "--no-figures", "--out", out])
    assert res.exit_code == 0, res.output
    again = Run(out).rows()
    first = r.rows()
    first = first[first.method == "fakecam"].set_index("image_id")
    pd.testing.assert_series_equal(again.set_index("image_id").pointing, first.pointing, check_names=False)


def test_a_missing_boxes_file_is_refused_before_the_run_starts(tmp_path):
    from camzoo.bench import BenchConfig, run

    out = tmp_path / "run"
    with pytest.raises(ValueError, match=r"nope\.csv: no such file"):
        run(BenchConfig(backbone=TINY1000, weights="random", methods="fakecam", metrics="localization",
                        metric_options={"localization": {"boxes": str(tmp_path / "nope.csv")}},
                        out=str(out), progress=False, figures=False), echo=lambda s: None)
    assert not out.exists()


def test_a_resume_with_changed_boxes_is_refused(loc_run, tmp_path):
    """The boxes file's content is part of the run identity (config.json records its sha256)."""
    import shutil

    from click.testing import CliRunner

    from camzoo.cli import main

    r, *_ = loc_run
    cfg = r.config
    assert len(cfg["protocols"]["localization"]["file_sha256"]["boxes"]) == 64
    boxes = tmp_path / "boxes.csv"
    shutil.copy(cfg["protocols"]["localization"]["options"]["boxes"], boxes)
    out = str(tmp_path / "run")
    args = ["bench", "--backbone", TINY1000, "--weights", "random", "--no-progress", "--no-figures",
            "--data", cfg["data"]["root"], "--methods", "fakecam", "--metrics", "localization",
            "--target", "gt", "--boxes", str(boxes), "--limit", "2", "--out", out]
    assert CliRunner().invoke(main, args).exit_code == 0
    boxes.write_text(boxes.read_text().replace(",2,2,60,44,", ",3,2,60,44,"))
    res = CliRunner().invoke(main, args[:-2] + ["--resume", "--out", out])
    assert res.exit_code == 1, res.output
    assert "protocols.localization.options.boxes" in res.output and "changed since the run started" in res.output


def test_a_folder_of_voc_xml_gives_the_csv_values(loc_run, tmp_path):
    """The same boxes as Pascal-VOC XML files (one per image, wnid class names, as the devkit's
    ILSVRC2012_bbox_val_v3): the bench's values equal the CSV run's."""
    from camzoo.bench import BenchConfig, run
    from camzoo.data.boxes import _wnids

    r, boxes, *_ = loc_run
    wnid = {i: w for w, i in _wnids().items()}
    folder = tmp_path / "xml"
    folder.mkdir()
    for name, bs in boxes.items():
        w, h = SIZES[name]
        objs = "".join(f"<object><name>{wnid[cl]}</name><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>"
                       f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>" for x0, y0, x1, y1, cl in bs)
        (folder / f"{name}.xml").write_text(f"<annotation><filename>{name}</filename><size><width>{w}</width>"
                                             f"<height>{h}</height><depth>3</depth></size>{objs}</annotation>")
    cfg = r.config
    xml = run(BenchConfig(backbone=TINY1000, weights="random", data=cfg["data"]["root"], methods="gradcam,fakecam",
                          metrics="localization",
                          metric_options={"localization": {"boxes": str(folder), "tolerance": TOLERANCE}},
                          target="gt", out=str(tmp_path / "run"), progress=False, figures=False),
              echo=lambda s: None)
    keys = ["pointing", "energy_pointing", "loc_error", "top1_loc_error"]
    a = r.rows().set_index(["method", "image_id"]).sort_index()[keys]
    b = xml.rows().set_index(["method", "image_id"]).sort_index()[keys]
    pd.testing.assert_frame_equal(a, b)
    assert a["pointing"].notna().sum() == 4  # 2 scored images x 2 methods
