"""Labels files: a label outside the classes is refused at the start with file and line; a BOM is
read and images without a label are reported."""
import os

import pytest

from camzoo.bench import Run
from tests.conftest import SAMPLES
from tests.helpers import bench_cli as _bench


def _labelled(tmp_path, rows, bom=False, extra=()):
    import shutil

    d = tmp_path / "data"
    d.mkdir()
    import csv as _csv

    src = list(_csv.DictReader(open(os.path.join(SAMPLES, "labels.csv"))))[:len(rows)]
    for s in src:
        shutil.copy(os.path.join(SAMPLES, s["file"]), d / s["file"])
    for e in extra:
        shutil.copy(os.path.join(SAMPLES, src[0]["file"]), d / e)
    text = "file,class_index\n" + "".join(f"{s['file']},{lab}\n" for s, lab in zip(src, rows))
    (d / "labels.csv").write_bytes(("\ufeff" if bom else "").encode() + text.encode())
    return d, src


@pytest.mark.parametrize("bad", [1000, -1])
def test_a_label_outside_the_classes_is_refused_at_start_with_file_and_line(tmp_path, bad):
    d, src = _labelled(tmp_path, [3, 5, bad])
    out = tmp_path / "run"
    res = _bench("--data", str(d), "--target", "gt", "--out", str(out))
    assert res.exit_code == 1 and f"labels.csv:4: class_index {bad}" in res.output, res.output
    assert "Traceback" not in res.output and not out.exists()


def test_labels_with_a_bom_are_read_and_unlisted_images_reported(tmp_path):
    d, src = _labelled(tmp_path, [3, 5], bom=True, extra=("zz_extra1.JPEG", "zz_extra2.JPEG"))
    res = _bench("--data", str(d), "--target", "gt", "--methods", "fakecam", "--metrics", "lcam",
                 "--out", str(tmp_path / "run"))
    assert res.exit_code == 0, res.output
    assert "warning: 2 image(s) in" in res.output and "zz_extra1.JPEG, zz_extra2.JPEG" in res.output
    with Run(str(tmp_path / "run")) as r:
        assert list(r.rows().c) == [3, 5]
