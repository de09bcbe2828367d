"""Published image lists (``--subset NAME_OR_FILE``): evaluate exactly the images a paper used.

A list has one ``FILE LABEL`` line per image (whitespace-separated; ``LABEL`` is the 0-based
sorted-wnid class index; blank lines and lines starting with ``#`` are skipped). ``FILE`` is
matched by file name (its folders are ignored; a name without extension matches any image of
that name) against the images of the data folder, in whatever layout it has, and the list's
label is the ground truth (``open_dataset(..., subset=)`` in :mod:`.datasets` does the
matching). Named lists ship with camzoo (:data:`SUBSETS`, files in ``camzoo/data/lists/``, see
its README.md); any other value is read as a list file.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from typing import Dict, List, Tuple, Union

PathLike = Union[str, os.PathLike]

#: list name -> file in ``camzoo/data/lists/``
SUBSETS: Dict[str, str] = {
    # the 2,000 ILSVRC-2012 validation images of the L-CAM paper's Table 1 (bmezaris/L-CAM,
    # datalist/ILSVRC/Evaluation_2000.txt)
    "lcam-2000": "lcam-eval-2000.txt",
}


@dataclass(frozen=True)
class SubsetEntry:
    """One line of a list: the image's file name, its class index, and ``"list:line"``."""

    name: str
    label: int
    where: str


@dataclass(frozen=True)
class SubsetList:
    """A parsed list.

    Attributes:
        name: the list's name (``"lcam-2000"``) or the absolute path of a list file.
        path: the file it was read from (for messages).
        entries: its images in file order.
    """

    name: str
    path: str
    entries: Tuple[SubsetEntry, ...]


def parse_subset(text: str, source: str) -> List[SubsetEntry]:
    """The entries of a list's ``text`` (``source`` names it in messages).

    Raises:
        ValueError: a malformed line or a name listed twice (named ``source:line``), or no entry.
    """
    entries: List[SubsetEntry] = []
    seen: Dict[str, int] = {}
    for n, line in enumerate(text.splitlines(), start=1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        fields = s.split()
        if len(fields) != 2 or not fields[1].isdigit():
            raise ValueError(f"{source}:{n}: expected 'FILE LABEL' (LABEL a 0-based class index); got {s!r}")
        name = fields[0].replace("\\", "/").rsplit("/", 1)[-1]
        if name in seen:
            raise ValueError(f"{source}:{n}: {name} is listed twice (also line {seen[name]})")
        seen[name] = n
        entries.append(SubsetEntry(name, int(fields[1]), f"{source}:{n}"))
    if not entries:
        raise ValueError(f"subset list {source} lists no images")
    return entries


def read_subset(name_or_path: PathLike) -> SubsetList:
    """A named list (:data:`SUBSETS`; names win over files) or a list file.

    Raises:
        FileNotFoundError: neither a list name nor an existing file.
        ValueError: see :func:`parse_subset`.
    """
    key = os.fspath(name_or_path)
    if key in SUBSETS:
        res = resources.files("camzoo.data") / "lists" / SUBSETS[key]
        path = str(res)
        text = res.read_text(encoding="utf-8")
    else:
        path = key = os.path.abspath(key)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"subset {os.fspath(name_or_path)!r} is neither a list name "
                                    f"({', '.join(sorted(SUBSETS))}) nor a file")
        with open(path, encoding="utf-8-sig") as f:
            text = f.read()
    return SubsetList(key, path, tuple(parse_subset(text, path)))
