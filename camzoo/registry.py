"""One registry type for explainers, backbones and metric protocols.

Built-ins register with a decorator (or :meth:`Registry.add`); third-party packages add
entries through the entry-point groups below, discovered lazily on the first lookup. A plugin
that fails to import produces a warning naming it, and the remaining ones still load. Names
are checked (:func:`check_name`: they become file names), and a plugin cannot replace a name
that is already registered (a warning names both).

A registry may also hold **parametrized names**, ``<family>:<argument>`` (e.g. the explainer
``blur:gradcam``): :meth:`Registry.add_family` registers a function that makes the object from
the argument, and :meth:`Registry.get` calls it for every name of the family (the maker keeps
what it made where the argument's own object is unchanged, so that the same name gives the same
object and a re-registered argument a new one). Registered names cannot
contain ``:`` (:data:`NAME_PATTERN`), so a parametrized name never shadows one. :meth:`names`
lists the registered names only (what ``all`` expands to); :meth:`families` the families, each
with one example name.

=================  ===========================  =========================================
group              entry point object           registry
=================  ===========================  =========================================
camzoo.explainers  an ``Explainer`` subclass    ``camzoo.explainers.base.EXPLAINERS``
camzoo.backbones   ``factory(weights=None)``    ``camzoo.models.zoo.BACKBONES``
                   returning a ``Backbone``
camzoo.protocols   a ``Protocol`` subclass or   ``camzoo.metrics.protocol.PROTOCOLS``
                   instance
=================  ===========================  =========================================
"""
from __future__ import annotations

import re
import warnings
from importlib.metadata import entry_points
from typing import Any, Callable, Dict, Generic, Iterator, List, NamedTuple, Optional, TypeVar

T = TypeVar("T")

EXPLAINER_ENTRY_POINT_GROUP = "camzoo.explainers"
BACKBONE_ENTRY_POINT_GROUP = "camzoo.backbones"
PROTOCOL_ENTRY_POINT_GROUP = "camzoo.protocols"


#: names become file and folder names (maps/<method>/...): letters, digits and ``_ + . -``
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_+.-]+$")


def check_name(kind: str, name: str) -> str:
    """Raise ``ValueError`` unless ``name`` is a safe registry name (see :data:`NAME_PATTERN`;
    no path separators, no ``..``, not starting with ``.``)."""
    if not isinstance(name, str) or not NAME_PATTERN.match(name) or ".." in name or name.startswith("."):
        raise ValueError(f"{kind} name {name!r} is not allowed: use letters, digits and _ + . - "
                         "(no path separators, no '..', not starting with '.')")
    return name


class UnknownNameError(KeyError):
    """Raised for a name that is not registered; the message lists the valid names."""

    def __str__(self) -> str:  # KeyError quotes its argument; we want plain text
        return str(self.args[0])


#: separates a family from its argument in a parametrized name (``blur:gradcam``)
FAMILY_SEPARATOR = ":"


#: what a parametrized name's separator becomes in a file name (``:`` is refused by Windows:
#: a ``blur:gradcam.npy`` there writes the alternate data stream ``gradcam.npy`` of the file
#: ``blur``); ``@`` is outside :data:`NAME_PATTERN`, so no registered name can collide
FILE_SEPARATOR = "@"


def file_name(name: str) -> str:
    """A registry name as a file or folder name on every OS: ``blur:gradcam`` -> ``blur@gradcam``
    (registered names are returned unchanged: they are file names already)."""
    return name.replace(FAMILY_SEPARATOR, FILE_SEPARATOR)


class Family(NamedTuple):
    """A family of parametrized names ``<prefix>:<argument>`` (see :meth:`Registry.add_family`)."""

    make: Callable[[str], Any]
    #: how listings show the family, e.g. ``blur:<method>``
    pattern: str
    #: one name of the family that works (``list_explainers`` and the contract tests use it)
    example: str
    summary: str


def _qualname(obj: Any) -> str:
    cls = obj if isinstance(obj, type) or callable(obj) and hasattr(obj, "__qualname__") else type(obj)
    return f"{getattr(cls, '__module__', '?')}.{getattr(cls, '__qualname__', repr(cls))}"


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
        self._families: Dict[str, Family] = {}

    def register(self, name: Optional[str] = None) -> Callable[[T], T]:
        """Decorator: ``@REG.register("name")`` (or the object's ``name`` attribute)."""

        def deco(obj: T) -> T:
            key = name or getattr(obj, "name", None) or getattr(obj, "__name__")
            self.add(key, obj)
            return obj

        return deco

    def add(self, name: str, obj: T, *, overwrite: bool = False) -> None:
        """Register ``obj`` as ``name`` (validated by :func:`check_name`); a name taken by
        another object raises unless ``overwrite``."""
        check_name(self.kind, name)
        if name in self._items and not overwrite and self._items[name] is not obj:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._items[name] = obj

    def add_family(self, prefix: str, make: Callable[[str], T], *, example: str, arg: str = "name",
                   summary: str = "") -> None:
        """Register the parametrized names ``<prefix>:<argument>``.

        Args:
            prefix: the family's name (validated by :func:`check_name`).
            make: ``make(argument) -> object``, called on every lookup of a name of the family
                (it may keep what it made); it raises (``KeyError`` / ``ValueError``) for an
                argument that does not work, and the error reaches the caller of :meth:`get`.
            example: an argument that works (e.g. ``"gradcam"``): :meth:`families` shows it.
            arg: how listings call the argument (``blur:<method>``).
            summary: one line for listings.
        """
        check_name(f"{self.kind} family", prefix)
        if prefix in self._families and self._families[prefix].make is not make:
            raise ValueError(f"{self.kind} family {prefix!r} is already registered")
        self._families[prefix] = Family(make, f"{prefix}{FAMILY_SEPARATOR}<{arg}>",
                                        f"{prefix}{FAMILY_SEPARATOR}{example}", summary)

    def families(self) -> Dict[str, Family]:
        """The parametrized-name families, by prefix (see :meth:`add_family`)."""
        return dict(self._families)

    def _load_entry_points(self) -> None:
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        for ep in entry_points(group=self.entry_point_group):
            if ep.name in self._items:  # a plugin never replaces a name taken before it
                have = self._items[ep.name]
                self.plugin_errors[ep.name] = f"name taken by {_qualname(have)}"
                warnings.warn(f"camzoo: {self.kind} plugin {ep.name!r} ({ep.value}) is ignored: the "
                              f"name is already registered by {_qualname(have)}", RuntimeWarning,
                              stacklevel=3)
                continue
            try:
                check_name(self.kind, ep.name)
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
            self._items[ep.name] = obj

    def names(self) -> List[str]:
        self._load_entry_points()
        return sorted(self._items)

    def get(self, name: str) -> T:
        """The object of a registered name or of a parametrized name ``<family>:<argument>``
        (made by its family); an unknown name raises :class:`UnknownNameError` listing the
        valid names and families."""
        self._load_entry_points()
        if name in self._items:
            return self._items[name]
        prefix, sep, arg = name.partition(FAMILY_SEPARATOR) if isinstance(name, str) else ("", "", "")
        if sep and prefix in self._families:
            return self._families[prefix].make(arg)
        available = self.names() + [f.pattern for f in self._families.values()]
        raise UnknownNameError(f"unknown {self.kind} {name!r}; available: {', '.join(available)}")

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        try:
            self.get(name)
        except (KeyError, ValueError):
            return False
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())
