"""Image files: odd modes read as RGB; corrupt, missing and special (FIFO) files become errors of
the run, never opened."""
import os
import shutil
import threading

import numpy as np
import pytest
from PIL import Image

from camzoo.bench import BenchConfig, Run, run
from camzoo.data.images import ImageReadError, load_image, to_rgb
from camzoo.results.tables import summary
from tests.conftest import SAMPLES
from tests.helpers import QUIET, TINY
from tests.helpers import sample_rows as _sample_rows
from tests.helpers import write_odd_images as _write_odd_images


def test_to_rgb_conversions(tmp_path):
    good = _write_odd_images(tmp_path)
    for f in good:
        im = load_image(tmp_path / f)
        assert im.mode == "RGB"
    # 16-bit is rescaled, not clipped: 65535 -> 255, 32768 -> 128
    im16 = Image.fromarray(np.array([[65535, 32768, 0]], dtype=np.uint16))
    np.testing.assert_array_equal(np.asarray(to_rgb(im16))[0, :, 0], [255, 128, 0])
    # alpha composited on white
    rgba = Image.fromarray(np.array([[[0, 0, 0, 0], [0, 0, 0, 255]]], dtype=np.uint8), "RGBA")
    np.testing.assert_array_equal(np.asarray(to_rgb(rgba))[0], [[255, 255, 255], [0, 0, 0]])
    with pytest.raises(ImageReadError, match="corrupt.jpg"):
        load_image(tmp_path / "corrupt.jpg")


def test_corrupt_and_missing_images_go_to_errors(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    rows = _sample_rows(3)
    for r in rows:
        shutil.copy(os.path.join(SAMPLES, r["file"]), d / r["file"])
    (d / "broken.JPEG").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg at all")
    with open(d / "labels.csv", "w") as f:
        f.write("file,class_index\n")
        for r in rows:
            f.write(f"{r['file']},{r['class_index']}\n")
        f.write("broken.JPEG,7\nmissing.JPEG,8\n")
    from camzoo.models.testing import tiny_backbone

    r = run(BenchConfig(backbone=tiny_backbone(num_classes=1000), methods="fakecam", metrics="lcam",
                        data=str(d), target="gt",
                        batch_size=2, out=str(tmp_path / "run"), progress=False, figures=False,
                        save_maps=True), echo=lambda s: None)
    err = r.errors()
    assert sorted(err.image_id) == ["broken", "missing"]
    assert all("cannot read image" in s for s in err.reason)
    got = r.rows()
    assert len(got) == 3
    assert list(got.c) == list(got.label) == sorted(int(x["class_index"]) for x in rows)  # target gt
    assert "2 unreadable image(s)" in summary(r).to("markdown")
    m = np.load(os.path.join(r.dir, "maps", "fakecam", rows[0]["file"].rsplit(".", 1)[0] + ".npy"))
    assert m.dtype == np.float32 and m.shape == (32, 32) and m[0, 0] == 0 and m[1, 1] == 1


def test_special_files_are_reported_not_opened(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    import shutil

    shutil.copy(os.path.join(SAMPLES, "n01443537_goldfish.JPEG"), d / "a.JPEG")
    os.mkfifo(d / "p.jpg")
    done = {}

    def go():
        run(BenchConfig(backbone=TINY, weights="random", methods="fakecam", metrics="lcam", data=str(d),
                        out=str(tmp_path / "run"), **QUIET), echo=lambda s: None).close()
        done["ok"] = True

    t = threading.Thread(target=go, daemon=True)
    t.start()
    t.join(60)
    if t.is_alive():  # the FIFO was opened: unblock it so the test process can end
        with open(d / "p.jpg", "wb"):
            pass
        pytest.fail("the run blocked on a FIFO")
    assert done.get("ok")
    with Run(str(tmp_path / "run")) as r:
        err = r.errors()
        assert list(err.image_id) == ["p"] and "a FIFO, not a regular file (not opened)" in err.reason[0]
        assert len(r.rows()) == 1
