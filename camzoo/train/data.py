"""Image-folder datasets for training learned explainers.

Files and labels are found by :func:`camzoo.data.datasets.open_dataset` (the bench's layouts:
``labels.csv``, wnid folders, a plain folder of images without labels, ...). This module adds
what training needs on top:

- :class:`TrainImages`: ``(x, y)`` pairs, ``x`` a normalized ``[3,S,S]`` float tensor
  (``S = backbone.input_size``) and ``y`` the ground-truth class or ``-1`` when unknown.
  With ``augment=True``: shorter side resized to ``round(S * 256 / 224)`` (256 for 224
  inputs), a random ``S x S`` crop and a random horizontal flip, drawn from a generator
  seeded by ``(seed, epoch, index)`` (so results do not depend on the number of DataLoader
  workers or ranks, and a resumed run repeats the same crops). Without augmentation: the
  backbone's own evaluation preprocessing (``Backbone.preprocess``: resize + center crop).
- :func:`split_by_image`: a deterministic held-out split by image (``--val-fraction``).
- :func:`training_data`: both together, from a folder.
"""
from __future__ import annotations

import os
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from ..data.datasets import ImageItem, open_dataset
from ..data.images import load_image
from ..models.backbone import Backbone

PathLike = Union[str, os.PathLike]


class TrainImages(torch.utils.data.Dataset):
    """Images as ``(x [3,S,S] normalized float32, y int)``; see the module docstring.

    Args:
        items: the images (``camzoo.data.datasets.ImageItem``: path and optional label).
        backbone: gives ``input_size``, ``mean``/``std`` and the eval ``preprocess``.
        augment: random crop + flip (training) or the backbone's center crop (held-out).
        seed: base seed of the per-sample augmentation generators.
        root: data folder (for the manifest's relative paths).
    """

    def __init__(self, items: Sequence[ImageItem], backbone: Backbone, *, augment: bool,
                 seed: int = 0, root: Optional[str] = None) -> None:
        self.items = list(items)
        self.augment = augment
        self.seed = int(seed)
        self.epoch = 0
        self.root = root
        self.size = int(backbone.input_size)
        self.resize = int(round(self.size * 256 / 224))
        self.mean = backbone.mean.detach().cpu().view(3, 1, 1)
        self.std = backbone.std.detach().cpu().view(3, 1, 1)
        self.preprocess: Callable = backbone.preprocess
        #: original label -> training label (a new classifier); ``None`` keeps labels as they are
        self.label_map: Optional[Dict[int, int]] = None

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draws of ``epoch`` (called by :func:`camzoo.train.loop.fit`)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.items)

    def manifest(self) -> List[str]:
        """``"relative/path,label"`` per image (hashed into training checkpoints)."""
        out = []
        for it in self.items:
            p = it.path or it.image_id
            if self.root and it.path:
                p = os.path.relpath(it.path, self.root).replace(os.sep, "/")
            out.append(f"{p},{'' if it.label is None else it.label}")
        return out

    def _augment(self, img, index: int, epoch: Optional[int] = None) -> Tensor:
        from torchvision.transforms import functional as TF

        g = self._generator(index, epoch)
        img = TF.resize(img, self.resize, interpolation=TF.InterpolationMode.BILINEAR,
                        antialias=True)
        t = TF.pil_to_tensor(img).float().div_(255.0)  # [3,h,w] in [0,1]
        h, w = t.shape[-2:]
        if h < self.size or w < self.size:  # tiny images: pad up by resizing once more
            t = torch.nn.functional.interpolate(t[None], size=(max(h, self.size), max(w, self.size)),
                                                mode="bilinear", align_corners=False)[0]
            h, w = t.shape[-2:]
        top = int(torch.randint(0, h - self.size + 1, (1,), generator=g))
        left = int(torch.randint(0, w - self.size + 1, (1,), generator=g))
        t = t[:, top:top + self.size, left:left + self.size]
        if bool(torch.rand((), generator=g) < 0.5):
            t = t.flip(-1)
        return (t - self.mean) / self.std

    def _generator(self, index: int, epoch: Optional[int] = None) -> torch.Generator:
        """The augmentation generator of image ``index`` in ``epoch`` (default: the current
        epoch); independent of workers and ranks."""
        e = self.epoch if epoch is None else int(epoch)
        return torch.Generator().manual_seed((self.seed * 1_000_003 + e) * 10_000_019 + index)

    def augmented(self, img, index: int, epoch: Optional[int] = None) -> Tensor:
        """PIL image -> the random training view of image ``index`` in ``epoch`` (default:
        the current one), normalized ``[3,S,S]``."""
        return self._augment(img, index, epoch)

    def evaluated(self, img) -> Tensor:
        """PIL image -> the held-out view (the backbone's eval preprocessing), normalized ``[3,S,S]``."""
        return self.preprocess(img)

    def transform(self, img, index: int) -> Tensor:
        """PIL image -> normalized ``[3,S,S]``: augmented for training, else the eval preprocess."""
        return self.augmented(img, index) if self.augment else self.evaluated(img)

    def label(self, index: int) -> int:
        """Training label of image ``index``: the ground truth (through ``label_map``) or -1."""
        it = self.items[index]
        y = -1 if it.label is None else int(it.label)
        if self.label_map is not None and y >= 0:
            y = self.label_map[y]
        return y

    def __getitem__(self, index: int) -> Tuple[Tensor, int]:
        x = self.transform(load_image(self.items[index].path), index)
        return x.float().contiguous(), self.label(index)


def check_gt_labels(ds, data: PathLike, backbone: Backbone) -> None:
    """Raise unless every image of ``ds`` has a ground-truth label that is a class of ``backbone``."""
    if not ds.has_labels:
        raise ValueError(f"--labels gt needs ground-truth labels, but {data} (layout "
                         f"{ds.layout!r}) has none for some images; use --labels model")
    backbone.check_classes(torch.tensor([it.label for it in ds.items]))


def split_training(ds, data: PathLike, val_fraction: float, seed: int):
    """:func:`split_by_image` of ``ds.items``; raises when no training image is left."""
    train, held = split_by_image(ds.items, val_fraction, seed)
    if not train:
        raise ValueError(f"no training images left in {data} ({len(ds)} images, "
                         f"val_fraction={val_fraction})")
    return train, held


def split_by_image(items: Sequence[ImageItem], val_fraction: float,
                   seed: int = 0) -> Tuple[List[ImageItem], List[ImageItem]]:
    """Deterministic split into ``(train, held_out)``; each keeps the original order.

    ``round(val_fraction * n)`` images, chosen by a permutation from
    ``torch.Generator().manual_seed(seed)``, are held out. ``val_fraction`` in [0, 1).
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1); got {val_fraction}")
    n = len(items)
    k = int(round(val_fraction * n))
    g = torch.Generator().manual_seed(int(seed))
    held = set(torch.randperm(n, generator=g)[:k].tolist())
    return ([it for i, it in enumerate(items) if i not in held],
            [it for i, it in enumerate(items) if i in held])


def training_data(data: PathLike, backbone: Backbone, *, val_fraction: float = 0.2,
                  seed: int = 0, limit: Optional[int] = None, need_labels: bool = False,
                  labels_file: Optional[PathLike] = None) -> Tuple[TrainImages, TrainImages]:
    """``(train, held_out)`` datasets of the images in ``data`` (any :func:`open_dataset` layout).

    Args:
        data: image folder.
        backbone: the frozen classifier (input size, normalization, eval preprocessing).
        val_fraction: fraction held out, by image.
        seed: seeds the ``limit`` subset, the split and the augmentation.
        limit: use a deterministic subset of this many images (before the split).
        need_labels: require ground-truth labels for every image (``--labels gt``), each a
            valid class of ``backbone``.
        labels_file: an explicit ground-truth file (see ``camzoo.data``).
    """
    ds = open_dataset(data, labels=labels_file, limit=limit, seed=seed)
    if need_labels:
        check_gt_labels(ds, data, backbone)
    train, held = split_training(ds, data, val_fraction, seed)
    return (TrainImages(train, backbone, augment=True, seed=seed, root=ds.root),
            TrainImages(held, backbone, augment=False, seed=seed, root=ds.root))
