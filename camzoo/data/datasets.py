"""Datasets for ``camzoo bench --data DIR``: image ids, files, ground-truth labels, subsets.

Layouts (detected in this order, see docs/bench.md; the ImageNet forms are in :mod:`.imagenet`):

1. ``data=None``: the six scikit-image sample photos bundled offline (model truth only).
2. ``devkit=DIR_OR_TAR`` given (``"imagenet-devkit"``): a folder of ImageNet validation images
   (``ILSVRC2012_val_XXXXXXXX.JPEG``) labelled by the devkit's ground truth (or ``labels=``, the
   devkit's ``ILSVRC2012_validation_ground_truth.txt``) mapped through its ``data/meta.mat``.
3. ``labels=`` Kaggle's ``LOC_val_solution.csv`` (``"kaggle-loc"``; recognised by its
   ``ImageId,PredictionString`` header): the images in the folder, labelled by the first wnid.
   In 2 and 3 the evaluated images are the files present; names of the label source with no
   file are skipped, files it does not name are reported (``Dataset.unlisted``).
4. ``labels=FILE`` given (``"labels-file"``): a folder of images plus a ground-truth file.
   ``FILE`` is either the ImageNet validation ground truth as *one 0-based class index per line,
   in sorted-filename order* (the order ``sorted(os.listdir(DIR))`` gives), or rows ``file,class_index`` (CSV,
   optional header; also ``file class_index`` separated by spaces/tabs; a wnid instead of an
   index is mapped through the sorted 1000 ImageNet wnids). File names are relative to DIR.
   The devkit's ``ILSVRC2012_validation_ground_truth.txt`` (1-based ILSVRC2012_IDs) is refused
   here: it needs ``devkit=``.
5. ``DIR/meta.bin`` and ``DIR/val/`` (``"torchvision-imagenet"``): what
   ``torchvision.datasets.ImageNet(DIR, split="val")`` prepares; the images of ``DIR/val/<wnid>/``
   labelled as in 7. ``DIR`` holding torchvision's archives but no ``val/`` is refused with the
   command that prepares it.
6. ``DIR/labels.csv`` present: rows ``file,class_index[,...]`` with a header, file paths
   relative to DIR (``imagenet-samples`` and ``imagenette-224`` use this).
7. ImageNet-val layout: sub-folders named by wnid (``n01440764/...``); the class index is the
   position of the wnid in the sorted list of the 1000 ImageNet-1k wnids (timm ships this list
   offline as ``timm/data/_info/imagenet_synsets.txt``; torchvision's weight meta has names
   only). Standard 0..999 order, the one torchvision and timm classifiers use.
8. Any other folder: every image file below DIR (recursively), no labels (model truth only).

Image id = path relative to DIR without extension, with ``/`` separators (stable and unique;
two files differing only by extension keep their extension in the id). A name holding bytes that
are not UTF-8 is written with ``%XX`` escapes (``bad%FF``; :func:`~camzoo.data.images.path_text`)
in the id and in every path camzoo stores or prints; the file itself is read by its real name.

``subset=NAME_OR_FILE`` (:mod:`.subsets`) then keeps exactly the images of a published list
(e.g. ``"lcam-2000"``) found under DIR in any of these layouts, matched by file name, with the
list's labels; ``limit`` applies after it.
"""
from __future__ import annotations

import csv
import hashlib
import io
import os
import re
from dataclasses import dataclass, field, replace
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from PIL import Image

from ..utils import atomic_write
from . import imagenet
from .imagenet import wnid_index as _wnid_index
from .images import IMAGE_EXTENSIONS, load_image, path_text, sample_photos
from .subsets import SubsetEntry, SubsetList, read_subset

_WNID = re.compile(r"^n\d{8}$")
PathLike = Union[str, os.PathLike]


@dataclass(frozen=True)
class ImageItem:
    """One image of a dataset.

    Attributes:
        image_id: stable unique id (relative path without extension; sample photo name).
        path: absolute file path, or ``None`` for an in-memory sample photo.
        label: ground-truth class index (0-based) or ``None`` when the layout has none.
        where: where the label came from (``labels.csv:17``, a wnid folder), for messages.
    """

    image_id: str
    path: Optional[str]
    label: Optional[int]
    where: Optional[str] = field(default=None, compare=False, repr=False)


@dataclass
class Dataset:
    """An ordered list of :class:`ImageItem` plus how it was found.

    Attributes:
        root: absolute data folder (``None`` for the sample photos and a list of files).
        layout: ``"samples"``, ``"imagenet-devkit"``, ``"kaggle-loc"``, ``"labels-file"``,
            ``"torchvision-imagenet"`` (``root`` is then ``DIR/val``), ``"labels.csv"``,
            ``"wnid-folders"``, ``"folder"`` or ``"files"`` (:func:`files_dataset`).
        items: images in processing order (sorted by id; a ``limit`` subset keeps that order).
        labels_file: the ``--labels`` file (or the devkit's ground truth), if any.
        unlisted: image files below ``root`` the labels file does not list (they are not
            evaluated; the engine reports them). Empty with a ``subset``: files outside the list
            are left out by design.
        devkit: the ``--devkit`` folder or archive, if any.
        subset: the ``--subset`` list's name (``"lcam-2000"``) or absolute file path, if any.
        subset_listed: how many images that list names.
        subset_missing: the listed names not found under ``root`` (see ``allow_missing``).
        label_conflicts: images whose layout label differs from the list's (the list's is kept).
    """

    root: Optional[str]
    layout: str
    items: List[ImageItem]
    labels_file: Optional[str] = None
    _memory: Dict[str, Image.Image] = field(default_factory=dict, repr=False)
    #: images in ``root`` that the labels file does not list (not evaluated), relative paths
    unlisted: List[str] = field(default_factory=list, repr=False)
    devkit: Optional[str] = None
    subset: Optional[str] = None
    subset_listed: int = 0
    subset_missing: List[str] = field(default_factory=list, repr=False)
    label_conflicts: int = 0

    def __len__(self) -> int:
        return len(self.items)

    @property
    def has_labels(self) -> bool:
        """True when every item has a ground-truth label."""
        return bool(self.items) and all(it.label is not None for it in self.items)

    def load(self, item: ImageItem) -> Image.Image:
        """The item's image as 8-bit RGB PIL; raises :class:`ImageReadError` when unreadable."""
        if item.path is None:
            return self._memory[item.image_id]
        return load_image(item.path)

    def rel_path(self, item: ImageItem) -> str:
        """The item's path relative to ``root`` (``<sample>`` for the embedded photos), as
        :func:`~camzoo.data.images.path_text` writes it (storable, printable)."""
        if item.path is None:
            return f"<sample:{item.image_id}>"
        if self.root is None:
            return path_text(item.path)
        return path_text(os.path.relpath(item.path, self.root).replace(os.sep, "/"))

    def manifest_csv(self) -> str:
        """The chosen file list as CSV text: ``index,image_id,path,label``."""
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["index", "image_id", "path", "label"])
        for i, it in enumerate(self.items):
            w.writerow([i, it.image_id, self.rel_path(it), "" if it.label is None else it.label])
        return buf.getvalue()

    def manifest_hash(self) -> str:
        """sha256 (first 16 hex digits) of :meth:`manifest_csv`."""
        return hashlib.sha256(self.manifest_csv().encode()).hexdigest()[:16]

    def write_manifest(self, path: PathLike) -> None:
        """Write :meth:`manifest_csv` to ``path`` (atomically)."""
        atomic_write(path, self.manifest_csv())


def files_dataset(paths: Sequence[PathLike], labels: Optional[Sequence[Optional[int]]] = None) -> Dataset:
    """A :class:`Dataset` of the given image files, in the given order (layout ``"files"``).

    Image id = the file name without extension, as :func:`~camzoo.data.images.path_text` writes
    it (files of the same name in different folders share an id). ``labels``: one ground-truth
    class (or None) per file.
    """
    labels = list(labels) if labels is not None else [None] * len(paths)
    if len(labels) != len(paths):
        raise ValueError(f"{len(paths)} files but {len(labels)} labels")
    items = [ImageItem(path_text(os.path.splitext(os.path.basename(os.fspath(p)))[0]), os.path.abspath(os.fspath(p)), lab)
             for p, lab in zip(paths, labels)]
    return Dataset(None, "files", items)


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _walk_images(root: str) -> List[str]:
    """Image files below ``root`` (recursive, hidden entries skipped) as sorted relative paths."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in filenames:
            if _is_image(f) and not f.startswith("."):
                out.append(os.path.relpath(os.path.join(dirpath, f), root).replace(os.sep, "/"))
    return sorted(out)


def _make_ids(rel_paths: Sequence[str]) -> List[str]:
    """Relative path without extension, as :func:`~camzoo.data.images.path_text` writes it;
    paths that would collide keep their extension.

    Raises:
        ValueError: two files with the same id (a name with bytes that are not UTF-8, written
            ``%XX``, beside one that holds those three characters), both named.
    """
    texts = [path_text(p) for p in rel_paths]
    stems = [os.path.splitext(p)[0] for p in texts]
    counts: Dict[str, int] = {}
    for s in stems:
        counts[s] = counts.get(s, 0) + 1
    ids = [s if counts[s] == 1 else p for s, p in zip(stems, texts)]
    first: Dict[str, str] = {}
    for i, p in zip(ids, rel_paths):
        if i in first:
            raise ValueError(f"files {os.fsencode(first[i])!r} and {os.fsencode(p)!r} (names as bytes) "
                             f"both have the image id {i!r}; rename one")
        first[i] = p
    return ids


def _parse_label(value: str, wnids: Optional[Dict[str, int]], where: str) -> Tuple[int, Optional[Dict[str, int]]]:
    value = value.strip()
    if _WNID.match(value):
        wnids = wnids or _wnid_index()
        if value not in wnids:
            raise ValueError(f"{where}: {value!r} is not one of the 1000 ImageNet-1k wnids")
        return wnids[value], wnids
    try:
        return int(value), wnids
    except ValueError:
        raise ValueError(f"{where}: label {value!r} is neither a class index nor a wnid") from None


Row = Tuple[str, int, str]  # (file relative to the data folder, class index, "file:line")


def read_labels_csv(csv_path: str) -> List[Row]:
    """Rows ``(file, class_index, "labels.csv:LINE")`` of a ``labels.csv`` with a header (files
    relative to its folder; a UTF-8 byte-order mark is accepted)."""
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        cols = [c.strip() for c in reader.fieldnames or []]
        reader.fieldnames = cols
        if "file" not in cols or "class_index" not in cols:
            raise ValueError(f"{csv_path}: needs a header with columns file,class_index; got {cols}")
        rows = []
        for r in reader:
            n = reader.line_num
            try:
                rows.append((r["file"].strip(), int(r["class_index"]), f"{csv_path}:{n}"))
            except (TypeError, ValueError, AttributeError):
                raise ValueError(f"{csv_path}:{n}: bad class_index {r.get('class_index')!r}") from None
    return rows


def _read_labels_file(root: str, path: str) -> List[Row]:
    """Parse ``--labels``: one index per line (sorted-filename order) or ``file,label`` rows."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        numbered = [(n, ln.strip()) for n, ln in enumerate(f.read().splitlines(), start=1)]
    numbered = [(n, ln) for n, ln in numbered if ln and not ln.startswith("#")]
    if not numbered:
        raise ValueError(f"labels file {path} is empty")
    split = [(n, re.split(r"\s*,\s*|\s+", ln)) for n, ln in numbered]
    wnids: Optional[Dict[str, int]] = None
    if all(len(s) == 1 for _, s in split):
        # the ImageNet-val ground truth: one label per line, in sorted-filename order
        files = sorted(f for f in os.listdir(root) if _is_image(f) and os.path.isfile(os.path.join(root, f)))
        if len(files) != len(split):
            raise ValueError(
                f"labels file {path} has {len(split)} lines but {root} holds {len(files)} images; "
                "a one-label-per-line file must list every image, in sorted-filename order")
        labels = []
        for n, s in split:
            lab, wnids = _parse_label(s[0], wnids, f"{path}:{n}")
            labels.append(lab)
        if max(labels) >= 1000 and min(labels) >= 1:
            raise ValueError(
                f"labels file {path} holds 1-based labels up to {max(labels)}: the ImageNet devkit's "
                "ILSVRC2012_validation_ground_truth.txt uses ILSVRC2012_IDs (meta.mat order), not the "
                "0-based sorted-wnid index camzoo needs; pass --devkit DIR_OR_TAR with it")
        return [(f, lab, f"{path}:{n}") for f, lab, (n, _) in zip(files, labels, split)]
    rows = []
    start = 0
    if len(split[0][1]) >= 2:  # optional header, e.g. "file,class_index" or "ImageId,PredictionString"
        try:
            _parse_label(split[0][1][1], None, "")
        except ValueError:
            start = 1
    for n, s in split[start:]:
        if len(s) < 2:
            raise ValueError(f"{path}:{n}: expected 'file,class_index'; got {' '.join(s)!r}")
        lab, wnids = _parse_label(s[1], wnids, f"{path}:{n}")
        rows.append((s[0], lab, f"{path}:{n}"))
    return rows


def _resolve(root: str, rel: str) -> str:
    """``rel`` relative to ``root``; a bare name without extension gets the image's extension."""
    p = os.path.join(root, rel)
    if not os.path.splitext(rel)[1] and not os.path.exists(p):
        for ext in (".JPEG", ".jpg", ".jpeg", ".png"):
            if os.path.exists(p + ext):
                return p + ext
    return p


def _items_from_rows(root: str, rows: List[Row], source: str) -> List[ImageItem]:
    seen = set()
    paths, labels, wheres = [], [], []
    for rel, lab, where in rows:
        full = os.path.normpath(_resolve(root, rel))
        if full in seen:
            raise ValueError(f"{where}: file {rel!r} is listed twice in {source}")
        seen.add(full)
        paths.append(full)
        labels.append(lab)
        wheres.append(where)
    rels = [os.path.relpath(p, root).replace(os.sep, "/") for p in paths]
    ids = _make_ids(rels)
    # missing files stay in the list: loading them fails and they go to the errors table
    return [ImageItem(i, p, l, w) for i, p, l, w in zip(ids, paths, labels, wheres)]


def _unlisted(root: str, items: Sequence[ImageItem], labels_file: str) -> List[str]:
    """Image files below ``root`` that ``items`` (read from ``labels_file``) do not list."""
    listed = {os.path.normpath(it.path) for it in items if it.path}
    skip = os.path.normpath(labels_file)
    return [r for r in _walk_images(root)
            if os.path.normpath(os.path.join(root, r)) not in listed and os.path.join(root, r) != skip]


def subset(items: Sequence[ImageItem], limit: Optional[int], seed: int = 0) -> List[ImageItem]:
    """A deterministic subset of ``limit`` items, in the original order.

    The chosen items are the first ``limit`` of a permutation drawn from
    ``torch.Generator().manual_seed(seed)``, so a larger ``limit`` with the same seed extends
    a smaller one. ``limit=None`` (or >= len) keeps everything.
    """
    if limit is None or limit >= len(items):
        return list(items)
    if limit < 0:
        raise ValueError(f"limit must be >= 0; got {limit}")
    g = torch.Generator().manual_seed(int(seed))
    keep = sorted(torch.randperm(len(items), generator=g)[:limit].tolist())
    return [items[i] for i in keep]


_limit_items = subset  # open_dataset's ``subset`` argument shadows the name there


def _wnid_folder_items(root: str, strict: bool = False) -> Optional[List[ImageItem]]:
    """Images of ``root/<wnid>/...`` labelled by the wnid's sorted index among all 1000.

    Returns ``None`` when ``root`` has no sub-folders or one not named like a wnid (with
    ``strict``, the latter raises). Raises ValueError for wnid-like names outside ImageNet-1k.
    """
    subdirs = sorted(d for d in os.listdir(root)
                     if os.path.isdir(os.path.join(root, d)) and not d.startswith("."))
    wnid_dirs = [d for d in subdirs if _WNID.match(d)]
    if len(wnid_dirs) != len(subdirs) and strict:
        others = [d for d in subdirs if d not in wnid_dirs]
        raise ValueError(f"{root}: folder(s) {', '.join(others[:5])} are not named by wnid (n01440764, ...)")
    if not wnid_dirs or len(wnid_dirs) != len(subdirs):
        return None
    index = _wnid_index()
    unknown = [d for d in wnid_dirs if d not in index]
    if unknown:
        raise ValueError(f"{root}: folder(s) {', '.join(unknown[:5])} are not ImageNet-1k wnids")
    rels = []
    for d in wnid_dirs:
        rels += [f"{d}/{r}" for r in _walk_images(os.path.join(root, d))]
    ids = _make_ids(rels)
    return [ImageItem(i, os.path.join(root, r), index[r.split("/", 1)[0]], f"folder {r.split('/', 1)[0]}")
            for i, r in zip(ids, rels)]


def open_dataset(
    data: Optional[PathLike] = None,
    labels: Optional[PathLike] = None,
    limit: Optional[int] = None,
    seed: int = 0,
    *,
    devkit: Optional[PathLike] = None,
    subset: Optional[PathLike] = None,
    allow_missing: bool = False,
) -> Dataset:
    """Find the images (and labels) of ``data``; see the module docstring for the layouts.

    Args:
        data: folder, or ``None`` for the embedded sample photos.
        labels: ground-truth file for a flat folder (``--labels``): rows, one index per line,
            Kaggle's ``LOC_val_solution.csv``, or (with ``devkit``) the devkit's ground truth.
        limit: keep a deterministic subset of this many images (see :func:`subset`), after
            ``subset``.
        seed: seed of that subset.
        devkit: the ImageNet devkit (``ILSVRC2012_devkit_t12`` folder or ``.tar.gz``; ``--devkit``).
        subset: a list name (:data:`camzoo.data.subsets.SUBSETS`, e.g. ``"lcam-2000"``) or a
            list file of ``FILE LABEL`` lines (``--subset``): evaluate exactly those images.
        allow_missing: with ``subset``, run the listed images found instead of refusing when
            some are missing (``--allow-missing``).
    Raises:
        FileNotFoundError: ``data``, ``labels``, ``devkit`` or the subset file does not exist.
        ValueError: a malformed labels file or list, unknown wnid, a folder without images, the
            devkit's ground truth without ``devkit``, missing listed images.
    """
    if data is None:
        for flag, value in (("--labels", labels), ("--devkit", devkit), ("--subset", subset)):
            if value is not None:
                raise ValueError(f"{flag} needs --data DIR (the sample photos have no labels)")
        photos = sample_photos()
        items = [ImageItem(name, None, None) for name, _ in photos]
        return Dataset(None, "samples", _limit_items(items, limit, seed), _memory=dict(photos))
    root = os.path.abspath(os.fspath(data))
    if not os.path.isdir(root):
        raise FileNotFoundError(f"data folder not found: {root}")
    lab = None
    if labels is not None:
        lab = os.path.abspath(os.fspath(labels))
        if not os.path.isfile(lab):
            raise FileNotFoundError(f"labels file not found: {lab}")
    ds = _find_layout(root, lab, devkit)
    if not ds.items:
        raise ValueError(f"no images found in {ds.root} (extensions: {', '.join(IMAGE_EXTENSIONS)})")
    ds.items.sort(key=lambda it: it.image_id)
    if subset is not None:
        ds = _apply_subset(ds, read_subset(subset), allow_missing)
    ds.items = _limit_items(ds.items, limit, seed)
    return ds


def _find_layout(root: str, lab: Optional[str], devkit: Optional[PathLike]) -> Dataset:
    """The :class:`Dataset` (all images, unsorted) of the first layout ``root`` matches."""
    if devkit is not None:
        labels, source = imagenet.devkit_labels(devkit, lab)
        ds = _named_dataset(root, labels, source, "imagenet-devkit")
        ds.devkit = os.path.abspath(os.fspath(devkit))
        return ds
    if lab is not None:
        if imagenet.is_devkit_ground_truth(lab):
            raise ValueError(imagenet.devkit_refusal(lab))
        if imagenet.is_loc_solution(lab):
            return _named_dataset(root, imagenet.loc_labels(lab), lab, "kaggle-loc")
        items = _items_from_rows(root, _read_labels_file(root, lab), lab)
        return Dataset(root, "labels-file", items, labels_file=lab, unlisted=_unlisted(root, items, lab))
    if imagenet.is_torchvision_root(root):
        return _torchvision_dataset(root)
    imagenet.refuse_unprepared_torchvision(root)
    csv_path = os.path.join(root, "labels.csv")
    if os.path.isfile(csv_path):
        items = _items_from_rows(root, read_labels_csv(csv_path), csv_path)
        return Dataset(root, "labels.csv", items, labels_file=csv_path, unlisted=_unlisted(root, items, csv_path))
    items = _wnid_folder_items(root)
    if items is not None:
        return Dataset(root, "wnid-folders", items)
    rels = _walk_images(root)
    return Dataset(root, "folder", [ImageItem(i, os.path.join(root, r), None) for i, r in zip(_make_ids(rels), rels)])


def _named_dataset(root: str, labels: imagenet.Labels, source: str, layout: str) -> Dataset:
    """The image files below ``root`` that ``labels`` names (by file name without extension).

    For ImageNet-wide label sources (the devkit, Kaggle's csv): names without a file are skipped
    (a folder may hold part of val); files that ``labels`` does not name go to ``unlisted``.
    """
    rels = _walk_images(root)
    if not rels:
        raise ValueError(f"no images found in {root} (extensions: {', '.join(IMAGE_EXTENSIONS)})")
    def name(rel: str) -> str:
        return os.path.splitext(os.path.basename(rel))[0]

    named = [r for r in rels if name(r) in labels]
    unlisted = [r for r in rels if name(r) not in labels]
    items = [ImageItem(i, os.path.join(root, r), *labels[name(r)]) for i, r in zip(_make_ids(named), named)]
    if not items:
        raise ValueError(f"none of the {len(rels)} images in {root} is named by {source} "
                         f"(names like {imagenet.val_image_name(1)} expected)")
    return Dataset(root, layout, items, labels_file=source, unlisted=unlisted)


def _torchvision_dataset(root: str) -> Dataset:
    """Layout ``"torchvision-imagenet"``: ``root/val/<wnid>/`` images, labels by wnid folder.

    The class index is the wnid's sorted position among all 1000 (not its position among the
    folders present, which ``torchvision.datasets.ImageFolder`` would give).
    """
    val = os.path.join(root, "val")
    loose = [r for r in _walk_images(val) if "/" not in r]
    items = _wnid_folder_items(val, strict=True) or []
    imagenet.check_torchvision_val(root, loose, {it.image_id.split("/", 1)[0] for it in items})
    return Dataset(val, "torchvision-imagenet", items)


# -- --subset ------------------------------------------------------------------------------------
def _candidates(ds: Dataset) -> List[ImageItem]:
    """The dataset's items plus its unlisted files (label ``None``): every image it found."""
    ids = {it.image_id for it in ds.items}
    extra = []
    for rel in ds.unlisted:
        stem = os.path.splitext(rel)[0]
        extra.append(ImageItem(stem if stem not in ids else rel, os.path.join(ds.root or "", rel), None))
    return list(ds.items) + extra


def _by_name(items: List[ImageItem]) -> Tuple[Dict[str, List[ImageItem]], Dict[str, List[ImageItem]]]:
    """Items indexed by file name and by file name without extension."""
    names: Dict[str, List[ImageItem]] = {}
    stems: Dict[str, List[ImageItem]] = {}
    for it in items:
        base = os.path.basename(it.path or it.image_id)
        names.setdefault(base, []).append(it)
        stems.setdefault(os.path.splitext(base)[0], []).append(it)
    return names, stems


Match = Tuple[List[Tuple[ImageItem, SubsetEntry]], List[str], int]  # (found, missing names, conflicts)


def _match_subset(ds: Dataset, sub: SubsetList) -> Match:
    """The images of ``ds`` (and its unlisted files) that ``sub`` names, by file name.

    Raises:
        ValueError: a listed name present twice under the data folder (both paths named), or
            two entries naming the same image.
    """
    names, stems = _by_name(_candidates(ds))
    found: Dict[str, Tuple[ImageItem, SubsetEntry]] = {}
    missing: List[str] = []
    for e in sub.entries:
        has_ext = os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS
        hits = (names if has_ext else stems).get(e.name, [])
        if len(hits) > 1:
            raise ValueError(f"{e.where}: {e.name} is present twice under {ds.root}: {hits[0].path} and "
                             f"{hits[1].path}; keep one, or point --data at one of the folders")
        if not hits:
            missing.append(e.name)
        elif hits[0].path in found:
            raise ValueError(f"{e.where}: {e.name} names the same image as {found[hits[0].path][1].where}")
        else:
            found[hits[0].path] = (hits[0], e)
    conflicts = sum(it.label is not None and it.label != e.label for it, e in found.values())
    return list(found.values()), missing, conflicts


def _apply_subset(ds: Dataset, sub: SubsetList, allow_missing: bool = False) -> Dataset:
    """``ds`` reduced to the images ``sub`` lists, labelled by the list, in ``ds``'s order.

    Raises:
        ValueError: see :func:`_match_subset`; listed images missing (unless ``allow_missing``);
            none of them found.
    """
    found, missing, conflicts = _match_subset(ds, sub)
    listed = len(sub.entries)
    shown = sub.path if sub.name == sub.path else f"{sub.name} ({sub.path})"
    if not found:
        raise ValueError(f"none of the {listed} images listed in {shown} is under {ds.root}")
    if missing and not allow_missing:
        first = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise ValueError(f"{len(missing)} of the {listed} images listed in {shown} are not under {ds.root} "
                         f"(first {min(5, len(missing))}: {first}); --allow-missing runs the {len(found)} found")
    items = sorted((replace(it, label=e.label, where=e.where) for it, e in found), key=lambda it: it.image_id)
    return replace(ds, items=items, unlisted=[], subset=sub.name, subset_listed=listed,
                   subset_missing=missing, label_conflicts=conflicts)
