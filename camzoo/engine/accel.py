"""Throughput helpers of the engine: ``torch.compile`` of a classifier's forward, and batch
sizes picked automatically on CUDA (probe, catch ``torch.cuda.OutOfMemoryError``, halve,
cache the answer in the run directory).
"""
from __future__ import annotations

import contextlib
import json
import os
from typing import Callable, Dict, Iterator, Optional, Union

import torch
from torch import nn

from ..models.backbone import Backbone
from ..utils import atomic_write, autocast

#: engine batch sizes on CPU when not given (the batch is a grouping of images: maps are
#: made per batch; CPU forwards gain nothing from larger ones)
CPU_BATCH_SIZE = 16
CPU_EVAL_BATCH_SIZE = 64
#: the automatic search starts here and halves on OOM: larger batches no longer raise a
#: GPU's throughput, they only hold memory (the metric chunks, Score-CAM / RISE buffers)
AUTO_START = {"batch_size": 64, "eval_batch_size": 512}
#: the cache of probed sizes in a run directory
AUTO_CACHE = "batch_sizes.json"


@contextlib.contextmanager
def ieee_fp32(device: torch.device, amp: Optional[str]) -> Iterator[None]:
    """On CUDA without ``amp``: TF32 off for cuDNN convolutions and matmuls inside the block (a
    fp32 run computes in IEEE fp32; PyTorch lets cuDNN round to TF32's 10-bit mantissa by
    default; speed comes from ``--amp bf16`` instead), the caller's settings restored on exit.
    Elsewhere nothing changes. The flags are process-wide while the block runs."""
    if device.type != "cuda" or amp is not None:
        yield
        return
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def compiled_model(bb: Backbone, backend: Union[bool, str] = True) -> nn.Module:
    """``torch.compile(bb.model)``, built once per backbone and backend (kept in ``bb.cache``).

    Used by the engine (``--compile``) for the forwards it runs itself: the clean forward and
    every metric forward. The explainers' forwards stay eager (hooks on inner layers, and
    Score-CAM / RISE run a BatchNorm-folded copy). ``backend``: True = torch's default
    (inductor), or a backend name (``"aot_eager"``: no code generation, for tests).
    """
    name = "inductor" if backend is True else str(backend)
    hit = bb.cache.get(("compiled_model", name))
    if hit is None or hit[0] is not bb.model:
        hit = (bb.model, torch.compile(bb.model, backend=name))
        bb.cache[("compiled_model", name)] = hit
    return hit[1]


def is_oom(exc: BaseException) -> bool:
    """True for an out-of-memory error of the device allocator."""
    return isinstance(exc, torch.cuda.OutOfMemoryError)


def largest_fitting(attempt: Callable[[int], None], start: int, minimum: int = 1) -> int:
    """The first of ``start, start // 2, ...`` (down to ``minimum``) for which ``attempt(n)``
    does not raise an out-of-memory error (:func:`is_oom`); other errors propagate.

    Raises the last out-of-memory error when even ``minimum`` does not fit.
    """
    n = max(int(minimum), int(start))
    while True:
        try:
            attempt(n)
            return n
        except Exception as exc:  # noqa: BLE001 - only OOM is handled, the rest re-raised
            if not is_oom(exc) or n <= minimum:
                raise
        # outside the except block (Python unbinds ``exc`` on leaving it): the traceback, and
        # the tensors its frames hold, are gone
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        n = max(int(minimum), n // 2)


def probe(bb: Backbone, kind: str, amp: Optional[str]) -> Callable[[int], None]:
    """The trial of one batch size ``n`` on ``bb``'s device.

    ``"eval_batch_size"``: an inference forward of ``n`` images (a metric chunk);
    ``"batch_size"``: a forward + backward of ``n`` images to the input (what a gradient
    explainer does with an engine batch), both under autocast with ``amp``.
    """
    s = int(bb.input_size or 224)

    def attempt(n: int) -> None:
        x = torch.zeros(n, 3, s, s, device=bb.device).contiguous(memory_format=torch.channels_last)
        if kind == "eval_batch_size":
            with torch.inference_mode(), autocast(x.device, amp):
                bb.model(x)
        else:
            x.requires_grad_(True)
            with torch.enable_grad():
                with autocast(x.device, amp):
                    out = bb.model(x)
                out.float().logsumexp(1).sum().backward()
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)
        del x

    return attempt


def auto_batch_size(bb: Backbone, kind: str, amp: Optional[str], cache_dir: Optional[str],
                    attempt: Optional[Callable[[int], None]] = None) -> int:
    """The largest batch size of ``kind`` (``"batch_size"`` / ``"eval_batch_size"``) that fits
    on ``bb``'s device, starting at :data:`AUTO_START` and halving on OOM.

    The answer is cached in ``cache_dir/batch_sizes.json`` per backbone (name and weights),
    device name and precision, so a resumed run or another shard on the same kind of GPU does
    not probe again. ``attempt`` replaces the real trial (:func:`probe`; tests inject OOMs).
    """
    dev = bb.device
    dev_name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else dev.type
    key = f"{bb.name}|{bb.weights_id}|{dev_name}|{amp or 'fp32'}|{kind}"
    path = os.path.join(cache_dir, AUTO_CACHE) if cache_dir else None
    cache: Dict[str, int] = {}
    if path and os.path.isfile(path):
        try:
            with open(path) as f:
                cache = json.load(f)
        except (OSError, ValueError):
            cache = {}
    if key in cache:
        return int(cache[key])
    was_training = bb.model.training
    bb.model.eval()
    try:
        n = largest_fitting(attempt or probe(bb, kind, amp), AUTO_START[kind])
    finally:
        bb.model.train(was_training)
    if path:
        # re-read: another shard may have added its own answer meanwhile (last writer keeps both)
        if os.path.isfile(path):
            try:
                with open(path) as f:
                    cache = {**json.load(f), **cache}
            except (OSError, ValueError):
                pass
        cache[key] = n
        atomic_write(path, json.dumps(cache, indent=2, sort_keys=True))
    return n
