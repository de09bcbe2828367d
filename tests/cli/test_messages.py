"""Bad options and unreadable runs are refused with one message, no traceback, nothing written."""
import pytest
from click.testing import CliRunner

from camzoo.cli import main
from tests.helpers import bench_cli as _bench


@pytest.mark.parametrize("args,message", [
    (["--steps", "0"], "option steps must be >= 1"),
    (["--metric-opt", "lcam.nus=2"], "option nus takes fractions of pixels kept"),
    (["--device", "banana"], "device 'banana' is not a device"),
    (["--opt", "rise.n_masks=abc", "--methods", "rise"], "option n_masks expects an integer"),
    (["--limit", "0"], "nothing to evaluate"),
    (["--steps", "5000"], "more than the 1024 pixels"),
])
def test_config_errors_are_raised_before_the_run_directory_exists(tmp_path, args, message):
    out = tmp_path / "run"
    res = _bench(*args, "--out", str(out))
    assert res.exit_code != 0 and message in res.output, res.output
    assert "Traceback" not in res.output and not out.exists()


def test_table_never_creates_a_store_and_refuses_what_it_cannot_do(tmp_path):
    out = tmp_path / "run"
    assert _bench("--methods", "fakecam", "--metrics", "lcam", "--limit", "1", "--out", str(out)).exit_code == 0
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text((out / "config.json").read_text())
    res = CliRunner().invoke(main, ["table", str(empty)])
    assert res.exit_code == 1 and "rows.sqlite does not exist" in res.output
    assert not (empty / "rows.sqlite").exists()
    (empty / "rows.sqlite").write_bytes(b"garbage" * 100)
    res = CliRunner().invoke(main, ["table", str(empty)])
    assert res.exit_code == 1 and "is not a readable camzoo result store" in res.output, res.output
    res = CliRunner().invoke(main, ["table", str(out), "--per-image", "--format", "latex"])
    assert res.exit_code == 2 and "CSV only" in res.output
    assert CliRunner().invoke(main, ["table", str(out), "--per-image"]).output.startswith("method,")
