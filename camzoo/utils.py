"""One helper for each chore shared across camzoo's layers (the bottom layer: imports only
the standard library, numpy-free, and torch)."""
from __future__ import annotations

import json
import os
from contextlib import contextmanager, nullcontext
from contextvars import ContextVar
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Union

import torch

PathLike = Union[str, os.PathLike]


class UserError(Exception):
    """A failure the user can act on (a locked run directory, a full disk, ...): the CLI
    shows its message, without a traceback."""


# -- files ------------------------------------------------------------------------------------
def atomic_write(path: PathLike, content: Union[str, bytes, Callable[[str], None]]) -> None:
    """Write ``path`` atomically: into a temporary file beside it, then ``os.replace``.

    Args:
        path: the file to (over)write; its folder is created when missing.
        content: text, bytes, or a callable ``write(tmp_path)`` that writes the file itself
            (``np.save``, ``torch.save``, ...). The temporary name keeps ``path``'s extension,
            so writers that append one (``np.save``) write where they are told.
    A reader never sees a half-written file; on error the temporary file is removed and the
    old file (if any) is left as it was.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    root, ext = os.path.splitext(path)
    tmp = f"{root}.tmp{os.getpid()}{ext}"
    try:
        if callable(content):
            content(tmp)
        else:
            mode = "wb" if isinstance(content, bytes) else "w"
            with open(tmp, mode, **({} if mode == "wb" else {"newline": ""})) as f:
                f.write(content)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def file_sha256(path: PathLike) -> str:
    """The sha256 of a file's bytes (64 hex digits), read in 1 MiB blocks."""
    import hashlib

    h = hashlib.sha256()
    with open(os.fspath(path), "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_hashes(options: Dict[str, Any]) -> Dict[str, str]:
    """``{option: sha256 of the file}`` for each option whose value names an existing file (an
    explainer's ``checkpoint``, ``{"weights": --weights}``, a protocol's file): recorded in a
    run's ``config.json`` and part of its identity, so that a resume never mixes two files' rows."""
    return {k: file_sha256(v) for k, v in options.items()
            if isinstance(v, (str, os.PathLike)) and v and os.path.isfile(v)}


def load_torch_file(path: PathLike, what: str = "file") -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)`` with one clear message.

    A corrupt file or one holding objects that only an unsafe load could rebuild raises
    ``ValueError`` naming the file and the reason; never the advice to load with
    ``weights_only=False`` (which can run arbitrary code).
    """
    path = os.fspath(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        text = str(exc)
        reason = ""
        if "WeightsUnpickler error:" in text:
            tail = text.split("WeightsUnpickler error:", 1)[1]
            reason = next((ln.strip() for ln in tail.splitlines() if ln.strip()), "")
        elif "weights_only" not in text:
            reason = text.strip().splitlines()[0] if text.strip() else ""
        raise ValueError(f"cannot read {what} {path}: not a file camzoo can load safely "
                         f"(torch.load with weights_only=True): {type(exc).__name__}"
                         + (f": {reason[:200]}" if reason else "")) from None


def jsonable(obj: Any) -> Any:
    """JSON round trip (tuples -> lists, unknown objects -> ``str``) for stable comparisons."""
    return json.loads(json.dumps(obj, default=str, sort_keys=True))


# -- devices ----------------------------------------------------------------------------------
def resolve_device(device: Union[None, str, torch.device] = None) -> torch.device:
    """``None`` -> CUDA when available, else CPU; otherwise ``torch.device(device)``.

    Raises ``ValueError`` for a CUDA device when CUDA is not available, and for a string
    that is not a device (naming the valid forms).
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device {device!r} is not a device; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available; use --device cpu")
    return dev


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); a no-op on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


#: mixed-precision names (``--amp``) -> autocast dtypes; ``None`` = fp32 (no autocast)
AMP_DTYPES = {None: None, "fp16": torch.float16, "bf16": torch.bfloat16}


def check_amp(amp: Optional[str], owner: str = "amp") -> Optional[str]:
    """``amp`` if it is a valid mixed-precision name (:data:`AMP_DTYPES`); else ``ValueError``."""
    if amp not in AMP_DTYPES:
        raise ValueError(f"{owner}={amp!r} is not valid; valid: None (fp32), 'bf16', 'fp16'")
    return amp


def autocast(device: Union[str, torch.device], amp: Optional[str]):
    """The autocast context of one forward: ``amp`` in {None, "fp16", "bf16"}; None = fp32
    (a no-op context).

    Only model forwards belong inside it: softmax, map arithmetic and stored values are
    computed in float32 outside (autocast would also lower matmuls / einsums there).
    Autocast is opt-in: on CPUs without bf16 hardware it is much slower than fp32.
    """
    check_amp(amp)
    if amp is None:
        return nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=AMP_DTYPES[amp])


def make_generator(seed: int, device: Union[str, torch.device] = "cpu") -> torch.Generator:
    """A seeded ``torch.Generator`` on ``device`` (library code never touches global RNG)."""
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g


# -- option values ------------------------------------------------------------------------------
def parse_value(s: str) -> Any:
    """Parse a CLI option value: int, float, bool, none, else the string itself."""
    low = s.strip().lower()
    if low in ("none", "null"):
        return None
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    for cast in (int, float):
        try:
            return cast(s)
        except ValueError:
            pass
    return s


def parse_dotted(opts: Sequence[str], what: str = "METHOD", lists: bool = False) -> dict:
    """``("rise.n_masks=8000", ...)`` -> ``{"rise": {"n_masks": 8000}, ...}``.

    Args:
        opts: ``OWNER.OPTION=VALUE`` strings (values parsed by :func:`parse_value`).
        what: the owner's kind for the error message (``METHOD``, ``PROTOCOL``).
        lists: a value with commas becomes a list of parsed values (``lcam.nus=1,0.5``).
    Raises:
        ValueError naming the malformed string and the expected form.
    """
    out: dict = {}
    for o in opts:
        if "=" not in o or "." not in o.split("=", 1)[0]:
            raise ValueError(f"{o!r}: expected {what}.OPTION=VALUE")
        key, val = o.split("=", 1)
        owner, opt = key.split(".", 1)
        out.setdefault(owner, {})[opt] = (
            [parse_value(v) for v in val.split(",")] if lists and "," in val else parse_value(val))
    return out


def check_options(owner: str, defaults: Dict[str, Any], given: Dict[str, Any]) -> Dict[str, Any]:
    """``defaults`` updated with ``given``, after checking names and value types.

    Unknown names raise ``ValueError`` listing the valid options. A value must have the type of
    its default when the default is a bool, int, float (an int is accepted), str, or a list /
    tuple (either is accepted; a single number becomes a one-element list); options whose
    default is ``None`` are checked by their owner.

    Args:
        owner: how messages name the owner, e.g. ``"explainer 'rise'"``.
    """
    unknown = set(given) - set(defaults)
    if unknown:
        raise ValueError(
            f"{owner} has no option(s) {', '.join(sorted(unknown))}; "
            f"options: {', '.join(f'{k}={v!r}' for k, v in defaults.items()) or 'none'}")
    out = {**defaults, **given}
    for k, v in given.items():
        d = defaults[k]
        if d is None:
            continue
        if isinstance(d, (list, tuple)) and isinstance(v, (int, float)) and not isinstance(v, bool):
            out[k] = v = [v]  # one value of a list option: "--metric-opt lcam.nus=0.5"
        if isinstance(d, bool):
            ok, want = isinstance(v, bool), "true or false"
        elif isinstance(d, int):
            ok, want = isinstance(v, int) and not isinstance(v, bool), "an integer"
        elif isinstance(d, float):
            ok, want = isinstance(v, (int, float)) and not isinstance(v, bool), "a number"
        elif isinstance(d, str):
            ok, want = isinstance(v, str), "a string"
        elif isinstance(d, (list, tuple)):
            ok, want = isinstance(v, (list, tuple)), "a list (comma-separated values)"
        else:
            continue
        if not ok:
            raise ValueError(f"{owner}: option {k} expects {want} (default {d!r}); got {v!r}")
    return out


def split_names(v: Union[None, str, Sequence[str]]) -> List[str]:
    """``"a, b,c"`` or ``["a", "b"]`` -> ``["a", "b", "c"]`` (empty parts dropped)."""
    if v is None:
        return []
    if isinstance(v, str):
        return [p.strip() for p in v.split(",") if p.strip()]
    return [str(p) for p in v]


def dict_diff(a: Any, b: Any, prefix: str = "") -> List[str]:
    """Every leaf where two nested dicts differ, as ``"key.sub: stored A, now B"`` lines."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: List[str] = []
        for k in sorted(set(a) | set(b)):
            out += dict_diff(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else str(k))
        return out
    return [] if a == b else [f"{prefix}: stored {a!r}, now {b!r}"]



def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]], align: str = "") -> List[str]:
    """The lines of a GitHub-flavoured Markdown table (the one Markdown writer of camzoo).

    Args:
        header: column titles.
        rows: cells, already formatted or any value (``str()`` is taken); a ``|`` in a cell is
            written as ``/`` so that it cannot split the column.
        align: one letter per column: ``l`` (left, the default for a missing letter), ``r``
            (right) or ``c`` (centred).
    Returns:
        the header line, the alignment line and one line per row, without a trailing newline.
    """
    def line(cells: Sequence[Any]) -> str:
        return "| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |"

    rules = {"r": "---:", "c": ":---:"}
    rule = "|" + "|".join(rules.get(align[i:i + 1], ":---") for i in range(len(header))) + "|"
    return [line(header), rule] + [line(r) for r in rows]


#: the callback of :func:`forward_meter` in this context (None: nobody is counting)
_FORWARD_METER: ContextVar[Optional[Callable[[int], None]]] = ContextVar("camzoo_forward_meter", default=None)


def count_forwards(n: int) -> None:
    """Report ``n`` images just sent through a classifier (a forward chunk of a metric or of
    a perturbation explainer) to the :func:`forward_meter` of this context, if any: what lets
    the engine's progress advance within a batch. Costs one context-variable read."""
    meter = _FORWARD_METER.get()
    if meter is not None:
        meter(int(n))


@contextmanager
def forward_meter(callback: Callable[[int], None]) -> Iterator[None]:
    """Within the block, every :func:`count_forwards` of this thread calls ``callback(n)``."""
    token = _FORWARD_METER.set(callback)
    try:
        yield
    finally:
        _FORWARD_METER.reset(token)
