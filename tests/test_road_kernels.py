"""The compiled CPU kernels of the ROAD multigrid (``metrics/road_kernels.py``): each one equals
its torch counterpart in ``metrics/road.py``; without a compiler, ROAD falls back to torch."""
import pytest
import torch

from camzoo.metrics import road_kernels as K
from camzoo.metrics.road import (_CL, _FineOperator, _apply_stencil, _interp, _restrict, impute,
                                 use_kernels)

needs_kernels = pytest.mark.skipif(not K.available(), reason=f"no ROAD kernels: {K.error()}")

SIZES = [(1, 1), (1, 5), (6, 1), (2, 2), (3, 4), (9, 9), (17, 10), (64, 47)]
DTYPES = [torch.float32, torch.float64]


def _tol(dtype):
    return 2e-6 if dtype == torch.float32 else 1e-13


@needs_kernels
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("H,W", SIZES)
def test_fine_operator_kernel_equals_the_torch_operator(H, W, dtype):
    g = torch.Generator().manual_seed(H * 100 + W)
    N, C = 3, 3
    rem = torch.rand(N, H, W, generator=g) < 0.6
    rem[:, 0, 0] = False
    op = _FineOperator(rem, dtype, C)  # the torch operator (channels-last)
    m = rem[:, None].to(dtype).contiguous()
    d = op.d[0, 0].contiguous()
    u = (torch.randn(N, C, H, W, generator=g, dtype=dtype) * m).contiguous()
    r = torch.randn(N, C, H, W, generator=g, dtype=dtype)
    dinv = torch.rand(N, 1, H, W, generator=g, dtype=dtype)
    base = torch.randn(N, C, H, W, generator=g, dtype=dtype)
    Au = op.apply(u.contiguous(memory_format=_CL))
    tol = _tol(dtype)
    got = K.fine_op(u, m, d)
    assert got.is_contiguous() and got.shape == u.shape
    torch.testing.assert_close(got, Au.contiguous(), atol=tol, rtol=0)
    torch.testing.assert_close(K.fine_op(u, m, d, r=r, sign=-1.0), r - Au, atol=tol, rtol=0)
    torch.testing.assert_close(K.fine_op(u, m, d, r=r, dinv=dinv, base=base, sign=-1.0),
                               base + dinv * (r - Au), atol=tol, rtol=0)
    torch.testing.assert_close(K.fine_op(u, m, d, dinv=dinv, sign=2.0), dinv * 2 * Au,
                               atol=2 * tol, rtol=0)
    # any channel count (the Galerkin probes use 9): the mask is shared by the channels
    u9 = (torch.randn(N, 9, H, W, generator=g, dtype=dtype) * m).contiguous()
    f9 = _FineOperator(rem, dtype, 9)
    torch.testing.assert_close(K.fine_op(u9, m, d), f9.apply(u9.contiguous(memory_format=_CL))
                               .contiguous(), atol=tol, rtol=0)


@needs_kernels
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("H,W", SIZES)
def test_stencil_and_transfer_kernels_equal_the_torch_ones(H, W, dtype):
    g = torch.Generator().manual_seed(H * 100 + W + 7)
    N, C = 2, 3
    tol = _tol(dtype)
    # a 9-point stencil with coefficients everywhere, also those pointing out of the grid (the
    # kernel, like the torch one, must not read outside)
    S = torch.randn(N, 9, H, W, generator=g, dtype=dtype)
    u = torch.randn(N, C, H, W, generator=g, dtype=dtype)
    r = torch.randn(N, C, H, W, generator=g, dtype=dtype)
    dinv = torch.rand(N, 1, H, W, generator=g, dtype=dtype)
    Su = _apply_stencil([S[:, k:k + 1] for k in range(9)], u)
    torch.testing.assert_close(K.st9_op(u, S), Su, atol=tol, rtol=0)
    torch.testing.assert_close(K.st9_op(u, S, r=r, sign=-1.0), r - Su, atol=tol, rtol=0)
    torch.testing.assert_close(K.st9_op(u, S, r=r, dinv=dinv, base=u, sign=-1.0),
                               u + dinv * (r - Su), atol=tol, rtol=0)
    # P^T and P (even and odd sides: the last odd point of an even side has one coarse neighbour)
    got = K.restrict(u)
    assert got.shape == (N, C, (H + 1) // 2, (W + 1) // 2)
    torch.testing.assert_close(got, _restrict(u), atol=tol, rtol=0)
    uc = torch.randn(N, C, (H + 1) // 2, (W + 1) // 2, generator=g, dtype=dtype)
    s = torch.rand(N, 1, H, W, generator=g, dtype=dtype)
    want = u + s * _interp(uc, H, W)
    out = u.clone()
    assert K.interp_add_(out, uc, s) is out
    torch.testing.assert_close(out, want, atol=tol, rtol=0)


@needs_kernels
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("h,w", [(1, 1), (2, 5), (7, 3), (112, 112)])
def test_pick_is_the_gather_by_colour(h, w, dtype):
    from camzoo.metrics.road import _probes

    Z = torch.randn(2, 9, h, w, generator=torch.Generator().manual_seed(h + w), dtype=dtype)
    _, _, idx = _probes(2 * h - 1, 2 * w - 1, dtype, "cpu")  # idx is [9, h, w]
    assert idx.shape == (9, h, w)
    assert torch.equal(K.pick(Z), Z.gather(1, idx[None].expand(2, 9, h, w)))


@needs_kernels
def test_kernels_refuse_tensors_they_cannot_read():
    u = torch.zeros(1, 3, 4, 4)
    m = torch.ones(1, 1, 4, 4)
    d = torch.ones(4, 4)
    with pytest.raises(ValueError, match="contiguous CPU torch.float32"):
        K.fine_op(u.contiguous(memory_format=_CL), m, d)
    with pytest.raises(ValueError, match="m: need a contiguous CPU torch.float32"):
        K.fine_op(u, m.double(), d)
    with pytest.raises(ValueError, match="float32 or float64"):
        K.restrict(u.half())
    with pytest.raises(ValueError, match="does not match"):
        K.interp_add_(u, torch.zeros(1, 3, 3, 2), m)
    # shapes the C code would read out of bounds with
    with pytest.raises(ValueError, match=r"m: need shape \(1, 1, 4, 4\); got \(1, 1, 4, 3\)"):
        K.fine_op(u, m[..., :3].contiguous(), d)
    with pytest.raises(ValueError, match="d: need shape"):
        K.fine_op(u, m, torch.ones(4, 5))
    with pytest.raises(ValueError, match="r: need shape"):
        K.fine_op(u, m, d, r=torch.zeros(1, 2, 4, 4))
    with pytest.raises(ValueError, match="dinv: need shape"):
        K.fine_op(u, m, d, dinv=torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match="S: need shape"):
        K.st9_op(u, torch.zeros(1, 8, 4, 4))
    with pytest.raises(ValueError, match="base: need shape"):
        K.st9_op(u, torch.zeros(1, 9, 4, 4), base=torch.zeros(1, 3, 4, 3))
    with pytest.raises(ValueError, match="s: need shape"):
        K.interp_add_(u, torch.zeros(1, 3, 2, 2), torch.zeros(1, 1, 4, 2))
    with pytest.raises(ValueError, match="9 colour probes"):
        K.pick(torch.zeros(1, 8, 4, 4))


def test_without_kernels_road_falls_back_to_torch(monkeypatch, tmp_path):
    """No compiler: ``available()`` says why, auto mode imputes with torch, ``kernels=True``
    refuses; ``CAMZOO_ROAD_KERNELS=0`` turns them off."""
    monkeypatch.setattr(K, "_tried", False)
    monkeypatch.setattr(K, "_lib", None)
    monkeypatch.setattr(K, "_error", "")
    monkeypatch.setenv("CAMZOO_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    assert not K.available()
    assert "no-such-cc" in K.error()
    assert not list(tmp_path.rglob("*.so"))
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 12, 12, generator=g)
    rem = torch.rand(2, 12, 12, generator=g) < 0.5
    info = {}
    out = impute(x, rem, info=info)
    assert info["kernels"] is False and info["residual"] <= 1e-6
    assert torch.equal(out[:, :, ~rem[0]][0], x[0][:, ~rem[0]])
    with pytest.raises(RuntimeError, match="ROAD kernels unavailable: .*no-such-cc"):
        impute(x, rem, kernels=True)
    monkeypatch.setenv("CAMZOO_ROAD_KERNELS", "0")
    monkeypatch.setattr(K, "_tried", False)
    assert not K.available() and not use_kernels("cpu")
    with pytest.raises(ValueError, match="run on the CPU"):
        use_kernels("cuda", True)
    assert use_kernels("cuda") is False


@needs_kernels
def test_kernels_are_compiled_once_into_the_cache(monkeypatch, tmp_path):
    monkeypatch.setattr(K, "_tried", False)
    monkeypatch.setattr(K, "_lib", None)
    monkeypatch.setenv("CAMZOO_CACHE", str(tmp_path))
    assert K.available()
    libs = list((tmp_path / "kernels").glob("road_kernels_*.so"))
    assert len(libs) == 1
    stamp = libs[0].stat().st_mtime_ns
    monkeypatch.setattr(K, "_tried", False)
    assert K.available() and libs[0].stat().st_mtime_ns == stamp  # loaded, not rebuilt
    assert "double" in K.source() and "fine_op_f32" in K.source()


@needs_kernels
def test_a_compiler_without_openmp_still_builds_the_kernels(monkeypatch, tmp_path):
    """The flags are tried in turn: a compiler that refuses ``-fopenmp`` gets a one-thread
    build, and the kernels give the same values."""
    import shutil

    real = shutil.which("cc") or shutil.which("gcc")
    fake = tmp_path / "cc-no-openmp"
    fake.write_text(f'#!/bin/sh\nfor a in "$@"; do [ "$a" = -fopenmp ] && exit 1; done\n'
                    f'exec {real} "$@"\n')
    fake.chmod(0o755)
    u = torch.randn(2, 3, 9, 7, generator=torch.Generator().manual_seed(5))
    want = K.restrict(u)
    monkeypatch.setattr(K, "_tried", False)
    monkeypatch.setattr(K, "_lib", None)
    monkeypatch.setenv("CAMZOO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CC", str(fake))
    assert K.available(), K.error()
    lib = next((tmp_path / "cache" / "kernels").glob("road_kernels_*.so"))
    assert b"GOMP_parallel" not in lib.read_bytes()  # built without OpenMP
    torch.testing.assert_close(K.restrict(u), want, atol=0, rtol=0)


@needs_kernels
def test_an_unusable_cache_folder_falls_back_to_the_temp_folder(monkeypatch, tmp_path):
    import tempfile

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("CAMZOO_CACHE", str(blocker / "cache"))  # cannot be created
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(K, "_tried", False)
    monkeypatch.setattr(K, "_lib", None)
    assert K.available(), K.error()
    assert len(list((tmp_path / "tmp").glob("camzoo-*/kernels/road_kernels_*.so"))) == 1


@needs_kernels
def test_the_kernels_do_not_depend_on_the_thread_count():
    """Each image plane is one thread's work: the same bits with 1 or 3 threads."""
    g = torch.Generator().manual_seed(11)
    u = torch.randn(3, 3, 31, 17, generator=g)
    m = (torch.rand(3, 1, 31, 17, generator=g) < 0.5).float()
    d = torch.rand(31, 17, generator=g)
    S = torch.randn(3, 9, 31, 17, generator=g)
    before = torch.get_num_threads()
    outs = []
    try:
        for nt in (1, 3):
            torch.set_num_threads(nt)
            outs.append((K.fine_op(u, m, d, r=u, sign=-1.0), K.st9_op(u, S), K.restrict(u),
                         K.interp_add_(u.clone(), u[..., :16, :9].contiguous(), m), K.pick(S)))
    finally:
        torch.set_num_threads(before)
    for a, b in zip(*outs):
        assert torch.equal(a, b)


@needs_kernels
def test_a_damaged_library_in_the_cache_is_built_again(tmp_path):
    """In fresh processes (one that has loaded a library keeps its mapping): build, damage the
    file (an interrupted copy, a full disk), load again."""
    import os
    import subprocess
    import sys

    code = ("from camzoo.metrics import road_kernels as K; import sys; "
            "sys.exit(0 if K.available() else f'unavailable: {K.error()}')")
    env = {**os.environ, "CAMZOO_CACHE": str(tmp_path)}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=300)
    (lib,) = (tmp_path / "kernels").glob("road_kernels_*.so")
    lib.write_bytes(b"not a shared library")
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=300)
    assert lib.read_bytes()[:4] == b"\x7fELF"
