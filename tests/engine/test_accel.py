"""Mixed precision through the engine and the Scorer, automatic batch sizes (an injected OOM),
``--compile`` and the worker-process image loader, on CPU (the GPU paths: test_cuda.py)."""
import multiprocessing
import os

import pytest
import torch
from PIL import Image

from camzoo.bench import BenchConfig, run
from camzoo.engine.accel import AUTO_CACHE, auto_batch_size, largest_fitting, probe
from camzoo.models.testing import tiny_backbone
from tests.conftest import SAMPLES
from tests.helpers import QUIET, TINY, assert_rows_close, comparable

pytestmark = pytest.mark.skipif(not os.path.isdir(SAMPLES), reason="../shared/data/imagenet-samples is not here")


def test_amp_bf16_through_the_engine_is_close_to_fp32(tmp_path):
    """bf16 over 2 photos, every built-in method but the learned ones: every map valid, every
    forward under autocast (config.json records it per method), rows within the tolerance
    docs/bench.md gives: 0.05 for probabilities and AUCs, 5 points for AD (percent)."""
    kw = dict(backbone=TINY, weights="random", methods="gradcam,gradcam++,xgradcam,smoothgradcam++,scorecam,rise,fakecam",
              options={"rise": {"n_masks": 16}, "smoothgradcam++": {"n_samples": 2}}, limit=2,
              metric_options={"rise": {"steps": 4}}, batch_size=2, **QUIET)
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
    from camzoo.metrics.scorer import Scorer

    x = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    c = torch.tensor([0, 1, 2, 3, 4])
    p32 = Scorer(tiny.model, 4).probs(x, c, "f")
    p16 = Scorer(tiny.model, 4, amp="bf16").probs(x, c, "f")
    assert p16.dtype == torch.float32 and 0 < (p32 - p16).abs().max() < 0.02
    with pytest.raises(ValueError, match="amp='fp8'"):
        Scorer(tiny.model, 4, amp="fp8")


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

    kw = dict(backbone=TINY, weights="random", methods="gradcam,fakecam", limit=2, metric_options={"rise": {"steps": 4}}, **QUIET)
    a = run(BenchConfig(out=str(tmp_path / "eager"), **kw), echo=lambda s: None)
    monkeypatch.setattr(torch, "compile", spy)
    # aot_eager: dynamo's graph of the model and AOT autograd, without inductor's C++ build
    # (minutes on the CI CPU; benchmarks/gpu_check.sh runs inductor on the GPU)
    b = run(BenchConfig(out=str(tmp_path / "compiled"), compile="aot_eager", **kw), echo=lambda s: None)
    assert b.timings["process"]["compile"] == "aot_eager" and graphs  # the forwards were compiled
    assert_rows_close(comparable(a), comparable(b))


def test_worker_processes_load_the_same_batches_and_are_joined(tmp_path):
    from camzoo.data.loader import Prefetcher
    from camzoo.data.datasets import open_dataset

    imgs = tmp_path / "imgs"  # the runs below go beside it: a run is never inside its data
    imgs.mkdir()
    for k in range(5):
        Image.new("RGB", (40, 30), (40 * k, 10, 200)).save(imgs / f"im{k}.png")
    (imgs / "im2.png").write_bytes(b"not a png")
    ds = open_dataset(str(imgs))
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
    kw = dict(backbone=TINY, weights="random", methods="gradcam", metrics="lcam", data=str(imgs), **QUIET)
    a = run(BenchConfig(out=str(tmp_path / "thread"), **kw), echo=lambda s: None)
    b = run(BenchConfig(out=str(tmp_path / "workers"), workers=2, **kw), echo=lambda s: None)
    assert b.timings["process"]["workers"] == 2 and "load_wait" in b.timings["wall_s"]
    assert_rows_close(comparable(a), comparable(b), atol=0)  # the same batches: bit-identical
    assert list(b.errors().image_id) == ["im2"]
