"""A small Chrome DevTools Protocol client for tests: headless Chromium over a pipe.

Chromium started with ``--remote-debugging-pipe`` reads JSON commands, each ended by a NUL
byte, on its fd 3 and writes replies and events, each ended by a NUL byte, on its fd 4. No
selenium, no playwright, no network port: :class:`Browser` starts Chromium with two OS pipes
dup'ed onto fds 3 and 4, opens one page (``Target.createTarget``, attached with
``flatten``), and offers :meth:`Browser.open` (navigate, wait for ``load``),
:meth:`Browser.eval` (``Runtime.evaluate``), :meth:`Browser.screenshot` and the page's
:attr:`Browser.problems` (console errors, uncaught exceptions, log errors). Every wait has a
timeout, so a stuck browser fails the test instead of hanging it.

    with Browser() as b:
        b.open("file:///tmp/report.html")
        assert b.eval("document.title") == "camzoo report" and not b.problems
"""
from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from typing import Any, Dict, List, Optional

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars", "--remote-debugging-pipe")


class BrowserError(RuntimeError):
    """Chromium did not answer in time, exited, or replied with an error."""


class Browser:
    """Headless Chromium driven over ``--remote-debugging-pipe`` (see the module docstring).

    Args:
        width, height: the page's viewport in CSS pixels.
        timeout: seconds any one wait may take.
        executable: the Chromium binary (default: ``chromium`` on PATH).
    """

    def __init__(self, width: int = 1280, height: int = 900, timeout: float = 30.0,
                 executable: Optional[str] = None) -> None:
        self.timeout = timeout
        self.problems: List[str] = []
        self._id = 0
        self._buf = b""
        self._events: List[Dict[str, Any]] = []
        self._profile = tempfile.mkdtemp(prefix="camzoo-chromium-")
        exe = executable or CHROMIUM
        if not exe:
            raise BrowserError("no chromium on PATH")
        cmd_r, cmd_w = os.pipe()  # we write commands -> chromium's fd 3
        ev_r, ev_w = os.pipe()  # chromium's fd 4 -> we read replies

        def child_fds():  # in the child, before exec: the pipe ends become its fds 3 and 4
            high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (cmd_r, ev_w)]  # neither is 3 or 4 now
            for fd, target in zip(high, (3, 4)):
                os.dup2(fd, target)  # inheritable: survives exec (Python's own fds are close-on-exec)
                os.close(fd)

        # close_fds=False: subprocess would close fds 3 and 4 after preexec_fn otherwise (they are
        # not the pipes' own numbers); every other fd Python opened is close-on-exec anyway
        self.proc = subprocess.Popen(
            [exe, *FLAGS, f"--user-data-dir={self._profile}", f"--window-size={width},{height}", "about:blank"],
            close_fds=False, preexec_fn=child_fds, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(cmd_r)
        os.close(ev_w)
        self._w, self._r = cmd_w, ev_r
        try:
            self._session = None
            target = self.call("Target.createTarget", url="about:blank")["targetId"]
            self._session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
            for domain in ("Page", "Runtime", "Log"):
                self.call(f"{domain}.enable")
            self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                      mobile=False)
        except Exception:
            self.close()
            raise

    # -- the pipe ----------------------------------------------------------------------------
    def _send(self, msg: Dict[str, Any]) -> None:
        os.write(self._w, json.dumps(msg).encode() + b"\0")

    def _read(self, deadline: float) -> Dict[str, Any]:
        """The next message from Chromium (a reply or an event), waiting until ``deadline``."""
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError(f"chromium did not answer within {self.timeout:g} s")
            ready, _, _ = select.select([self._r], [], [], min(left, 0.5))
            if not ready:
                if self.proc.poll() is not None:
                    raise BrowserError(f"chromium exited with status {self.proc.returncode}")
                continue
            chunk = os.read(self._r, 1 << 20)
            if not chunk:
                raise BrowserError("chromium closed its DevTools pipe")
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        msg = json.loads(raw)
        if "method" in msg:
            self._note(msg)
        return msg

    def _note(self, ev: Dict[str, Any]) -> None:
        """Keep an event; record the page's console errors, exceptions and error log entries."""
        self._events.append(ev)
        m, p = ev["method"], ev.get("params", {})
        if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            self.problems.append("console." + p["type"] + ": " + " ".join(
                str(a.get("value", a.get("description", ""))) for a in p.get("args", [])))
        elif m == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            self.problems.append("exception: " + str(d.get("exception", {}).get("description") or d.get("text")))
        elif m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            e = p["entry"]
            self.problems.append(f"log ({e.get('source')}): {e.get('text')} {e.get('url', '')}".strip())

    def call(self, method: str, **params: Any) -> Dict[str, Any]:
        """Send one command (to the page's session once attached) and return its result."""
        self._id += 1
        msg: Dict[str, Any] = {"id": self._id, "method": method, "params": params}
        if self._session:
            msg["sessionId"] = self._session
        self._send(msg)
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def wait_event(self, method: str, since: int = 0) -> Dict[str, Any]:
        """The first event ``method`` received after the first ``since`` events (waiting for it)."""
        deadline = time.monotonic() + self.timeout
        while True:
            for ev in self._events[since:]:
                if ev["method"] == method:
                    return ev
            since = len(self._events)
            self._read(deadline)

    # -- the page ----------------------------------------------------------------------------
    def open(self, url: str) -> None:
        """Navigate to ``url`` and wait for its ``load`` event."""
        mark = len(self._events)
        res = self.call("Page.navigate", url=url)
        if res.get("errorText"):
            raise BrowserError(f"navigating to {url}: {res['errorText']}")
        self.wait_event("Page.loadEventFired", since=mark)

    def eval(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises awaited); a thrown
        exception raises :class:`BrowserError`."""
        res = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in res:
            d = res["exceptionDetails"]
            raise BrowserError(f"{expression[:60]}...: {d.get('exception', {}).get('description') or d.get('text')}")
        return res.get("result", {}).get("value")

    def screenshot(self, path: str, full_page: bool = False) -> str:
        """Save a PNG of the viewport (or the whole page) to ``path``; return ``path``."""
        params: Dict[str, Any] = {"format": "png"}
        if full_page:
            params["captureBeyondViewport"] = True
            w, h = self.eval("[document.documentElement.scrollWidth, document.documentElement.scrollHeight]")
            params["clip"] = {"x": 0, "y": 0, "width": w, "height": h, "scale": 1}
        data = self.call("Page.captureScreenshot", **params)["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))
        return path

    def close(self) -> None:
        """Stop Chromium (terminate, then kill after a few seconds) and remove its profile."""
        for fd in (getattr(self, "_w", None), getattr(self, "_r", None)):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._w = self._r = None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
