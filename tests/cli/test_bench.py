"""``camzoo bench``, ``table`` (LaTeX, CSV, intervals, per image), ``compare`` and a resume with
only ``--out``, from the command line."""
import pandas as pd
from click.testing import CliRunner

from camzoo.bench import Run
from camzoo.cli import main
from tests.conftest import SAMPLES
from tests.helpers import TINY, TINY1000


def test_cli_bench_table_compare(tmp_path):
    runner = CliRunner()
    out = str(tmp_path / "cli")
    # the 1000-class tiny CNN: the photos' ImageNet labels are classes of it
    res = runner.invoke(main, ["bench", "--backbone", TINY1000, "--weights", "random", "--data", SAMPLES, "--limit", "3",
                               "--methods", "fakecam,gradcam", "--steps", "4", "--out", out,
                               "--no-progress", "--metric-opt", "lcam.nus=1,0.5", "--opt",
                               "gradcam.layer=features"])
    assert res.exit_code == 0, res.output
    assert "| fakecam |" in res.output and "AD(50%)↓" in res.output and "AD(15%)" not in res.output
    res = runner.invoke(main, ["table", out, "--format", "latex"])
    assert res.exit_code == 0 and "\\toprule" in res.output and "\\mathbf{" in res.output
    res = runner.invoke(main, ["table", out, "--format", "csv", "--no-ci"])
    assert pd.read_csv(pd.io.common.StringIO(res.output)).shape == (2, 2 + 4 + 2 + 3 + 2)
    res = runner.invoke(main, ["table", out, "--format", "csv", "--resamples", "100"])
    assert pd.read_csv(pd.io.common.StringIO(res.output)).shape == (2, 2 + 3 * (4 + 2 + 3) + 2)
    res = runner.invoke(main, ["table", out, "--per-image"])
    per = pd.read_csv(pd.io.common.StringIO(res.output))
    assert len(per) == 6 and {"method", "image_id", "Y", "O_50", "adcc", "ins_auc", "seconds"} <= set(per.columns)
    res = runner.invoke(main, ["compare", out, out, "--format", "markdown"])
    assert res.exit_code == 0, res.output
    assert res.output.count("| fakecam |") == 2 and f"| {TINY1000} (random weights) (2) | fakecam |" in res.output
    # resume with only --out: everything else comes from the stored config; nothing left to do
    res = runner.invoke(main, ["bench", "--resume", "--out", out, "--no-progress"])
    assert res.exit_code == 0, res.output
    assert len(Run(out).rows()) == 6
    # errors name what was wrong and list what is valid
    res = runner.invoke(main, ["bench", "--backbone", TINY, "--weights", "random", "--methods", "nope", "--out", str(tmp_path / "x")])
    assert res.exit_code != 0 and "gradcam" in res.output
    res = runner.invoke(main, ["bench", "--backbone", TINY, "--weights", "random", "--metrics", "lcam,bogus", "--out", str(tmp_path / "y")])
    assert res.exit_code != 0 and "rise" in res.output
