"""Data layouts: labels.csv, wnid folders (nested ids through the engine), a flat folder with a
labels file, a plain folder, the sample photos."""
import os

import numpy as np
import pytest
from PIL import Image

from camzoo.bench import BenchConfig, run
from camzoo.data.imagenet import imagenet_wnids
from camzoo.data.datasets import open_dataset


def _png(path, value=0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.full((6, 7, 3), value, np.uint8)).save(path)


def test_layout_labels_csv_and_wnid_folders(tmp_path):
    a = tmp_path / "a"
    _png(str(a / "sub" / "x.png"))
    _png(str(a / "y.png"))
    (a / "labels.csv").write_text("file,class_index,extra\nsub/x.png,5,foo\ny.png,7,bar\n")
    ds = open_dataset(a)
    assert ds.layout == "labels.csv" and [(i.image_id, i.label) for i in ds.items] == [("sub/x", 5), ("y", 7)]
    w = tmp_path / "w"
    wn = imagenet_wnids()
    assert len(wn) == 1000 and wn[0] == "n01440764" and wn[-1] == "n15075141"
    _png(str(w / "n01443537" / "b.JPEG"))
    _png(str(w / "n01440764" / "a.JPEG"))
    _png(str(w / "n15075141" / "deep" / "c.png"))
    ds = open_dataset(w)
    assert ds.layout == "wnid-folders"
    assert [(i.image_id, i.label) for i in ds.items] == [
        ("n01440764/a", 0), ("n01443537/b", 1), ("n15075141/deep/c", 999)]
    # the engine on it: nested ids make nested map files
    from camzoo.models.testing import tiny_backbone

    r = run(BenchConfig(backbone=tiny_backbone(num_classes=1000), methods="fakecam", metrics="lcam",
                        data=str(w), target="gt", save_maps=True, out=str(tmp_path / "run"),
                        progress=False, figures=False), echo=lambda s: None)
    assert list(r.rows().c) == [0, 1, 999]
    m = np.load(os.path.join(r.dir, "maps", "fakecam", "n15075141", "deep", "c.npy"))
    assert m.dtype == np.float32 and m.shape == (32, 32)
    # imagenette-224 style: labels.csv with paths into wnid folders
    (w / "labels.csv").write_text("file,class_index\nn01440764/a.JPEG,0\n")
    ds = open_dataset(w)
    assert ds.layout == "labels.csv" and len(ds) == 1
    bad = tmp_path / "bad"
    _png(str(bad / "n99999999" / "a.png"))
    with pytest.raises(ValueError, match="n99999999"):
        open_dataset(bad)


def test_layout_flat_with_labels_file_and_plain_folder(tmp_path):
    f = tmp_path / "flat"
    for n in ("ILSVRC2012_val_00000002.JPEG", "ILSVRC2012_val_00000001.JPEG", "ILSVRC2012_val_00000003.JPEG"):
        _png(str(f / n))
    gt = tmp_path / "gt.txt"
    gt.write_text("65\n970\n230\n")  # one index per line, sorted-filename order
    ds = open_dataset(f, labels=gt)
    assert ds.layout == "labels-file"
    assert [(i.image_id, i.label) for i in ds.items] == [
        ("ILSVRC2012_val_00000001", 65), ("ILSVRC2012_val_00000002", 970), ("ILSVRC2012_val_00000003", 230)]
    csvf = tmp_path / "gt.csv"
    csvf.write_text("ImageId,label\nILSVRC2012_val_00000003,n01443537 1 2 3 4\nILSVRC2012_val_00000001.JPEG,4\n")
    ds = open_dataset(f, labels=csvf)
    assert [(i.image_id, i.label) for i in ds.items] == [("ILSVRC2012_val_00000001", 4), ("ILSVRC2012_val_00000003", 1)]
    (tmp_path / "short.txt").write_text("1\n2\n")
    with pytest.raises(ValueError, match="2 lines but"):
        open_dataset(f, labels=tmp_path / "short.txt")
    (tmp_path / "devkit.txt").write_text("490\n361\n1000\n")
    with pytest.raises(ValueError, match="ILSVRC2012_ID"):
        open_dataset(f, labels=tmp_path / "devkit.txt")
    p = tmp_path / "plain"
    _png(str(p / "b" / "one.png"))
    _png(str(p / "a.jpg"))
    _png(str(p / "a.png"))
    (p / "notes.txt").write_text("not an image")
    ds = open_dataset(p)
    assert ds.layout == "folder" and not ds.has_labels
    assert [i.image_id for i in ds.items] == ["a.jpg", "a.png", "b/one"]  # colliding stems keep extensions
    s = open_dataset(None)
    assert s.layout == "samples" and len(s) == 6 and s.load(s.items[0]).mode == "RGB"
    with pytest.raises(FileNotFoundError):
        open_dataset(tmp_path / "nope")
