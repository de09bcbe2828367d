"""Loading and preprocessing images ahead of the consumer.

:class:`Prefetcher` decodes and preprocesses the next batches while the caller computes on the
current one: in a background thread (``workers=0``; PIL releases the GIL while it decodes) or,
with ``workers=N``, in N worker processes of a ``torch.utils.data.DataLoader`` feeding that
thread (the device never waits for JPEG decoding and resizing when the CPU has cores to
spare). Either way batches hold ``batch_size`` *readable* images in the order of ``items``,
unreadable images are reported with the batch that follows them, and, with ``pin_memory``,
the batch tensors are in page-locked memory (asynchronous host-to-GPU copies). It is a context
manager: the thread and the worker processes are stopped and joined on every exit path,
exceptions included.
"""
from __future__ import annotations

import multiprocessing
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


def _load_one(ds: Dataset, it: ImageItem, views: Dict[str, Callable]):
    """``(tensors per view, None)`` for a readable image, ``(None, reason)`` otherwise."""
    try:
        img = ds.load(it)
        return {k: f(img) for k, f in views.items()}, None
    except ImageReadError as exc:
        return None, str(exc)


class _Items(torch.utils.data.Dataset):
    """The items as a map-style dataset for the DataLoader's worker processes."""

    def __init__(self, ds: Dataset, items: Sequence[Tuple[int, ImageItem]], views: Dict[str, Callable]):
        self.ds, self.items, self.views = ds, list(items), dict(views)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: int):
        return _load_one(self.ds, self.items[k][1], self.views)


def _as_is(x):
    return x


def _mp_context():
    # fork: workers start in milliseconds and need nothing pickled (a py: backbone's
    # preprocess may be a lambda); they never touch CUDA
    return "fork" if "fork" in multiprocessing.get_all_start_methods() else None


class Prefetcher:
    """Iterate over ``items`` of ``ds`` in batches of ``batch_size`` readable images.

    Args:
        ds: the dataset (gives the images).
        items: ``(manifest index, ImageItem)`` pairs to load, in order.
        views: name -> preprocess (PIL image -> float ``[3,H,W]``); every readable image is
            preprocessed by each (e.g. one view per classifier resolution).
        batch_size: readable images per batch (>= 1).
        depth: batches prepared ahead.
        workers: decoding worker processes (0 = decode in the background thread itself).
        pin_memory: stack each batch into page-locked memory (for CUDA).

    Yields :class:`LoadedBatch`. Unreadable images (:class:`~camzoo.data.images.ImageReadError`) go
    to ``errors``; any other exception (in the thread or a worker) is re-raised in the
    consumer.
    """

    def __init__(self, ds: Dataset, items: Sequence[Tuple[int, ImageItem]],
                 views: Dict[str, Callable], batch_size: int, depth: int = 2, workers: int = 0,
                 pin_memory: bool = False) -> None:
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        if int(workers) < 0:
            raise ValueError(f"workers must be >= 0; got {workers}")
        self.workers, self.pin_memory, self.depth = int(workers), bool(pin_memory), int(depth)
        self.q: "queue.Queue" = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, daemon=True, name="camzoo-prefetch",
                                        args=(ds, list(items), dict(views), int(batch_size)))
        self._thread.start()

    def _loaded(self, ds: Dataset, items, views, batch_size: int) -> Iterator:
        """``(tensors, reason)`` per item, in order (see :func:`_load_one`)."""
        if self.workers == 0 or not items:
            for _, it in items:
                yield _load_one(ds, it, views)
            return
        n = min(self.workers, len(items))
        dl = torch.utils.data.DataLoader(
            _Items(ds, items, views), batch_size=None, shuffle=False, num_workers=n,
            collate_fn=_as_is, multiprocessing_context=_mp_context(),
            prefetch_factor=max(2, -(-self.depth * batch_size // n)))
        it = iter(dl)
        try:
            yield from it
        finally:
            it._shutdown_workers()  # joins the worker processes (also on close / errors)

    def _stack(self, ts: List[Tensor]) -> Tensor:
        if not self.pin_memory:
            return torch.stack(ts)
        out = torch.empty((len(ts), *ts[0].shape), dtype=ts[0].dtype, pin_memory=True)
        return torch.stack(ts, out=out)

    def _work(self, ds: Dataset, items, views, batch_size: int) -> None:
        loaded = self._loaded(ds, items, views, batch_size)
        try:
            good: List[Tuple[int, ImageItem]] = []
            xs: Dict[str, List[Tensor]] = {k: [] for k in views}
            errs: List[ImageError] = []
            for (idx, it), (ts, reason) in zip(items, loaded):
                if self._stop.is_set():
                    return
                if ts is None:
                    errs.append((it.image_id, idx, ds.rel_path(it), reason))
                else:
                    good.append((idx, it))
                    for k, t in ts.items():
                        xs[k].append(t)
                if len(good) == batch_size:
                    self._put(LoadedBatch(good, {k: self._stack(v) for k, v in xs.items()}, errs))
                    good, xs, errs = [], {k: [] for k in views}, []
            if good or errs:
                self._put(LoadedBatch(good, {k: self._stack(v) if v else None
                                             for k, v in xs.items()}, errs))
            self._put(None)
        except BaseException as exc:  # re-raised in the consumer
            self._put(exc)
        finally:
            loaded.close()

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
        """Stop the thread and the worker processes and wait for them (idempotent)."""
        self._stop.set()
        self._thread.join()

    def __enter__(self) -> "Prefetcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
