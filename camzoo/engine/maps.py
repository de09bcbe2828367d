"""The one image-to-map path: images in, per-method saliency maps out, batch by batch.

``camzoo bench``, ``camzoo explain`` and ``camzoo stability`` all make their maps through
:func:`iterate_maps`; they differ only in what they do with the maps (score them, draw them,
compare them). For every batch of readable images it

1. loads and preprocesses the images ahead of the consumer, in a background thread or in
   worker processes (:class:`camzoo.data.loader.Prefetcher`), once per *view* (a backbone whose ``preprocess`` and normalization the images go through);
2. runs **one clean forward per classifier** (under autocast with ``amp``) (``Explainer.evaluated_backbone``) giving the
   explained class ``c`` (its top-1, the ground truth, or a fixed class), ``Y`` (softmax
   probability of ``c``) and the top-1 ``pred``;
3. lets each method make its maps once, lazily, when the consumer asks for them
   (:meth:`MapBatch.each_method`), skipping the (method, image) pairs already done.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Set, Tuple, Union

import torch
from torch import Tensor

from ..data.datasets import Dataset, ImageItem
from ..data.loader import Prefetcher
from ..data.loader import ImageError
from ..explainers.base import EXPLAINERS, Explainer, get_explainer
from ..models.backbone import Backbone
from ..utils import autocast
from .timing import Clock

#: the shared clean forward of the benchmarked backbone is counted under this method name
CLEAN_METHOD = "*"
#: methods needing at most this many forwards per map get one untimed warm-up call, so that
#: first-call costs (lazy imports, autograd / allocator set-up) stay out of s/img
WARMUP_MAX_FORWARDS = 16
#: the view of the benchmarked backbone (its preprocessing)
MAIN_VIEW = "backbone"

Target = Union[str, int]  # "pred", "gt" or a class index


@dataclass
class MapMethod:
    """One explainer as the map path runs it.

    Attributes:
        name: the method's name (rows, tables, files).
        explainer: the configured :class:`~camzoo.Explainer`.
        backbone: the :class:`~camzoo.Backbone` passed to ``explain``.
        classifier: the Backbone whose decisions are explained and evaluated
            (``explainer.evaluated_backbone(backbone)``).
        classifier_key: ``"backbone"`` for the benchmarked backbone itself, else
            ``"<method>:<classifier name>"``; methods sharing a key share one clean forward.
        forward_passes: the explainer's forwards per map (#FW).
        view: which view's images the explainer gets (:data:`MAIN_VIEW` by default).
    """

    name: str
    explainer: Explainer
    backbone: Backbone
    classifier: Backbone
    classifier_key: str
    forward_passes: int
    view: str = MAIN_VIEW
    warm: bool = False


def classifier_key(method: str, bb: Backbone, ev: Backbone) -> str:
    """``"backbone"`` when ``ev is bb``, else ``"<method>:<ev.name>"``."""
    return "backbone" if ev is bb else f"{method}:{ev.name}"


def make_methods(bb: Backbone, names: Sequence[str], options: Dict[str, Dict[str, Any]],
                 layer: Optional[str] = None, amp: Optional[str] = None) -> List[MapMethod]:
    """:class:`MapMethod` per explainer name on backbone ``bb``.

    Args:
        bb: the backbone (on its device).
        names: explainer names (validated by the registry).
        options: per-method explainer options.
        layer: explanation layer for every method with a ``layer`` option that does not set
            its own.
        amp: mixed precision (``"bf16"`` / ``"fp16"``) for every method with an ``amp``
            option that does not set its own (None leaves the explainers' defaults: fp32).
    Raises:
        ValueError / KeyError for unknown names or options (listing the valid ones).
    """
    out = []
    for m in names:
        opts = dict(options.get(m, {}))
        defaults = getattr(EXPLAINERS.get(m), "defaults", {})
        for key, value in (("layer", layer), ("amp", amp)):
            if value is not None and key in defaults and key not in opts:
                opts[key] = value
        ex = get_explainer(m, **opts)
        ev = ex.evaluated_backbone(bb)
        if ev is not bb:
            ev.to(bb.device)
        out.append(MapMethod(m, ex, bb, ev, classifier_key(m, bb, ev), int(ex.forward_passes(bb))))
    return out


def same_normalization(a: Backbone, b: Backbone) -> bool:
    """True when ``a`` and ``b`` normalize their inputs with the same mean and std."""
    return a is b or (torch.equal(a.mean.cpu(), b.mean.cpu()) and torch.equal(a.std.cpu(), b.std.cpu()))


@dataclass
class Clean:
    """The clean forward of one classifier on a batch (or the subset a method needs).

    Attributes:
        x: the images in that classifier's normalization ``[n,3,H,W]``.
        c: LongTensor ``[n]``, the explained and evaluated classes.
        Y: float32 ``[n]`` in [0,1], softmax probability of ``c``.
        pred: LongTensor ``[n]``, the classifier's top-1.
    """

    x: Tensor
    c: Tensor
    Y: Tensor
    pred: Tensor

    def take(self, ii: Tensor) -> "Clean":
        return Clean(self.x[ii], self.c[ii], self.Y[ii], self.pred[ii])


@dataclass
class Maps:
    """One method's maps for the images of a batch it had not done.

    Attributes:
        sel: positions of those images in the batch.
        V: float32 ``[n,H,W]`` maps in [0,1].
        seconds: wall-clock map time per image (batch time / n, CUDA synchronized).
        x: the explainer's input ``[n,3,H,W]`` (its view's normalization).
        x01: the same images in [0,1] ``[n,3,H,W]``.
        clean: the classifier's clean forward on those images.
    """

    sel: List[int]
    V: Tensor
    seconds: float
    x: Tensor
    x01: Tensor
    clean: Clean

    def take(self, keep: Tensor) -> "Maps":
        """The maps of the images where the bool ``keep`` ``[n]`` is True."""
        ii = keep.nonzero()[:, 0].to(self.V.device)
        sel = [self.sel[int(i)] for i in ii.tolist()]
        return Maps(sel, self.V[ii], self.seconds, self.x[ii], self.x01[ii], self.clean.take(ii))


@dataclass
class MapBatch:
    """A batch of readable images, its clean forwards, and its maps on demand.

    Attributes:
        items: ``(manifest index, ImageItem)`` per image.
        errors: unreadable images met since the previous batch.
        x: view -> normalized images ``[B,3,H,W]`` on the device (channels_last).
        x01: view -> the same in [0,1].
        clean: classifier key -> :class:`Clean` of the whole batch.
        forwards: ``{(method, family): images}`` forwarded so far for this batch (clean and
            explain families; consumers add theirs).
    """

    items: List[Tuple[int, ImageItem]]
    errors: List[ImageError]
    x: Dict[str, Tensor] = field(default_factory=dict)
    x01: Dict[str, Tensor] = field(default_factory=dict)
    clean: Dict[str, Clean] = field(default_factory=dict)
    forwards: Dict[Tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    _methods: Sequence[MapMethod] = ()
    _done: Set[Tuple[str, str]] = field(default_factory=set)
    _clock: Optional[Clock] = None
    _warmup: bool = False

    def each_method(self) -> Iterator[Tuple[MapMethod, Maps]]:
        """``(method, maps)`` for every method with images left in this batch, in order; each
        method's maps are made when the consumer reaches it (timed, counted). An explainer's
        exception propagates (use :meth:`pending` and :meth:`maps_of` to handle it per method)."""
        for m in self._methods:
            maps = self.maps_of(m)
            if maps is not None:
                yield m, maps

    def pending(self, m: MapMethod) -> List[int]:
        """Positions in the batch of the images ``m`` has not done yet."""
        return [j for j, (_, it) in enumerate(self.items) if (m.name, it.image_id) not in self._done]

    def maps_of(self, m: MapMethod) -> Optional[Maps]:
        """``m``'s maps of its pending images (``None`` when it has none); timed and counted."""
        sel = self.pending(m)
        if not sel:
            return None
        x, x01, clean = self.x[m.view], self.x01[m.view], self.clean[m.classifier_key]
        if self._warmup and not m.warm and m.forward_passes <= WARMUP_MAX_FORWARDS:
            m.explainer.explain(m.backbone, x[:1], clean.c[:1])
            m.warm = True
        n = len(sel)
        if n < len(self.items):
            ii = torch.tensor(sel, device=x.device)
            x, x01, clean = x[ii], x01[ii], clean.take(ii)
        clock = self._clock
        t = clock.start() if clock else None
        V = m.explainer.explain(m.backbone, x, clean.c)
        dt = clock.stop(f"explain/{m.name}", t) if clock else 0.0
        if m.forward_passes:
            self.forwards[(m.name, "explain")] += m.forward_passes * n
        return Maps(sel, V, dt / n, x, x01, clean)


def _targets(target: Target, items: List[Tuple[int, ImageItem]], pred: Tensor,
             clf: Backbone) -> Tensor:
    if target == "pred":
        return pred
    if target == "gt":
        c = torch.tensor([it.label for _, it in items], dtype=torch.long, device=pred.device)
    else:
        c = torch.full_like(pred, int(target))
    clf.check_classes(c)
    return c


def clean_forwards(methods: Sequence[MapMethod], views: Dict[str, Backbone], x: Dict[str, Tensor],
                   x01: Dict[str, Tensor], items: List[Tuple[int, ImageItem]], target: Target,
                   forwards: Dict[Tuple[str, str], int], amp: Optional[str] = None,
                   model_of: Optional[Callable[[Backbone], Any]] = None) -> Dict[str, Clean]:
    """One forward per classifier key of ``methods`` on the batch ``x`` (see :class:`Clean`).

    A classifier sees its method's view; when it normalizes differently from that view's
    backbone it gets ``classifier.normalize(x01)``. The forward runs under autocast when
    ``amp`` is given (softmax in float32); ``model_of(clf)`` gives the module to run
    (default ``clf.model``; the engine passes the compiled forward with ``--compile``).
    """
    out: Dict[str, Clean] = {}
    for m in methods:
        key, clf = m.classifier_key, m.classifier
        if key in out:
            continue
        xv = x[m.view]
        xc = xv if same_normalization(views[m.view], clf) else clf.normalize(x01[m.view])
        net = model_of(clf) if model_of is not None else clf.model
        with torch.inference_mode():
            with autocast(xc.device, amp):
                logits = net(xc.contiguous(memory_format=torch.channels_last))
            probs = torch.softmax(logits.float(), dim=1)
            pred = probs.argmax(dim=1)
        c = _targets(target, items, pred, clf)
        with torch.inference_mode():
            Y = probs.gather(1, c[:, None])[:, 0]
        # c, Y, pred come out of inference mode: clone them (explainers may save c for
        # backward); xc was made outside it and is used as is
        out[key] = Clean(xc, c.clone(), Y.clone(), pred.clone())
        forwards[(CLEAN_METHOD if key == "backbone" else key.split(":", 1)[0], "clean")] += xv.shape[0]
    return out


def iterate_maps(
    ds: Dataset,
    items: Sequence[Tuple[int, ImageItem]],
    methods: Sequence[MapMethod],
    *,
    views: Dict[str, Backbone],
    batch_size: int,
    target: Target = "pred",
    done: Optional[Set[Tuple[str, str]]] = None,
    clock: Optional[Clock] = None,
    warmup: bool = False,
    amp: Optional[str] = None,
    model_of: Optional[Callable[[Backbone], Any]] = None,
    workers: int = 0,
) -> Iterator[MapBatch]:
    """Batches of ``items`` of ``ds`` with their clean forwards and lazy maps.

    Args:
        ds: the dataset.
        items: ``(manifest index, ImageItem)`` to process, in order.
        methods: the methods (:func:`make_methods`); their views must be keys of ``views``.
        views: view name -> the Backbone whose ``preprocess`` makes that view's images (and
            whose ``device`` they are moved to).
        batch_size: readable images per batch.
        target: ``"pred"`` (each classifier's top-1), ``"gt"`` (the items' labels) or a
            class index.
        done: ``(method, image_id)`` pairs to skip (a resumed run).
        clock: times ``load_wait``, ``clean`` and ``explain/<method>`` when given.
        warmup: one untimed warm-up call per cheap method (see :data:`WARMUP_MAX_FORWARDS`).
        amp: autocast of the clean forwards (None = fp32); the explainers carry their own
            ``amp`` option.
        model_of: the module of a classifier's clean forward (see :func:`clean_forwards`).
        workers: image-decoding worker processes (0 = one background thread); see
            :class:`~camzoo.data.loader.Prefetcher`. With CUDA views, batches come in pinned memory.
    Yields:
        :class:`MapBatch`; a batch may hold only ``errors`` (no readable image). Close the
        generator (or exhaust it) to stop the loading thread.
    """
    done = set(done or ())
    pin = any(v.device.type == "cuda" for v in views.values())
    with Prefetcher(ds, items, {k: v.preprocess for k, v in views.items()}, batch_size,
                    workers=workers, pin_memory=pin) as loader:
        t = clock.start() if clock else None
        for lb in loader:
            if clock:
                clock.stop("load_wait", t)
            batch = MapBatch(lb.items, lb.errors, _methods=methods, _done=done, _clock=clock,
                             _warmup=warmup)
            if lb.items:
                for k, v in views.items():
                    # channels_last: the layout the backbones' convolutions run fastest in
                    xv = lb.x[k].to(v.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
                    batch.x[k] = xv
                    batch.x01[k] = v.denormalize(xv).clamp_(0.0, 1.0)
                tc = clock.start() if clock else None
                batch.clean = clean_forwards(methods, views, batch.x, batch.x01, lb.items, target,
                                             batch.forwards, amp, model_of)
                if clock:
                    clock.stop("clean", tc)
            yield batch
            t = clock.start() if clock else None
