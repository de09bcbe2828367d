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

Every method sees the batch as loaded: an explainer that changes its ``x`` or ``y`` in place
(seen by torch's version counter, or by a checksum of the images) raises
:class:`InputModifiedError` for that batch -- the engine records it as that method's failure
-- and the batch is restored from the loader's copy before the next method. Nothing is
copied per method, except for an explainer that declares ``modifies_input``.
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


class InputModifiedError(RuntimeError):
    """An explainer changed, in place, the images or classes it was given (its maps of the
    batch are not used; the batch is restored for the other methods)."""


def _version(t: Tensor) -> int:
    """``t``'s in-place version counter (-1 for an inference tensor, which has none)."""
    try:
        return int(t._version)
    except RuntimeError:
        return -1


def _checksum(t: Tensor) -> Tensor:
    """A fingerprint of ``t``'s values: one reduction (float64 for float tensors), no copy;
    it sees changes made behind the version counter (``x.data``)."""
    return t.sum(dtype=torch.float64) if t.is_floating_point() else t.sum()


class _Watch:
    """A tensor handed to an explainer: its version and checksum before the call, and what
    restores it (``source``: its values in any layout / device; None: not restored)."""

    def __init__(self, t: Tensor, source: Optional[Tensor] = None,
                 checksum: Optional[Tensor] = None) -> None:
        self.t, self.source, self.version = t, source, _version(t)
        self.sum = _checksum(t) if checksum is None else checksum

    def changed(self) -> bool:
        # exact, NaN equal to NaN (a NaN in the images is not a change)
        return _version(self.t) != self.version or not torch.allclose(
            _checksum(self.t), self.sum, rtol=0.0, atol=0.0, equal_nan=True)

    def restore(self) -> None:
        if self.source is not None:
            with torch.no_grad():
                self.t.copy_(self.source)


def _own_copy(m: "MapMethod", t: Tensor) -> Tensor:
    """``t`` itself, or a copy for an explainer that declares ``modifies_input``."""
    return t.clone() if getattr(m.explainer, "modifies_input", False) else t


def _check_inputs(name: str, watched: Sequence[Tuple[str, "_Watch"]],
                  exc: Optional[BaseException] = None) -> None:
    """Raise :class:`InputModifiedError` (after restoring what can be restored) when the
    explainer ``name`` changed any of the ``(what, watch)`` tensors it was given."""
    changed = [what for what, w in watched if w.changed()]
    if not changed:
        return
    for _, w in watched:
        w.restore()
    what = " and ".join(dict.fromkeys(changed))
    msg = (f"{name} modified its input in place (the {what} it was given): its maps of this "
           "batch are not used, the batch was restored for the other methods; an explainer "
           "must leave x and y unchanged (or declare modifies_input = True to get a copy)")
    if exc is not None:
        msg += f"; it then raised {type(exc).__name__}: {exc}"
    raise InputModifiedError(msg) from exc


def explain_checked(m: "MapMethod", x: Tensor, c: Tensor) -> Tensor:
    """``m``'s explainer on ``x`` / ``c``, which it must leave as they were (the maps of
    other inputs, e.g. a protocol's ``E = x * V``): :class:`InputModifiedError` when it
    changed them (``c`` is restored: it may be the batch's classes)."""
    watched = [("images", _Watch(x)), ("classes", _Watch(c, c.clone()))]
    try:
        V = m.explainer.explain(m.backbone, _own_copy(m, x), _own_copy(m, c))
    except Exception as exc:
        _check_inputs(m.name, watched, exc)
        raise
    _check_inputs(m.name, watched)
    return V


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
    #: view -> the loader's copy of ``x`` (restores it after an explainer changed it)
    _source: Dict[str, Tensor] = field(default_factory=dict)
    #: view -> the watch of ``x`` while it is known to hold the loaded images
    _seals: Dict[str, _Watch] = field(default_factory=dict)

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

    def _watch(self, view: str, key: str) -> List[Tuple[str, _Watch]]:
        """Watches of the batch's images of ``view`` and classes of ``key`` (the images'
        checksum is computed once per batch, again only after an in-place change)."""
        x = self.x[view]
        seal = self._seals.get(view)
        if seal is None or seal.t is not x or _version(x) != seal.version or seal.version < 0:
            seal = self._seals[view] = _Watch(x, self._source.get(view))
        c = self.clean[key].c
        return [("images", _Watch(x, seal.source, seal.sum)), ("classes", _Watch(c, c.clone()))]

    def maps_of(self, m: MapMethod) -> Optional[Maps]:
        """``m``'s maps of its pending images (``None`` when it has none); timed and counted.

        Raises :class:`InputModifiedError` (the batch restored) when the explainer changed the
        images or classes it was given."""
        sel = self.pending(m)
        if not sel:
            return None
        x, x01, clean = self.x[m.view], self.x01[m.view], self.clean[m.classifier_key]
        watched = self._watch(m.view, m.classifier_key)
        try:
            if self._warmup and not m.warm and m.forward_passes <= WARMUP_MAX_FORWARDS:
                m.explainer.explain(m.backbone, _own_copy(m, x[:1]), _own_copy(m, clean.c[:1]))
                m.warm = True
            n = len(sel)
            if n < len(self.items):
                ii = torch.tensor(sel, device=x.device)
                x, x01, clean = x[ii], x01[ii], clean.take(ii)
                # the method's own copies: its maps and metrics use them
                watched += [("images", _Watch(x)), ("classes", _Watch(clean.c, clean.c.clone()))]
            clock = self._clock
            t = clock.start() if clock else None
            V = m.explainer.explain(m.backbone, _own_copy(m, x), _own_copy(m, clean.c))
            dt = clock.stop(f"explain/{m.name}", t) if clock else 0.0
        except Exception as exc:
            _check_inputs(m.name, watched, exc)
            raise
        _check_inputs(m.name, watched)
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


def clean_name(m: MapMethod) -> str:
    """The method name a clean forward of ``m``'s classifier is counted under:
    :data:`CLEAN_METHOD` for the benchmarked backbone, else ``m``'s own name."""
    return CLEAN_METHOD if m.classifier_key == "backbone" else m.classifier_key.split(":", 1)[0]


def counted_clean(methods: Sequence[MapMethod], stored: Set[Tuple[str, str]]) -> Set[Tuple[str, str]]:
    """``(clean name, image_id)`` whose clean forward is counted already: an image with a
    stored pair (a row or a failure) of a method of that classifier (see :func:`clean_name`)."""
    name = {m.name: clean_name(m) for m in methods}
    return {(name[m], i) for m, i in stored if m in name}


def clean_forwards(methods: Sequence[MapMethod], views: Dict[str, Backbone], x: Dict[str, Tensor],
                   x01: Dict[str, Tensor], items: List[Tuple[int, ImageItem]], target: Target,
                   forwards: Dict[Tuple[str, str], int], amp: Optional[str] = None,
                   model_of: Optional[Callable[[Backbone], Any]] = None,
                   counted: Optional[Set[Tuple[str, str]]] = None) -> Dict[str, Clean]:
    """One forward per classifier key of ``methods`` on the batch ``x`` (see :class:`Clean`).

    A classifier sees its method's view; when it normalizes differently from that view's
    backbone it gets ``classifier.normalize(x01)``. The forward runs under autocast when
    ``amp`` is given (softmax in float32); ``model_of(clf)`` gives the module to run
    (default ``clf.model``; the engine passes the compiled forward with ``--compile``).
    ``forwards[(clean name, "clean")]`` counts the images not in ``counted`` (see
    :func:`counted_clean`: an image's clean forward counts once, also when a resumed run makes
    it again to retry a failed pair).
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
        name = clean_name(m)
        forwards[(name, "clean")] += sum((name, it.image_id) not in (counted or ()) for _, it in items)
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
    stored: Optional[Set[Tuple[str, str]]] = None,
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
        stored: ``(method, image_id)`` pairs an earlier batch stored (a row or a failure): their
            images' clean forwards are counted already (a resumed run retrying failed pairs
            makes them again, but does not count them again).
    Yields:
        :class:`MapBatch`; a batch may hold only ``errors`` (no readable image). Close the
        generator (or exhaust it) to stop the loading thread.
    """
    done = set(done or ())
    counted = counted_clean(methods, set(stored or ()))
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
                    # restores xv should an explainer change it: the loader's tensor, unless
                    # xv is that tensor (then one copy per batch)
                    same = xv.untyped_storage().data_ptr() == lb.x[k].untyped_storage().data_ptr()
                    batch._source[k] = xv.clone() if same else lb.x[k]
                    batch.x01[k] = v.denormalize(xv).clamp_(0.0, 1.0)
                tc = clock.start() if clock else None
                batch.clean = clean_forwards(methods, views, batch.x, batch.x01, lb.items, target,
                                             batch.forwards, amp, model_of, counted)
                if clock:
                    clock.stop("clean", tc)
            yield batch
            t = clock.start() if clock else None
