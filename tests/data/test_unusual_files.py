"""Unusual files at the data layer: names whose bytes are not UTF-8 get one stable, storable id
(``%XX`` escapes), and an image above PIL's decompression-bomb warning limit is read with one
``warning:`` line naming it instead of PIL's raw warning."""
import os
import sqlite3
import warnings

import numpy as np
import pytest
from PIL import Image

from camzoo.data.datasets import files_dataset, open_dataset
from camzoo.data.images import ImageReadError, load_image, path_text


def write_bytes_named(folder, name: bytes, image=True) -> str:
    """A file named by raw bytes in ``folder`` (an 8x8 JPEG, or garbage); returns its path as
    Python's str (lone surrogates for the bytes that are not UTF-8). Skips where the file
    system refuses such names (macOS, Windows)."""
    path = os.path.join(os.fsencode(str(folder)), name)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    except OSError as exc:
        pytest.skip(f"this file system refuses names that are not UTF-8: {exc}")
    with os.fdopen(fd, "wb") as f:
        if image:
            Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(f, format="JPEG")
        else:
            f.write(b"not an image")
    return os.fsdecode(path)


def test_path_text_escapes_only_bytes_that_are_not_utf8():
    assert path_text("n01/chat é.jpg") == "n01/chat é.jpg"  # valid names are unchanged
    assert path_text(os.fsdecode(b"bad\xff.jpg")) == "bad%FF.jpg"
    assert path_text(b"x\xfe\xc3\xa9") == "x%FEé"
    assert path_text(os.fsdecode(b"a\xff")) != path_text(os.fsdecode(b"a\xfe"))


def test_non_utf8_name_is_read_and_has_a_storable_id(tmp_path):
    bad = write_bytes_named(tmp_path, b"bad\xff.jpg")
    Image.fromarray(np.full((8, 8, 3), 30, np.uint8)).save(tmp_path / "good.jpg")
    ds = open_dataset(tmp_path)
    assert [it.image_id for it in ds.items] == ["bad%FF", "good"]
    assert ds.items[0].path == bad  # the file itself is read by its real name
    assert load_image(ds.items[0].path).size == (8, 8)
    assert [ds.rel_path(it) for it in ds.items] == ["bad%FF.jpg", "good.jpg"]
    text = ds.manifest_csv()
    assert "0,bad%FF,bad%FF.jpg," in text
    text.encode("utf-8")  # storable: no lone surrogates
    assert ds.manifest_hash() == open_dataset(tmp_path).manifest_hash()  # the same on resume
    db = sqlite3.connect(":memory:")
    db.execute("create table t (image_id text, path text)")
    db.execute("insert into t values (?, ?)", (ds.items[0].image_id, ds.rel_path(ds.items[0])))
    # a list of files (camzoo explain)
    assert [it.image_id for it in files_dataset([bad, tmp_path / "good.jpg"]).items] == ["bad%FF", "good"]


def test_non_utf8_name_of_a_corrupt_file_is_named_in_the_error(tmp_path):
    bad = write_bytes_named(tmp_path, b"broken\xfe.jpg", image=False)
    with pytest.raises(ImageReadError) as err:
        load_image(bad)
    msg = str(err.value)
    assert "broken%FE.jpg" in msg
    msg.encode("utf-8")


def test_escaped_id_colliding_with_a_literal_name_is_refused(tmp_path):
    write_bytes_named(tmp_path, b"a\xff.jpg")
    Image.fromarray(np.full((8, 8, 3), 30, np.uint8)).save(tmp_path / "a%FF.jpg")
    with pytest.raises(ValueError, match=r"both have the image id 'a%FF\.jpg'; rename one"):
        open_dataset(tmp_path)


def test_large_image_is_read_with_one_line_naming_it(tmp_path, capfd):
    p = tmp_path / "huge.png"
    Image.new("L", (10000, 10000), 40).save(p)  # 100M pixels, above PIL's 89,478,485; ~100 kB
    assert 10000 * 10000 > Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        im = load_image(p)
    assert im.size == (10000, 10000) and im.mode == "RGB"  # evaluated as usual
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    err = capfd.readouterr().err
    assert "DecompressionBomb" not in err and "could be decompression bomb" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"warning: {p} is 10000x10000 (100,000,000 pixels)")


def test_image_above_twice_the_limit_is_unreadable(tmp_path, monkeypatch):
    p = tmp_path / "bomb.png"
    Image.new("RGB", (40, 40)).save(p)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40 * 40 // 2 - 1)
    with pytest.raises(ImageReadError, match=r"bomb\.png: DecompressionBombError"):
        load_image(p)
