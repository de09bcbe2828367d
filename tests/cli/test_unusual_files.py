"""Unusual files from the command line: a photo whose name is not UTF-8 is evaluated under a
``%XX``-escaped id (bench, resume, errors, explain); labels outside the classifier's classes are
refused before anything is written under any ``--target``; a 10000x10000 image is evaluated
with one line naming it, never PIL's raw warning."""
import os
import warnings

import numpy as np
import pandas as pd
from click.testing import CliRunner
from PIL import Image

from camzoo.bench import Run
from camzoo.cli import main
from tests.data.test_unusual_files import write_bytes_named
from tests.helpers import TINY

TINY_ARGS = ["--backbone", TINY, "--weights", "random"]


def bench(*args):
    return CliRunner().invoke(main, ["bench", *TINY_ARGS, "--no-progress", "--no-figures",
                                     "--methods", "fakecam", "--metrics", "lcam", *args])


def jpeg(path, value):
    Image.fromarray(np.full((16, 16, 3), value, np.uint8)).save(path, format="JPEG")


def test_bench_and_explain_evaluate_a_non_utf8_file_name(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    bad = write_bytes_named(d, b"bad\xff.jpg")
    write_bytes_named(d, b"broken\xfe.jpg", image=False)
    jpeg(d / "good.jpg", 200)
    out = tmp_path / "run"
    res = bench("--data", str(d), "--out", str(out))
    assert res.exit_code == 0, res.output
    rows = Run(str(out)).rows()
    assert sorted(rows.image_id) == ["bad%FF", "good"]
    assert sorted(rows.path) == ["bad%FF.jpg", "good.jpg"]
    manifest = pd.read_csv(out / "manifest.csv", keep_default_na=False)
    assert list(manifest.image_id) == ["bad%FF", "broken%FE", "good"]
    # the unreadable one is named (escaped) among the run's errors
    res = CliRunner().invoke(main, ["errors", str(out)])
    assert "broken%FE" in res.output and "cannot read image" in res.output
    # resume finds the same ids: nothing left to do, no row twice
    res = CliRunner().invoke(main, ["bench", "--resume", "--out", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert len(Run(str(out)).rows()) == 2
    # camzoo explain: the figure's title and the files use the escaped id
    ex = tmp_path / "explain"
    res = CliRunner().invoke(main, ["explain", bad, str(d / "good.jpg"), *TINY_ARGS, "--methods", "fakecam",
                                    "--out", str(ex)])
    assert res.exit_code == 0, res.output
    assert "wrote 2 image(s)" in res.output
    assert (ex / "bad%FF.png").stat().st_size > 1000 and (ex / "bad%FF" / "fakecam.npy").is_file()


def test_non_utf8_file_left_out_of_labels_csv_is_named_escaped(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    write_bytes_named(d, b"extra\xff.jpg")
    jpeg(d / "a.jpg", 10)
    (d / "labels.csv").write_text("file,class_index\na.jpg,3\n")
    res = bench("--data", str(d), "--out", str(tmp_path / "run"))
    assert res.exit_code == 0, res.output
    assert "not evaluated: extra%FF.jpg" in res.output


def _refused(tmp_path, label, target):
    """``camzoo bench`` on three photos whose second label is ``label``: refused, naming
    labels.csv's line 3, the label and the valid range, before the run directory exists."""
    d = tmp_path / "data"
    d.mkdir(exist_ok=True)
    for i in range(3):
        jpeg(d / f"im{i}.jpg", 40 * i)
    (d / "labels.csv").write_text(f"file,class_index\nim0.jpg,3\nim1.jpg,{label}\nim2.jpg,4\n")
    out = tmp_path / f"run-{target}{label}"
    res = bench("--data", str(d), "--out", str(out), "--target", target)
    assert res.exit_code != 0, res.output
    assert f"labels.csv:3: class_index {label} of 'im1'" in res.output
    assert "valid 0..9" in res.output  # the tiny CNN has classes 0..9
    assert not out.exists()  # refused before anything is written


def test_negative_labels_are_refused_for_every_target(tmp_path):
    for target in ("pred", "gt"):
        _refused(tmp_path, -1, target)


def test_labels_above_the_classes_are_refused_under_target_gt(tmp_path):
    _refused(tmp_path, 10, "gt")


def test_labels_above_the_classes_are_refused_under_target_pred(tmp_path):
    _refused(tmp_path, 10, "pred")


def test_large_image_is_evaluated_with_one_line_naming_it(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    Image.new("L", (10000, 10000), 70).save(d / "huge.png")  # 100M pixels > MAX_IMAGE_PIXELS
    jpeg(d / "small.jpg", 120)
    out = tmp_path / "run"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # what would reach the terminal (pytest captures it otherwise)
        res = bench("--data", str(d), "--out", str(out))
    assert res.exit_code == 0, res.output
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    assert "DecompressionBomb" not in res.stderr and "could be decompression bomb" not in res.stderr
    named = [ln for ln in res.stderr.splitlines() if "huge.png" in ln]
    assert len(named) == 1 and "10000x10000" in named[0] and named[0].startswith("warning: ")
    assert sorted(Run(str(out)).rows().image_id) == ["huge", "small"]  # evaluated
    assert os.path.isfile(out / "manifest.csv")
