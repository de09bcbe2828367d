"""What the benchmark scripts share: timing, CUDA synchronisation, report output, the
machine line, paths and argument helpers.

One module for both folders (``benchmarks/speed`` and ``benchmarks/studies``): the studies time, print and describe the
machine exactly as the speed scripts do, so neither folder owns these helpers. The scripts
run as modules from the repository root and import it through the package path::

    python -m benchmarks.speed.bench_engine --help
    from benchmarks._common import best_of, sync, machine

Only ``camzoo`` and this module are imported by the scripts; no script imports another.

Timing: :func:`sync` (a no-op off CUDA), :class:`Clock` (wall + process-CPU seconds of a
``with`` block), :func:`timed` (one call), :func:`best_of` (the best of repeated calls after a
warm-up), :func:`interleaved` (median per function, functions taking turns), :func:`forward_rate`
(images/s of a plain forward + softmax), :func:`versus_forward` (a call's time against a plain
forward of the same batch), :func:`top1`. Output: :class:`Report` (``say()`` to stdout, kept for a
report file), :func:`echo`, :func:`quiet`, :func:`tagged` (the ``log``/``echo`` callbacks of
camzoo's trainers and ``bench.run``), :func:`ratio_table`. Machine: :func:`machine`,
:func:`command`, :func:`load_average`. Arguments: :func:`parser`, :func:`add_threads`,
:func:`add_amp`, :func:`add_tune_malloc`, :func:`int_list`, :func:`default_data`. Models and data:
:func:`load_seeded`, :func:`write_labels`, :func:`register_ce_ablations`.
"""
from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import sys
import time
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch

#: the repository root (the folder holding ``benchmarks/`` and ``camzoo/``)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: ``../shared/data`` beside the repository: the photos the scripts default to
SHARED_DATA = os.path.normpath(os.path.join(REPO, "..", "shared", "data"))
SAMPLES = os.path.join(SHARED_DATA, "imagenet-samples")
IMAGENETTE = os.path.join(SHARED_DATA, "imagenette-224")

Device = Union[None, str, torch.device]


# -- timing ----------------------------------------------------------------------------------
def sync(device: Device = None) -> None:
    """Wait for the device's queued work (CUDA); nothing on CPU or with ``device=None``."""
    if device is None:
        return
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Clock:
    """``with Clock(device) as t: ...`` -> ``t.wall``, ``t.cpu`` (``time.perf_counter`` and
    ``time.process_time`` seconds of the block, the device synchronised at both ends)."""

    def __init__(self, device: Device = None) -> None:
        self.device = device
        self.wall = self.cpu = float("nan")

    def __enter__(self) -> "Clock":
        sync(self.device)
        self._w, self._c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        sync(self.device)
        self.wall = time.perf_counter() - self._w
        self.cpu = time.process_time() - self._c


def timed(fn: Callable[[], object], device: Device = None) -> Tuple[float, float]:
    """``(wall, cpu)`` seconds of one call of ``fn``, the device synchronised around it."""
    with Clock(device) as t:
        fn()
    return t.wall, t.cpu


def best_of(fn: Callable[[], object], repeats: int, device: Device = None,
            warmup: int = 1) -> Tuple[float, float]:
    """``(wall, cpu)``: the smallest of each over ``repeats`` timed calls of ``fn``, after
    ``warmup`` untimed ones (kernel selection, lazy set-up)."""
    for _ in range(warmup):
        fn()
    best_w = best_c = float("inf")
    for _ in range(max(1, repeats)):
        w, c = timed(fn, device)
        best_w, best_c = min(best_w, w), min(best_c, c)
    return best_w, best_c


def interleaved(fns: Dict[str, Callable[[], object]], reps: int, device: Device = None,
                warmup: int = 1) -> Tuple[Dict[str, float], Dict[str, float]]:
    """Median ``(wall, cpu)`` seconds per function over ``reps`` rounds in which the functions
    take turns (load changes on a shared machine hit all alike), after ``warmup`` calls each."""
    for _ in range(warmup):
        for f in fns.values():
            f()
    wall: Dict[str, List[float]] = {k: [] for k in fns}
    cpu: Dict[str, List[float]] = {k: [] for k in fns}
    for _ in range(max(1, reps)):
        for k, f in fns.items():
            w, c = timed(f, device)
            wall[k].append(w)
            cpu[k].append(c)
    return ({k: statistics.median(v) for k, v in wall.items()},
            {k: statistics.median(v) for k, v in cpu.items()})


def versus_forward(model: torch.nn.Module, x: torch.Tensor, fns: Dict[str, Callable[[], object]],
                   reps: int, device: Device = None) -> Tuple[Dict[str, float], Dict[str, float]]:
    """:func:`interleaved` medians of a plain forward of ``x`` (``"forward"``, inference mode)
    and of each of ``fns`` (e.g. an explainer's map of the same batch): for :func:`ratio_table`."""
    def forward():
        with torch.inference_mode():
            model(x)

    return interleaved({"forward": forward, **fns}, reps, device)


def top1(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's top-1 class per image (one forward, inference mode)."""
    with torch.inference_mode():
        return model(x).argmax(1)


def forward_rate(model: torch.nn.Module, bs: int, size: int, device: Device = "cpu",
                 amp: Optional[str] = None, reps: int = 10, warmup: int = 2) -> float:
    """Images/s of ``reps`` forwards (+ softmax) of ``bs`` random ``size`` x ``size`` images
    (channels_last, inference mode, under ``amp`` autocast) after ``warmup`` untimed ones."""
    from camzoo.utils import autocast

    device = torch.device(device)
    x = torch.randn(bs, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), autocast(device, amp):
        for _ in range(warmup):
            torch.softmax(model(x).float(), 1)
        with Clock(device) as t:
            for _ in range(reps):
                torch.softmax(model(x).float(), 1)
    return bs * reps / t.wall


def ratio_table(wall: Dict[str, float], cpu: Dict[str, float], ref: str = "forward",
                digits: int = 3) -> List[str]:
    """Markdown rows of per-call times and their ratios to ``ref`` (the output of
    :func:`interleaved`)."""
    rows = ["| | wall s / batch | wall ratio to forward | CPU s / batch | CPU ratio to forward |",
            "|---|---|---|---|---|"]
    rows += [f"| {k} | {wall[k]:.4f} | {wall[k] / wall[ref]:.{digits}f} | {cpu[k]:.4f} | "
             f"{cpu[k] / cpu[ref]:.{digits}f} |" for k in wall]
    return rows


# -- output ----------------------------------------------------------------------------------
class Report:
    """``say()`` prints a line at once and keeps it; :meth:`write` saves the kept lines (a
    study's ``OUT/report.md``). ``path``: also append each line to that file as it is said."""

    def __init__(self, path: Optional[str] = None) -> None:
        self.lines: List[str] = []
        self.path = path

    def say(self, s: str = "") -> None:
        print(s, flush=True)
        self.lines.append(s)
        if self.path:
            with open(self.path, "a") as f:
                f.write(s + "\n")

    def section(self, title: str, lines: Iterable[str]) -> None:
        """``title``, a blank line, ``lines`` (a table), a blank line."""
        for s in (title, "", *lines, ""):
            self.say(s)

    def write(self, path: str, announce: bool = True) -> str:
        with open(path, "w") as f:
            f.write("\n".join(self.lines) + "\n")
        if announce:
            print(f"wrote {path}")
        return path


def echo(s: str) -> None:
    """Print at once (the ``echo``/``log`` callback of ``bench.run`` and the trainers)."""
    print(s, flush=True)


def quiet(s: str) -> None:
    """Drop the line (a silent ``echo``/``log`` callback)."""


def tagged(tag: str) -> Callable[[str], None]:
    """A ``log`` callback printing ``[tag] line``."""
    return lambda s: print(f"[{tag}] {s}", flush=True)


# -- the machine -----------------------------------------------------------------------------
def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: Device = None) -> str:
    """One line: UTC date and time, CPU model and cores, the GPU (name, memory), torch (CUDA,
    cuDNN), Python and torch's thread count; ``device``: the device the script measures."""
    parts = [time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), f"{cpu_model()}, {os.cpu_count()} CPUs"]
    if torch.cuda.is_available():
        dev = torch.device(device) if device is not None else torch.device("cuda")
        dev = dev if dev.type == "cuda" else torch.device("cuda")
        mem = torch.cuda.get_device_properties(dev).total_memory / 2 ** 30
        parts.append(f"GPU {torch.cuda.get_device_name(dev)} ({mem:.0f} GiB)")
        cuda = f" (CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()})"
    else:
        parts.append("no GPU")
        cuda = ""
    parts.append(f"torch {torch.__version__}{cuda}, Python {platform.python_version()}, "
                 f"{torch.get_num_threads()} torch threads")
    if device is not None:
        parts.append(f"device {device}")
    return "; ".join(parts)


def _prog() -> str:
    """``python -m benchmarks.speed.NAME`` for a script run as a module, else its path."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return "python " + (f"-m {spec.name}" if spec is not None and spec.name else sys.argv[0])


def command() -> str:
    """The command line that started this process, as ``python -m benchmarks....``."""
    return " ".join([_prog(), *map(shlex.quote, sys.argv[1:])])


def load_average() -> Tuple[float, float, float]:
    """``os.getloadavg()``, or NaNs where the system has none."""
    try:
        return os.getloadavg()
    except OSError:
        return (float("nan"),) * 3


# -- arguments -------------------------------------------------------------------------------
def parser(doc: str, full: bool = False) -> argparse.ArgumentParser:
    """The script's parser: usage as ``python -m benchmarks...``, described by the first line of
    its docstring ``doc`` (``full``: the whole docstring, as written)."""
    if full:
        return argparse.ArgumentParser(prog=_prog(), description=doc,
                                       formatter_class=argparse.RawDescriptionHelpFormatter)
    return argparse.ArgumentParser(prog=_prog(), description=doc.strip().splitlines()[0])


def add_threads(ap: argparse.ArgumentParser, default: int = 0,
                help: str = "torch threads (0 = leave as is)") -> None:
    ap.add_argument("--threads", type=int, default=default, help=help)


def set_threads(n: int) -> None:
    """``torch.set_num_threads(n)`` unless ``n`` is 0 (leave as is)."""
    if n:
        torch.set_num_threads(n)


def add_amp(ap: argparse.ArgumentParser, help: str = "forwards under autocast in this precision") -> None:
    ap.add_argument("--amp", default=None, choices=("bf16", "fp16"), help=help)


def add_tune_malloc(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--no-tune-malloc", action="store_true", help="keep glibc's default mmap behaviour")


def tune_malloc(device: Device, args: argparse.Namespace) -> bool:
    """Tune glibc's allocator on CPU as ``camzoo bench --tune-malloc`` does, unless
    ``--no-tune-malloc`` (the scripts measure camzoo's work, not the page faults of glibc's
    defaults: ``benchmarks/speed/bench_malloc.py`` measures those)."""
    if torch.device(device or "cpu").type != "cpu" or args.no_tune_malloc:
        return False
    from camzoo.engine.timing import tune_cpu_allocator

    return bool(tune_cpu_allocator())


def int_list(text: str) -> List[int]:
    """``"8,16,32"`` -> ``[8, 16, 32]``."""
    return [int(s) for s in text.split(",") if s.strip()]


def default_data(path: str = SAMPLES) -> Optional[str]:
    """``path`` where that folder exists here, else None (the six sample photos)."""
    return path if os.path.isdir(path) else None


# -- models and data -------------------------------------------------------------------------
def load_seeded(name: str, device: Device = "cpu", seed: int = 0, **kw):
    """``(backbone, weights)``: the embedded Lite0 with its own weights, any other backbone
    with seeded random weights (timing does not depend on the weights); benchmark code, not
    library code."""
    import camzoo

    weights = None if name == "efficientnet_lite0" else "random"
    bb = camzoo.load_backbone(name, weights=weights, device=device, **kw)
    if weights == "random":
        torch.manual_seed(seed)
        for m in bb.model.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
    return bb, weights


def write_labels(items: Sequence, root: str, path: str) -> str:
    """A ``file,class_index`` labels file of dataset items (``.path``, ``.label``), paths
    relative to ``root``: the held-out split a study evaluates with ``camzoo.bench``."""
    with open(path, "w") as f:
        f.write("file,class_index\n")
        for it in items:
            f.write(f"{os.path.relpath(it.path, root)},{it.label}\n")
    return path


def register_ce_ablations() -> None:
    """Register ``lcam-img-ce`` and ``lcam-fm-ce``: the L-CAM explainers under other names,
    so that one bench run holds the heads trained with the paper's loss and their CE-only
    ablations (L-CAM-Img*, L-CAM-Fm*). Idempotent."""
    from camzoo.explainers.base import EXPLAINERS, register_explainer
    from camzoo.explainers.learned.lcam import LCAMFm, LCAMImg

    if "lcam-img-ce" in EXPLAINERS:
        return
    register_explainer(type("LCAMImgCE", (LCAMImg,), {
        "name": "lcam-img-ce", "summary": "L-CAM-Img* (CE-only ablation)", "__module__": __name__}))
    register_explainer(type("LCAMFmCE", (LCAMFm,), {
        "name": "lcam-fm-ce", "summary": "L-CAM-Fm* (CE-only ablation)", "__module__": __name__}))
