"""Tiny fake ImageNet devkits, validation folders and torchvision roots, built in tmp_path.

The fake ``meta.mat`` has the devkit's structure (a ``synsets`` struct array with the devkit's
eight fields in its order): the 1000 leaf synsets with SHUFFLED ILSVRC2012_IDs (so an id is never
taken for a sorted index by accident) plus a few non-leaf synsets (``num_children > 0``).
"""
import os
import random
import tarfile
from typing import Dict, List

import numpy as np
import pytest
from PIL import Image

from camzoo.data.imagenet import imagenet_wnids

FIELDS = ("ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children", "wordnet_height",
          "num_train_images")
#: non-leaf synsets of the real meta.mat (ids above 1000, children among the leaves)
NON_LEAVES = (("n00001740", "entity"), ("n00002684", "object, physical object"), ("n00004475", "organism, being"))
#: sorted class index of the 6 fake validation images ILSVRC2012_val_00000001..06
VAL_CLASSES = (0, 999, 500, 1, 998, 250)


def wnid_to_id(seed: int = 0) -> Dict[str, int]:
    """A shuffled wnid -> ILSVRC2012_ID (1..1000) assignment, none equal to sorted index + 1."""
    wnids = imagenet_wnids()
    ids = list(range(1, 1001))
    rng = random.Random(seed)
    while True:
        rng.shuffle(ids)
        if all(i != k + 1 for k, i in enumerate(ids)):
            return dict(zip(wnids, ids))


def write_meta_mat(path: str, ids: Dict[str, int]) -> None:
    """A devkit-structured ``meta.mat``: leaves in ILSVRC2012_ID order, then non-leaf synsets."""
    import scipy.io as sio

    leaves = sorted(ids.items(), key=lambda kv: kv[1])
    arr = np.zeros((len(leaves) + len(NON_LEAVES), 1), dtype=[(f, "O") for f in FIELDS])
    for r, (w, i) in enumerate(leaves):
        arr[r, 0] = (float(i), w, f"class {w}, thing", "a gloss", 0.0, np.zeros((1, 0)), 0.0, 1300.0)
    for k, (w, words) in enumerate(NON_LEAVES):
        arr[len(leaves) + k, 0] = (float(1001 + k), w, words, "a gloss", 2.0,
                                   np.array([[float(k + 1), float(k + 2)]]), 18.0, 0.0)
    sio.savemat(path, {"synsets": arr})


def jpeg(path: str, value: int = 128) -> None:
    """An 8x8 JPEG."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(path, format="JPEG")


def val_name(i: int) -> str:
    return f"ILSVRC2012_val_{i:08d}.JPEG"


class FakeImageNet:
    """Paths of a fake devkit (folder and ``.tar.gz``) in ``base``; see :func:`fake`."""

    def __init__(self, base: str, seed: int = 0):
        self.base = base
        self.wnids = imagenet_wnids()
        self.ids = wnid_to_id(seed)
        #: the 6 validation images' wnids and sorted class indices (the known truth)
        self.val_wnids = [self.wnids[c] for c in VAL_CLASSES]
        self.devkit = os.path.join(base, "ILSVRC2012_devkit_t12")
        os.makedirs(os.path.join(self.devkit, "data"))
        write_meta_mat(os.path.join(self.devkit, "data", "meta.mat"), self.ids)
        self.gt = os.path.join(self.devkit, "data", "ILSVRC2012_validation_ground_truth.txt")
        with open(self.gt, "w") as f:
            f.writelines(f"{self.ids[w]}\n" for w in self.val_wnids)
        self.tar = os.path.join(base, "archives", "ILSVRC2012_devkit_t12.tar.gz")
        os.makedirs(os.path.dirname(self.tar))
        with tarfile.open(self.tar, "w:gz") as t:
            t.add(self.devkit, arcname="ILSVRC2012_devkit_t12")
            # other members of the real archive, which need not be extracted
            t.add(self.gt, arcname="ILSVRC2012_devkit_t12/evaluation/demo.val.pred.txt")

    def flat_val(self, name: str, which: List[int], extra: List[str] = ()) -> str:
        """A flat folder holding images ``which`` (1-based) and the extra file names."""
        d = os.path.join(self.base, name)
        os.makedirs(d)
        for i in which:
            jpeg(os.path.join(d, val_name(i)))
        for e in extra:
            jpeg(os.path.join(d, e))
        return d


@pytest.fixture
def fake(tmp_path) -> FakeImageNet:
    return FakeImageNet(str(tmp_path))
