"""Loading and preprocessing images ahead of the consumer, in a background thread.

:class:`Prefetcher` decodes (PIL releases the GIL) and preprocesses the next batches while the
caller computes on the current one. It is a context manager: the thread is stopped and joined
on every exit path, exceptions included.
"""
from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .datasets import Dataset, ImageItem
from .images import ImageReadError

#: an unreadable image: ``(image_id, index in the manifest, path relative to the data, reason)``
ImageError = Tuple[str, int, str, str]


@dataclass
class LoadedBatch:
    """One batch of readable images, preprocessed once per view.

    Attributes:
        items: ``(manifest index, ImageItem)`` of the readable images, in manifest order.
        x: view name -> float ``[B,3,H,W]`` CPU tensor (``None`` when ``items`` is empty).
        errors: the unreadable images met since the previous batch.
    """

    items: List[Tuple[int, ImageItem]]
    x: Dict[str, Optional[Tensor]] = field(default_factory=dict)
    errors: List[ImageError] = field(default_factory=list)


class Prefetcher:
    """Iterate over ``items`` of ``ds`` in batches of ``batch_size`` readable images.

    Args:
        ds: the dataset (gives the images).
        items: ``(manifest index, ImageItem)`` pairs to load, in order.
        views: name -> preprocess (PIL image -> float ``[3,H,W]``); every readable image is
            preprocessed by each (e.g. one view per classifier resolution).
        batch_size: readable images per batch (>= 1).
        depth: batches prepared ahead.

    Yields :class:`LoadedBatch`. Unreadable images (:class:`~camzoo.data.ImageReadError`) go
    to ``errors``; any other exception in the thread is re-raised in the consumer.
    """

    def __init__(self, ds: Dataset, items: Sequence[Tuple[int, ImageItem]],
                 views: Dict[str, Callable], batch_size: int, depth: int = 2) -> None:
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        self.q: "queue.Queue" = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, daemon=True, name="camzoo-prefetch",
                                        args=(ds, list(items), dict(views), int(batch_size)))
        self._thread.start()

    def _work(self, ds: Dataset, items, views, batch_size: int) -> None:
        try:
            good: List[Tuple[int, ImageItem]] = []
            xs: Dict[str, List[Tensor]] = {k: [] for k in views}
            errs: List[ImageError] = []
            for idx, it in items:
                if self._stop.is_set():
                    return
                try:
                    img = ds.load(it)
                    ts = {k: f(img) for k, f in views.items()}
                except ImageReadError as exc:
                    errs.append((it.image_id, idx, ds.rel_path(it), str(exc)))
                else:
                    good.append((idx, it))
                    for k, t in ts.items():
                        xs[k].append(t)
                if len(good) == batch_size:
                    self._put(LoadedBatch(good, {k: torch.stack(v) for k, v in xs.items()}, errs))
                    good, xs, errs = [], {k: [] for k in views}, []
            if good or errs:
                self._put(LoadedBatch(good, {k: torch.stack(v) if v else None
                                             for k, v in xs.items()}, errs))
            self._put(None)
        except BaseException as exc:  # re-raised in the consumer
            self._put(exc)

    def _put(self, obj) -> None:
        while not self._stop.is_set():
            try:
                self.q.put(obj, timeout=0.2)
                return
            except queue.Full:
                continue

    def __iter__(self) -> Iterator[LoadedBatch]:
        while True:
            obj = self.q.get()
            if obj is None:
                return
            if isinstance(obj, BaseException):
                raise obj
            yield obj

    def close(self) -> None:
        """Stop the thread and wait for it (idempotent)."""
        self._stop.set()
        self._thread.join()

    def __enter__(self) -> "Prefetcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
