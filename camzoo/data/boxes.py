"""Ground-truth bounding boxes for the ``localization`` protocol: readers and the box transform.

Two sources (``--boxes PATH``, :func:`read_boxes`):

- **a folder of Pascal-VOC XML files**, as ImageNet ships its validation boxes
  (``ILSVRC2012_bbox_val_v3``: one ``ILSVRC2012_val_XXXXXXXX.xml`` per image, searched
  recursively): ``<size><width>..</width><height>..</height></size>`` and, per object,
  ``<name>n01751748</name><bndbox><xmin>..</xmin><ymin>..</ymin><xmax>..</xmax><ymax>..</ymax>``.
  The image is the XML file's name without ``.xml``.
- **a CSV file** with a header of exactly the columns ``file,xmin,ymin,xmax,ymax,class`` (any
  order), one row per box, several rows per file; ``file`` is the image's file name or its path
  relative to the data folder (an image extension is ignored).

A class is a 0-based class index or an ImageNet-1k wnid, mapped to its index the way every
camzoo ImageNet layout maps wnids: its position among the sorted 1000 wnids
(:func:`camzoo.data.imagenet.wnid_index`).

**Coordinates** are pixel edges of the original image: a box covers ``[xmin, xmax] x [ymin,
ymax]`` of the image's ``[0, W] x [0, H]`` (ImageNet's boxes run from 0 to the image's width and
height). The XML's ``<size>`` is the image the coordinates refer to; when the file on disk has
another size (a validation set stored resized), the boxes are scaled to the file's size.

**Matching an image** (:meth:`BoxSource.lookup`): by its image id (path relative to the data
folder without extension), else by its file name without extension.

**The box transform** (:func:`input_geometry`): the backbone's ``preprocess`` resizes and crops;
its geometric steps (torchvision's ``Resize`` / ``CenterCrop``, timm's ``ResizeKeepRatio`` /
``CenterCropOrPad`` / ``TrimBorder``) are read from the transform itself and composed into one
per-axis map ``x_input = sx * x_image + tx`` (:class:`Geometry`), with torchvision's own output
sizes and crop offsets. A box is mapped with it, clipped to the input, and dropped when nothing of
it is left (:meth:`Geometry.map_boxes`); its **pixels** are those whose centres lie in it
(:func:`pixel_box`).
"""
from __future__ import annotations

import csv
import functools
import hashlib
import math
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

from ..utils import file_sha256
from .images import IMAGE_EXTENSIONS, path_text

PathLike = Union[str, os.PathLike]

#: the CSV's columns (any order, no others)
CSV_COLUMNS = ("file", "xmin", "ymin", "xmax", "ymax", "class")


@dataclass(frozen=True)
class Box:
    """One ground-truth box in the pixel-edge coordinates of an image (see the module doc).

    Attributes:
        xmin, ymin, xmax, ymax: its edges, ``xmin < xmax`` and ``ymin < ymax``.
        label: its class index (0-based).
    """

    xmin: float
    ymin: float
    xmax: float
    ymax: float
    label: int


@dataclass(frozen=True)
class ImageBoxes:
    """The boxes of one image.

    Attributes:
        boxes: its boxes (may be empty: the image is listed, with no object).
        size: ``(width, height)`` of the image the coordinates refer to (the XML's ``<size>``);
            ``None``: the image file's own size (the CSV).
        where: the file (and line) that gave them, for messages.
    """

    boxes: Tuple[Box, ...]
    size: Optional[Tuple[int, int]]
    where: str


class BoxSource:
    """The boxes of a ``--boxes`` file or folder, per image (:func:`read_boxes`).

    Attributes:
        path: the absolute file or folder.
        kind: ``"xml"`` (a folder of VOC XML files) or ``"csv"``.
        images: key -> :class:`ImageBoxes`; the key is the listed path without image
            extension, ``/``-separated (an XML file's name without ``.xml``).
    """

    def __init__(self, path: str, kind: str, images: Dict[str, ImageBoxes]) -> None:
        self.path, self.kind, self.images = path, kind, images
        names: Dict[str, List[str]] = {}
        for k in images:
            names.setdefault(k.rsplit("/", 1)[-1], []).append(k)
        #: file name without extension -> its keys (more than one: ambiguous by name)
        self._by_name = names

    def __len__(self) -> int:
        return len(self.images)

    def lookup(self, image_id: str, path: Optional[str] = None) -> Optional[ImageBoxes]:
        """The boxes of the image with ``image_id`` (and file ``path``), or ``None`` when the
        source does not list it: by the image id, else by the file name without extension.

        Raises:
            ValueError: the name matches several listed paths (say which).
        """
        got = self.images.get(image_id)
        if got is not None:
            return got
        names = [image_id.rsplit("/", 1)[-1]]
        if path is not None:
            names.append(_stem(os.path.basename(path_text(path))))
        for name in names:
            keys = self._by_name.get(name)
            if keys is None:
                continue
            if len(keys) > 1:
                raise ValueError(f"{self.path}: image {image_id!r} matches several listed images by "
                                 f"its file name ({', '.join(sorted(keys)[:4])}); list it by its path "
                                 "relative to the data folder")
            return self.images[keys[0]]
        return None


def _stem(name: str) -> str:
    """``name`` without an image extension (any case), ``\\`` and leading ``./`` normalized."""
    name = name.replace("\\", "/")
    while name.startswith("./"):
        name = name[2:]
    stem, ext = os.path.splitext(name)
    return stem if ext.lower() in IMAGE_EXTENSIONS else name


@functools.lru_cache(maxsize=1)
def _wnids() -> Dict[str, int]:
    from .imagenet import wnid_index

    return wnid_index()


def parse_class(value: str, where: str) -> int:
    """A class index from a box's class: an integer >= 0 or an ImageNet-1k wnid."""
    v = value.strip()
    try:
        k = int(v)
    except ValueError:
        k = _wnids().get(v)
        if k is None:
            raise ValueError(f"{where}: class {v!r} is neither a class index nor one of the 1000 "
                             "ImageNet-1k wnids (n01440764, ...)") from None
        return k
    if k < 0:
        raise ValueError(f"{where}: class {k} is negative; class indices start at 0")
    return k


def _box(xmin: Any, ymin: Any, xmax: Any, ymax: Any, label: int, where: str) -> Box:
    try:
        c = [float(str(v).strip()) for v in (xmin, ymin, xmax, ymax)]
    except (TypeError, ValueError):
        raise ValueError(f"{where}: box coordinates must be numbers; got xmin={xmin!r}, "
                         f"ymin={ymin!r}, xmax={xmax!r}, ymax={ymax!r}") from None
    if not all(math.isfinite(v) for v in c):
        raise ValueError(f"{where}: box coordinates must be finite; got {c}")
    if not (c[0] < c[2] and c[1] < c[3]):
        raise ValueError(f"{where}: a box needs xmin < xmax and ymin < ymax; got xmin={c[0]:g}, "
                         f"ymin={c[1]:g}, xmax={c[2]:g}, ymax={c[3]:g}")
    return Box(c[0], c[1], c[2], c[3], label)


# -- Pascal-VOC XML (ImageNet's ILSVRC2012_bbox_val_v3) ----------------------------------------
def read_voc_xml(path: PathLike) -> ImageBoxes:
    """The boxes of one Pascal-VOC XML file (``<annotation>``: ``<size>``, ``<object>``s).

    Raises:
        ValueError: not well-formed XML, a missing or bad ``<size>``, ``<name>`` or
            ``<bndbox>`` value (naming the file and the object).
    """
    path = os.fspath(path)
    where = path_text(path)
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise ValueError(f"{where}: not a well-formed XML file ({exc})") from None
    except OSError as exc:
        raise ValueError(f"{where}: cannot read ({type(exc).__name__}: {exc})") from None
    size = None
    s = root.find("size")
    if s is not None:
        try:
            size = (int(float(s.findtext("width", ""))), int(float(s.findtext("height", ""))))
        except ValueError:
            raise ValueError(f"{where}: <size> needs integer <width> and <height>") from None
        if size[0] <= 0 or size[1] <= 0:
            raise ValueError(f"{where}: <size> must be positive; got {size[0]}x{size[1]}")
    boxes = []
    for i, obj in enumerate(root.iter("object"), start=1):
        at = f"{where}, object {i}"
        name = obj.findtext("name")
        bb = obj.find("bndbox")
        if name is None or bb is None:
            raise ValueError(f"{at}: an <object> needs a <name> and a <bndbox>")
        vals = [bb.findtext(k) for k in ("xmin", "ymin", "xmax", "ymax")]
        if any(v is None for v in vals):
            raise ValueError(f"{at}: <bndbox> needs <xmin>, <ymin>, <xmax> and <ymax>")
        boxes.append(_box(*vals, parse_class(name, at), at))
    return ImageBoxes(tuple(boxes), size, where)


def _xml_files(folder: str) -> Iterator[str]:
    for d, dirs, files in os.walk(folder):
        dirs.sort()
        for f in sorted(files):
            if f.lower().endswith(".xml"):
                yield os.path.join(d, f)


def read_voc_folder(folder: PathLike) -> Dict[str, ImageBoxes]:
    """Every ``*.xml`` below ``folder`` (recursively), keyed by its file name without ``.xml``.

    Raises:
        ValueError: no XML file, a bad file (:func:`read_voc_xml`), or two files of the same name.
    """
    folder = os.fspath(folder)
    out: Dict[str, ImageBoxes] = {}
    for f in _xml_files(folder):
        key = path_text(os.path.splitext(os.path.basename(f))[0])
        if key in out:
            raise ValueError(f"{path_text(folder)}: two box files for image {key!r}: "
                             f"{out[key].where} and {path_text(f)}")
        out[key] = read_voc_xml(f)
    if not out:
        raise ValueError(f"{path_text(folder)}: no .xml box files in this folder (expected "
                         "Pascal-VOC files such as ImageNet's ILSVRC2012_val_00000001.xml)")
    return out


# -- CSV ----------------------------------------------------------------------------------------
def read_boxes_csv(path: PathLike) -> Dict[str, ImageBoxes]:
    """The boxes of a CSV with the columns ``file,xmin,ymin,xmax,ymax,class`` (a header; any
    order), keyed by ``file`` without image extension (``/``-separated).

    Raises:
        ValueError: another header, an empty file, a bad row (naming ``file:line``).
    """
    path = os.fspath(path)
    where = path_text(path)
    rows: Dict[str, List[Box]] = {}
    first: Dict[str, str] = {}
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            cols = [c.strip() for c in reader.fieldnames or []]
            if sorted(cols) != sorted(CSV_COLUMNS):
                raise ValueError(f"{where}: a box CSV needs a header of exactly the columns "
                                 f"{','.join(CSV_COLUMNS)}; got {','.join(cols) or 'none'}")
            reader.fieldnames = cols
            for r in reader:
                at = f"{where}:{reader.line_num}"
                if not any((v or "").strip() for v in r.values()):
                    continue
                if None in r or any(r[c] is None for c in CSV_COLUMNS):
                    raise ValueError(f"{at}: expected {len(CSV_COLUMNS)} values "
                                     f"({','.join(CSV_COLUMNS)})")
                key = _stem(r["file"].strip())
                if not key:
                    raise ValueError(f"{at}: empty file name")
                box = _box(r["xmin"], r["ymin"], r["xmax"], r["ymax"], parse_class(r["class"], at), at)
                rows.setdefault(key, []).append(box)
                first.setdefault(key, at)
    except UnicodeDecodeError as exc:
        raise ValueError(f"{where}: not a UTF-8 text file ({exc})") from None
    if not rows:
        raise ValueError(f"{where}: lists no boxes")
    return {k: ImageBoxes(tuple(v), None, first[k]) for k, v in rows.items()}


# -- either -------------------------------------------------------------------------------------
def _signature(path: str) -> Tuple[int, int]:
    st = os.stat(path)
    return st.st_mtime_ns, st.st_size


@functools.lru_cache(maxsize=4)
def _read(path: str, signature: Tuple[int, int]) -> BoxSource:
    if os.path.isdir(path):
        return BoxSource(path, "xml", read_voc_folder(path))
    return BoxSource(path, "csv", read_boxes_csv(path))


def read_boxes(path: PathLike) -> BoxSource:
    """The boxes of ``path``: a folder of VOC XML files or a CSV file (see the module doc);
    read once per process while the file (folder) is unchanged.

    Raises:
        ValueError: ``path`` does not exist, or does not parse (the message names the file).
    """
    path = os.path.abspath(os.fspath(path))
    if not os.path.exists(path):
        raise ValueError(f"boxes {path_text(path)}: no such file or folder (give a CSV file with "
                         f"the columns {','.join(CSV_COLUMNS)} or a folder of Pascal-VOC XML files)")
    if not (os.path.isdir(path) or os.path.isfile(path)):
        raise ValueError(f"boxes {path_text(path)}: not a regular file or a folder")
    return _read(path, _signature(path))


def boxes_sha256(path: PathLike) -> str:
    """The content hash of a ``--boxes`` source (a run's identity): the file's sha256, or for a
    folder the sha256 of every ``*.xml`` below it (relative name and content, in sorted order)."""
    path = os.path.abspath(os.fspath(path))
    if not os.path.isdir(path):
        return file_sha256(path)
    h = hashlib.sha256()
    for f in _xml_files(path):
        h.update(os.fsencode(os.path.relpath(f, path).replace(os.sep, "/")) + b"\0")
        h.update(file_sha256(f).encode() + b"\n")
    return h.hexdigest()


@functools.lru_cache(maxsize=1 << 16)
def image_size(path: str) -> Tuple[int, int]:
    """``(width, height)`` of an image file, from its header (as :func:`~.images.load_image`
    reads it: no EXIF rotation)."""
    from PIL import Image

    with Image.open(path) as im:
        return im.size


# -- the box transform ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Geometry:
    """How a preprocess maps one image to the model's input: per axis ``x_in = sx * x + tx``,
    ``y_in = sy * y + ty`` (pixel-edge coordinates), the input being ``width x height``.

    ``sx``, ``sy`` are also the image pixels -> input pixels scale (the pointing game's
    tolerance is given in image pixels)."""

    sx: float
    sy: float
    tx: float
    ty: float
    width: int
    height: int

    def map_boxes(self, boxes: Sequence[Box]) -> List[Box]:
        """``boxes`` in input coordinates, clipped to ``[0, width] x [0, height]``; a box with
        no area left in the input (entirely outside the crop) is dropped."""
        out = []
        for b in boxes:
            x0 = min(max(self.sx * b.xmin + self.tx, 0.0), self.width)
            x1 = min(max(self.sx * b.xmax + self.tx, 0.0), self.width)
            y0 = min(max(self.sy * b.ymin + self.ty, 0.0), self.height)
            y1 = min(max(self.sy * b.ymax + self.ty, 0.0), self.height)
            if x1 > x0 and y1 > y0:
                out.append(Box(x0, y0, x1, y1, b.label))
        return out


def _pixel_range(lo: float, hi: float, n: int) -> Tuple[int, int]:
    """The pixels ``i`` whose centre ``i + 0.5`` lies in ``[lo, hi]`` (inclusive range); the
    pixel holding the middle of the interval when no centre does."""
    a, b = math.ceil(lo - 0.5), math.floor(hi - 0.5)
    a, b = max(a, 0), min(b, n - 1)
    if b < a:
        a = b = min(max(int(math.floor((lo + hi) / 2)), 0), n - 1)
    return a, b


def pixel_box(box: Box, width: int, height: int) -> Tuple[int, int, int, int]:
    """The pixels of an input-coordinate box: ``(x0, y0, x1, y1)`` inclusive column / row
    indices of the pixels whose centres lie in it (at least one pixel)."""
    x0, x1 = _pixel_range(box.xmin, box.xmax, width)
    y0, y1 = _pixel_range(box.ymin, box.ymax, height)
    return x0, y0, x1, y1


#: transforms that change no geometry (colour, dtype, tensor conversion, normalization)
_NEUTRAL = {"ToTensor", "PILToTensor", "MaybeToTensor", "MaybePILToTensor", "Normalize",
            "ConvertImageDtype", "ToDtype", "ToImage", "ToPureTensor", "Grayscale", "ToNumpy"}


def _is_transform(obj: Any) -> bool:
    mod = type(obj).__module__ or ""
    return mod.startswith(("torchvision.transforms", "timm.data"))


def _unwrap(pre: Any, depth: int = 0) -> Optional[List[Any]]:
    """The transform objects of ``pre``, in order: a ``Compose`` (nested ones flattened), one
    transform, or a function wrapping one (camzoo's RGB wrapper: found among its closure's
    cells, or ``__wrapped__`` / ``functools.partial``); None when none is found."""
    if depth > 4:
        return None
    if type(pre).__name__ == "Compose" and _is_transform(pre):
        out: List[Any] = []
        for t in pre.transforms:
            inner = _unwrap(t, depth + 1) if type(t).__name__ == "Compose" else [t]
            if inner is None:
                return None
            out += inner
        return out
    if _is_transform(pre):
        return [pre]
    if isinstance(pre, functools.partial):
        return _unwrap(pre.func, depth + 1)
    wrapped = getattr(pre, "__wrapped__", None)
    if wrapped is not None:
        return _unwrap(wrapped, depth + 1)
    found = [c.cell_contents for c in (getattr(pre, "__closure__", None) or ())
             if _is_transform(getattr(c, "cell_contents", None))]
    if len(found) == 1:
        return _unwrap(found[0], depth + 1)
    return None


def _pair(size: Any) -> Tuple[int, int]:
    """``(h, w)`` of a crop size given as an int or a sequence of 1 or 2 ints."""
    if isinstance(size, (int, float)):
        return int(size), int(size)
    size = list(size)
    return (int(size[0]), int(size[0])) if len(size) == 1 else (int(size[0]), int(size[1]))


def _resized(t: Any, h: int, w: int) -> Tuple[int, int]:
    """``(h, w)`` after a resize transform ``t`` (torchvision's ``Resize`` rule, timm's
    ``ResizeKeepRatio.get_params``)."""
    name = type(t).__name__
    if name == "ResizeKeepRatio":
        if getattr(t, "random_scale_prob", 0) or getattr(t, "random_aspect_prob", 0):
            raise ValueError(f"{t!r} resizes at random; boxes cannot be mapped exactly")
        import torch

        dummy = torch.empty(1, 1, 1).expand(1, h, w)  # only its shape is read
        nh, nw = t.get_params(dummy, t.size, t.longest)
        return int(nh), int(nw)
    from torchvision.transforms.functional import _compute_resized_output_size

    size = t.size
    if isinstance(size, int):
        size = [size]
    nh, nw = _compute_resized_output_size((h, w), list(size) if size is not None else None,
                                          getattr(t, "max_size", None))
    return int(nh), int(nw)


def _center_crop(h: int, w: int, ch: int, cw: int) -> Tuple[int, int]:
    """``(top, left)`` of torchvision's ``center_crop`` (and timm's ``center_crop_or_pad``) of
    an ``h x w`` image to ``ch x cw``: negative when the image is padded first."""
    pad_l = (cw - w) // 2 if cw > w else 0
    pad_t = (ch - h) // 2 if ch > h else 0
    ph = h + pad_t + ((ch - h + 1) // 2 if ch > h else 0)
    pw = w + pad_l + ((cw - w + 1) // 2 if cw > w else 0)
    return int(round((ph - ch) / 2.0)) - pad_t, int(round((pw - cw) / 2.0)) - pad_l


def geometric_steps(preprocess: Callable) -> List[Any]:
    """The steps of ``preprocess`` that move pixels (resizes and crops), in order.

    Raises:
        ValueError: the preprocess is not a torchvision / timm transform pipeline, or holds a
            step of unknown geometry (named).
    """
    steps = _unwrap(preprocess)
    if steps is None:
        raise ValueError(f"cannot read the resize and crop of the backbone's preprocess {preprocess!r}: "
                         "boxes are mapped through a torchvision (or timm) Compose of Resize / "
                         "CenterCrop and tensor steps")
    geo = []
    for t in steps:
        name = type(t).__name__
        if name in _NEUTRAL:
            continue
        if name in ("Resize", "ResizeKeepRatio", "CenterCrop", "CenterCropOrPad", "TrimBorder"):
            geo.append(t)
            continue
        raise ValueError(f"the backbone's preprocess holds {t!r}, whose geometry camzoo does not know: "
                         "boxes can be mapped through Resize, CenterCrop (torchvision), ResizeKeepRatio, "
                         "CenterCropOrPad, TrimBorder (timm) and tensor / normalization steps")
    return geo


def input_geometry(preprocess: Union[Callable, Sequence[Any]], size: Tuple[int, int]) -> Geometry:
    """The :class:`Geometry` ``preprocess`` applies to an image of ``size = (width, height)``.

    Args:
        preprocess: the backbone's preprocess, or its :func:`geometric_steps`.
        size: the image's ``(width, height)`` in pixels.
    """
    steps = preprocess if isinstance(preprocess, (list, tuple)) else geometric_steps(preprocess)
    w, h = int(size[0]), int(size[1])
    sx = sy = 1.0
    tx = ty = 0.0
    for t in steps:
        name = type(t).__name__
        if name in ("Resize", "ResizeKeepRatio"):
            nh, nw = _resized(t, h, w)
            fx, fy = nw / w, nh / h
            sx, tx, sy, ty = sx * fx, tx * fx, sy * fy, ty * fy
            h, w = nh, nw
        elif name in ("CenterCrop", "CenterCropOrPad"):
            ch, cw = _pair(t.size)
            top, left = _center_crop(h, w, ch, cw)
            tx, ty = tx - left, ty - top
            h, w = ch, cw
        elif name == "TrimBorder":
            b = int(t.border_size)
            tx, ty = tx - b, ty - b
            h, w = max(h - 2 * b, 0), max(w - 2 * b, 0)
    return Geometry(sx, sy, tx, ty, w, h)


def scaled_to(ib: ImageBoxes, size: Tuple[int, int]) -> List[Box]:
    """``ib``'s boxes in the coordinates of an image of ``size = (width, height)``: as they are
    when ``ib.size`` is None or equal, else scaled per axis from ``ib.size``."""
    if ib.size is None or tuple(ib.size) == tuple(size):
        return list(ib.boxes)
    fx, fy = size[0] / ib.size[0], size[1] / ib.size[1]
    return [Box(b.xmin * fx, b.ymin * fy, b.xmax * fx, b.ymax * fy, b.label) for b in ib.boxes]
