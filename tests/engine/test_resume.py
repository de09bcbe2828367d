"""A resumed run: the rows of an uninterrupted run after a SIGKILL, and only the same run (every
key of the run identity refused when changed)."""
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch

from camzoo.bench import BenchConfig, Run, run
from tests.conftest import REPO, SAMPLES, STEPS
from tests.helpers import QUIET, TINY1000
from tests.helpers import bench_cli as _bench
from tests.helpers import count_rows as _count_rows


def _bench_cmd(out, *extra):
    return [sys.executable, "-m", "camzoo", "bench", "--backbone", TINY1000, "--weights", "random", "--data", SAMPLES,
            "--limit", "40", "--seed", "1", "--methods", "gradcam,fakecam", "--steps", "4",
            "--batch-size", "2", "--eval-batch-size", "16", "--out", out, "--no-progress", *extra]


def _comparable(run_):
    rows = run_.rows(curves=True).drop(columns=["seconds"])
    for col in ("ins_curve", "del_curve"):
        rows[col] = rows[col].map(lambda a: a.tobytes())
    return rows.sort_values(["method", "idx"]).reset_index(drop=True)


@pytest.mark.slow
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
    ref = run(BenchConfig(backbone=TINY1000, weights="random", data=SAMPLES, limit=40, seed=1, methods="gradcam,fakecam",
                          metric_options={"rise": {"steps": 4}}, batch_size=2, eval_batch_size=16, out=str(tmp_path / "ref"),
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
        run(BenchConfig(backbone=TINY1000, weights="random", methods="gradcam,fakecam", data=SAMPLES, limit=6, seed=3,
                        metric_options={"rise": {"steps": STEPS + 1}}, out=tiny_run.dir, resume=True, progress=False))
    with pytest.raises(FileExistsError, match="resume"):
        run(BenchConfig(backbone=TINY1000, weights="random", methods="fakecam", data=SAMPLES, limit=6, out=tiny_run.dir,
                        progress=False))


def test_resuming_with_the_default_layer_named_is_no_difference(tmp_path):
    out = tmp_path / "run"
    assert _bench("--methods", "gradcam", "--metrics", "lcam", "--limit", "2", "--out", str(out)).exit_code == 0
    res = _bench("--resume", "--out", str(out), "--layer", "features")
    assert res.exit_code == 0, res.output


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("id") / "run"
    r = run(BenchConfig(backbone=TINY1000, weights="random", methods="gradcam,fakecam", data=SAMPLES,
                        limit=3, seed=1, metric_options={"rise": {"steps": 4}}, out=str(out), **QUIET), echo=lambda s: None)
    r.close()
    return str(out)


#: one change per BenchConfig field declared part of the run identity (tests/engine/test_config.py
#: checks that every such field is here), and the key the refusal must name
IDENTITY_CHANGES = [
    # another backbone whose classes include the photos' labels (a 10-class one is refused for
    # the labels before the identity is checked)
    ({"backbone": "efficientnet_lite0"}, "backbone.name"),
    ({"weights": "TINY1000_FILE"}, "backbone.weights_id"),  # trained weights instead of random ones
    ({"layer": "nope"}, None),  # refused by the backbone before the identity check
    ({"methods": "gradcam,fakecam,gradcam++"}, "not in the stored run"),
    ({"limit": 2}, "data.manifest_hash"),
    ({"seed": 2}, "data.manifest_hash"),
    ({"data": os.path.join(os.path.dirname(SAMPLES), "imagenette-224")}, "data.manifest_hash"),
    ({"labels": "LABELS_FILE"}, "data.manifest_hash"),
    ({"devkit": "NO_DEVKIT"}, None),  # refused by the data layer: no such devkit
    ({"subset": "SUBSET_FILE"}, "data.manifest_hash"),
    ({"target": "gt"}, "target"),
    ({"options": {"gradcam": {"layer": "nope"}}}, None),
    ({"metric_options": {"lcam": {"nus": [0.5]}}}, "protocols.lcam.nus"),
    ({"metrics": "lcam"}, "protocols"),
    ({"metric_options": {"rise": {"steps": 5}}}, "protocols.rise.steps"),
    ({"amp": "bf16"}, "  amp: stored None, now 'bf16'"),  # the engine's own forwards
]


@pytest.mark.parametrize("change,key", IDENTITY_CHANGES)
def test_the_resume_identity_covers_every_key(small_run, change, key, tmp_path):
    if "data" in change and not os.path.isdir(change["data"]):
        pytest.skip("../shared/data/imagenette-224 is not here")
    from camzoo.engine.config import resume_config

    if change.get("weights") == "TINY1000_FILE":
        from tests.helpers import tiny1000

        change = {"weights": str(tmp_path / "tiny1000.pt")}
        torch.save(tiny1000().model.state_dict(), change["weights"])
    elif change.get("labels") == "LABELS_FILE":  # the same photos with other labels
        with open(os.path.join(SAMPLES, "labels.csv")) as f:
            rows = f.read().splitlines()
        (tmp_path / "labels.csv").write_text("\n".join([rows[0]] + [
            ",".join([r.split(",")[0], str((int(r.split(",")[1]) + 1) % 1000)]) for r in rows[1:]]) + "\n")
        change = {"labels": str(tmp_path / "labels.csv")}
    elif change.get("devkit") == "NO_DEVKIT":
        change = {"devkit": str(tmp_path / "no-devkit")}
    elif change.get("subset") == "SUBSET_FILE":  # two of the run's three images
        with Run(small_run) as r:
            keep = sorted(r.rows().image_id.unique())[:2]
        lines = [f"{os.path.basename(i)}.JPEG {int(r0.split(',')[1])}" for i in keep
                 for r0 in open(os.path.join(SAMPLES, "labels.csv")).read().splitlines()[1:]
                 if r0.split(",")[0].startswith(os.path.basename(i))]
        (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
        change = {"subset": str(tmp_path / "list.txt")}
    cfg = resume_config(small_run, change)
    with pytest.raises((ValueError, FileNotFoundError)) as e:
        run(cfg, echo=lambda s: None)
    if key is not None:
        assert "cannot resume" in str(e.value) and key in str(e.value), str(e.value)
    with Run(small_run) as r:
        assert len(r.rows()) == 6  # nothing was written
