"""Ground-truth boxes (camzoo.data.boxes): the VOC XML and CSV readers on tiny fixtures, their
errors, matching images, and the box transform through real preprocesses (hand-computed boxes,
and a white rectangle drawn on a black image landing on the transformed box's pixels)."""
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from camzoo.data.boxes import (Box, ImageBoxes, boxes_sha256, geometric_steps, input_geometry,
                               pixel_box, read_boxes, read_boxes_csv, read_voc_folder, scaled_to)
from camzoo.data.imagenet import wnid_index
from tests.conftest import REPO

FIXTURES = os.path.join(REPO, "tests", "fixtures", "boxes")
SNAKE = 65  # n01751748 (sea snake) among the sorted 1000 wnids
SEASHORE = 970  # n09193705


def test_the_wnid_indices_of_the_fixtures():
    w = wnid_index()
    assert (w["n01751748"], w["n09193705"]) == (SNAKE, SEASHORE)


# -- readers ---------------------------------------------------------------------------------------
def test_voc_xml_folder_as_imagenet_ships_it():
    boxes = read_voc_folder(os.path.join(FIXTURES, "val"))
    assert sorted(boxes) == ["ILSVRC2012_val_00000001", "ILSVRC2012_val_00000002"]
    one = boxes["ILSVRC2012_val_00000001"]
    assert one.size == (500, 375)
    assert one.boxes == (Box(111, 108, 441, 193, SNAKE), Box(0, 300, 60, 375, SNAKE))
    assert one.where.endswith("ILSVRC2012_val_00000001.xml")
    assert boxes["ILSVRC2012_val_00000002"].boxes == (Box(20, 35, 310, 480, SEASHORE),)
    src = read_boxes(FIXTURES)  # the folder above: XML files are found recursively
    assert src.kind == "xml" and len(src) == 2


def test_csv_reader_groups_rows_per_file_and_maps_wnids():
    boxes = read_boxes_csv(os.path.join(FIXTURES, "boxes.csv"))
    assert sorted(boxes) == ["ILSVRC2012_val_00000001", "sub/photo"]  # image extensions dropped
    assert boxes["ILSVRC2012_val_00000001"].boxes == (Box(111, 108, 441, 193, SNAKE),
                                                      Box(0, 300, 60, 375, 65))
    assert boxes["sub/photo"].boxes == (Box(10.5, 20, 30, 40.25, 7), Box(1, 2, 3, 4, 8))
    assert boxes["sub/photo"].size is None and boxes["sub/photo"].where.endswith("boxes.csv:4")


def test_images_are_matched_by_id_then_by_file_name():
    src = read_boxes(os.path.join(FIXTURES, "boxes.csv"))
    assert src.kind == "csv"
    assert src.lookup("sub/photo").boxes[0].label == 7
    assert src.lookup("photo").boxes[0].label == 7  # by file name
    assert src.lookup("val/n01751748/ILSVRC2012_val_00000001").boxes[0].label == SNAKE
    assert src.lookup("renamed", "/data/val/ILSVRC2012_val_00000001.JPEG").boxes[0].label == SNAKE
    assert src.lookup("other") is None


def test_a_name_listed_under_two_paths_is_ambiguous(tmp_path):
    p = tmp_path / "b.csv"
    p.write_text("file,xmin,ymin,xmax,ymax,class\na/x.jpg,0,0,1,1,0\nb/x.jpg,0,0,1,1,1\n")
    src = read_boxes(p)
    assert src.lookup("a/x").boxes[0].label == 0
    with pytest.raises(ValueError, match="several listed images"):
        src.lookup("x")


@pytest.mark.parametrize("text, match", [
    ("file,x0,y0,x1,y1,class\na.jpg,0,0,1,1,0\n", "exactly the columns file,xmin,ymin,xmax,ymax,class"),
    ("file,xmin,ymin,xmax,ymax,class\na.jpg,5,0,5,1,0\n", r"b\.csv:2: a box needs xmin < xmax"),
    ("file,xmin,ymin,xmax,ymax,class\na.jpg,0,0,1,1,0\na.jpg,0,0,one,1,0\n",
     r"b\.csv:3: box coordinates must be numbers"),
    ("file,xmin,ymin,xmax,ymax,class\na.jpg,0,0,1,1,n99999999\n", r"b\.csv:2: class 'n99999999' is neither"),
    ("file,xmin,ymin,xmax,ymax,class\na.jpg,0,0,1,1,-2\n", "negative"),
    ("file,xmin,ymin,xmax,ymax,class\n", "lists no boxes"),
])
def test_csv_errors_name_the_file_and_line(tmp_path, text, match):
    p = tmp_path / "b.csv"
    p.write_text(text)
    with pytest.raises(ValueError, match=match):
        read_boxes(p)


def test_xml_errors_name_the_file(tmp_path):
    d = tmp_path / "xml"
    d.mkdir()
    with pytest.raises(ValueError, match="no .xml box files"):
        read_boxes(d)
    (d / "ILSVRC2012_val_00000009.xml").write_text("<annotation><object><name>n01751748</name>")
    with pytest.raises(ValueError, match="ILSVRC2012_val_00000009.xml: not a well-formed XML"):
        read_boxes(d)
    (d / "ILSVRC2012_val_00000009.xml").write_text(
        "<annotation><object><name>n01751748</name><bndbox><xmin>1</xmin><ymin>1</ymin>"
        "<xmax>3</xmax></bndbox></object></annotation>")
    with pytest.raises(ValueError, match="ILSVRC2012_val_00000009.xml, object 1: <bndbox> needs"):
        read_boxes(d)
    with pytest.raises(ValueError, match="no such file or folder"):
        read_boxes(tmp_path / "missing.csv")


def test_an_image_with_no_object_is_listed_with_no_box(tmp_path):
    d = tmp_path / "xml"
    d.mkdir()
    (d / "img.xml").write_text("<annotation><size><width>10</width><height>8</height></size></annotation>")
    ib = read_boxes(d).lookup("img")
    assert ib is not None and ib.boxes == () and ib.size == (10, 8)


def test_the_content_hash_follows_the_content(tmp_path):
    d = tmp_path / "val"
    shutil.copytree(os.path.join(FIXTURES, "val"), d)
    h = boxes_sha256(d)
    assert boxes_sha256(d) == h and len(h) == 64
    f = d / "ILSVRC2012_val_00000002.xml"
    f.write_text(f.read_text().replace("<xmin>20</xmin>", "<xmin>21</xmin>"))
    assert boxes_sha256(d) != h
    c = tmp_path / "b.csv"
    shutil.copy(os.path.join(FIXTURES, "boxes.csv"), c)
    hc = boxes_sha256(c)
    c.write_text(c.read_text().replace("10.5", "10.6"))
    assert boxes_sha256(c) != hc


# -- the box transform -----------------------------------------------------------------------------
def test_an_off_centre_box_by_hand_through_resize_and_centre_crop():
    """ResNet-50 V2's preprocess (resize 232, crop 224) on a 500x375 image: the shorter side
    375 -> 232, the longer int(232 * 500 / 375) = 309; crop offsets round((309-224)/2) = 42
    (Python's and torchvision's round half to even) and round((232-224)/2) = 4."""
    pre = T.Compose([T.Resize(232, antialias=True), T.CenterCrop(224), T.ToTensor()])
    g = input_geometry(pre, (500, 375))
    assert (g.width, g.height) == (224, 224)
    assert g.sx == pytest.approx(309 / 500) and g.sy == pytest.approx(232 / 375)
    assert (g.tx, g.ty) == (-42, -4)
    (b,) = g.map_boxes([Box(300, 40, 460, 200, 3)])
    # x: 300 * 0.618 - 42 = 143.4, 460 * 0.618 - 42 = 242.28 -> clipped to 224
    # y: 40 * 232/375 - 4 = 20.7467, 200 * 232/375 - 4 = 119.7333
    assert (b.xmin, b.xmax, b.label) == (pytest.approx(143.4), 224, 3)
    assert (b.ymin, b.ymax) == (pytest.approx(20.746667), pytest.approx(119.733333))
    # its pixels: centres i + 0.5 inside -> columns 143..223, rows 21..119
    assert pixel_box(b, 224, 224) == (143, 21, 223, 119)
    # a box entirely in the cut-off left part is dropped; one straddling the edge is clipped
    assert g.map_boxes([Box(0, 0, 60, 375, 1)]) == []
    (e,) = g.map_boxes([Box(0, 0, 80, 375, 1)])
    assert (e.xmin, e.xmax) == (0, pytest.approx(80 * 0.618 - 42))


def test_boxes_are_rescaled_when_the_file_is_not_the_annotated_size():
    ib = ImageBoxes((Box(100, 50, 300, 150, 2),), (400, 300), "x.xml")
    assert scaled_to(ib, (400, 300)) == [Box(100, 50, 300, 150, 2)]
    (b,) = scaled_to(ib, (200, 150))
    assert (b.xmin, b.ymin, b.xmax, b.ymax) == (50, 25, 150, 75)


def test_pixels_of_a_thin_box_and_of_edges():
    # no centre inside a 0.4 px wide box: the pixel holding its middle
    assert pixel_box(Box(3.1, 0, 3.5, 2, 0), 8, 8) == (3, 0, 3, 1)
    assert pixel_box(Box(0, 0, 8, 8, 0), 8, 8) == (0, 0, 7, 7)


def _bright_box(pre, img):
    """The bright pixels' box: those changed by more than half the most changed one from the
    preprocess of a black image (padding, in any colour, stays unchanged)."""
    d = (pre(img) - pre(Image.new("RGB", img.size))).float().mean(0)
    ys, xs = np.nonzero((d > d.max() / 2).numpy())
    return xs.min(), ys.min(), xs.max(), ys.max()


def _timm(**kw):
    from timm.data import create_transform

    return create_transform(**kw)


PREPROCESSES = {
    "tiny": lambda: __import__("camzoo.models.testing", fromlist=["x"]).tiny_backbone(input_size=64).preprocess,
    "resnet": lambda: T.Compose([T.Resize(232, antialias=True), T.CenterCrop(224), T.ToTensor()]),
    "timm-keep-ratio": lambda: _timm(input_size=(3, 160, 200), crop_pct=0.9, interpolation="bicubic"),
    "timm-border": lambda: _timm(input_size=(3, 128, 128), crop_pct=1.0, crop_mode="border"),
    "crop-larger-than-image": lambda: T.Compose([T.CenterCrop(96), T.ToTensor()]),
}


@pytest.mark.parametrize("name", list(PREPROCESSES))
@pytest.mark.parametrize("W, H, box", [(300, 200, (170, 30, 260, 150)), (120, 180, (5, 100, 70, 175)),
                                       (80, 64, (10, 8, 40, 30))])
def test_a_drawn_rectangle_lands_on_the_transformed_box(name, W, H, box):
    """A white rectangle on a black image, through the real preprocess: its bright pixels are
    the transformed box's pixels within 1 px (resampling blurs the edges)."""
    pre = PREPROCESSES[name]()
    img = np.zeros((H, W, 3), np.uint8)
    img[box[1]:box[3], box[0]:box[2]] = 255  # covers the pixel-edge box [xmin, xmax] x [ymin, ymax]
    g = input_geometry(pre, (W, H))
    mapped = g.map_boxes([Box(*box, 0)])
    assert len(mapped) == 1, (name, g)
    want = pixel_box(mapped[0], g.width, g.height)
    got = _bright_box(pre, Image.fromarray(img))
    assert np.abs(np.array(got) - np.array(want)).max() <= 1, (name, got, want, g)


def test_the_real_lite0_preprocess(lite0):
    g = input_geometry(lite0.preprocess, (500, 375))
    assert (g.width, g.height) == (224, 224)
    # timm's Lite0 config: crop_pct 0.875 -> resize 256, crop 224: 375 -> 256, 500 -> 341
    assert (g.sx, g.sy, g.tx, g.ty) == (pytest.approx(341 / 500), pytest.approx(256 / 375), -58, -16)
    img = np.zeros((375, 500, 3), np.uint8)
    img[40:300, 120:400] = 255
    want = pixel_box(g.map_boxes([Box(120, 40, 400, 300, 0)])[0], 224, 224)
    assert np.abs(np.array(_bright_box(lite0.preprocess, Image.fromarray(img))) - np.array(want)).max() <= 1


def test_unknown_geometry_is_refused_naming_the_step():
    with pytest.raises(ValueError, match="RandomHorizontalFlip"):
        geometric_steps(T.Compose([T.Resize(8), T.RandomHorizontalFlip(), T.ToTensor()]))
    with pytest.raises(ValueError, match="cannot read the resize and crop"):
        geometric_steps(lambda img: torch.zeros(3, 8, 8))
    steps = geometric_steps(T.Compose([T.Compose([T.Resize(8)]), T.CenterCrop(8), T.ToTensor(),
                                       T.Normalize([0.5] * 3, [0.5] * 3)]))
    assert [type(s).__name__ for s in steps] == ["Resize", "CenterCrop"]
