"""Scale and speed: sharded runs (torchrun with gloo, ``--shard I/N`` + ``camzoo merge``), mixed
precision through the engine, automatic batch sizes (an injected OOM), ``--compile``, and the
worker-process image loader. All on CPU with the tiny CNN; the GPU paths are in test_cuda.py."""
import multiprocessing
import os
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
from camzoo.bench import BenchConfig, Run, merge, run
from camzoo.cli import main
from camzoo.engine.accel import AUTO_CACHE, auto_batch_size, largest_fitting, probe
from camzoo.engine.shard import IncompleteShardsError, Shard, parse_shard, resolve_shard
from camzoo.models.testing import tiny_backbone
from camzoo.results import RunLock

from .conftest import REPO, SAMPLES
from .test_bench import _count_rows
from .test_robustness import Boom, _marker_of, registered

TINY = "py:camzoo.models.testing:tiny_backbone"
SLOW = "py:tests.helpers:slow_rank1_tiny"  # the tiny CNN; sleeps in torchrun's rank 1
OPTS = {"rise": {"n_masks": 8}, "smoothgradcam++": {"n_samples": 2}}
# batch 3: the one process forms batches of images [0-2] [3-5] [6,7]; shard 0 of 2 forms
# [0,2,4] [6] and shard 1 [1,3,5] [7] -- other batches, same rows
RUN = dict(methods="gradcam,fakecam,smoothgradcam++,rise", options=OPTS, data=SAMPLES, limit=8,
           seed=1, steps=4, batch_size=3, eval_batch_size=16)
CLI = ["--methods", "gradcam,fakecam,smoothgradcam++,rise", "--opt", "rise.n_masks=8",
       "--opt", "smoothgradcam++.n_samples=2", "--data", SAMPLES, "--limit", "8", "--seed", "1",
       "--steps", "4", "--batch-size", "3", "--eval-batch-size", "16", "--no-progress"]
QUIET = dict(progress=False, figures=False)
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO}

pytestmark = pytest.mark.skipif(not os.path.isdir(SAMPLES), reason="../shared/data/imagenet-samples is not here")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The one-process run every sharded run must equal."""
    out = tmp_path_factory.mktemp("ref") / "run"
    return run(BenchConfig(backbone=TINY, weights="random", out=str(out), **RUN, **QUIET), echo=lambda s: None)


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


# -- shards -------------------------------------------------------------------------------------
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


def test_torchrun_two_processes_equal_one_process(tmp_path, reference):
    out = str(tmp_path / "run")
    r = subprocess.run(torchrun("--backbone", TINY, "--weights", "random", *CLI, "--out", out), cwd=REPO, env=ENV,
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
        return cli.invoke(main, ["bench", "--backbone", TINY, "--weights", "random", *CLI, "--out", out, *extra])

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
    res = cli.invoke(main, ["bench", "--backbone", TINY, "--weights", "random", *CLI, "--out", out, "--shard", "1/2", "--steps", "5"])
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


# -- mixed precision ------------------------------------------------------------------------------
def test_amp_bf16_through_the_engine_is_close_to_fp32(tmp_path):
    """bf16 over 2 photos, every built-in method but the learned ones: every map valid, every
    forward under autocast (config.json records it per method), rows within the tolerance
    docs/bench.md gives: 0.05 for probabilities and AUCs, 5 points for AD (percent)."""
    kw = dict(backbone=TINY, weights="random", methods="gradcam,gradcam++,xgradcam,smoothgradcam++,scorecam,rise,fakecam",
              options={"rise": {"n_masks": 16}, "smoothgradcam++": {"n_samples": 2}}, limit=2,
              steps=4, batch_size=2, **QUIET)
    a = run(BenchConfig(out=str(tmp_path / "fp32"), **kw), echo=lambda s: None)
    b = run(BenchConfig(out=str(tmp_path / "bf16"), amp="bf16", **kw), echo=lambda s: None)
    assert b.config["amp"] == "bf16" and a.config["amp"] is None
    assert {m: v["options"].get("amp") for m, v in b.config["methods"].items()} == {
        "gradcam": "bf16", "gradcam++": "bf16", "xgradcam": "bf16", "smoothgradcam++": "bf16",
        "scorecam": "bf16", "rise": "bf16", "fakecam": None}
    assert not len(b.failures()) and len(b.rows()) == 14  # no invalid (non-finite) map
    ra, rb = comparable(a), comparable(b)
    assert (ra.c == rb.c).all()
    assert 0 < (ra.Y - rb.Y).abs().max() < 0.02  # the clean forward did run in bf16
    for col in ("O_100", "O_50", "O_15", "adcc_O", "ins_auc", "del_auc", "coherency", "complexity", "adcc"):
        assert (ra[col] - rb[col]).abs().max() < 0.05, col
    for col in ("ad_100", "ad_50", "ad_15"):
        assert (ra[col] - rb[col]).abs().max() < 5.0, col
    assert b.forwards().equals(a.forwards())


def test_scorer_runs_under_autocast_and_returns_float32(tiny):
    from camzoo.metrics import Scorer

    x = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    c = torch.tensor([0, 1, 2, 3, 4])
    p32 = Scorer(tiny.model, 4).probs(x, c, "f")
    p16 = Scorer(tiny.model, 4, amp="bf16").probs(x, c, "f")
    assert p16.dtype == torch.float32 and 0 < (p32 - p16).abs().max() < 0.02
    with pytest.raises(ValueError, match="amp='fp8'"):
        Scorer(tiny.model, 4, amp="fp8")


def _scaled_tiny(factor: float):
    bb = tiny_backbone()
    with torch.no_grad():
        bb.model.fc.weight.mul_(factor)
    return bb


def test_fp16_gradients_are_scaled_and_an_overflow_is_recomputed_in_fp32(monkeypatch):
    from camzoo.explainers import gradient

    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([1, 2])
    # gradients of ~1e-7 at the features: fp16 subnormals (below 6.1e-5) keep a bit or two
    small = _scaled_tiny(3e-5)
    ref = {m: camzoo.explain(m, small, x, y) for m in ("gradcam", "gradcam++")}
    for m, r in ref.items():
        assert r.amax() > 0.9
        assert (camzoo.explain(m, small, x, y, amp="fp16") - r).abs().max() < 0.005, m
    monkeypatch.setattr(gradient, "FP16_LOSS_SCALE", 1.0)
    for m, r in ref.items():  # unscaled, the fp16 gradients lose the map
        assert (camzoo.explain(m, small, x, y, amp="fp16") - r).abs().max() > 0.05, m
    monkeypatch.undo()
    # weights beyond fp16's range (NaN logits): the backward is recomputed in fp32 -- exactly
    # Grad-CAM; Smooth Grad-CAM++ still weights the fp16 activations of its clean forward
    huge = _scaled_tiny(1e6)
    for m, atol in (("gradcam", 0.0), ("smoothgradcam++", 0.01)):
        exact = camzoo.explain(m, huge, x, y)
        assert torch.isfinite(exact).all() and exact.amax() > 0.5
        torch.testing.assert_close(camzoo.explain(m, huge, x, y, amp="fp16"), exact, rtol=0, atol=atol)


def test_smoothgradcampp_noise_does_not_depend_on_the_batch(tiny):
    """An image's map is the same alone, in a batch, at another position in it."""
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    y = torch.tensor([1, 4, 7])
    batch = camzoo.explain("smoothgradcam++", tiny, x, y, n_samples=3)
    flipped = camzoo.explain("smoothgradcam++", tiny, x.flip(0), y.flip(0), n_samples=3).flip(0)
    for i in range(3):
        alone = camzoo.explain("smoothgradcam++", tiny, x[i:i + 1], y[i:i + 1], n_samples=3)
        torch.testing.assert_close(batch[i:i + 1], alone, rtol=0, atol=1e-6)
    torch.testing.assert_close(batch, flipped, rtol=0, atol=1e-6)
    assert (batch - camzoo.explain("smoothgradcam++", tiny, x, y, n_samples=3, seed=1)).abs().max() > 1e-3


# -- batch sizes, compile, loading ----------------------------------------------------------------
def test_automatic_batch_size_halves_on_oom_and_is_cached(tmp_path, tiny):
    tried = []

    def attempt(n):
        tried.append(n)
        if n > 20:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")

    assert largest_fitting(attempt, 64) == 16 and tried == [64, 32, 16]
    tried.clear()
    assert auto_batch_size(tiny, "eval_batch_size", "bf16", str(tmp_path), attempt=attempt) == 16
    assert tried == [512, 256, 128, 64, 32, 16]
    assert (tmp_path / AUTO_CACHE).read_text().count('"tiny|') == 1

    def never(n):
        raise AssertionError("probed again")

    assert auto_batch_size(tiny, "eval_batch_size", "bf16", str(tmp_path), attempt=never) == 16
    assert auto_batch_size(tiny, "batch_size", "bf16", str(tmp_path), attempt=attempt) == 16
    with pytest.raises(AssertionError):  # another precision is another entry
        auto_batch_size(tiny, "eval_batch_size", None, str(tmp_path), attempt=never)
    with pytest.raises(torch.cuda.OutOfMemoryError):  # not even 1 fits
        largest_fitting(lambda n: attempt(99), 4)
    with pytest.raises(ValueError):  # other errors are not OOM
        largest_fitting(lambda n: int("x"), 4)
    for kind in ("batch_size", "eval_batch_size"):  # the real trials run
        probe(tiny, kind, None)(3)


def test_compile_gives_the_same_rows(tmp_path, monkeypatch):
    from torch._dynamo.backends.registry import lookup_backend

    graphs = []
    real = torch.compile

    def spy(model, backend="inductor", **kw):  # counts the graphs dynamo hands the backend
        inner = lookup_backend(backend)
        return real(model, backend=lambda gm, ex: graphs.append(len(ex)) or inner(gm, ex), **kw)

    kw = dict(backbone=TINY, weights="random", methods="gradcam,fakecam", limit=2, steps=4, **QUIET)
    a = run(BenchConfig(out=str(tmp_path / "eager"), **kw), echo=lambda s: None)
    monkeypatch.setattr(torch, "compile", spy)
    # aot_eager: dynamo's graph of the model and AOT autograd, without inductor's C++ build
    # (minutes on the CI CPU; benchmarks/gpu_check.sh runs inductor on the GPU)
    b = run(BenchConfig(out=str(tmp_path / "compiled"), compile="aot_eager", **kw), echo=lambda s: None)
    assert b.timings["process"]["compile"] == "aot_eager" and graphs  # the forwards were compiled
    assert_rows_close(comparable(a), comparable(b))


def test_worker_processes_load_the_same_batches_and_are_joined(tmp_path):
    from camzoo.data import Prefetcher, open_dataset

    for k in range(5):
        Image.new("RGB", (40, 30), (40 * k, 10, 200)).save(tmp_path / f"im{k}.png")
    (tmp_path / "im2.png").write_bytes(b"not a png")
    ds = open_dataset(str(tmp_path))
    items = list(enumerate(ds.items))
    bb = tiny_backbone()

    def batches(**kw):
        with Prefetcher(ds, items, {"a": bb.preprocess}, 2, **kw) as p:
            return [([i for i, _ in b.items], b.x["a"], b.errors) for b in p]

    want = batches()
    got = batches(workers=2, pin_memory=False)
    assert [(ii, e) for ii, _, e in got] == [(ii, e) for ii, _, e in want] == [
        ([0, 1], []), ([3, 4], [("im2", 2, "im2.png", want[1][2][0][3])])]
    for (_, xa, _), (_, xb, _) in zip(got, want):
        assert torch.equal(xa, xb)
    # closed in the middle: the workers are gone
    with Prefetcher(ds, items, {"a": bb.preprocess}, 1, workers=2) as p:
        next(iter(p))
    assert not multiprocessing.active_children()
    # through the engine: the same rows
    kw = dict(backbone=TINY, weights="random", methods="gradcam", metrics="lcam", data=str(tmp_path), **QUIET)
    a = run(BenchConfig(out=str(tmp_path / "thread"), **kw), echo=lambda s: None)
    b = run(BenchConfig(out=str(tmp_path / "workers"), workers=2, **kw), echo=lambda s: None)
    assert b.timings["process"]["workers"] == 2 and "load_wait" in b.timings["wall_s"]
    assert_rows_close(comparable(a), comparable(b), atol=0)  # the same batches: bit-identical
    assert list(b.errors().image_id) == ["im2"]
