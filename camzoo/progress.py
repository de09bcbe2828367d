"""One progress display for long work: a tqdm bar on a terminal, plain lines in a log.

``camzoo bench`` shows one :class:`Progress` for the whole run (its description names the
method and phase at work, its total is the run's estimated work); the other long commands use
:func:`progress_bar` the same way. When the stream is not a terminal (a log file, CI, a pipe)
no bar is drawn: a plain line with the percentage, the elapsed time and the time left is
written at most every ``interval`` seconds (``CAMZOO_PROGRESS_INTERVAL``, default 30) and once
at the end -- no carriage returns, no escape codes.
"""
from __future__ import annotations

import os
import sys
import time
from typing import IO, Optional

#: seconds between two plain lines when the stream is not a terminal
DEFAULT_INTERVAL = 30.0


def is_terminal(stream: Optional[IO] = None) -> bool:
    """True when ``stream`` (default ``sys.stderr``) is an interactive terminal."""
    stream = stream if stream is not None else sys.stderr
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def clock_text(seconds: Optional[float]) -> str:
    """``"1:02:03"``, ``"02:03"`` or ``"?"`` (unknown, not finite or negative)."""
    if seconds is None or not seconds == seconds or seconds < 0 or seconds == float("inf"):
        return "?"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    return f"{h}:{rem // 60:02d}:{rem % 60:02d}" if h else f"{rem // 60:02d}:{rem % 60:02d}"


class Progress:
    """Progress of one job of ``total`` units (images, steps, or estimated seconds of work).

    Args:
        total: the work to do (> 0; any unit, a float allowed).
        desc: what is being done, shown first (change it with :meth:`describe`).
        unit: shown after the counts (``"img"``); ``""`` hides the counts (a total in
            estimated seconds is shown as a percentage and times only).
        stream: where to write (default ``sys.stderr``).
        tty: draw a bar (True) or write plain lines (False); default: whether ``stream`` is
            a terminal.
        interval: seconds between plain lines (default ``CAMZOO_PROGRESS_INTERVAL`` or 30).
        initial: units already done (a resumed job); not counted in the rate.
    """

    def __init__(self, total: float, desc: str = "", *, unit: str = "", stream: Optional[IO] = None,
                 tty: Optional[bool] = None, interval: Optional[float] = None, initial: float = 0.0) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.tty = is_terminal(self.stream) if tty is None else tty
        self.total, self.n, self.unit, self.desc, self.postfix = float(total), float(initial), unit, desc, ""
        self.interval = float(interval if interval is not None
                              else os.environ.get("CAMZOO_PROGRESS_INTERVAL", DEFAULT_INTERVAL))
        self._start, self._initial, self._last_line = time.monotonic(), float(initial), None
        self._bar = None
        if self.tty:
            from tqdm.auto import tqdm

            counts = "{n_fmt}/{total_fmt} {unit} " if unit else ""
            start = int(initial) if float(initial).is_integer() else initial  # "0/8", not "0.0/8"
            self._bar = tqdm(total=total, initial=start, desc=desc, unit=unit, file=self.stream,
                             dynamic_ncols=True, leave=True,
                             bar_format="{desc} {percentage:3.0f}%|{bar}| " + counts
                                        + "[{elapsed}<{remaining}]{postfix}")

    def update(self, n: float) -> None:
        """``n`` more units done."""
        self.n = min(self.total, self.n + n) if self.total > 0 else self.n + n
        if self._bar is not None:
            self._bar.update(n)
        else:
            self._maybe_line()

    def describe(self, desc: str, postfix: Optional[str] = None) -> None:
        """Change the description (and the text after the times)."""
        self.desc = desc
        if postfix is not None:
            self.postfix = postfix
        if self._bar is not None:
            self._bar.set_description_str(desc, refresh=False)
            if postfix is not None:
                self._bar.set_postfix_str(postfix, refresh=False)
            self._bar.refresh()

    def set_total(self, total: float) -> None:
        """Change the total (e.g. images found unreadable)."""
        self.total = float(total)
        if self._bar is not None:
            self._bar.total = total
            self._bar.refresh()

    def remaining(self) -> Optional[float]:
        """Seconds left at the rate so far (None before any progress)."""
        done, elapsed = self.n - self._initial, time.monotonic() - self._start
        if done <= 0 or elapsed <= 0:
            return None
        return max(0.0, self.total - self.n) * elapsed / done

    def line(self) -> str:
        """The plain line: description, percentage, counts, elapsed and left."""
        pct = 100.0 * self.n / self.total if self.total > 0 else 100.0
        counts = f" {self.n:.0f}/{self.total:.0f} {self.unit}" if self.unit else ""
        tail = f" {self.postfix}" if self.postfix else ""
        return (f"{self.desc} {pct:3.0f}%{counts} [{clock_text(time.monotonic() - self._start)} "
                f"elapsed, {clock_text(self.remaining())} left]{tail}")

    def _maybe_line(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or self._last_line is None or now - self._last_line >= self.interval:
            self._last_line = now
            print(self.line(), file=self.stream, flush=True)

    def close(self) -> None:
        """End the display (a last plain line when not on a terminal)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self._last_line is not None or self.n > self._initial:
            self._maybe_line(force=True)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
