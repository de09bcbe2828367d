"""The engine on a CUDA GPU: maps equal the CPU maps, AMP bf16 / fp16 paths, torch.compile, ROAD,
automatic batch sizes (a real out-of-memory error), pinned batches. Marked ``cuda``: skipped
without CUDA (CI has none); ``benchmarks/gpu_check.sh`` runs them (``pytest -m cuda``).

The backbone is the embedded Lite0 when its weights package is importable, else ResNet-18 with
seeded random weights; images are the six scikit-image sample photos (always available).
"""
import os

import numpy as np
import pytest
import torch

import camzoo
from camzoo.bench import BenchConfig, run
from camzoo.data.images import sample_photos
from tests.helpers import QUIET

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
METHODS = ["gradcam", "gradcam++", "xgradcam", "smoothgradcam++", "scorecam", "rise", "fakecam"]
FAST = {"rise": {"n_masks": 256}, "smoothgradcam++": {"n_samples": 2}}


def _backbone(device):
    try:
        return camzoo.load_backbone("efficientnet_lite0", device=device), "efficientnet_lite0"
    except Exception:  # no weights package: random weights, seeded
        bb = camzoo.load_backbone("resnet18", weights="random", device="cpu")
        torch.manual_seed(0)
        for m in bb.model.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
        return bb.to(device), "resnet18"


@pytest.fixture(scope="module")
def pair():
    cpu, name = _backbone("cpu")
    gpu, _ = _backbone("cuda")
    gpu.model.load_state_dict(cpu.model.state_dict())
    x = torch.stack([cpu.preprocess(im) for _, im in sample_photos()[:3]])
    return cpu, gpu, x, name


@pytest.mark.parametrize("method", METHODS)
def test_maps_on_gpu_equal_cpu_maps_in_fp32(pair, method):
    cpu, gpu, x, _ = pair
    torch.backends.cudnn.allow_tf32 = False  # fp32 means fp32 (TF32 rounds to 10 bits)
    torch.backends.cuda.matmul.allow_tf32 = False
    with torch.inference_mode():
        y = cpu.model(x).argmax(1)
    opts = FAST.get(method, {})
    a = camzoo.explain(method, cpu, x, y, **opts)
    b = camzoo.explain(method, gpu, x.cuda(), y.cuda(), **opts)
    assert b.device.type == "cuda"
    torch.testing.assert_close(b.cpu(), a, rtol=0, atol=1e-4)


def _rows(r):
    return r.rows(curves=False).drop(columns=["seconds"]).sort_values(["method", "idx"]).reset_index(drop=True)


@pytest.fixture(scope="module")
def fp32_run(tmp_path_factory, pair):
    _, _, _, name = pair
    out = tmp_path_factory.mktemp("cuda") / "fp32"
    return run(BenchConfig(backbone=name, weights=None if name == "efficientnet_lite0" else "random",
                           methods=",".join(METHODS), options=FAST, metric_options={"rise": {"steps": 16}}, device="cuda",
                           out=str(out), **QUIET), echo=lambda s: None)


def test_engine_on_cuda_picks_batch_sizes_and_matches_cpu(fp32_run, tmp_path, pair):
    r = fp32_run
    assert r.config["device"].startswith("cuda")
    proc = r.timings["process"]
    assert proc["batch_size"] >= 1 and proc["eval_batch_size"] >= 1 and proc["workers"] >= 1
    assert os.path.isfile(os.path.join(r.dir, "batch_sizes.json")) and not len(r.failures())
    _, _, _, name = pair
    if name != "efficientnet_lite0":
        return  # random weights differ between the two loads; the map test covers CPU = GPU
    cpu = run(BenchConfig(backbone=name, methods="gradcam,fakecam", metric_options={"rise": {"steps": 16}}, device="cpu",
                          out=str(tmp_path / "cpu"), **QUIET), echo=lambda s: None)
    a, b = _rows(cpu), _rows(r)
    b = b[b.method.isin(["gradcam", "fakecam"])].reset_index(drop=True)
    assert (a.c == b.c).all()
    for col in ("Y", "O_100", "O_50", "O_15", "ins_auc", "del_auc", "adcc"):
        np.testing.assert_allclose(a[col], b[col], rtol=0, atol=1e-3, err_msg=col)


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_on_cuda_keeps_maps_valid_and_rows_close(fp32_run, tmp_path, pair, amp):
    _, _, _, name = pair
    r = run(BenchConfig(backbone=name, weights=None if name == "efficientnet_lite0" else "random",
                        methods=",".join(METHODS), options=FAST, metric_options={"rise": {"steps": 16}}, device="cuda", amp=amp,
                        out=str(tmp_path / amp), **QUIET), echo=lambda s: None)
    assert not len(r.failures())  # every map finite and in [0,1]
    a, b = _rows(fp32_run), _rows(r)
    for col in ("Y", "O_100", "ins_auc", "del_auc", "coherency", "adcc"):
        assert (a[col] - b[col]).abs().max() < 0.1, col


def test_compile_on_cuda_gives_the_same_rows(fp32_run, tmp_path, pair):
    _, _, _, name = pair
    kw = dict(backbone=name, weights=None if name == "efficientnet_lite0" else "random",
              methods="gradcam,fakecam", metric_options={"rise": {"steps": 16}}, device="cuda", **QUIET)
    a = run(BenchConfig(out=str(tmp_path / "eager"), **kw), echo=lambda s: None)
    b = run(BenchConfig(out=str(tmp_path / "compiled"), compile=True, **kw), echo=lambda s: None)
    assert b.timings["process"]["compile"] is True
    ra, rb = _rows(a), _rows(b)
    assert (ra.c == rb.c).all()
    for col in ("Y", "O_100", "ins_auc", "del_auc", "adcc"):
        np.testing.assert_allclose(ra[col], rb[col], rtol=0, atol=1e-3, err_msg=col)


def test_a_real_out_of_memory_error_is_halved(tmp_path):
    from camzoo.engine.accel import largest_fitting

    total = torch.cuda.get_device_properties(0).total_memory
    tried = []

    def attempt(n):  # n GiB at once
        tried.append(n)
        t = torch.empty(n * 2 ** 30, dtype=torch.uint8, device="cuda")
        del t

    n = largest_fitting(attempt, 4096)  # 4 TiB does not fit on any GPU
    assert tried[0] == 4096 and len(tried) > 1 and n * 2 ** 30 <= total
    assert torch.cuda.memory_allocated() < 2 ** 30


def test_batches_come_in_pinned_memory(pair):
    from camzoo.data.loader import Prefetcher
    from camzoo.data.datasets import open_dataset

    cpu, _, _, _ = pair
    ds = open_dataset(None)
    with Prefetcher(ds, list(enumerate(ds.items)), {"a": cpu.preprocess}, 4, workers=2, pin_memory=True) as p:
        b = next(iter(p))
    assert b.x["a"].is_pinned() and b.x["a"].shape[0] == 4


def test_road_on_cuda_equals_road_on_cpu(pair):
    """The batched imputation and the protocol on the device: the same imputed images and
    curves as on the CPU (the same seeded fields). The imputation's float64 refinement absorbs
    TF32 convolutions (cuDNN's default) in its float32 inner solves."""
    from camzoo.metrics.scorer import Scorer
    from camzoo.metrics.road.solver import impute
    from camzoo.metrics.road.masks import removal_masks
    from camzoo.metrics.road.curves import road_curves

    cpu, gpu, x, _ = pair
    with torch.inference_mode():
        c = cpu.model(x).argmax(1)
    V = camzoo.explain("gradcam", cpu, x, c)
    x01 = cpu.denormalize(x).clamp(0, 1)
    rem = removal_masks(V, (0.3, 0.9), "lerf").reshape(-1, *x.shape[-2:])
    xx = x01.repeat_interleave(2, 0)
    flags = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cudnn.allow_tf32 = True
        on_gpu = impute(xx.cuda(), rem.cuda()).cpu()
        torch.testing.assert_close(on_gpu, impute(xx, rem), atol=5e-5, rtol=0)
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        cur_cpu = road_curves(Scorer(cpu.model, 8), x01, V, c, cpu.normalize)
        cur_gpu = road_curves(Scorer(gpu.model, 8), x01.cuda(), V.cuda(), c.cuda(), gpu.normalize)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = flags
    for order in ("morf", "lerf"):
        assert cur_gpu[order].device.type == "cuda"
        torch.testing.assert_close(cur_gpu[order].cpu(), cur_cpu[order], atol=2e-4, rtol=0)
