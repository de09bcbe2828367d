"""Plain helpers shared by several test modules, and backbone factories for tests that name them
as ``py:tests.helpers:<function>`` (imported by subprocesses too: heavy imports stay inside the
functions)."""
import contextlib
import csv
import os
import sqlite3

import numpy as np
import pandas as pd
import torch

from camzoo.explainers.base import EXPLAINERS, Explainer
from camzoo.models.testing import tiny_backbone
from camzoo.results.run import Run

#: the tiny CNN as a ``--backbone`` name (10 classes; random weights: ``--weights random``)
TINY = "py:camzoo.models.testing:tiny_backbone"
#: the tiny CNN with 1000 classes (``tiny1000`` below): ImageNet labels are classes of it, so it
#: runs on labelled photos (a label outside a backbone's classes is refused, for every target)
TINY1000 = "py:tests.helpers:tiny1000"
#: the engine without progress bar nor figures (``run(BenchConfig(..., **QUIET))``)
QUIET = dict(progress=False, figures=False)
#: the gradient explainers that pytorch-grad-cam also implements
GRADIENT = ["gradcam", "gradcam++", "xgradcam"]


# -- backbones named py:tests.helpers:... -------------------------------------------------------
def tiny1000(weights=None):
    """The tiny CNN with 1000 classes (ImageNet labels are valid classes of it): random unless
    ``weights`` names a state_dict file."""
    bb = tiny_backbone(num_classes=1000)
    if weights not in (None, "random"):
        from camzoo.models.backbone import load_state_dict_file

        bb.model.load_state_dict(load_state_dict_file(weights))
        bb.weights_id = "file"
    return bb


def slow_rank1_tiny(weights=None):
    """The 1000-class tiny CNN (same weights as :func:`tiny1000`: ImageNet labels are classes of
    it) whose forward sleeps 0.3 s in the process whose torchrun ``RANK`` is 1: that rank is still
    working when the others are done (tests kill it there). The numbers are those of
    :func:`tiny1000`."""
    import os
    import time

    from camzoo.models.testing import TinyCNN

    class SlowTinyCNN(TinyCNN):
        def forward(self, x):
            time.sleep(0.3)
            return super().forward(x)

    bb = tiny1000()
    if os.environ.get("RANK") != "1":
        return bb
    model = SlowTinyCNN(num_classes=1000)
    model.load_state_dict(bb.model.state_dict())
    slow = tiny_backbone(num_classes=1000, model=model)
    slow.weights_id = bb.weights_id  # the same (random) weights as the other ranks'
    return slow


# -- the command line, test explainers ----------------------------------------------------------
def bench_cli(*args):
    """``camzoo bench`` on the tiny CNN with random weights, in this process (click's runner)."""
    from click.testing import CliRunner

    from camzoo.cli import main

    return CliRunner().invoke(main, ["bench", "--backbone", TINY, "--weights", "random", "--no-progress", *args])


@contextlib.contextmanager
def registered(*classes):
    """Add test explainers to the global registry for the duration of a test."""
    for c in classes:
        EXPLAINERS.add(c.name, c)
    try:
        yield
    finally:
        for c in classes:
            EXPLAINERS._items.pop(c.name, None)


class Boom(Explainer):
    """Raises on every batch that holds the sample photo 'coffee' (unless BROKEN is False)."""

    name = "boom"
    defaults: dict = {}
    BROKEN = True
    calls = 0

    def forward_passes(self, model):
        return 0

    def _explain(self, model, x, y):
        Boom.calls += 1
        if Boom.BROKEN and bool((x[:, 0, 0, 0] == Boom.marker).any()):
            raise RuntimeError("boom on purpose")
        return torch.rand(x.shape[0], *x.shape[-2:], generator=torch.Generator().manual_seed(0))


def marker_of(photo: str) -> float:
    """The first value of a sample photo preprocessed for the tiny CNN (``Boom.marker``)."""
    from camzoo.data.images import sample_photos

    bb = tiny_backbone()
    return float(bb.preprocess(dict(sample_photos())[photo])[0, 0, 0])


# -- data ----------------------------------------------------------------------------------------
def sample_rows(n):
    """``n`` rows of ``../shared/data/imagenet-samples/labels.csv``, evenly spaced."""
    from tests.conftest import SAMPLES

    with open(os.path.join(SAMPLES, "labels.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    return rows[:: len(rows) // n][:n]


def write_odd_images(d):
    """Gray, RGBA, CMYK, 16-bit, 3x2 and palette images and a corrupt JPEG in folder ``d``;
    returns the readable ones' file names."""
    from PIL import Image

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    Image.fromarray(rgb[..., 0], "L").save(d / "gray.png")
    Image.fromarray(np.dstack([rgb, np.full((40, 50), 128, np.uint8)]), "RGBA").save(d / "rgba.png")
    Image.fromarray(rgb).convert("CMYK").save(d / "cmyk.jpg")
    Image.fromarray((rng.integers(0, 65536, (40, 50))).astype(np.uint16)).save(d / "deep16.png")
    Image.fromarray(rgb[:3, :2]).save(d / "tiny.png")
    Image.fromarray(rgb).convert("P").save(d / "palette.gif")
    (d / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    return ["gray.png", "rgba.png", "cmyk.jpg", "deep16.png", "tiny.png", "palette.gif"]


# -- stored rows ---------------------------------------------------------------------------------
def count_rows(db):
    """The rows in the result store ``db`` now (0 while it cannot be read), read-only."""
    try:
        c = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        try:
            return c.execute("SELECT COUNT(*) FROM rows").fetchone()[0]
        finally:
            c.close()
    except sqlite3.Error:
        return 0


#: rows of runs whose batches hold other images agree to float rounding only (convolutions and
#: sums over another batch). Measured on CPU, 8 photos, batch 3 vs 2 shards: at most 2.7e-7 on
#: the tiny CNN (6.7e-7 on Lite0, whose AD terms, in percent, moved by up to 2.3e-4:
#: docs/bench.md). Everything else (ids, classes, IC, counts) is compared exactly.
ATOL = 1e-6
#: insertion / deletion rank the map's pixels: a rounding-level change of two nearly equal map
#: values can move a pixel across a step boundary. On an AVX-512 machine (oneDNN picks other
#: kernels by batch size) one Smooth Grad-CAM++ map of the tiny CNN moved its insertion AUC by
#: 9.6e-6, its deletion AUC by 3.1e-5 and one deletion-curve point by 1.2e-4 (2026-12-02); on
#: AVX2 they stayed within ATOL. A wrong image, seed or merge moves them by 1e-2 and more.
RANK_ATOL = 1e-3
RANKED = ("ins_auc", "del_auc", "ins_curve", "del_curve")


def comparable(r: Run) -> pd.DataFrame:
    """The rows without timing, in (method, idx) order; curves as float64 arrays."""
    rows = r.rows(curves=True).drop(columns=["seconds"])
    return rows.sort_values(["method", "idx"]).reset_index(drop=True)


def assert_rows_close(a: pd.DataFrame, b: pd.DataFrame, atol: float = ATOL) -> None:
    """Equal rows: values within ``atol`` (AD terms, in percent, within ``100 * atol``)."""
    assert list(a.columns) == list(b.columns)
    for c in a.columns:
        if c in ("ins_curve", "del_curve"):
            tol = max(atol, RANK_ATOL) if atol else 0.0
            np.testing.assert_allclose(np.stack(a[c]), np.stack(b[c]), rtol=0, atol=tol, err_msg=c)
        elif a[c].dtype.kind == "f":
            tol = 100 * atol if c.startswith("ad_") else atol
            if c in RANKED and atol:
                tol = max(atol, RANK_ATOL)
            np.testing.assert_allclose(a[c], b[c], rtol=0, atol=tol, err_msg=c)
        else:
            assert a[c].tolist() == b[c].tolist(), c


def legacy_run(tmp_path):
    """A copy of the committed pre-layering run (tests/fixtures/run_v0: config, manifest and
    its store rebuilt from rows.sql) in ``tmp_path/legacy``; returns its path."""
    import shutil

    from tests.conftest import REPO

    fixture = os.path.join(REPO, "tests", "fixtures", "run_v0")
    run = tmp_path / "legacy"
    run.mkdir()
    for f in ("config.json", "manifest.csv"):
        shutil.copy(os.path.join(fixture, f), run / f)
    con = sqlite3.connect(run / "rows.sqlite")
    con.executescript(open(os.path.join(fixture, "rows.sql")).read())
    con.close()
    return run
