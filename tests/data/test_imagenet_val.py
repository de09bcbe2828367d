"""ImageNet validation as researchers have it: devkit (folder / .tar.gz), Kaggle's LOC csv,
torchvision's prepared root. Labels are checked against the fake devkit's known mapping."""
import os
import shutil
import tarfile

import pytest
import torch

import camzoo.data.imagenet

from camzoo.data.datasets import open_dataset
from camzoo.data.imagenet import parse_meta_mat

from .conftest import VAL_CLASSES, FakeImageNet, jpeg, val_name, write_meta_mat


def _labels(ds):
    return [(os.path.basename(it.path), it.label) for it in ds.items]


def _torchvision_meta(fake: FakeImageNet, root: str, monkeypatch) -> None:
    """``root/meta.bin`` written by torchvision's own parse_devkit_archive from the fake tar."""
    import torchvision.datasets.imagenet as tvi

    os.makedirs(root, exist_ok=True)
    shutil.copy(fake.tar, root)
    monkeypatch.setattr(tvi, "_verify_archive", lambda *a, **k: None)  # the fake has another md5
    tvi.parse_devkit_archive(root)
    os.remove(os.path.join(root, "ILSVRC2012_devkit_t12.tar.gz"))


def test_fake_devkit_parses_like_torchvision(fake, tmp_path, monkeypatch):
    import torchvision.datasets.imagenet as tvi

    root = str(tmp_path / "tv")
    _torchvision_meta(fake, root, monkeypatch)
    wnid_to_classes, val_wnids = tvi.load_meta_file(root)
    assert len(wnid_to_classes) == 1000 and val_wnids == fake.val_wnids
    assert parse_meta_mat(fake.devkit) == {i: w for w, i in fake.ids.items()}
    assert [fake.ids[w] for w in fake.val_wnids] != [c + 1 for c in VAL_CLASSES]  # ids are not indices


@pytest.mark.parametrize("form", ["folder", "parent-folder", "tar"])
def test_devkit_labels_a_partial_flat_folder(fake, form):
    d = fake.flat_val("val", [2, 5], extra=["stray.JPEG"])
    devkit = {"folder": fake.devkit, "parent-folder": fake.base, "tar": fake.tar}[form]
    ds = open_dataset(d, devkit=devkit)
    assert ds.layout == "imagenet-devkit" and ds.root == d
    assert _labels(ds) == [(val_name(2), VAL_CLASSES[1]), (val_name(5), VAL_CLASSES[4])]
    assert ds.unlisted == ["stray.JPEG"]  # in the folder, not named by the ground truth
    assert ds.items[1].where.endswith("ILSVRC2012_validation_ground_truth.txt:5")
    assert ds.devkit == os.path.abspath(devkit)
    # the devkit's ground truth given as --labels too, from anywhere
    gt = os.path.join(fake.base, "copy", "ILSVRC2012_validation_ground_truth.txt")
    os.makedirs(os.path.dirname(gt))
    shutil.copy(fake.gt, gt)
    ds = open_dataset(d, labels=gt, devkit=devkit, limit=1)
    assert len(ds) == 1 and ds.labels_file == gt and ds.items[0].where.startswith(gt + ":")


def test_devkit_archive_is_read_without_writing_beside_it(fake, tmp_path, monkeypatch):
    import tempfile

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    d = fake.flat_val("val", [1, 2, 3, 4, 5, 6])
    before = {p: sorted(os.listdir(p)) for p in (d, os.path.dirname(fake.tar))}
    seen = {}

    def spy(devkit_root):  # look around while the archive's files are extracted
        seen["root"] = devkit_root
        seen["extracted"] = sorted(os.path.relpath(os.path.join(dp, f), devkit_root)
                                   for dp, _, fs in os.walk(devkit_root) for f in fs)
        seen["during"] = {p: sorted(os.listdir(p)) for p in before}
        return parse_meta_mat(devkit_root)

    monkeypatch.setattr(camzoo.data.imagenet, "parse_meta_mat", spy)
    ds = open_dataset(d, devkit=fake.tar)
    assert [it.label for it in ds.items] == list(VAL_CLASSES)
    assert ds.labels_file == f"{fake.tar}:ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt"
    assert seen["root"].startswith(str(scratch) + os.sep) and seen["during"] == before
    assert seen["extracted"] == [os.path.join("data", "ILSVRC2012_validation_ground_truth.txt"),
                                 os.path.join("data", "meta.mat")]  # only these of the archive
    assert {p: sorted(os.listdir(p)) for p in before} == before
    assert os.listdir(scratch) == []  # the temporary extraction is gone
    # an archive without meta.mat, and a folder that is no devkit
    bad = tmp_path / "bad.tar.gz"
    with tarfile.open(bad, "w:gz") as t:
        t.add(fake.gt, arcname="ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt")
    with pytest.raises(ValueError, match="no data/meta.mat"):
        open_dataset(d, devkit=bad)
    (tmp_path / "junk.tar.gz").write_bytes(b"not an archive")
    with pytest.raises(ValueError, match="cannot read the devkit archive"):
        open_dataset(d, devkit=tmp_path / "junk.tar.gz")
    with pytest.raises(FileNotFoundError, match="holds no data/meta.mat"):
        open_dataset(d, devkit=d)


def test_devkit_meta_mat_must_have_the_1000_classes(fake, tmp_path):
    ids = dict(fake.ids)
    ids.pop(fake.wnids[7])
    write_meta_mat(os.path.join(fake.devkit, "data", "meta.mat"), ids)
    d = fake.flat_val("val", [1])
    with pytest.raises(ValueError, match="999 leaf synsets"):
        open_dataset(d, devkit=fake.devkit)


def test_devkit_ground_truth_without_devkit_is_refused(fake, tmp_path):
    d = fake.flat_val("val", [1, 2, 3, 4, 5, 6])
    with pytest.raises(ValueError, match=r"1-based ILSVRC2012_IDs.*--devkit DIR_OR_TAR"):
        open_dataset(d, labels=fake.gt)  # by name (the fake's 6 ids need not reach 1000)
    part = fake.flat_val("part", [2, 5])  # a part of val: the file is longer than the folder
    renamed = tmp_path / "gt.txt"
    renamed.write_text("".join(f"{i}\n" for i in (1000, 4, 17, 3, 999, 12)))
    with pytest.raises(ValueError, match="1-based ILSVRC2012_IDs.*--devkit"):
        open_dataset(part, labels=renamed)  # by content: a 1000 is no 0-based index
    renamed.write_text("".join(f"{1 + i % 999}\n" for i in range(50_000)))
    with pytest.raises(ValueError, match="1-based ILSVRC2012_IDs.*--devkit"):
        open_dataset(part, labels=renamed)  # by content: 50,000 labels and no class 0
    renamed.write_text("".join(f"{i}\n" for i in (5, 4, 17, 3, 999, 12)))
    assert [it.label for it in open_dataset(d, labels=renamed).items] == [5, 4, 17, 3, 999, 12]
    rows = tmp_path / "rows.csv"
    rows.write_text(f"file,class_index\n{val_name(1)},3\n")
    with pytest.raises(ValueError, match=r"rows\.csv:1: expected one ILSVRC2012_ID"):
        open_dataset(d, labels=rows, devkit=fake.devkit)  # with --devkit, labels is the devkit's file


def test_kaggle_loc_solution(fake, tmp_path):
    d = fake.flat_val("val", [5, 2], extra=["notes.png"])
    loc = tmp_path / "LOC_val_solution.csv"
    rows = [f"ILSVRC2012_val_{i:08d},{w} 10 20 30 40 {fake.wnids[3]} 1 2 3 4"
            for i, w in enumerate(fake.val_wnids, start=1)]
    loc.write_text("ImageId,PredictionString\n" + "\n".join(rows) + "\n")
    ds = open_dataset(d, labels=loc)
    assert ds.layout == "kaggle-loc" and ds.labels_file == str(loc)
    assert _labels(ds) == [(val_name(2), VAL_CLASSES[1]), (val_name(5), VAL_CLASSES[4])]
    assert ds.unlisted == ["notes.png"] and ds.items[0].where == f"{loc}:3"
    jpeg(os.path.join(d, "ILSVRC2012_val_00000005.png"))  # two files of one name keep their extensions
    ids = [it.image_id for it in open_dataset(d, labels=loc).items]
    assert ids == ["ILSVRC2012_val_00000002", "ILSVRC2012_val_00000005.JPEG", "ILSVRC2012_val_00000005.png"]
    loc.write_text("ImageId,PredictionString\nILSVRC2012_val_00000002,n99999999 1 2 3 4\n")
    with pytest.raises(ValueError, match=r"LOC_val_solution\.csv:2"):
        open_dataset(d, labels=loc)
    loc.write_text(f"ImageId,PredictionString\nILSVRC2012_val_00000009,{fake.wnids[0]} 1 2 3 4\n")
    with pytest.raises(ValueError, match="none of the 4 images"):
        open_dataset(d, labels=loc)


def test_torchvision_layout_with_some_classes(fake, tmp_path, monkeypatch):
    root = str(tmp_path / "imagenet")
    _torchvision_meta(fake, root, monkeypatch)
    # torchvision's val/<wnid>/ folders for two classes only: 999 and 1 (ImageFolder would say 1, 0)
    jpeg(os.path.join(root, "val", fake.val_wnids[1], val_name(2)))
    jpeg(os.path.join(root, "val", fake.val_wnids[3], val_name(4)))
    ds = open_dataset(root)
    assert ds.layout == "torchvision-imagenet" and ds.root == os.path.join(root, "val")
    assert _labels(ds) == [(val_name(4), VAL_CLASSES[3]), (val_name(2), VAL_CLASSES[1])]
    assert ds.items[0].image_id == f"{fake.val_wnids[3]}/ILSVRC2012_val_00000004"
    jpeg(os.path.join(root, "val", val_name(6)))  # an unfinished preparation leaves flat files
    with pytest.raises(ValueError, match="did not finish"):
        open_dataset(root)
    os.remove(os.path.join(root, "val", val_name(6)))
    torch.save(({"n01440764": ("tench",)}, ["n01440764"]), os.path.join(root, "meta.bin"))
    with pytest.raises(ValueError, match="not classes of"):
        open_dataset(root)


def test_torchvision_archives_without_val_are_refused(fake, tmp_path):
    root = tmp_path / "imagenet"
    root.mkdir()
    shutil.copy(fake.tar, root)
    (root / "ILSVRC2012_img_val.tar").write_bytes(b"")
    with pytest.raises(ValueError) as e:
        open_dataset(root)
    msg = str(e.value)
    assert "no val/ folder" in msg and "ILSVRC2012_img_val.tar" in msg
    assert f"torchvision.datasets.ImageNet({str(root)!r}, split='val')" in msg
