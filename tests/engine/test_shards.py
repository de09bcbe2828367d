"""Sharded runs (torchrun with gloo, ``--shard I/N`` + ``camzoo merge``) equal one process: a
killed rank rerun alone, the rules of a sharded run, failures kept per shard."""
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pandas as pd
import pytest
from click.testing import CliRunner

from camzoo.bench import BenchConfig, Run, merge, run
from camzoo.cli import main
from camzoo.engine.shard import IncompleteShardsError, Shard, parse_shard, resolve_shard
from camzoo.results.run import RunLock
from tests.conftest import REPO, SAMPLES
from tests.helpers import QUIET, TINY, TINY1000, Boom, assert_rows_close, comparable, registered
from tests.helpers import count_rows as _count_rows
from tests.helpers import marker_of as _marker_of

SLOW = "py:tests.helpers:slow_rank1_tiny"  # TINY1000; sleeps in torchrun's rank 1
OPTS = {"rise": {"n_masks": 8}, "smoothgradcam++": {"n_samples": 2}}
# batch 3: the one process forms batches of images [0-2] [3-5] [6,7]; shard 0 of 2 forms
# [0,2,4] [6] and shard 1 [1,3,5] [7] -- other batches, same rows
RUN = dict(methods="gradcam,fakecam,smoothgradcam++,rise", options=OPTS, data=SAMPLES, limit=8,
           seed=1, metric_options={"rise": {"steps": 4}}, batch_size=3, eval_batch_size=16)
CLI = ["--methods", "gradcam,fakecam,smoothgradcam++,rise", "--opt", "rise.n_masks=8",
       "--opt", "smoothgradcam++.n_samples=2", "--data", SAMPLES, "--limit", "8", "--seed", "1",
       "--steps", "4", "--batch-size", "3", "--eval-batch-size", "16", "--no-progress"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO}
pytestmark = pytest.mark.skipif(not os.path.isdir(SAMPLES), reason="../shared/data/imagenet-samples is not here")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The one-process run every sharded run must equal."""
    out = tmp_path_factory.mktemp("ref") / "run"
    return run(BenchConfig(backbone=TINY1000, weights="random", out=str(out), **RUN, **QUIET), echo=lambda s: None)


def assert_same_run(got: Run, ref: Run) -> None:
    """Per-image rows equal (timing aside) within :data:`ATOL`, forward counts identical,
    tables equal at their printed precision."""
    a, b = comparable(got), comparable(ref)
    assert len(a) == 32 and not a.duplicated(["method", "image_id"]).any()
    assert_rows_close(a, b)
    fa = got.forwards().sort_values(["method", "family"]).reset_index(drop=True)
    fb = ref.forwards().sort_values(["method", "family"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(fa, fb)
    pd.testing.assert_frame_equal(got.table().drop(columns="s/img").round(2),
                                  ref.table().drop(columns="s/img").round(2))


def torchrun(*args, nproc=2):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
            str(nproc), "-m", "camzoo", "bench", *args]


def _worker_of_rank(parent: int, rank: int):
    """The pid of torchrun's worker process with ``RANK=rank`` (a child of ``parent``)."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            if ppid != parent:
                continue
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env:
            return int(pid)
    return None


def test_shard_specs():
    assert parse_shard("1/4") == (1, 4) and parse_shard(" 0 / 1 ") == (0, 1)
    for bad in ("4/4", "1", "-1/2", "a/b", "0/0"):
        with pytest.raises(ValueError, match="--shard"):
            parse_shard(bad)
    s = resolve_shard(None, {"WORLD_SIZE": "8", "RANK": "5"})
    assert s == Shard(5, 8, True) and s.store_name == "rows.rank-5-of-8.sqlite"
    assert [i for i in range(20) if s.owns(i)] == [5, 13]  # round robin over the manifest
    assert resolve_shard("2/3", {}) == Shard(2, 3, False) and resolve_shard(None, {}).store_name == "rows.sqlite"
    with pytest.raises(ValueError, match="torchrun"):
        resolve_shard("0/2", {"WORLD_SIZE": "2", "RANK": "0"})


@pytest.mark.slow
def test_torchrun_two_processes_equal_one_process(tmp_path, reference):
    out = str(tmp_path / "run")
    r = subprocess.run(torchrun("--backbone", TINY1000, "--weights", "random", *CLI, "--out", out), cwd=REPO, env=ENV,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "merged 2 shards" in r.stdout and "| gradcam |" in r.stdout  # rank 0 wrote the tables
    got = Run(out)
    assert_same_run(got, reference)
    cfg = got.config
    assert cfg["world_size"] == 2 and set(cfg["shards"]) == {"rank-0-of-2", "rank-1-of-2"}
    assert all(s["torchrun"] for s in cfg["shards"].values()) and "merged" in cfg
    assert set(got.timings["shards"]) == {"rank-0-of-2", "rank-1-of-2"}
    assert [got.timings["shards"][f"rank-{k}-of-2"]["process"]["images"] for k in (0, 1)] == [4, 4]
    assert os.path.isfile(os.path.join(out, "table.md")) and os.path.isfile(os.path.join(out, "grid.png"))


@pytest.mark.slow
def test_a_killed_rank_is_rerun_alone_and_the_merge_completes(tmp_path, reference):
    out = str(tmp_path / "run")
    db0, db1 = (os.path.join(out, f"rows.rank-{k}-of-2.sqlite") for k in (0, 1))
    proc = subprocess.Popen(torchrun("--backbone", SLOW, "--weights", "random", *CLI, "--out", out), cwd=REPO, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            # rank 0 is done (waiting at the barrier), rank 1 has stored its first batch only
            if _count_rows(db0) == 16 and 0 < _count_rows(db1) < 16:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before rank 1 could be killed"
        pid = _worker_of_rank(proc.pid, 1)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=300)
    assert proc.returncode != 0 and _count_rows(db1) == 12  # whole batches only: 3 images x 4 methods
    # the merge refuses, naming the shard and how to complete it
    res = CliRunner().invoke(main, ["merge", out])
    assert res.exit_code == 1, res.output
    assert "shard 1/2 (rows.rank-1-of-2.sqlite): incomplete (4 of 16 (method, image) pairs not done)" in res.output
    assert f"camzoo bench --shard 1/2 --resume --out {out}" in res.output and "shard 0/2" not in res.output
    assert not os.path.exists(os.path.join(out, "rows.sqlite"))
    # the dead rank's shard, alone and without torch.distributed; it is the last: it merges
    r = subprocess.run([sys.executable, "-m", "camzoo", "bench", "--shard", "1/2", "--resume",
                        "--out", out, "--no-progress"], cwd=REPO, env=ENV, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "1 image(s) to do (3 done" in r.stdout and "every shard is complete: merging" in r.stdout
    got = Run(out)
    assert_same_run(got, reference)
    assert len(got.config["resumed"]) == 1


def test_job_array_shards_merge_and_the_rules_of_a_sharded_run(tmp_path, reference):
    out = str(tmp_path / "run")
    cli = CliRunner()

    def bench(*extra):
        return cli.invoke(main, ["bench", "--backbone", TINY1000, "--weights", "random", *CLI, "--out", out, *extra])

    res = bench("--shard", "0/2")
    assert res.exit_code == 0, res.output
    assert f"when they are: camzoo merge {out}" in res.output
    with Run(out, store="rows.rank-0-of-2.sqlite") as r0:
        assert sorted(set(r0.rows().idx)) == [0, 2, 4, 6]
    with pytest.raises(IncompleteShardsError, match=r"shard 1/2 \(rows.rank-1-of-2.sqlite\): missing"):
        merge(out)
    res = cli.invoke(main, ["merge", out])
    assert res.exit_code == 1 and "1 of 2 shard(s) not complete" in res.output
    assert "Traceback" not in res.output
    # the same shard again, another number of shards, one process: each refused, clearly
    res = bench("--shard", "0/2")
    assert res.exit_code == 1 and "already holds a run (rows.rank-0-of-2.sqlite)" in res.output
    res = bench("--shard", "0/3", "--resume")
    assert res.exit_code == 1 and "it was run as 2 shards" in res.output and "--shard I/2" in res.output
    res = cli.invoke(main, ["bench", "--resume", "--out", out])
    assert res.exit_code == 1 and "cannot continue" in res.output and "as one process" in res.output
    res = cli.invoke(main, ["bench", "--backbone", TINY1000, "--weights", "random", *CLI, "--out", out, "--shard", "1/2", "--steps", "5"])
    assert res.exit_code == 1 and "protocols.rise.steps" in res.output  # a sibling must be the same run
    with RunLock(out):  # as if the other shard, done at the same moment, were merging
        res = bench("--shard", "1/2")
    assert res.exit_code == 0, res.output
    assert "another process is merging the shards" in res.output
    assert not os.path.exists(os.path.join(out, "rows.sqlite"))
    res = cli.invoke(main, ["merge", out])
    assert res.exit_code == 0 and "| gradcam |" in res.output, res.output
    assert_same_run(Run(out), reference)
    res = cli.invoke(main, ["merge", out, "--no-figures"])  # again: the same store
    assert res.exit_code == 0, res.output
    assert_same_run(Run(out), reference)
    # a shard that lost rows (as if killed before them) is incomplete: the merge refuses
    c = sqlite3.connect(os.path.join(out, "rows.rank-1-of-2.sqlite"))
    c.execute("DELETE FROM rows WHERE idx = 7 AND method IN ('rise', 'gradcam')")
    c.commit()
    c.close()
    with pytest.raises(IncompleteShardsError, match=r"shard 1/2 .*incomplete \(2 of 16 \(method, image\) pairs"):
        merge(out)


def test_failures_are_kept_per_shard_and_after_the_merge(tmp_path):
    Boom.marker, Boom.BROKEN = _marker_of("coffee"), True
    out = str(tmp_path / "run")
    cli = CliRunner()

    def bench(*extra):  # the six sample photos, one per batch
        return cli.invoke(main, ["bench", "--backbone", TINY, "--weights", "random", "--methods", "boom,fakecam", "--metrics",
                                 "lcam", "--batch-size", "1", "--no-progress", "--out", out, *extra])

    with registered(Boom):
        a, b = bench("--shard", "0/2"), bench("--shard", "1/2")
        ids = pd.read_csv(os.path.join(out, "manifest.csv")).set_index("image_id")["index"]
        bad = int(ids["coffee"]) % 2  # the shard that holds the failing photo
        assert a.exit_code == (3 if bad == 0 else 0), a.output  # shard 0: its own failures
        assert b.exit_code == 3, b.output  # shard 1 merged: the run's failures
        assert cli.invoke(main, ["merge", out]).exit_code == 3
        with Run(out) as r:
            f = r.failures()
            assert list(f.image_id) == ["coffee"] and list(f.kind) == ["error"] and len(r.rows()) == 11
        Boom.BROKEN = False
        res = bench("--shard", f"{bad}/2", "--resume")
        assert res.exit_code == 0 and "merging" in res.output, res.output
        with Run(out) as r:
            assert not len(r.failures()) and len(r.rows()) == 12
