"""ImageNet-1k validation as researchers have it on disk (see docs/bench.md).

Three forms, each giving the standard 0-based class index (the wnid's position among the
sorted 1000 ImageNet-1k wnids, :func:`camzoo.data.datasets.imagenet_wnids`):

- **torchvision** (``torchvision.datasets.ImageNet(root, split="val")`` has run): ``ROOT/meta.bin``
  and ``ROOT/val/<wnid>/ILSVRC2012_val_XXXXXXXX.JPEG``; labels by wnid folder
  (:func:`is_torchvision_root`, :func:`check_torchvision_val`).
- **flat folder + devkit**: ``ILSVRC2012_val_XXXXXXXX.JPEG`` files plus the devkit
  (``ILSVRC2012_devkit_t12`` folder or ``.tar.gz``). Line *i* of
  ``data/ILSVRC2012_validation_ground_truth.txt`` is the 1-based ILSVRC2012_ID of image *i*;
  ``data/meta.mat`` maps it to a wnid (:func:`devkit_labels`).
- **Kaggle**: ``LOC_val_solution.csv`` (``ImageId,PredictionString``; the first token of
  PredictionString is the wnid) beside ``ILSVRC/Data/CLS-LOC/val/`` (:func:`loc_labels`).

The label sources of the last two cover all 50,000 images: :mod:`.datasets` evaluates the files
present in the folder (matched by name without extension); listed images that are absent are no
error, and image files the source does not name are reported (``Dataset.unlisted``). This module
reads the files and knows the class order; :mod:`.datasets` builds the datasets.

torchvision parses ``meta.mat`` and the ground-truth file in functions nested inside
``torchvision.datasets.imagenet.parse_devkit_archive`` (not importable in torchvision 0.29), and
that function checks the archive's md5 and writes ``meta.bin`` next to it; :func:`parse_meta_mat`
and :func:`read_devkit_ground_truth` read the same files the same way (``scipy.io.loadmat`` with
``squeeze_me=True``, leaf synsets = ``num_children == 0``). ``meta.bin`` is read with
torchvision's own :func:`torchvision.datasets.imagenet.load_meta_file`.
"""
from __future__ import annotations

import csv
import os
import re
import tarfile
import tempfile
import zlib
from contextlib import contextmanager
from typing import Dict, Iterable, Iterator, List, Optional, Tuple, Union

from .images import IMAGE_EXTENSIONS

PathLike = Union[str, os.PathLike]

DEVKIT_ARCHIVE = "ILSVRC2012_devkit_t12.tar.gz"
DEVKIT_FOLDER = "ILSVRC2012_devkit_t12"
VAL_ARCHIVE = "ILSVRC2012_img_val.tar"
DEVKIT_GROUND_TRUTH = "ILSVRC2012_validation_ground_truth.txt"
META_MAT = "meta.mat"
TORCHVISION_META = "meta.bin"
LOC_COLUMNS = ("ImageId", "PredictionString")
N_VAL = 50_000

#: image name (without extension) -> (class index, "file:line" of the label)
Labels = Dict[str, Tuple[int, str]]

_INT = re.compile(r"^\d+$")


def imagenet_wnids() -> List[str]:
    """The 1000 ImageNet-1k wnids in class-index order (sorted), read offline from timm."""
    from timm.data import ImageNetInfo

    wnids = list(ImageNetInfo("imagenet-1k").label_names())
    if len(wnids) != 1000 or wnids != sorted(wnids):
        raise RuntimeError("timm's ImageNet-1k synset list is not the 1000 sorted wnids")
    return wnids


def wnid_index() -> Dict[str, int]:
    """wnid -> class index (its position among the sorted 1000)."""
    return {w: i for i, w in enumerate(imagenet_wnids())}


def val_image_name(i: int) -> str:
    """File name of the ``i``-th (1-based) ImageNet validation image."""
    return f"ILSVRC2012_val_{i:08d}.JPEG"


def prepare_command(root: str) -> str:
    """The one-line torchvision command that builds ``root/val/<wnid>/`` and ``root/meta.bin``."""
    return f"python -c \"import torchvision; torchvision.datasets.ImageNet({root!r}, split='val')\""


# -- the devkit --------------------------------------------------------------------------------
def parse_meta_mat(devkit_root: str) -> Dict[int, str]:
    """ILSVRC2012_ID -> wnid of the 1000 leaf synsets of ``devkit_root/data/meta.mat``.

    Raises:
        ValueError: the file is not the ILSVRC2012 devkit's meta.mat (fields, leaf count, wnids).
    """
    import scipy.io as sio

    path = os.path.join(devkit_root, "data", META_MAT)
    try:
        synsets = sio.loadmat(path, squeeze_me=True)["synsets"]
        ids, wnids, children = synsets["ILSVRC2012_ID"], synsets["WNID"], synsets["num_children"]
    except Exception as exc:  # loadmat raises many types for a file of another kind
        raise ValueError(f"{path}: not the ILSVRC2012 devkit's meta.mat (a 'synsets' struct with "
                         f"ILSVRC2012_ID, WNID, num_children): {type(exc).__name__}: {exc}") from None
    mapping = {int(i): str(w) for i, w, n in zip(ids, wnids, children) if int(n) == 0}
    known = wnid_index()
    if sorted(mapping) != list(range(1, 1001)) or set(mapping.values()) != set(known):
        raise ValueError(f"{path}: its {len(mapping)} leaf synsets are not the 1000 ImageNet-1k "
                         "classes with ILSVRC2012_IDs 1..1000; is this the ILSVRC2012 devkit?")
    return mapping


def read_devkit_ground_truth(path: str) -> List[int]:
    """The ILSVRC2012_IDs of ``ILSVRC2012_validation_ground_truth.txt``, one per image in order.

    Raises:
        ValueError: a line that is not one integer 1..1000 (named ``file:line``), or no lines.
    """
    with open(path, encoding="utf-8-sig") as f:
        lines = f.read().splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    ids = []
    for n, line in enumerate(lines, start=1):
        s = line.strip()
        if not _INT.match(s) or not 1 <= int(s) <= 1000:
            raise ValueError(f"{path}:{n}: expected one ILSVRC2012_ID (1..1000) per line, as in the "
                             f"devkit's {DEVKIT_GROUND_TRUTH}; got {s!r}")
        ids.append(int(s))
    if not ids:
        raise ValueError(f"{path} is empty")
    return ids


def is_devkit_ground_truth(path: str) -> bool:
    """True when ``path`` is the devkit's 1-based ground truth rather than 0-based indices.

    The content must be one integer 1..1000 per line, and either the file carries the devkit's
    name, or it holds a 1000 (no 0-based index reaches it), or it has 50,000 lines and no 0.
    """
    try:
        ids = read_devkit_ground_truth(path)
    except (ValueError, UnicodeDecodeError):
        return False
    return os.path.basename(path) == DEVKIT_GROUND_TRUTH or max(ids) == 1000 or len(ids) == N_VAL


def devkit_refusal(path: str) -> str:
    """Why the devkit's ground truth cannot be a ``--labels`` file on its own, and what to do."""
    return (f"{path} is the ImageNet devkit's {DEVKIT_GROUND_TRUTH}: its labels are 1-based "
            "ILSVRC2012_IDs in meta.mat order, not the 0-based sorted-wnid class indices "
            "classifiers use; pass --devkit DIR_OR_TAR (the ILSVRC2012_devkit_t12 folder or "
            f"{DEVKIT_ARCHIVE}) so that camzoo maps them through its data/meta.mat")


def _devkit_member(names: List[str], wanted: str) -> Optional[str]:
    """The archive member ending in ``data/<wanted>`` (any top folder), if any."""
    tail = f"data/{wanted}"
    hits = [n for n in names if n.replace("\\", "/") == tail or n.replace("\\", "/").endswith("/" + tail)]
    return min(hits, key=len) if hits else None


def _extract_devkit(archive: str, dest: str, wanted: List[str]) -> str:
    """Copy the members ``data/<w>`` of ``archive`` into ``dest/data/``; the messages' prefix."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = {m.name: m for m in tar.getmembers() if m.isfile()}
            found = {w: _devkit_member(list(members), w) for w in wanted}
            if None in found.values():
                lacking = ", ".join(f"data/{w}" for w, m in found.items() if m is None)
                raise ValueError(f"{archive} holds no {lacking}: is it {DEVKIT_ARCHIVE}?")
            os.makedirs(os.path.join(dest, "data"))
            for w, name in found.items():
                with tar.extractfile(members[name]) as src, open(os.path.join(dest, "data", w), "wb") as dst:
                    dst.write(src.read())
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise ValueError(f"cannot read the devkit archive {archive}: {type(exc).__name__}: {exc}") from None
    top = found[META_MAT].replace("\\", "/")[: -len(f"data/{META_MAT}")]
    return f"{archive}:{top}"


@contextmanager
def devkit_folder(devkit: PathLike, need_ground_truth: bool = True) -> Iterator[Tuple[str, str]]:
    """``(devkit_root, shown_as)``: a folder holding ``data/meta.mat`` (and the ground truth).

    ``devkit`` is the extracted ``ILSVRC2012_devkit_t12`` folder (or the folder above it) or the
    ``.tar.gz``; from an archive only ``data/meta.mat`` (and, if ``need_ground_truth``, the
    ground-truth file) are extracted into a temporary folder, removed on exit. Messages name a
    devkit file as ``shown_as + "data/..."``: ``FOLDER/`` or ``ARCHIVE:ILSVRC2012_devkit_t12/``.
    """
    path = os.path.abspath(os.fspath(devkit))
    if os.path.isdir(path):
        for root in (path, os.path.join(path, DEVKIT_FOLDER)):
            if os.path.isfile(os.path.join(root, "data", META_MAT)):
                yield root, root + os.sep
                return
        raise FileNotFoundError(f"devkit folder {path} holds no data/{META_MAT}: give the extracted "
                                f"{DEVKIT_FOLDER} folder or {DEVKIT_ARCHIVE}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"devkit not found: {path} (give the {DEVKIT_FOLDER} folder or {DEVKIT_ARCHIVE})")
    wanted = [META_MAT] + ([DEVKIT_GROUND_TRUTH] if need_ground_truth else [])
    with tempfile.TemporaryDirectory(prefix="camzoo-devkit-") as tmp:
        shown_as = _extract_devkit(path, tmp, wanted)
        yield tmp, shown_as


def devkit_labels(devkit: PathLike, ground_truth: Optional[PathLike] = None) -> Tuple[Labels, str]:
    """Labels of the validation images from the devkit, and the ground-truth file they came from.

    Line ``i`` of the ground truth (``ground_truth``, default the devkit's own
    ``data/ILSVRC2012_validation_ground_truth.txt``) is image ``ILSVRC2012_val_{i:08d}``; its
    ILSVRC2012_ID goes through ``meta.mat`` to a wnid, then to the sorted-wnid class index.
    """
    index = wnid_index()
    gt_path = None if ground_truth is None else os.path.abspath(os.fspath(ground_truth))
    with devkit_folder(devkit, need_ground_truth=gt_path is None) as (root, shown_as):
        id_to_wnid = parse_meta_mat(root)
        if gt_path is None:
            ids = read_devkit_ground_truth(os.path.join(root, "data", DEVKIT_GROUND_TRUTH))
            source = f"{shown_as}data/{DEVKIT_GROUND_TRUTH}"
        else:
            ids = read_devkit_ground_truth(gt_path)
            source = gt_path
    labels = {os.path.splitext(val_image_name(i))[0]: (index[id_to_wnid[k]], f"{source}:{i}")
              for i, k in enumerate(ids, start=1)}
    return labels, source


# -- Kaggle ------------------------------------------------------------------------------------
def is_loc_solution(path: str) -> bool:
    """True when ``path`` is a CSV with Kaggle's ``ImageId,PredictionString`` header."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            header = next(csv.reader(f), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return False
    return tuple(c.strip() for c in header) == LOC_COLUMNS


def _image_stem(name: str) -> str:
    """``name`` without an image extension (``ILSVRC2012_val_00000001.JPEG`` -> ``..._00000001``)."""
    stem, ext = os.path.splitext(name)
    return stem if ext.lower() in IMAGE_EXTENSIONS else name


def loc_labels(path: PathLike) -> Labels:
    """Labels of Kaggle's ``LOC_val_solution.csv``: the first wnid of each PredictionString.

    Raises:
        ValueError: an empty or unknown wnid, or an ImageId listed twice (named ``file:line``).
    """
    path = os.path.abspath(os.fspath(path))
    index = wnid_index()
    labels: Labels = {}
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        next(reader, None)
        for row in reader:
            n = reader.line_num
            if not row or not "".join(row).strip():
                continue
            tokens = row[1].split() if len(row) > 1 else []
            if not tokens or tokens[0] not in index:
                raise ValueError(f"{path}:{n}: PredictionString should start with one of the 1000 "
                                 f"ImageNet-1k wnids; got {(tokens or [''])[0]!r}")
            key = _image_stem(os.path.basename(row[0].strip()))
            if key in labels:
                raise ValueError(f"{path}:{n}: ImageId {row[0].strip()!r} is listed twice "
                                 f"(also {labels[key][1]})")
            labels[key] = (index[tokens[0]], f"{path}:{n}")
    if not labels:
        raise ValueError(f"{path} lists no images")
    return labels


# -- torchvision ---------------------------------------------------------------------------------
def is_torchvision_root(root: str) -> bool:
    """True when ``root`` holds torchvision's ``meta.bin`` and a ``val/`` folder."""
    return os.path.isfile(os.path.join(root, TORCHVISION_META)) and os.path.isdir(os.path.join(root, "val"))


def refuse_unprepared_torchvision(root: str) -> None:
    """Raise when ``root`` holds torchvision's ImageNet archives but no ``val/`` folder."""
    archives = [a for a in (DEVKIT_ARCHIVE, VAL_ARCHIVE) if os.path.isfile(os.path.join(root, a))]
    if not archives or os.path.isdir(os.path.join(root, "val")):
        return
    lacking = [a for a in (DEVKIT_ARCHIVE, VAL_ARCHIVE) if a not in archives]
    need = f" (it also needs {', '.join(lacking)} there)" if lacking else ""
    raise ValueError(f"{root} holds {', '.join(archives)} but no val/ folder: prepare it once with "
                     f"{prepare_command(root)}{need}; it writes {root}/val/<wnid>/ and meta.bin, "
                     f"then --data {root} works")


def torchvision_classes(root: str) -> List[str]:
    """The wnids of ``root/meta.bin``, read with torchvision's ``load_meta_file``.

    Raises:
        ValueError: the file cannot be read (it says how to prepare the folder again).
    """
    from torchvision.datasets.imagenet import load_meta_file

    try:
        return sorted(load_meta_file(root)[0])
    except Exception as exc:  # torch.load raises many types for a damaged file
        raise ValueError(f"{os.path.join(root, TORCHVISION_META)}: cannot read torchvision's ImageNet "
                         f"meta file ({type(exc).__name__}: {exc}); delete it and run "
                         f"{prepare_command(root)}") from None


def check_torchvision_val(root: str, loose: List[str], folders: Iterable[str]) -> None:
    """Refuse an unfinished ``root/val`` (``loose`` image files outside wnid folders) and wnid
    ``folders`` that are not classes of ``root/meta.bin``."""
    val = os.path.join(root, "val")
    if loose:
        raise ValueError(f"{val} holds {len(loose)} image(s) outside wnid folders (e.g. {loose[0]}): "
                         f"torchvision's preparation did not finish; delete {val} and run "
                         f"{prepare_command(root)}")
    foreign = sorted(set(folders) - set(torchvision_classes(root)))
    if foreign:
        raise ValueError(f"{val}: folder(s) {', '.join(foreign[:5])} are not classes of "
                         f"{os.path.join(root, TORCHVISION_META)}")
