"""A feature cache for training on a frozen classifier (L-CAM-Fm / -Img, LFI-CAM frozen mode).

The classifier does not change while a head trains, so the explanation layer's features of a
training image do not change between epochs either. With a fixed, seeded set of **views**
per image they are computed once, stored, and every epoch reads them back instead of running
the classifier's forward:

- ``"center"``: the held-out preprocessing (``TrainImages.evaluated``: the backbone's own
  resize + center crop), 1 view;
- ``"center+flip"`` (default): that view and its horizontal mirror, 2 views;
- ``"random:N"`` (or ``"N"``): N seeded training views (``TrainImages.augmented``, e.g. L-CAM's
  random crop + flip), view ``v`` being exactly the augmentation the uncached loop draws in
  epoch ``v``.

Epoch ``e`` trains on view ``e % V`` of every image (:class:`CachedViews`), so with
``"random:N"`` the first N epochs see exactly the crops of the uncached loop, and
:class:`FixedViews` is the uncached twin of any view set (same views, decoded and run every
time): the two give the same losses up to the float16 rounding of the stored features.

Stored per view (``torch.from_file`` memory maps, raw little-endian arrays, views-major):
``features.f16`` ``[V*N,K,h,w]`` float16 (the layer's output), ``top1.i64`` ``[V*N]`` (the
frozen model's top-1 on the view, from the float32 logits: model-truth labels without a
forward), ``gray.f16`` ``[V*N,1,h,w]`` (LFI-CAM's gray image at feature resolution:
:func:`camzoo.explainers.learned.lficam.gray_image` of the normalized view) and ``key.json``.

**Key**: backbone name, ``weights_id`` and a content hash of its state dict, layer, views
(and the augmentation seed for random views), dataset type and image size, and the hash of
the image manifest (files and labels). :func:`open_cache` keeps one sub-folder per key
under its root (``<backbone>-<layer>-<views>-<hash>``), so heads at different layers can
share a root; a folder whose ``key.json`` differs (or is missing: an interrupted build) is
refused by :meth:`FeatureCache.open` and rebuilt by :func:`open_cache`. Builds write into a
temporary folder renamed into place at the end.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple, Union

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ..data.images import load_image
from ..explainers.learned.lficam import gray_image
from ..models.backbone import Backbone
from ..models.backbone import backbone_hash
from ..progress import Progress
from ..utils import atomic_write, dict_diff
from .data import TrainImages

CACHE_FORMAT = "camzoo.feature-cache/1"
DEFAULT_VIEWS = "center+flip"
KEY_NAME = "key.json"
PathLike = Union[str, os.PathLike]


class CacheMismatch(ValueError):
    """A cache folder built for another setup (the message lists the differences)."""


@dataclass(frozen=True)
class Views:
    """A parsed view set: ``kind`` in {"center", "center+flip", "random"}, ``count`` views."""

    kind: str
    count: int

    @property
    def spec(self) -> str:
        return self.kind if self.kind != "random" else f"random:{self.count}"


def parse_views(spec: Union[str, int, Views]) -> Views:
    """``"center"`` (1 view), ``"center+flip"`` (2), ``"random:N"`` / ``"N"`` / ``N`` (N seeded
    training views, N >= 1); anything else is an error naming the valid forms."""
    if isinstance(spec, Views):
        return spec
    s = str(spec).strip().lower()
    if s in ("center", "center+flip"):
        return Views(s, 1 if s == "center" else 2)
    m = re.fullmatch(r"(?:random:)?(\d+)", s)
    if m and int(m.group(1)) >= 1:
        return Views("random", int(m.group(1)))
    raise ValueError(f"unknown views {spec!r}; valid: 'center', 'center+flip', 'random:N' "
                     "(N >= 1 seeded training augmentations)")


def render_view(base: TrainImages, index: int, v: int, views: Views) -> Tensor:
    """View ``v`` of image ``index`` of ``base``: normalized float32 ``[3,S,S]``."""
    img = load_image(base.items[index].path)
    if views.kind == "random":
        x = base.augmented(img, index, epoch=v)
    else:
        x = base.evaluated(img)
        if v == 1:
            x = x.flip(-1)
    return x.float().contiguous()


class FixedViews(Dataset):
    """The uncached twin of a cache: ``(view e % V of image i, label)`` in epoch ``e``, decoded
    and preprocessed every time (for the no-cache loop on the same views, and for tests)."""

    def __init__(self, base: TrainImages, views: Union[str, Views] = DEFAULT_VIEWS) -> None:
        self.base = base
        self.views = parse_views(views)
        self.view = 0

    def set_epoch(self, epoch: int) -> None:
        self.view = int(epoch) % self.views.count

    def __len__(self) -> int:
        return len(self.base)

    def manifest(self):
        return self.base.manifest()

    def __getitem__(self, index: int) -> Tuple[Tensor, int]:
        return render_view(self.base, index, self.view, self.views), self.base.label(index)


class _AllViews(Dataset):
    """Every (view, image) pair, views-major: item ``j`` is view ``j // N`` of image ``j % N``."""

    def __init__(self, base: TrainImages, views: Views) -> None:
        self.base, self.views, self.n = base, views, len(base)

    def __len__(self) -> int:
        return self.n * self.views.count

    def __getitem__(self, j: int) -> Tensor:
        return render_view(self.base, j % self.n, j // self.n, self.views)


def cache_key(backbone: Backbone, layer: str, base: TrainImages,
              views: Union[str, Views]) -> Dict[str, Any]:
    """What a cache's content depends on (see the module docstring); plain JSON values."""
    from .loop import manifest_hash

    views = parse_views(views)
    return {
        "format": CACHE_FORMAT,
        "backbone": backbone.name,
        "weights_id": backbone.weights_id,
        "backbone_hash": backbone_hash(backbone),
        "layer": layer,
        "views": views.spec,
        "view_seed": base.seed if views.kind == "random" else None,
        "dataset": type(base).__name__,
        "image_size": int(base.size),
        "manifest": manifest_hash(base),
        "n_images": len(base),
    }


def cache_folder(root: PathLike, key: Dict[str, Any]) -> str:
    """The sub-folder of ``root`` for ``key``: ``<backbone>-<layer>-<views>-<hash of key>``."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    slug = re.sub(r"[^A-Za-z0-9_.+-]+", "_", f"{key['backbone']}-{key['layer']}-{key['views']}")
    return os.path.join(os.fspath(root), f"{slug}-{digest}")


def _mapped(path: str, shape: Tuple[int, ...], dtype: torch.dtype, write: bool) -> Tensor:
    n = 1
    for d in shape:
        n *= int(d)
    if write:  # create the file at its full size, then map it shared (writes go to the file)
        with open(path, "wb") as f:
            f.truncate(n * torch.empty((), dtype=dtype).element_size())
    return torch.from_file(path, shared=write, size=n, dtype=dtype).view(*shape)


class FeatureCache:
    """An opened (complete) cache folder: memory-mapped ``features`` ``[V*N,K,h,w]`` float16,
    ``top1`` ``[V*N]`` int64, ``gray`` ``[V*N,1,h,w]`` float16, and its ``key``."""

    def __init__(self, path: str, key: Dict[str, Any], shape: Tuple[int, int, int]) -> None:
        self.path, self.key, self.shape = path, key, tuple(int(s) for s in shape)
        self.views = parse_views(key["views"])
        self.n = int(key["n_images"])
        total = self.n * self.views.count
        K, h, w = self.shape
        self.features = _mapped(os.path.join(path, "features.f16"), (total, K, h, w), torch.float16, False)
        self.top1 = _mapped(os.path.join(path, "top1.i64"), (total,), torch.int64, False)
        self.gray = _mapped(os.path.join(path, "gray.f16"), (total, 1, h, w), torch.float16, False)

    @classmethod
    def open(cls, path: PathLike, key: Dict[str, Any]) -> "FeatureCache":
        """Open the cache in folder ``path`` if it was built for ``key``.

        Raises:
            FileNotFoundError: no complete cache there.
            CacheMismatch: built for another key (the differences are listed).
        """
        path = os.fspath(path)
        kp = os.path.join(path, KEY_NAME)
        if not os.path.isfile(kp):
            raise FileNotFoundError(f"no feature cache in {path}")
        with open(kp) as f:
            stored = json.load(f)
        diffs = dict_diff(stored.get("key"), key)
        if diffs:
            raise CacheMismatch(f"feature cache {path} was built for another setup: "
                                + "; ".join(diffs))
        return cls(path, key, tuple(stored["shape"]))

    def item(self, view: int, index: int) -> Dict[str, Tensor]:
        """The stored tensors of view ``view`` of image ``index`` (``A`` float16 ``[K,h,w]``,
        ``top1`` int64 0-dim, ``gray`` float16 ``[1,h,w]``)."""
        j = view * self.n + index
        return {"A": self.features[j], "top1": self.top1[j], "gray": self.gray[j]}


def build_cache(path: PathLike, key: Dict[str, Any], backbone: Backbone, layer: str,
                base: TrainImages, *, batch_size: int = 64, num_workers: int = 0,
                progress: bool = True) -> FeatureCache:
    """Run the frozen ``backbone`` once over every view of ``base`` and store the cache of
    ``key`` in folder ``path`` (replacing what is there). See the module docstring."""
    path = os.fspath(path)
    views = parse_views(key["views"])
    tmp = f"{path}.tmp{os.getpid()}"
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    os.makedirs(tmp)
    data = _AllViews(base, views)
    loader = DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    bar = None
    if progress:
        bar = Progress(len(data), f"feature cache ({views.spec}, {len(base)} images)", unit="img")
    was_training = backbone.model.training
    backbone.model.eval()
    try:
        shape = _write_features(tmp, loader, len(data), backbone, layer, bar)
        atomic_write(os.path.join(tmp, KEY_NAME),
                     json.dumps({"key": key, "shape": list(shape)}, indent=1, sort_keys=True))
        if os.path.exists(path):
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        backbone.model.train(was_training)
        if bar is not None:
            bar.close()
    return FeatureCache.open(path, key)


def _write_features(folder: str, loader: DataLoader, total: int, backbone: Backbone, layer: str,
                    bar) -> Optional[Tuple[int, int, int]]:
    """Run ``backbone`` (already in eval mode) over ``loader``'s ``total`` images and write
    their ``layer`` features, top-1 classes and gray images into the memory-mapped files of
    ``folder`` (created at the first batch, unmapped on return); advances the progress ``bar``
    (or None). Returns the features' shape ``(K, h, w)`` (None when ``loader`` is empty)."""
    arrays: Optional[Tuple[Tensor, Tensor, Tensor]] = None
    shape = None
    j = 0
    for x in loader:
        with torch.inference_mode():
            x = x.to(backbone.device)
            A, logits = backbone.features_and_logits(x, layer)
            g = gray_image(x, tuple(A.shape[-2:]))
        if arrays is None:
            shape = tuple(A.shape[1:])
            K, h, w = shape
            arrays = (_mapped(os.path.join(folder, "features.f16"), (total, K, h, w), torch.float16, True),
                      _mapped(os.path.join(folder, "top1.i64"), (total,), torch.int64, True),
                      _mapped(os.path.join(folder, "gray.f16"), (total, 1, h, w), torch.float16, True))
        b = x.shape[0]
        arrays[0][j:j + b] = A.to("cpu", torch.float16)
        arrays[1][j:j + b] = logits.float().argmax(1).cpu()
        arrays[2][j:j + b] = g.to("cpu", torch.float16)
        j += b
        if bar is not None:
            bar.update(b)
    del arrays  # unmap (flushes the shared maps)
    return shape


def open_cache(root: PathLike, backbone: Backbone, layer: str, base: TrainImages,
               views: Union[str, Views] = DEFAULT_VIEWS, *, batch_size: int = 64,
               num_workers: int = 0, progress: bool = True,
               log: Callable[[str], None] = print) -> FeatureCache:
    """The cache of (``backbone``, ``layer``, ``base``'s images, ``views``) under ``root``:
    reused when its key matches, else (re)built. Under torchrun, rank 0 builds and the other
    ranks wait for it."""
    from .loop import _barrier, rank_and_world

    key = cache_key(backbone, layer, base, views)
    path = cache_folder(root, key)
    rank, world = rank_and_world()
    if rank == 0:
        try:
            cache = FeatureCache.open(path, key)
            log(f"feature cache: reusing {path}")
        except FileNotFoundError:
            log(f"feature cache: building {path}")
            cache = build_cache(path, key, backbone, layer, base, batch_size=batch_size,
                                num_workers=num_workers, progress=progress)
        except CacheMismatch as exc:
            log(f"{exc}; rebuilding")
            cache = build_cache(path, key, backbone, layer, base, batch_size=batch_size,
                                num_workers=num_workers, progress=progress)
    if world > 1:
        _barrier()
        if rank != 0:
            cache = FeatureCache.open(path, key)
    return cache


class CachedViews(Dataset):
    """Training batches from a :class:`FeatureCache`: in epoch ``e``, item ``i`` is
    ``({"A", "top1", "gray"[, "x"]}, label)`` of view ``e % V`` of image ``i`` (``x``, the
    normalized view image, only with ``images=True``: L-CAM-Img still needs the picture,
    rendered from the file; the clean forward is what the cache saves). ``manifest()`` is the
    images' (so checkpoints name the same data as the uncached loop's)."""

    def __init__(self, base: TrainImages, cache: FeatureCache, *, images: bool = False) -> None:
        if cache.n != len(base):
            raise ValueError(f"feature cache {cache.path} holds {cache.n} images, the dataset {len(base)}")
        self.base, self.cache, self.images = base, cache, bool(images)
        self.view = 0

    def set_epoch(self, epoch: int) -> None:
        self.view = int(epoch) % self.cache.views.count

    def __len__(self) -> int:
        return len(self.base)

    def manifest(self):
        return self.base.manifest()

    def __getitem__(self, index: int) -> Tuple[Dict[str, Tensor], int]:
        d = self.cache.item(self.view, index)
        if self.images:
            d["x"] = render_view(self.base, index, self.view, self.cache.views)
        return d, self.base.label(index)

    def get_batch(self, indices) -> Tuple[Dict[str, Tensor], Tensor]:
        """A whole batch (as the DataLoader would collate it) in one indexed read of each
        memory map; :func:`camzoo.train.loop.fit` uses it (stacking 64 per-item float16
        views costs ~50x more)."""
        j = torch.as_tensor(list(indices), dtype=torch.long) + self.view * self.cache.n
        d = {"A": self.cache.features[j], "top1": self.cache.top1[j], "gray": self.cache.gray[j]}
        if self.images:
            d["x"] = torch.stack([render_view(self.base, int(i), self.view, self.cache.views)
                                  for i in indices])
        return d, torch.tensor([self.base.label(int(i)) for i in indices], dtype=torch.long)


def cached_training_set(train_set, backbone: Backbone, layer: str, root: PathLike, *,
                        views: Union[str, Views] = DEFAULT_VIEWS, images: bool = False,
                        batch_size: int = 64, num_workers: int = 0, progress: bool = True,
                        log: Callable[[str], None] = print) -> CachedViews:
    """``train_set`` (a :class:`camzoo.train.data.TrainImages`) as a :class:`CachedViews` over
    the cache under ``root`` (built when needed); a clear error for other datasets."""
    if not isinstance(train_set, TrainImages):
        raise ValueError(f"the feature cache needs image-folder training data "
                         f"(camzoo.train.data.TrainImages); got {type(train_set).__name__} "
                         "(train without the cache: cache=None / --no-cache)")
    cache = open_cache(root, backbone, layer, train_set, views, batch_size=batch_size,
                       num_workers=num_workers, progress=progress, log=log)
    return CachedViews(train_set, cache, images=images)


def default_cache_root(out: Optional[PathLike]) -> str:
    """Where the cache goes without ``--cache DIR``: ``feature_cache/`` beside the checkpoint
    (the current folder when there is none)."""
    folder = os.path.dirname(os.path.abspath(os.fspath(out))) if out is not None else os.getcwd()
    return os.path.join(folder, "feature_cache")
