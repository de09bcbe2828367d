"""One registry type for explainers, backbones and metric protocols.

Built-ins register with a decorator (or :meth:`Registry.add`); third-party packages add
entries through the entry-point groups below, discovered lazily on the first lookup. A plugin
that fails to import produces a warning naming it, and the remaining ones still load.

=================  ===========================  =========================================
group              entry point object           registry
=================  ===========================  =========================================
camzoo.explainers  an ``Explainer`` subclass    ``camzoo.explainers.EXPLAINERS``
camzoo.backbones   ``factory(weights=None)``    ``camzoo.models.zoo.BACKBONES``
                   returning a ``Backbone``
camzoo.protocols   a ``Protocol`` subclass or   ``camzoo.metrics.protocol.PROTOCOLS``
                   instance
=================  ===========================  =========================================
"""
from __future__ import annotations

import warnings
from importlib.metadata import entry_points
from typing import Any, Callable, Dict, Generic, Iterator, List, Optional, TypeVar

T = TypeVar("T")

EXPLAINER_ENTRY_POINT_GROUP = "camzoo.explainers"
BACKBONE_ENTRY_POINT_GROUP = "camzoo.backbones"
PROTOCOL_ENTRY_POINT_GROUP = "camzoo.protocols"


class UnknownNameError(KeyError):
    """Raised for a name that is not registered; the message lists the valid names."""

    def __str__(self) -> str:  # KeyError quotes its argument; we want plain text
        return str(self.args[0])


class Registry(Generic[T]):
    """A name -> object mapping filled by a decorator and, optionally, by entry points.

    Args:
        kind: what the registry holds ("explainer", "backbone", ...), used in messages.
        entry_point_group: importlib.metadata group scanned once, on first lookup.
        convert: applied to every object loaded from an entry point before it is stored
            (e.g. instantiate a protocol class); may raise to reject the plugin.
    """

    def __init__(self, kind: str, entry_point_group: Optional[str] = None,
                 convert: Optional[Callable[[Any], T]] = None) -> None:
        self.kind = kind
        self.entry_point_group = entry_point_group
        self.convert = convert
        self._items: Dict[str, T] = {}
        self._entry_points_loaded = entry_point_group is None
        self.plugin_errors: Dict[str, str] = {}

    def register(self, name: Optional[str] = None) -> Callable[[T], T]:
        """Decorator: ``@REG.register("name")`` (or the object's ``name`` attribute)."""

        def deco(obj: T) -> T:
            key = name or getattr(obj, "name", None) or getattr(obj, "__name__")
            self.add(key, obj)
            return obj

        return deco

    def add(self, name: str, obj: T, *, overwrite: bool = False) -> None:
        if name in self._items and not overwrite and self._items[name] is not obj:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._items[name] = obj

    def _load_entry_points(self) -> None:
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        for ep in entry_points(group=self.entry_point_group):
            try:
                obj = ep.load()
                if self.convert is not None:
                    obj = self.convert(obj)
            except Exception as exc:  # a broken plugin must not break the others
                self.plugin_errors[ep.name] = f"{type(exc).__name__}: {exc}"
                warnings.warn(
                    f"camzoo: could not load {self.kind} plugin {ep.name!r} ({ep.value}): "
                    f"{type(exc).__name__}: {exc}",
                    RuntimeWarning,
                    stacklevel=3,
                )
                continue
            if ep.name not in self._items:
                self._items[ep.name] = obj

    def names(self) -> List[str]:
        self._load_entry_points()
        return sorted(self._items)

    def get(self, name: str) -> T:
        self._load_entry_points()
        try:
            return self._items[name]
        except KeyError:
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}; available: {', '.join(self.names())}"
            ) from None

    def __contains__(self, name: object) -> bool:
        self._load_entry_points()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())
