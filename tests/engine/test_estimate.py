"""The plan printed before a run: declared forwards equal the engine's counts, the estimate's
arithmetic, --dry-run writes nothing and counts only what a resumed run lacks."""
import os

import pytest

from camzoo.bench import BenchConfig, run
from camzoo.engine.estimate import UnitTimes, Work, cheap, estimate
from camzoo.metrics.protocol import PROTOCOLS
from tests.conftest import SAMPLES
from tests.helpers import TINY1000

ROAD = {"fractions": [0.3, 0.7]}


def _config(out, **kw):
    base = dict(backbone=TINY1000, weights="random", data=SAMPLES, limit=3, seed=3, batch_size=2,
                eval_batch_size=5, out=str(out), progress=False, figures=False, grid_images=0)
    return BenchConfig(**{**base, **kw})


def test_declared_forwards_equal_the_stored_counts(tmp_path):
    """Every built-in protocol's forwards_per_image (and explanations_per_image times the
    method's forwards) is what the engine counts and stores, per image."""
    n, n_masks = 3, 6
    popts = {"rise": {"steps": 3}, "road": ROAD}
    r = run(_config(tmp_path / "run", methods="gradcam,rise", metrics="all,road", metric_options=popts,
                    options={"rise": {"n_masks": n_masks}}), echo=lambda s: None)
    fw = {(x.method, x.family): x.forwards for x in r.forwards().itertuples()}
    passes = {"gradcam": 1, "rise": n_masks}
    for m in passes:
        for p in ("lcam", "rise", "adcc", "road"):
            proto = PROTOCOLS.get(p)
            opts = proto.options(**popts.get(p, {}))
            counted = sum(fw.get((m, f), 0) for f in proto.families(**opts))
            assert counted == n * proto.forwards_per_image(**opts), (m, p)
            assert fw.get((m, f"{p}_explain"), 0) == n * proto.explanations_per_image(**opts) * passes[m], (m, p)
    assert PROTOCOLS.get("rise").forwards_per_image(steps=3) == 8  # 2 curves x 4 points
    assert PROTOCOLS.get("road").forwards_per_image(**ROAD) == 4  # MoRF + LeRF x 2 fractions


def test_estimate_arithmetic_by_hand():
    work = Work(images=10, maps={"a": 10, "b": 4}, units={"a": {"p": 10, "q": 10}, "b": {"p": 4}},
                map_forwards={"a": 1, "b": 100}, protocol_forwards={"p": 3, "q": None},
                explanations={"p": 1, "q": 0})
    times = UnitTimes(forward=0.01, clean=0.02, maps={"a": 0.5}, protocols={"q": 0.2},
                      protocol_forwards={"q": 7})
    est = estimate(work, times)
    # a: 10 maps x 0.5 (measured) + 10 x (3 x 0.01 + 1 x 0.5) [p] + 10 x 0.2 [q, measured]
    assert est.seconds["a"] == pytest.approx(5.0 + 5.3 + 2.0)
    # b: 4 maps x 100 x 0.01 (priced by forwards) + 4 x (3 x 0.01 + 1.0) [p]
    assert est.seconds["b"] == pytest.approx(4.0 + 4.12)
    assert est.total == pytest.approx(12.3 + 8.12 + 10 * 0.02)
    assert est.forwards("a") == 1 + (3 + 1) + 7 and est.forwards("b") == 100 + 3 + 100
    text = est.text()
    assert "| b | 100 (est.) | 3 + 1 map | - |" in text and "estimated time: 00:21" in text
    assert cheap(None, 1.0, 4, 0.1) and cheap(3, 0.01, 4, 0.2) and not cheap(100, 0.01, 4, 0.2)


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path):
    from click.testing import CliRunner

    from camzoo.cli import main

    out = tmp_path / "run"
    res = CliRunner().invoke(main, ["bench", "--backbone", TINY1000, "--weights", "random", "--data", SAMPLES,
                                    "--limit", "3", "--methods", "gradcam,fakecam", "--steps", "4",
                                    "--out", str(out), "--dry-run"])
    assert res.exit_code == 0, res.output
    assert not out.exists()
    lines = res.output.splitlines()
    head = next(i for i, s in enumerate(lines) if s.startswith("| method | map |"))
    # lcam 3, rise 2 x 5, adcc 1 + the method's map again
    assert lines[head + 2].startswith("| gradcam | 1 | 3 | 10 | 1 + 1 map | 16 | 3 |")
    assert lines[head + 3].startswith("| fakecam | 0 | 3 | 10 | 1 + 1 map | 14 | 3 |")
    assert any(s.startswith("estimated time: ") for s in lines)
    assert "dry run: nothing was written" in res.output


def test_dry_run_of_a_resume_counts_only_what_is_missing(tmp_path):
    out = tmp_path / "run"
    first = dict(methods="gradcam,fakecam", metric_options={"rise": {"steps": 2}})
    run(_config(out, **first), echo=lambda s: None)
    before = sorted(os.listdir(out))
    said = []
    got = run(_config(out, methods="gradcam,fakecam", metric_options={"rise": {"steps": 2}, "road": ROAD},
                      metrics="+road", resume=True, dry_run=True), echo=said.append)
    assert got is None and sorted(os.listdir(out)) == before
    table = next(s for s in said if s.startswith("| method"))
    assert table.split("\n")[0] == "| method | map | road | forwards/img | images | est. time |"
    assert "| gradcam | 1 | 4 | 5 | 3 |" in table
    said.clear()
    run(_config(out, **first, resume=True, dry_run=True), echo=said.append)
    assert any(s.startswith("nothing to do") for s in said)


def test_the_work_meter_advances_in_estimated_seconds():
    """A unit starts with its estimated seconds; forwards inside it advance by their estimate
    (never past the unit); the rest is shown when the next unit starts; finish fills the bar."""
    import io

    from camzoo.engine.estimate import WorkMeter
    from camzoo.progress import Progress

    work = Work(images=10, maps={"a": 10}, units={"a": {"p": 10}}, map_forwards={"a": 1},
                protocol_forwards={"p": 3}, explanations={"p": 0})
    est = estimate(work, UnitTimes(forward=0.01, clean=0.02, maps={"a": 0.5}))
    meter = WorkMeter(est, 10, show=False)
    assert meter.bar is None
    meter.bar = Progress(est.total, "bench", stream=io.StringIO(), tty=False, interval=3600)
    meter.clean(10)
    assert meter.bar.n == pytest.approx(0.2)
    meter.maps("a", 10)  # 5 s of maps
    meter.forwards(100)  # 1 s of forwards
    assert meter.bar.n == pytest.approx(1.2) and meter.bar.desc == "a: maps"
    meter.forwards(10_000)  # never past the unit's 5 s
    assert meter.bar.n == pytest.approx(5.2)
    meter.protocol("a", "p", 10)  # 0.3 s
    meter.images(10)
    assert meter.bar.n == pytest.approx(est.total) == pytest.approx(5.5)
    assert meter.bar.postfix == "10/10 images"
    meter.finish()
    meter.close()
    assert meter.bar.n == pytest.approx(est.total)
