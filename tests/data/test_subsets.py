"""``subset=`` (``--subset NAME_OR_FILE``, ``--allow-missing``): exactly the listed images, with
the list's labels, in any layout; limit after subset; ``--limit`` / ``--seed`` subsets are
deterministic."""
import filecmp
import os

import pytest

from camzoo.data.subsets import SUBSETS, read_subset
from camzoo.data.datasets import ImageItem, open_dataset, subset
from tests.conftest import IMAGENETTE, SAMPLES, SHARED_DATA

from .conftest import VAL_CLASSES, jpeg, val_name

LCAM = os.path.join(SHARED_DATA, "lcam-eval-2000", "Evaluation_2000.txt")


def _need(path):
    if not os.path.exists(path):
        pytest.skip(f"{path} is absent")


def _lcam_truth():
    """The published list, parsed here independently: name -> (label, line)."""
    out = {}
    with open(LCAM) as f:
        for n, line in enumerate(f, start=1):
            name, label = line.split()
            out[name] = (int(label), n)
    return out


def test_lcam_2000_is_the_published_file():
    _need(LCAM)
    sub = read_subset("lcam-2000")
    assert "lcam-2000" in SUBSETS and sub.name == "lcam-2000" and len(sub.entries) == 2000
    assert filecmp.cmp(sub.path, LCAM, shallow=False)


def test_lcam_2000_over_imagenette(tmp_path):
    _need(IMAGENETTE)
    _need(LCAM)
    with pytest.raises(ValueError) as e:
        open_dataset(IMAGENETTE, subset="lcam-2000")
    msg = str(e.value)
    assert "1993 of the 2000 images" in msg and "lcam-2000" in msg and "--allow-missing runs the 7" in msg
    assert "ILSVRC2012_val_00010011.JPEG" in msg  # the list's first line, missing here
    ds = open_dataset(IMAGENETTE, subset="lcam-2000", allow_missing=True)
    truth = _lcam_truth()
    assert len(ds) == 7 and ds.layout == "labels.csv" and ds.subset == "lcam-2000"
    assert ds.subset_listed == 2000 and len(ds.subset_missing) == 1993 and ds.label_conflicts == 0
    assert set(ds.subset_missing) | {os.path.basename(it.path) for it in ds.items} == set(truth)
    assert [it.image_id for it in ds.items] == sorted(it.image_id for it in ds.items)
    for it in ds.items:
        label, line = truth[os.path.basename(it.path)]
        assert it.label == label and it.where.endswith(f"lcam-eval-2000.txt:{line}")
    assert ds.unlisted == []


def _labelled_folder(tmp_path):
    """labels.csv layout: a/x.JPEG (3), a/y.JPEG (4), b/z.png (5), and w.JPEG not in labels.csv."""
    d = tmp_path / "d"
    for rel in ("a/x.JPEG", "a/y.JPEG", "b/z.png", "w.JPEG"):
        jpeg(str(d / rel))
    (d / "labels.csv").write_text("file,class_index\na/x.JPEG,3\na/y.JPEG,4\nb/z.png,5\n")
    return d


def test_user_list_in_a_labelled_folder(tmp_path):
    d = _labelled_folder(tmp_path)
    lst = tmp_path / "mine.txt"
    lst.write_text("# my images\n\nz.png 5\n  y.JPEG 40  \nsub/dir/w.JPEG 7\nx 3\n")
    ds = open_dataset(d, subset=lst)
    assert ds.subset == str(lst) and ds.subset_listed == 4 and ds.subset_missing == []
    assert [(it.image_id, it.label) for it in ds.items] == [("a/x", 3), ("a/y", 40), ("b/z", 5), ("w", 7)]
    assert ds.label_conflicts == 1  # y: labels.csv says 4, the list 40 (kept)
    assert ds.items[1].where == f"{lst}:4" and ds.items[3].where == f"{lst}:5"
    lst.write_text("z.png 5\ngone.JPEG 1\n")
    with pytest.raises(ValueError, match=r"1 of the 2 images listed in .*mine\.txt.*first 1: gone\.JPEG"):
        open_dataset(d, subset=lst)
    ds = open_dataset(d, subset=lst, allow_missing=True)
    assert [it.image_id for it in ds.items] == ["b/z"] and ds.subset_missing == ["gone.JPEG"]
    lst.write_text("gone.JPEG 1\n")
    with pytest.raises(ValueError, match="none of the 1 images"):
        open_dataset(d, subset=lst, allow_missing=True)


def test_list_over_devkit_and_plain_folders(fake, tmp_path):
    d = fake.flat_val("val", [2, 5, 6])
    lst = tmp_path / "l.txt"
    lst.write_text(f"{val_name(5)} {VAL_CLASSES[4]}\n{val_name(2)} 17\n")
    ds = open_dataset(d, devkit=fake.tar, subset=lst)
    assert [(os.path.basename(it.path), it.label) for it in ds.items] == [
        (val_name(2), 17), (val_name(5), VAL_CLASSES[4])]
    assert ds.layout == "imagenet-devkit" and ds.label_conflicts == 1
    ds = open_dataset(d, subset=lst)  # no labels at all: the list's are the ground truth
    assert ds.layout == "folder" and ds.has_labels and ds.label_conflicts == 0 and len(ds) == 2


@pytest.mark.parametrize("line", ["x.JPEG", "x.JPEG three", "x.JPEG 1 2", "x.JPEG -1", "x.JPEG,1"])
def test_malformed_lines_are_refused_with_file_and_line(tmp_path, line):
    lst = tmp_path / "bad.txt"
    lst.write_text(f"# header\ny.JPEG 2\n{line}\n")
    with pytest.raises(ValueError, match=r"bad\.txt:3: expected 'FILE LABEL'"):
        open_dataset(_labelled_folder(tmp_path), subset=lst)


def test_duplicates_are_refused(tmp_path):
    d = _labelled_folder(tmp_path)
    jpeg(str(d / "b" / "x.JPEG"))
    (d / "labels.csv").write_text("file,class_index\na/x.JPEG,3\nb/x.JPEG,3\n")
    lst = tmp_path / "l.txt"
    lst.write_text("x.JPEG 3\n")
    with pytest.raises(ValueError, match=r"x\.JPEG is present twice .*a/x\.JPEG and .*b/x\.JPEG"):
        open_dataset(d, subset=lst)
    lst.write_text("y.JPEG 3\nz.png 1\ny.JPEG 3\n")
    with pytest.raises(ValueError, match=r"l\.txt:3: y\.JPEG is listed twice \(also line 1\)"):
        open_dataset(d, subset=lst)


def test_subset_then_limit(tmp_path):
    d = tmp_path / "many"
    for k in range(12):
        jpeg(str(d / f"img{k:02d}.JPEG"))
    lst = tmp_path / "l.txt"
    chosen = [1, 3, 4, 7, 8, 10]
    lst.write_text("".join(f"img{k:02d}.JPEG {k}\n" for k in chosen))
    full = open_dataset(d, subset=lst)
    assert [it.label for it in full.items] == chosen
    ds = open_dataset(d, subset=lst, limit=3, seed=5)
    assert ds.items == subset(full.items, 3, seed=5) and len(ds) == 3
    assert {it.label for it in ds.items} <= set(chosen)


def test_subset_name_or_file_must_exist(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a list name"):
        open_dataset(_labelled_folder(tmp_path), subset="lcam-3000")
    with pytest.raises(ValueError, match="--subset needs --data"):
        open_dataset(None, subset="lcam-2000")


def test_limit_seed_subsets_are_deterministic():
    items = [ImageItem(f"i{k:03d}", None, None) for k in range(100)]
    a = subset(items, 10, seed=0)
    assert a == subset(items, 10, seed=0)
    assert a != subset(items, 10, seed=1)
    assert [it.image_id for it in a] == sorted(it.image_id for it in a)  # original order kept
    assert set(it.image_id for it in a) <= set(it.image_id for it in subset(items, 20, seed=0))
    assert subset(items, None) == items and subset(items, 500) == items
    d1, d2 = open_dataset(SAMPLES, limit=5, seed=7), open_dataset(SAMPLES, limit=5, seed=7)
    assert d1.manifest_csv() == d2.manifest_csv() and d1.manifest_hash() != open_dataset(SAMPLES, limit=5).manifest_hash()
