"""One progress display: plain lines (no carriage return, no escape code) when not on a
terminal, a bar when on one; and a whole `camzoo bench` logged to a file holds no escape code."""
import io
import os
import re
import subprocess
import sys

from camzoo.progress import Progress, clock_text
from tests.conftest import SAMPLES
from tests.helpers import TINY1000

CONTROL = re.compile(r"[\r\x1b]")


def test_plain_lines_when_not_a_terminal():
    out = io.StringIO()
    with Progress(10, "bench", stream=out, interval=0.0) as p:
        assert not p.tty
        p.update(4)
        p.describe("gradcam: rise", "4/10 images")
        p.update(6)
    text = out.getvalue()
    assert not CONTROL.search(text)
    lines = text.splitlines()
    assert lines[0].startswith("bench  40% [") and "elapsed" in lines[0] and "left]" in lines[0]
    assert lines[-1].startswith("gradcam: rise 100% [") and lines[-1].endswith("] 4/10 images")


def test_plain_lines_are_spaced_by_the_interval():
    out = io.StringIO()
    p = Progress(100, "bench", stream=out, interval=3600.0)
    for _ in range(50):
        p.update(1)
    p.close()
    assert len(out.getvalue().splitlines()) == 2  # the first update and the end


def test_a_bar_on_a_terminal():
    out = io.StringIO()
    p = Progress(8, "bench", stream=out, tty=True, unit="img")
    p.update(8)
    p.close()
    assert "\r" in out.getvalue() and "8/8 img" in out.getvalue()


def test_clock_text():
    assert clock_text(62.4) == "01:02" and clock_text(3723) == "1:02:03"
    assert clock_text(None) == "?" and clock_text(float("nan")) == "?" and clock_text(-1) == "?"


def test_a_logged_bench_run_holds_no_escape_codes(tmp_path):
    """`camzoo bench` with stdout and stderr in a file: the progress is plain lines."""
    log = tmp_path / "log.txt"
    env = {**os.environ, "CAMZOO_PROGRESS_INTERVAL": "0"}
    with open(log, "w") as f:
        rc = subprocess.run([sys.executable, "-m", "camzoo", "bench", "--backbone", TINY1000, "--weights",
                             "random", "--data", SAMPLES, "--limit", "3", "--methods", "gradcam,fakecam",
                             "--steps", "4", "--out", str(tmp_path / "run"), "--no-figures"],
                            stdout=f, stderr=subprocess.STDOUT, env=env, cwd=os.getcwd()).returncode
    text = log.read_text()
    assert rc == 0, text
    assert not CONTROL.search(text), repr(text[:2000])
    progress = [s for s in text.splitlines() if re.search(r"\d+% \[\S+ elapsed, \S+ left\]", s)]
    assert len(progress) >= 3 and progress[-1].startswith("bench 100% [")
    assert "| gradcam | 1 | 3 | 10 | 1 + 1 map | 16 | 3 |" in text  # the plan came first
    assert text.index("estimated time:") < text.index(progress[0])
