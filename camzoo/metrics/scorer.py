"""Batched, counting classifier scoring shared by every metric protocol.

Every protocol reduces to "softmax probability of class c for many perturbed inputs".
:class:`Scorer` does exactly that: it packs inputs into forwards of ``eval_batch_size``
images (channels_last, ``torch.inference_mode``) and counts every image it sends through the
model, per metric family, so the engine can report and benchmark against forward counts.
With ``hits=True`` the same forwards also say whether each input's top-1 class is ``c``
(ROAD's accuracy), at no extra forward.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Dict, Iterable, Iterator, List, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from ..utils import autocast, check_amp, count_forwards


class Scorer:
    """Batched, counting forward: softmax probability of class ``c`` for many inputs.

    Args:
        model: a classifier mapping a normalized ``[N,3,H,W]`` batch to logits
            ``[N,num_classes]`` (e.g. ``Backbone.model``); used as is (eval mode expected).
        eval_batch_size: the most images per forward (>= 1).
        amp: None (fp32), ``"bf16"`` or ``"fp16"``: each forward runs under autocast; the
            softmax and the returned probabilities are float32 either way.

    Attributes:
        counts: images sent through ``model`` per family name (``dict[str, int]``).
        device: the model's device; inputs are moved there chunk by chunk (and cast to the
            model's floating dtype, so half-precision models work).
    """

    def __init__(self, model: nn.Module, eval_batch_size: int = 64, amp: Optional[str] = None) -> None:
        eval_batch_size = int(eval_batch_size)
        if eval_batch_size < 1:
            raise ValueError(f"eval_batch_size must be >= 1; got {eval_batch_size}")
        self.model = model
        self.eval_batch_size = eval_batch_size
        self.amp = check_amp(amp)
        self.counts: Dict[str, int] = defaultdict(int)
        p = next(iter(model.parameters()), None)
        # a parameter-free model keeps the inputs where (and as) they are
        self.device: Optional[torch.device] = p.device if p is not None else None
        self.dtype: Optional[torch.dtype] = p.dtype if p is not None and p.is_floating_point() else None

    def __repr__(self) -> str:
        return f"Scorer(eval_batch_size={self.eval_batch_size}, counts={dict(self.counts)})"

    @property
    def total(self) -> int:
        """All images sent through the model so far, over every family."""
        return sum(self.counts.values())

    def reset_counts(self) -> None:
        """Forget the forward counts."""
        self.counts.clear()

    def _forward(self, x: Tensor, c: Tensor, family: str) -> Tuple[Tensor, Tensor]:
        """One forward of at most ``eval_batch_size`` images -> float32 ``[n]`` probs of ``c``
        and bool ``[n]`` hits (``argmax == c``, the engine's top-1 rule: the first maximum of
        the float32 softmax)."""
        if self.device is not None:
            x = x.to(self.device, self.dtype or x.dtype, non_blocking=True)
            c = c.to(self.device, non_blocking=True)
        x = x.contiguous(memory_format=torch.channels_last)
        with autocast(x.device, self.amp):
            logits = self.model(x)
        p = torch.softmax(logits.float(), dim=1)
        self.counts[family] += int(x.shape[0])
        count_forwards(x.shape[0])
        c = c.long().reshape(-1)
        return p.gather(1, c.reshape(-1, 1)).squeeze(1), p.argmax(dim=1) == c

    def _empty(self, like: Tensor, hits: bool) -> Union[Tensor, Tuple[Tensor, Tensor]]:
        dev = self.device or like.device
        p = torch.zeros(0, dtype=torch.float32, device=dev)
        return (p, torch.zeros(0, dtype=torch.bool, device=dev)) if hits else p

    @staticmethod
    def _joined(outs: List[Tuple[Tensor, Tensor]], hits: bool) -> Union[Tensor, Tuple[Tensor, Tensor]]:
        p = outs[0][0] if len(outs) == 1 else torch.cat([o[0] for o in outs])
        if not hits:
            return p
        return p, (outs[0][1] if len(outs) == 1 else torch.cat([o[1] for o in outs]))

    @torch.inference_mode()
    def probs(self, x: Tensor, c: Tensor, family: str,
              hits: bool = False) -> Union[Tensor, Tuple[Tensor, Tensor]]:
        """Softmax probability of class ``c[i]`` for input ``x[i]`` (and, with ``hits``,
        whether ``c[i]`` is its top-1 class, from the same forward).

        Args:
            x: normalized float batch ``[N,3,H,W]`` (any N; split into chunks of
                ``eval_batch_size``).
            c: LongTensor ``[N]`` of class indices in ``[0, num_classes)``.
            family: the metric family the forwards are counted under (``counts[family] += N``,
                with or without ``hits``).
            hits: also return ``argmax_k softmax(f(x[i]))_k == c[i]`` (the first maximum, as the
                engine picks the top-1 class of the clean image).
        Returns:
            float32 ``[N]`` in [0,1], on the model's device; with ``hits`` the pair
            ``(probs, hits)``, ``hits`` bool ``[N]``.
        """
        if x.ndim != 4 or c.reshape(-1).shape[0] != x.shape[0]:
            raise ValueError(
                f"probs expects x [N,3,H,W] and c [N]; got x {tuple(x.shape)}, c {tuple(c.shape)}"
            )
        c = c.reshape(-1)
        n, bs = x.shape[0], self.eval_batch_size
        if n == 0:
            return self._empty(x, hits)
        return self._joined([self._forward(x[i:i + bs], c[i:i + bs], family)
                             for i in range(0, n, bs)], hits)

    @torch.inference_mode()
    def probs_stream(self, chunks: Iterable[Tuple[Tensor, Tensor]], family: str,
                     hits: bool = False) -> Union[Tensor, Tuple[Tensor, Tensor]]:
        """:meth:`probs` over a stream of ``(x_chunk [n,3,H,W], c_chunk [n])`` pairs.

        The chunks are built lazily by the caller (a generator), so no more than one chunk of
        perturbed images exists at a time. Chunks larger than ``eval_batch_size`` are split.

        Returns:
            float32 ``[sum n]`` in [0,1]: the probabilities of all chunks, concatenated in order
            (with ``hits``: the pair ``(probs, hits)`` as :meth:`probs`).
        """
        outs: List[Tuple[Tensor, Tensor]] = []
        bs = self.eval_batch_size
        for x, c in chunks:
            c = c.reshape(-1)
            if x.shape[0] != c.shape[0]:
                raise ValueError(f"chunk has {x.shape[0]} images but {c.shape[0]} classes")
            for i in range(0, x.shape[0], bs):
                outs.append(self._forward(x[i:i + bs], c[i:i + bs], family))
        if not outs:
            dev = self.device
            p = torch.zeros(0, dtype=torch.float32, device=dev)
            return (p, torch.zeros(0, dtype=torch.bool, device=dev)) if hits else p
        return self._joined(outs, hits)



def pair_chunks(n_outer: int, n_inner: int, chunk: int) -> Iterator[Tuple[int, int, List[Tuple[int, int, int, int]]]]:
    """Pack the pairs ``p = o * n_inner + i`` (``o < n_outer``, ``i < n_inner``) into chunks.

    The protocols build their perturbed inputs this way: a chunk of at most ``chunk``
    consecutive pairs is a few *runs* of consecutive ``i`` at one ``o``, so each run is written
    from slices (one broadcast op, no per-pair gathers) into a reused buffer.

    Yields:
        ``(start, end, runs)`` per chunk of pairs ``[start, end)``; each run is
        ``(o, i0, i1, offset)``: pairs ``(o, i0..i1-1)`` go to buffer rows
        ``offset..offset + i1 - i0``.
    """
    total = n_outer * n_inner
    for a in range(0, total, chunk):
        e = min(total, a + chunk)
        runs = []
        p = a
        while p < e:
            o, i0 = divmod(p, n_inner)
            i1 = min(n_inner, i0 + e - p)
            runs.append((o, i0, i1, p - a))
            p += i1 - i0
        yield a, e, runs
