"""``camzoo report`` opened in a real browser: headless Chromium driven over its DevTools pipe
(tests/browser.py). The page loads without a console error or exception, shows one table row
per method and every image, and a click on a column header sorts the rows by that column's
mean. Skipped where no ``chromium`` is installed."""
import math
import shutil

import pytest
from click.testing import CliRunner

from camzoo.bench import BenchConfig, run
from camzoo.cli import main
from camzoo.results import tables
from tests.helpers import TINY

pytestmark = pytest.mark.skipif(shutil.which("chromium") is None,
                                reason="no chromium on PATH (the browser test drives /usr/bin/chromium)")

ROWS = "[...document.querySelectorAll('#r0-results tbody tr[data-method]')]"


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """A tiny run (three methods, the sample photos) and its report, written by the CLI."""
    d = tmp_path_factory.mktemp("browser")
    r = run(BenchConfig(backbone=TINY, weights="random", methods="gradcam,fakecam,xgradcam", metrics="lcam,rise",
                        metric_options={"rise": {"steps": 4}}, grid_images=2, out=str(d / "run"), progress=False,
                        figures=False, device="cpu"), echo=lambda s: None)
    res = CliRunner().invoke(main, ["report", r.dir, "--images", "2", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    return r, d / "run" / "report.html"


def test_the_report_in_chromium(report, tmp_path):
    from tests.browser import Browser

    r, path = report
    with Browser(width=1280, height=900, timeout=30) as b:
        b.open(path.resolve().as_uri())
        assert b.eval("document.readyState") == "complete"
        assert b.eval(f"{ROWS}.map(tr => tr.dataset.method)") == r.methods
        n, broken = b.eval("[document.images.length, [...document.images].filter(i => !(i.complete && "
                           "i.naturalWidth > 0)).map(i => i.alt)]")
        assert n > 10 and broken == []
        b.screenshot(str(tmp_path / "report.png"))
        assert (tmp_path / "report.png").stat().st_size > 10_000

        # a click on Del↓ (lower is better): best first, then reversed
        df = tables.summary(r, ci=False, tests=False).df
        col = list(df.columns).index("Del\u2193") + 1
        head = f"document.querySelector('#r0-results th[data-col=\"{col}\"]')"
        assert b.eval(f"{head}.textContent") == "Del\u2193"
        expect = sorted(r.methods, key=lambda m: float(df.loc[m, "Del\u2193"]))
        assert expect != r.methods, "the test needs a column whose order differs from the methods'"
        b.eval(f"{head}.click()")
        assert b.eval(f"{ROWS}.map(tr => tr.dataset.method)") == expect
        assert b.eval(f"{head}.getAttribute('aria-sort')") == "ascending"
        b.eval(f"{head}.click()")  # a stable sort: ties keep their order (here the methods')
        assert b.eval(f"{ROWS}.map(tr => tr.dataset.method)") == sorted(
            r.methods, key=lambda m: -float(df.loc[m, "Del\u2193"]))
        assert b.eval(f"{head}.getAttribute('aria-sort')") == "descending"
        # a higher-is-better column sorts the highest first; the cells move with their rows
        col = list(df.columns).index("Ins\u2191") + 1
        b.eval(f"document.querySelector('#r0-results th[data-col=\"{col}\"]').click()")
        got = b.eval(f"{ROWS}.map(tr => parseFloat(tr.cells[{col}].dataset.v))")
        assert got == sorted((float(df.loc[m, "Ins\u2191"]) for m in r.methods), reverse=True)
        assert all(not math.isnan(v) for v in got)
        b.screenshot(str(tmp_path / "sorted.png"))
        assert b.problems == []
