"""The evaluation engine, result store, resume after SIGKILL, data layouts, tables and CLI."""
import csv
import math
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import camzoo
from camzoo.bench import BenchConfig, Run, run
from camzoo.cli import main
from camzoo.data import ImageItem, imagenet_wnids, open_dataset, subset
from camzoo.data.images import load_image
from camzoo.metrics import Scorer
from camzoo.metrics.adcc import adcc_scores
from camzoo.metrics.ad_ic import average_drop, masked_confidence
from camzoo.metrics.insertion_deletion import auc, insertion_deletion
from camzoo.results.tables import compare, marks, summary, to_latex, to_markdown

from .conftest import REPO, SAMPLES

TINY = "py:camzoo.models.testing:tiny_backbone"
STEPS = 8


def _sample_rows(n):
    with open(os.path.join(SAMPLES, "labels.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    return rows[:: len(rows) // n][:n]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """gradcam + fakecam on the tiny backbone, 6 real images, batches of 4 (one partial)."""
    out = str(tmp_path_factory.mktemp("bench") / "run")
    r = run(BenchConfig(backbone=TINY, weights="random", methods="gradcam,fakecam", data=SAMPLES, limit=6, seed=3,
                        steps=STEPS, batch_size=4, eval_batch_size=7, out=out, progress=False,
                        grid_images=2), echo=lambda s: None)
    return r


# -- engine == independent per-image computation ----------------------------------------------
def test_engine_rows_equal_independent_per_image_computation(tiny_run):
    from camzoo.models.testing import tiny_backbone

    bb = tiny_backbone()
    rows = tiny_run.rows(curves=True)
    ds = open_dataset(SAMPLES, limit=6, seed=3)
    assert len(rows) == 12 and set(rows.method) == {"gradcam", "fakecam"}
    assert list(rows[rows.method == "gradcam"].image_id) == [it.image_id for it in ds.items]
    nus = (1.0, 0.5, 0.15)
    for it in ds.items:
        x = bb.preprocess(load_image(it.path)).unsqueeze(0).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            p = torch.softmax(bb.model(x), 1)[0]
        c = torch.tensor([int(p.argmax())])
        Y = p[c]
        for method in ("gradcam", "fakecam"):
            ex = camzoo.get_explainer(method)
            V = ex.explain(bb, x, c)
            sc = Scorer(bb.model, 1)  # one image per forward: nothing shared with the engine
            O = masked_confidence(sc, bb.denormalize(x).clamp(0, 1), V, c, bb.normalize, nus)[0]
            ad = adcc_scores(sc, x, V, c, Y, lambda E, cc: ex.explain(bb, E, cc))
            cur = insertion_deletion(sc, x, V, c, STEPS)
            row = rows[(rows.method == method) & (rows.image_id == it.image_id)].iloc[0]
            assert row.c == int(c) and row.pred == int(c) and row.label == it.label
            assert row.Y == pytest.approx(float(Y), abs=1e-6)
            for j, L in enumerate(("100", "50", "15")):
                assert row[f"O_{L}"] == pytest.approx(float(O[j]), abs=1e-5)
                assert row[f"ad_{L}"] == pytest.approx(float(average_drop(Y, O[j:j + 1])), abs=1e-3)
                # IC is a strict comparison: check it against the stored O (ties are float noise)
                assert row[f"ic_{L}"] == (100.0 if row[f"O_{L}"] > row.Y else 0.0)
            for k_row, k in (("adcc_O", "O"), ("adcc_ad", "average_drop"), ("coherency", "coherency"),
                             ("complexity", "complexity"), ("adcc", "adcc")):
                assert row[k_row] == pytest.approx(float(ad[k]), abs=1e-5), (method, k)
            np.testing.assert_allclose(row.ins_curve, cur["insertion"][0].numpy(), atol=1e-5)
            np.testing.assert_allclose(row.del_curve, cur["deletion"][0].numpy(), atol=1e-5)
            assert row.ins_auc == pytest.approx(float(auc(cur["insertion"])[0]), abs=1e-5)
            assert row.del_auc == pytest.approx(float(auc(cur["deletion"])[0]), abs=1e-5)
            assert len(row.ins_curve) == STEPS + 1
    # Fake-CAM's complexity is (HW - 1) / HW exactly
    fk = rows[rows.method == "fakecam"]
    np.testing.assert_allclose(fk.complexity, 1 - 1 / 32 ** 2, atol=1e-6)


def test_lcam_fusion_only_for_a_plain_normalization(tmp_path):
    """The engine fuses lcam's masking and (x - mean) / std; a Backbone whose normalize is
    something else gets its own normalize called (equal rows either way)."""
    import dataclasses

    from camzoo.models import Backbone
    from camzoo.engine.runner import _mean_std
    from camzoo.models.testing import tiny_backbone

    bb = tiny_backbone()
    ms = _mean_std(bb)
    assert ms is not None and ms[0] is bb.mean and ms[1] is bb.std

    class Gamma(Backbone):  # not a per-channel affine map: fusing it would be wrong
        def normalize(self, x01):
            return super().normalize(x01.clamp(min=0).sqrt())

    gb = Gamma(**{f.name: getattr(bb, f.name) for f in dataclasses.fields(Backbone)})
    assert _mean_std(gb) is None
    r = run(BenchConfig(backbone=gb, methods="gradcam,fakecam", metrics="lcam", data=SAMPLES,
                        limit=3, seed=1, batch_size=3, eval_batch_size=4,
                        out=str(tmp_path / "gamma"), progress=False, figures=False),
            echo=lambda s: None)
    rows = r.rows()
    r.close()
    ds = open_dataset(SAMPLES, limit=3, seed=1)
    x = torch.stack([gb.preprocess(load_image(it.path)) for it in ds.items])
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        c = gb.model(x).argmax(1)
    for method in ("gradcam", "fakecam"):  # fakecam: a plateau of ties at every threshold
        V = camzoo.explain(method, gb, x, c)
        O = masked_confidence(Scorer(gb.model, 1), gb.denormalize(x).clamp(0, 1), V, c, gb.normalize)
        got = rows[rows.method == method].set_index("image_id").loc[[it.image_id for it in ds.items]]
        for j, L in enumerate(("100", "50", "15")):
            np.testing.assert_allclose(got[f"O_{L}"].to_numpy(), O[:, j].numpy(), atol=1e-5)


def test_forward_counts_are_exact(tiny_run):
    fw = {(r.method, r.family): r.forwards for r in tiny_run.forwards().itertuples()}
    n = 6
    expected = {("*", "clean"): n}
    for m in ("gradcam", "fakecam"):
        expected.update({(m, "lcam"): 3 * n, (m, "adcc"): n, (m, "insertion"): (STEPS + 1) * n,
                         (m, "deletion"): (STEPS + 1) * n})
    expected.update({("gradcam", "explain"): n, ("gradcam", "adcc_explain"): n})
    assert fw == expected
    cfg = tiny_run.config
    assert cfg["methods"]["gradcam"]["forward_passes"] == 1
    assert cfg["methods"]["fakecam"]["forward_passes"] == 0
    assert cfg["data"]["n_images"] == 6 and cfg["backbone"]["layer"] == "features"
    assert cfg["protocols"]["rise"]["options"]["steps"] == STEPS
    assert cfg["methods"]["gradcam"]["options"] == {"layer": None, "amp": None}
    assert cfg["torch_version"] == torch.__version__ and cfg["camzoo_version"] == camzoo.__version__
    # manifest lists the chosen files and hashes to the stored value
    man = pd.read_csv(os.path.join(tiny_run.dir, "manifest.csv"))
    assert list(man.image_id) == list(tiny_run.rows().query("method == 'fakecam'").image_id)
    for f in ("table.csv", "table.md", "table.tex", "per_image.csv", "curves.png", "grid.png"):
        assert os.path.getsize(os.path.join(tiny_run.dir, f)) > 0, f


# -- tables ----------------------------------------------------------------------------------
def test_table_values_and_exports_parse_back(tiny_run):
    t = summary(tiny_run)
    rows = tiny_run.rows()
    df = t.df
    assert list(df.index) == ["gradcam", "fakecam"]
    assert list(df.columns) == ["AD(100%)↓", "IC(100%)↑", "AD(50%)↓", "IC(50%)↑", "AD(15%)↓", "IC(15%)↑",
                                "Ins↑", "Del↓", "Coherency↑", "Complexity↓", "ADCC↑", "#FW", "s/img"]
    g = rows[rows.method == "gradcam"]
    assert df.loc["gradcam", "AD(50%)↓"] == pytest.approx(g.ad_50.mean())
    assert df.loc["gradcam", "ADCC↑"] == pytest.approx(100 * g.adcc.mean())
    assert df.loc["gradcam", "Del↓"] == pytest.approx(100 * g.del_auc.mean())
    assert df.loc["fakecam", "#FW"] == 0 and df.loc["gradcam", "#FW"] == 1
    # CSV
    back = pd.read_csv(os.path.join(tiny_run.dir, "table.csv"))
    back = back[[c for c in back.columns if not c.endswith(("_lo", "_hi"))]]  # intervals: test_stats.py
    assert list(back.columns) == ["Backbone", "Method"] + list(df.columns)
    assert set(back["Backbone"]) == {f"{TINY} (random weights)"}  # the tiny CNN is untrained
    np.testing.assert_allclose(back.drop(columns=["Backbone", "Method"]).to_numpy(float), df.to_numpy(float),
                               rtol=1e-5)
    # Markdown: a pipe table, values at 2 decimals, marks and intervals stripped
    md = to_markdown(t)
    table_lines = [ln for ln in md.splitlines() if ln.startswith("|")]
    assert "0 unreadable image(s)" in md
    parsed = pd.read_csv(pd.io.common.StringIO("\n".join(table_lines)), sep="|", skipinitialspace=True)
    parsed = parsed.drop(columns=[c for c in parsed.columns if c.startswith("Unnamed")]).iloc[1:]
    parsed.columns = [c.strip() for c in parsed.columns]
    assert list(parsed.columns) == ["Method"] + list(df.columns)
    clean = parsed["ADCC↑"].str.replace(r"\*\*|</?u>| ± \S+| ≈", "", regex=True).astype(float).to_numpy()
    np.testing.assert_allclose(clean, df["ADCC↑"].round(2).to_numpy(), atol=1e-9)
    # LaTeX: one row per method with all columns; bold on the best, underline on the second
    tex = to_latex(t)
    body = tex.split("\\midrule")[1].split("\\bottomrule")[0].strip().splitlines()
    assert len(body) == 2
    cells = [ln.rstrip(" \\").split(" & ") for ln in body]
    assert all(len(c) == 1 + len(df.columns) for c in cells)
    header = tex.split("\\toprule")[1].split("\\midrule")[0]
    assert "ADCC$\\uparrow$" in header and "AD(100\\%)$\\downarrow$" in header
    j = list(df.columns).index("Complexity↓") + 1
    best = int(df["Complexity↓"].to_numpy().argmin())
    assert cells[best][j].startswith("$\\mathbf{") and cells[1 - best][j].startswith("$\\underline{")
    j = list(df.columns).index("#FW") + 1
    assert not any("\\mathbf" in c[j] or "\\underline" in c[j] for c in cells)  # #FW is not ranked
    assert "unreadable" in tex.split("\\bottomrule")[1]


def test_marks_ties_and_direction():
    from camzoo.results.tables import Table

    df = pd.DataFrame({"AD↓": [1.0, 2.0, 1.001, 3.0], "IC↑": [5.0, 5.0, 5.0, 5.0]},
                      index=pd.Index(list("abcd"), name="Method"))
    mk = marks(Table(df, {"AD↓": False, "IC↑": True}))
    assert list(mk["AD↓"]) == ["best", "second", "best", ""]  # equal at 2 decimals -> tie
    assert list(mk["IC↑"]) == ["best"] * 4


def test_compare_stacks_blocks(tiny_run, tmp_path):
    r2 = run(BenchConfig(backbone=TINY, weights="random", methods="fakecam", metrics="lcam", data=SAMPLES, limit=2,
                         out=str(tmp_path / "r2"), progress=False, figures=False), echo=lambda s: None)
    t = compare([tiny_run, r2])
    assert t.df.index.names == ["Backbone", "Method"]
    assert len(t.df) == 3
    assert math.isnan(t.df.iloc[2]["ADCC↑"])  # r2 has no adcc column
    tex = t.to("latex")
    assert tex.count("\\multicolumn{14}{c}") == 2
    back = pd.read_csv(pd.io.common.StringIO(t.to("csv")))
    assert list(back.columns[:2]) == ["Backbone", "Method"] and len(back) == 3


# -- Fake-CAM fools AD/IC but not ADCC (ADCC paper), on the real embedded backbone ------------
def test_fakecam_fools_ad_but_not_adcc(lite0, tmp_path):
    d = tmp_path / "sixteen"
    d.mkdir()
    rows = _sample_rows(16)
    with open(d / "labels.csv", "w") as f:
        f.write("file,class_index\n")
        for r in rows:
            f.write(f"{os.path.join(SAMPLES, r['file'])},{r['class_index']}\n")  # absolute paths
    r = run(BenchConfig(backbone=lite0, methods="fakecam,gradcam", metrics="lcam,adcc", data=str(d),
                        batch_size=16, eval_batch_size=48, out=str(tmp_path / "run"), progress=False,
                        figures=False), echo=lambda s: None)
    t = r.table()
    assert len(r.rows()) == 32
    assert t.loc["fakecam", "AD(100%)↓"] < 1.0
    assert t.loc["fakecam", "ADCC↑"] < 1.0
    assert t.loc["gradcam", "ADCC↑"] > 40.0
    assert t.loc["gradcam", "ADCC↑"] > t.loc["fakecam", "ADCC↑"] + 30


# -- crash safety ----------------------------------------------------------------------------
def _count_rows(db):
    try:
        c = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        try:
            return c.execute("SELECT COUNT(*) FROM rows").fetchone()[0]
        finally:
            c.close()
    except sqlite3.Error:
        return 0


def _bench_cmd(out, *extra):
    return [sys.executable, "-m", "camzoo", "bench", "--backbone", TINY, "--weights", "random", "--data", SAMPLES,
            "--limit", "40", "--seed", "1", "--methods", "gradcam,fakecam", "--steps", "4",
            "--batch-size", "2", "--eval-batch-size", "16", "--out", out, "--no-progress", *extra]


def _comparable(run_):
    rows = run_.rows(curves=True).drop(columns=["seconds"])
    for col in ("ins_curve", "del_curve"):
        rows[col] = rows[col].map(lambda a: a.tobytes())
    return rows.sort_values(["method", "idx"]).reset_index(drop=True)


def test_resume_after_sigkill_gives_identical_rows(tmp_path):
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    killed = str(tmp_path / "killed")
    db = os.path.join(killed, "rows.sqlite")
    proc = subprocess.Popen(_bench_cmd(killed), cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        n = 0
        while time.time() < deadline and proc.poll() is None:
            n = _count_rows(db)
            if n >= 8:
                break
            time.sleep(0.005)
        assert proc.poll() is None, "the run finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    partial = _count_rows(db)
    assert 8 <= partial < 80 and partial % 4 == 0  # whole batches only (2 methods x 2 images)
    res = subprocess.run(_bench_cmd(killed, "--resume"), cwd=REPO, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    # an uninterrupted reference run in-process
    ref = run(BenchConfig(backbone=TINY, weights="random", data=SAMPLES, limit=40, seed=1, methods="gradcam,fakecam",
                          steps=4, batch_size=2, eval_batch_size=16, out=str(tmp_path / "ref"),
                          progress=False, figures=False), echo=lambda s: None)
    got = Run(killed)
    a, b = _comparable(got), _comparable(ref)
    assert len(a) == 80 and not a.duplicated(["method", "image_id"]).any()
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-6, atol=1e-7)
    fa = got.forwards().sort_values(["method", "family"]).reset_index(drop=True)
    fb = ref.forwards().sort_values(["method", "family"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(fa, fb)
    ta, tb = got.table().drop(columns="s/img"), ref.table().drop(columns="s/img")
    pd.testing.assert_frame_equal(ta, tb, rtol=1e-6)
    assert got.config["resumed"]


def test_resume_refuses_a_different_run(tmp_path, tiny_run):
    with pytest.raises(ValueError, match="steps"):
        run(BenchConfig(backbone=TINY, weights="random", methods="gradcam,fakecam", data=SAMPLES, limit=6, seed=3,
                        steps=STEPS + 1, out=tiny_run.dir, resume=True, progress=False))
    with pytest.raises(FileExistsError, match="resume"):
        run(BenchConfig(backbone=TINY, weights="random", methods="fakecam", data=SAMPLES, limit=6, out=tiny_run.dir,
                        progress=False))


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


def test_evaluated_backbone_is_used_for_y_and_metrics(tmp_path):
    from camzoo.explainers.base import EXPLAINERS, Explainer
    from camzoo.models.testing import tiny_backbone

    other = tiny_backbone(seed=5)

    class OwnClassifier(Explainer):
        name = "_test_own_classifier"
        defaults: dict = {}

        def forward_passes(self, model):
            return 1

        def evaluated_backbone(self, model):
            return other

        def _explain(self, model, x, y):
            return torch.linspace(0, 1, x.shape[-1] * x.shape[-2]).view(1, *x.shape[-2:]).expand(x.shape[0], -1, -1)

    EXPLAINERS.add(OwnClassifier.name, OwnClassifier)
    try:
        r = run(BenchConfig(backbone=TINY, weights="random", methods=f"{OwnClassifier.name},fakecam", metrics="lcam",
                            data=SAMPLES, limit=2, out=str(tmp_path / "run"), progress=False,
                            figures=False), echo=lambda s: None)
    finally:
        EXPLAINERS._items.pop(OwnClassifier.name)
    rows = r.rows()
    own = rows[rows.method == OwnClassifier.name]
    assert set(own.classifier) == {f"{OwnClassifier.name}:tiny"}
    assert set(rows[rows.method == "fakecam"].classifier) == {"backbone"}
    ds = open_dataset(SAMPLES, limit=2)
    x = torch.stack([other.preprocess(load_image(it.path)) for it in ds.items])
    with torch.inference_mode():
        p = torch.softmax(other.model(x), 1)
    np.testing.assert_allclose(own.Y.to_numpy(), p.max(1).values.numpy(), atol=1e-6)
    assert list(own.c) == p.argmax(1).tolist()
    fw = {(a.method, a.family): a.forwards for a in r.forwards().itertuples()}
    assert fw[(OwnClassifier.name, "clean")] == 2 and fw[("*", "clean")] == 2
    assert r.config["methods"][OwnClassifier.name]["classifier"]["key"] == f"{OwnClassifier.name}:tiny"
    assert f"{OwnClassifier.name}: evaluated on its own classifier tiny" in summary(r).to("markdown")


# -- data layouts ----------------------------------------------------------------------------
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


# -- CLI -------------------------------------------------------------------------------------
def test_cli_bench_table_compare(tmp_path):
    runner = CliRunner()
    out = str(tmp_path / "cli")
    res = runner.invoke(main, ["bench", "--backbone", TINY, "--weights", "random", "--data", SAMPLES, "--limit", "3",
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
    assert res.output.count("| fakecam |") == 2 and f"| {TINY} (random weights) (2) | fakecam |" in res.output
    # resume with only --out: everything else comes from the stored config; nothing left to do
    res = runner.invoke(main, ["bench", "--resume", "--out", out, "--no-progress"])
    assert res.exit_code == 0, res.output
    assert len(Run(out).rows()) == 6
    # errors name what was wrong and list what is valid
    res = runner.invoke(main, ["bench", "--backbone", TINY, "--weights", "random", "--methods", "nope", "--out", str(tmp_path / "x")])
    assert res.exit_code != 0 and "gradcam" in res.output
    res = runner.invoke(main, ["bench", "--backbone", TINY, "--weights", "random", "--metrics", "lcam,bogus", "--out", str(tmp_path / "y")])
    assert res.exit_code != 0 and "rise" in res.output
