"""Files in the run identity by content: a learned explainer's ``checkpoint`` and the backbone's
``--weights FILE`` are recorded in ``config.json`` with their sha256, and a resume whose file
changed since the run started is refused before anything is written (a run stored before the
hashes were recorded resumes, and records them)."""
import hashlib
import json
import os
import shutil
import sqlite3

import pytest
import torch
from click.testing import CliRunner

from camzoo.cli import main
from camzoo.results.run import Run
from tests.conftest import SAMPLES

#: the tiny CNN with 1000 classes (the sample photos' ImageNet labels are its classes)
TINY1000 = "py:tests.helpers:tiny1000"


def _bench(*args):
    return CliRunner().invoke(main, ["bench", "--no-progress", "--no-figures", *args])


def _sha256(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture(scope="module")
def weights_id():
    """The ``weights_id`` of ``TINY1000 --weights random`` (an L-CAM head is trained for it)."""
    from camzoo import load_backbone

    return load_backbone(TINY1000, "random", "cpu").weights_id


def _head(path, seed, weights_id):
    """An L-CAM-Img checkpoint for the tiny CNN (1000 classes, 16 channels at ``features``),
    its head initialized from ``seed``."""
    from camzoo.explainers.learned.checkpoint import CHECKPOINT_FORMAT, save_checkpoint
    from camzoo.explainers.learned.lcam import LCAMHead

    head = LCAMHead(16, 1000, torch.Generator().manual_seed(seed))
    save_checkpoint({"format": CHECKPOINT_FORMAT, "task": "lcam", "state_dict": head.state_dict(),
                     "epoch": 1, "epochs": 1, "history": [],
                     "metadata": {"variant": "img", "backbone": "tiny", "weights_id": weights_id,
                                  "layer": "features", "in_channels": 16, "num_classes": 1000}}, path)
    return str(path)


def _interrupt(out, keep=2):
    """Leave only the first ``keep`` images of the run's rows, as a kill after the first batch
    does (the rest is what a resume computes)."""
    con = sqlite3.connect(os.path.join(out, "rows.sqlite"))
    con.execute("DELETE FROM rows WHERE idx >= ?", (keep,))
    con.commit()
    con.close()


def _lcam_run(tmp_path, weights_id):
    """An L-CAM-Img run of 4 images in batches of 2, interrupted after its first batch; returns
    (run dir, its checkpoint heads/x.pt, another head heads/y.pt)."""
    (tmp_path / "heads").mkdir()
    ck = _head(tmp_path / "heads" / "x.pt", 0, weights_id)
    other = _head(tmp_path / "heads" / "y.pt", 1, weights_id)
    out = str(tmp_path / "run")
    res = _bench("--backbone", TINY1000, "--weights", "random", "--data", SAMPLES, "--limit", "4",
                 "--methods", "lcam-img", "--opt", f"lcam-img.checkpoint={ck}", "--metrics", "lcam",
                 "--batch-size", "2", "--out", out)
    assert res.exit_code == 0, res.output
    _interrupt(out)
    return out, ck, other


def test_config_json_records_the_checkpoint_by_content(tmp_path, weights_id):
    out, ck, _ = _lcam_run(tmp_path, weights_id)
    cfg = json.loads(open(os.path.join(out, "config.json")).read())
    assert cfg["methods"]["lcam-img"]["file_sha256"] == {"checkpoint": _sha256(ck)}
    assert cfg["backbone"]["weights_sha256"] is None  # --weights random: no file


def test_a_resume_whose_checkpoint_changed_is_refused_before_anything_is_written(tmp_path, weights_id):
    out, ck, other = _lcam_run(tmp_path, weights_id)
    original = open(ck, "rb").read()
    stored = open(os.path.join(out, "config.json")).read()
    shutil.copy(other, ck)  # the same path, another head
    res = _bench("--resume", "--out", out)
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output
    assert f"methods.lcam-img.options.checkpoint: the file {ck} changed since the run started" in res.output
    assert "restore the original file, or start a new run with another --out" in res.output
    with Run(out) as r:
        assert len(r.rows()) == 2  # nothing was computed with the other head
    assert open(os.path.join(out, "config.json")).read() == stored
    # the original file back: the resume finishes with it
    open(ck, "wb").write(original)
    res = _bench("--resume", "--out", out)
    assert res.exit_code == 0, res.output
    with Run(out) as r:
        assert len(r.rows()) == 4


def test_a_run_stored_without_hashes_resumes_and_records_them(tmp_path, weights_id):
    """A config.json written before the hashes were recorded: the stored content is unknown, so
    the resume is accepted and records the files as they are now."""
    out, ck, _ = _lcam_run(tmp_path, weights_id)
    path = os.path.join(out, "config.json")
    cfg = json.loads(open(path).read())
    del cfg["methods"]["lcam-img"]["file_sha256"], cfg["backbone"]["weights_sha256"]
    open(path, "w").write(json.dumps(cfg, indent=2))
    res = _bench("--resume", "--out", out)
    assert res.exit_code == 0, res.output
    cfg = json.loads(open(path).read())
    assert cfg["methods"]["lcam-img"]["file_sha256"] == {"checkpoint": _sha256(ck)}
    with Run(out) as r:
        assert len(r.rows()) == 4


def test_a_resume_whose_weights_file_changed_is_refused(tmp_path):
    from tests.helpers import tiny1000

    weights = str(tmp_path / "tiny.pt")
    torch.save(tiny1000().model.state_dict(), weights)
    out = str(tmp_path / "run")
    res = _bench("--backbone", TINY1000, "--weights", weights, "--data", SAMPLES, "--limit", "4",
                 "--methods", "fakecam", "--metrics", "lcam", "--batch-size", "2", "--out", out)
    assert res.exit_code == 0, res.output
    cfg = json.loads(open(os.path.join(out, "config.json")).read())
    assert cfg["backbone"]["weights_sha256"] == _sha256(weights)
    _interrupt(out)
    from camzoo.models.testing import tiny_backbone

    torch.save(tiny_backbone(num_classes=1000, seed=1).model.state_dict(), weights)  # other weights
    res = _bench("--resume", "--out", out)
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output
    assert f"backbone.weights: the file {weights} changed since the run started" in res.output
    with Run(out) as r:
        assert len(r.rows()) == 2
