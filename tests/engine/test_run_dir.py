"""The run directory ``--out``: never someone else's files, never the data, a method's options
checked before it exists, and hints that are true for the case at hand."""
import glob
import os
import shutil

import pytest
import torch

from camzoo.engine.plan import writing
from camzoo.explainers.base import Explainer
from camzoo.utils import UserError
from tests.conftest import SAMPLES
from tests.helpers import bench_cli, count_rows, registered

#: a run as small as it gets: one cheap method, few insertion/deletion steps, no figures
FAST = ("--methods", "fakecam", "--steps", "2", "--batch-size", "2", "--no-figures")


@pytest.fixture
def photos(tmp_path):
    """A folder of three copied photos without labels (layout ``folder``: target = top-1)."""
    d = tmp_path / "photos"
    d.mkdir()
    for f in sorted(glob.glob(os.path.join(SAMPLES, "*.JPEG")))[:3]:
        shutil.copy(f, d)
    return d


def _bench(data, out, *args):
    return bench_cli("--data", str(data), "--out", str(out), *FAST, *args)


def _tree(d):
    """Every file below ``d`` with its content (what a refused run must leave as it was)."""
    return {p: open(p, "rb").read() for p in glob.glob(os.path.join(str(d), "**"), recursive=True)
            if os.path.isfile(p)}


# -- 3: someone else's folder, the data folder ---------------------------------------------------
def test_a_folder_of_other_files_is_refused_and_left_as_it_was(photos, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "table.csv").write_text("my table\n")
    (out / "timings.json").write_text('{"mine": 1}\n')
    (out / "notes.txt").write_text("notes\n")
    before = _tree(out)
    res = _bench(photos, out)
    assert res.exit_code == 1, res.output
    assert str(out) in res.output and "not a camzoo run" in res.output
    assert "table.csv" in res.output and "notes.txt" in res.output and "new folder" in res.output
    assert _tree(out) == before and sorted(os.listdir(out)) == ["notes.txt", "table.csv", "timings.json"]


def test_an_empty_folder_or_a_run_of_camzoo_is_accepted(photos, tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    (out / ".DS_Store").write_bytes(b"")  # hidden files are not the user's data camzoo replaces
    res = _bench(photos, out)
    assert res.exit_code == 0, res.output
    res = _bench(photos, out, "--resume")  # a camzoo run: resumed (nothing left to do)
    assert res.exit_code == 0, res.output


def test_out_equal_to_or_inside_the_data_is_refused(photos):
    before = _tree(photos)
    for out in (photos, photos / "run"):
        res = _bench(photos, out)
        assert res.exit_code == 1, res.output
        assert "data folder" in res.output and str(out) in res.output
        assert _tree(photos) == before and not (photos / "run").exists()


def test_data_inside_a_run_directory_is_refused(photos, tmp_path):
    run_dir = tmp_path / "run"
    res = bench_cli("--data", str(photos), "--out", str(run_dir), "--methods", "fakecam", "--steps", "2")
    assert res.exit_code == 0, res.output
    assert (run_dir / "curves.png").is_file()
    res = _bench(run_dir, tmp_path / "second")  # would evaluate curves.png, grid.png as photos
    assert res.exit_code == 1, res.output
    assert "camzoo run directory" in res.output and str(run_dir) in res.output
    assert not (tmp_path / "second").exists()


# -- 4: every method's options before the run directory exists ----------------------------------
def test_a_bad_layer_is_refused_before_the_run_directory_exists(photos, tmp_path):
    out = tmp_path / "run"
    res = _bench(photos, out, "--methods", "gradcam", "--opt", "gradcam.layer=nope")
    assert res.exit_code == 1, res.output
    assert "gradcam" in res.output and "layer='nope'" in res.output and "has no layer" in res.output
    assert not out.exists()
    assert _bench(photos, out, "--methods", "gradcam", "--opt", "gradcam.layer=features").exit_code == 0


@pytest.fixture(scope="module")
def fm_checkpoint(tmp_path_factory):
    """An L-CAM-Fm head on the tiny CNN (random weights): the wrong variant for lcam-img."""
    from camzoo.models.synthetic import ShapesDataset
    from camzoo.models.testing import tiny_backbone
    from camzoo.train.lcam import train_lcam

    bb = tiny_backbone()
    path = str(tmp_path_factory.mktemp("ck") / "fm.pt")
    train_lcam(bb, ShapesDataset(8, bb, seed=1), None, variant="fm", epochs=1, batch_size=8, lr=0.1,
               out=path, progress=False, log=lambda s: None)
    return path


@pytest.mark.parametrize("case", ["missing", "corrupt", "mismatched"])
def test_a_bad_checkpoint_is_refused_before_the_run_directory_exists(photos, tmp_path, case, fm_checkpoint):
    ck = {"missing": str(tmp_path / "none.pt"), "mismatched": fm_checkpoint,
          "corrupt": str(tmp_path / "corrupt.pt")}[case]
    (tmp_path / "corrupt.pt").write_bytes(b"not a checkpoint")
    why = {"missing": "not found", "corrupt": "cannot read checkpoint",
           "mismatched": "variant: checkpoint 'fm', here 'img'"}[case]
    out = tmp_path / "run"
    res = _bench(photos, out, "--methods", "lcam-img", "--opt", f"lcam-img.checkpoint={ck}")
    assert res.exit_code == 1, res.output
    assert "lcam-img: option checkpoint=" in res.output and why in res.output
    assert not out.exists()


class Flaky(Explainer):
    """Fails every map while ``fail`` is True (a wrong setting found only when it runs)."""

    name = "flaky"
    defaults = {"fail": True}

    def forward_passes(self, model):
        return 0

    def _explain(self, model, x, y):
        if self.options["fail"]:
            raise RuntimeError("a setting that does not work")
        return torch.rand(x.shape[0], *x.shape[-2:], generator=torch.Generator().manual_seed(0))


def test_resume_may_change_the_options_of_a_method_without_stored_rows(photos, tmp_path):
    out = tmp_path / "run"
    with registered(Flaky):
        res = _bench(photos, out, "--methods", "fakecam,flaky")
        assert res.exit_code == 3, res.output  # every flaky pair failed; fakecam's are stored
        res = _bench(photos, out, "--methods", "fakecam,flaky", "--resume", "--opt", "flaky.fail=False")
        assert res.exit_code == 0, res.output
        assert count_rows(str(out / "rows.sqlite")) == 6
        # now flaky has rows: its options are part of the run again
        res = _bench(photos, out, "--methods", "fakecam,flaky", "--resume", "--opt", "flaky.fail=True")
        assert res.exit_code == 1 and "methods.flaky.options.fail" in res.output, res.output


# -- 8: hints true for the case at hand ----------------------------------------------------------
def test_out_that_is_a_file_or_below_one_is_refused_naming_it(photos, tmp_path):
    f = tmp_path / "afile"
    f.write_text("mine\n")
    for out, named in ((f, f"{f} is a file"), (f / "sub", f"{f} is a file")):
        res = _bench(photos, out)
        assert res.exit_code == 1, res.output
        assert named in res.output and "--resume" not in res.output
    assert f.read_text() == "mine\n"


def test_a_failed_write_says_resume_only_when_there_is_a_run_to_resume(tmp_path):
    def full_disk():
        raise OSError(28, "No space left on device")

    with pytest.raises(UserError) as e:
        writing(str(tmp_path / "new"), "the run directory", full_disk)
    assert "--resume" not in str(e.value) and "run the command again" in str(e.value)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(UserError, match="rerun with --resume --out"):
        writing(str(tmp_path), "the result store", full_disk)


def test_a_damaged_shard_store_names_the_file_and_the_fix(photos, tmp_path):
    out = tmp_path / "run"
    assert _bench(photos, out, "--shard", "0/2").exit_code == 0
    store = out / "rows.rank-0-of-2.sqlite"
    for f in glob.glob(str(store) + "-*"):
        os.remove(f)
    store.write_bytes(b"this is not an SQLite file" * 100)
    from click.testing import CliRunner

    from camzoo.cli import main

    res = CliRunner().invoke(main, ["merge", str(out), "--no-figures"])
    assert res.exit_code == 1, res.output
    assert str(store) in res.output and "damaged" in res.output and "delete" in res.output
    assert "--shard 0/2 --resume" in res.output
    # the advice works
    store.unlink()
    assert _bench(photos, out, "--shard", "1/2").exit_code == 0
    res = _bench(photos, out, "--shard", "0/2", "--resume")
    assert res.exit_code == 0, res.output
    assert "merging" in res.output and count_rows(str(out / "rows.sqlite")) == 3
