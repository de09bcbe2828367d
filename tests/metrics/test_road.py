"""Protocol ``road``: the imputation vs an independent scipy solve, the multigrid's Galerkin
operators and SPD V-cycle, pytorch-grad-cam's ROAD, the protocol and its CLI (resuming runs
stored with the retired option ``kernels``). The accuracy scale: test_road_accuracy.py."""
import json
import os
import shutil
import sqlite3

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import camzoo
from camzoo.engine.config import resolve_protocols
from camzoo.metrics.protocol import PROTOCOLS, MetricInputs, table_metrics
from camzoo.metrics.scorer import Scorer
from camzoo.metrics.road.curves import DEFAULT_FRACTIONS, road_curves
from camzoo.metrics.road.solver import DEFAULT_TOL, impute
from camzoo.metrics.road.operators import NEIGHBOUR_WEIGHTS
from camzoo.metrics.road.masks import random_fields, removal_masks, removed_count
from camzoo.models.testing import tiny_backbone

from ..conftest import SAMPLES


def scipy_impute(img: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """Reference: one sparse system per image, built from the definition and solved by scipy.

    For each removed pixel i: d_i u_i - sum_{removed j} w_ij u_j = sum_{kept k} w_ik x_k, with
    w = 1/6 (direct), 1/12 (diagonal) over the in-image neighbours and d_i their sum.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.linalg import spsolve

    C, H, W = img.shape
    ys, xs = np.nonzero(removed)
    n = len(ys)
    var = -np.ones((H, W), dtype=np.int64)
    var[ys, xs] = np.arange(n)
    rows, cols, vals = [], [], []
    diag = np.zeros(n)
    b = np.zeros((n, C))
    for (dy, dx), w in {(-1, -1): 1 / 12, (-1, 0): 1 / 6, (-1, 1): 1 / 12, (0, -1): 1 / 6,
                        (0, 1): 1 / 6, (1, -1): 1 / 12, (1, 0): 1 / 6, (1, 1): 1 / 12}.items():
        ny, nx = ys + dy, xs + dx
        inside = (ny >= 0) & (ny < H) & (nx >= 0) & (nx < W)
        diag[inside] += w
        i, ny, nx = np.nonzero(inside)[0], ny[inside], nx[inside]
        nb_removed = removed[ny, nx]
        rows += list(i[nb_removed])
        cols += list(var[ny[nb_removed], nx[nb_removed]])
        vals += [-w] * int(nb_removed.sum())
        kept = ~nb_removed
        np.add.at(b, i[kept], w * img[:, ny[kept], nx[kept]].T)
    A = coo_matrix((vals + list(diag), (rows + list(range(n)), cols + list(range(n)))), shape=(n, n))
    sol = spsolve(A.tocsc(), b).reshape(n, C)
    out = img.astype(np.float64).copy()
    out[:, ys, xs] = sol.T
    return out


def _maps(B, H, W, seed=0, smooth=True):
    g = torch.Generator().manual_seed(seed)
    if not smooth:
        return torch.rand(B, H, W, generator=g)
    return F.interpolate(torch.rand(B, 1, 3, 4, generator=g), size=(H, W), mode="bilinear",
                         align_corners=False)[:, 0]


# -- imputation ---------------------------------------------------------------------------------
@pytest.mark.parametrize("H,W", [(19, 27), (40, 40)])
def test_imputation_equals_an_independent_scipy_solve(H, W):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, H, W, generator=g)
    V = _maps(2, H, W)
    fr = (0.1, 0.5, 0.9)
    rem = torch.cat([removal_masks(V, fr, o).reshape(-1, H, W) for o in ("morf", "lerf")])
    scattered = torch.rand(2, H, W, generator=g) < 0.3  # many small holes
    border = torch.zeros(1, H, W, dtype=torch.bool)
    border[0, :, :3] = True  # a removed band along the left edge and the corners
    rem = torch.cat([rem, scattered, border])
    xx = x[torch.arange(len(rem)) % 2]
    info = {}
    out = impute(xx, rem, info=info)
    assert set(info) == {"outer", "inner", "residual"}
    assert info["residual"] <= DEFAULT_TOL and info["outer"] >= 1  # the default tolerance
    assert info["inner"] <= 20  # the multigrid preconditioner works (plain CG needs > 40 here)
    for i in range(len(rem)):
        ref = scipy_impute(xx[i].double().numpy(), rem[i].numpy())
        np.testing.assert_allclose(out[i].double().numpy(), ref, atol=1e-4, rtol=0)
        keep = ~rem[i]
        assert torch.equal(out[i][:, keep], xx[i][:, keep])  # kept pixels untouched
    # each image converges on its own: the same values whatever else is in the batch
    torch.testing.assert_close(impute(xx[3:6], rem[3:6]), out[3:6], atol=1e-7, rtol=0)
    # a constant image stays constant (weights sum to 1 over the in-image neighbours)
    # (at a tolerance below float32's reach: the float64 refinement gets there)
    info = {}
    c = impute(torch.full((1, 3, H, W), 0.25, dtype=torch.float64), rem[:1], tol=1e-10, info=info)
    assert info["outer"] >= 2
    torch.testing.assert_close(c, torch.full_like(c, 0.25), atol=1e-9, rtol=0)


def test_imputation_at_224_px_on_cam_like_maps_is_within_1e_4_of_scipy():
    """The protocol's size: real photos, CAM-shaped maps (7x7 upsampled, ReLU zeros broken by
    the authors' tie noise), the fractions with the largest removed regions."""
    from camzoo.data.images import sample_photos

    H = W = 224
    photos = [img.convert("RGB").resize((W, H)) for _, img in sample_photos()[:2]]
    x = torch.stack([torch.from_numpy(np.asarray(p, dtype=np.float32) / 255).permute(2, 0, 1)
                     for p in photos])
    g = torch.Generator().manual_seed(3)
    V = F.interpolate(torch.randn(2, 1, 7, 7, generator=g), size=(H, W), mode="bilinear",
                      align_corners=False)[:, 0].clamp_min(0)
    fr = (0.5, 0.9)
    ties = random_fields(0, len(fr), (H, W), 1e-4)
    rem = torch.cat([removal_masks(V, fr, o, ties).reshape(-1, H, W) for o in ("morf", "lerf")])
    xx = x[torch.arange(len(rem)) // len(fr) % 2]
    info = {}
    out = impute(xx, rem, info=info)
    assert info["inner"] <= 12  # the bilinear multigrid (the 2x2-aggregation V-cycle took 15)
    err = [float(np.abs(out[i].double().numpy() - scipy_impute(xx[i].double().numpy(),
                                                              rem[i].numpy())).max())
           for i in range(len(rem))]
    assert max(err) <= 1e-4, err


def _dense(op, shape, dtype=torch.float64):
    """The matrix of a linear map on fields [N,1,*shape] (one image): column j = op(e_j)."""
    n = shape[0] * shape[1]
    E = torch.eye(n, dtype=dtype).view(n, 1, *shape)
    return op(E).reshape(n, -1).T


@pytest.mark.parametrize("h,w", [(1, 1), (1, 2), (2, 1), (2, 2), (3, 4), (7, 6), (8, 9), (224, 223)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_channels_last_transfers_equal_the_sliced_ones(h, w, dtype):
    """The fine grid's convolution transfers (``P^T = Q D``, ``P = D Q^T``) equal the slices."""
    from camzoo.metrics.road.multigrid import interp, interp_cl, restrict, restrict_cl_

    g = torch.Generator().manual_seed(h * 1000 + w)
    r = torch.randn(2, 3, h, w, generator=g, dtype=dtype).contiguous(memory_format=torch.channels_last)
    want = restrict(r)
    got = restrict_cl_(r.clone())
    assert got.shape == want.shape == (2, 3, (h + 1) // 2, (w + 1) // 2) and got.is_contiguous()
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(got, want, atol=tol, rtol=0)
    uc = torch.randn(2, 3, (h + 1) // 2, (w + 1) // 2, generator=g, dtype=dtype)
    got = interp_cl(uc, h, w)
    assert got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got, interp(uc, h, w), atol=tol, rtol=0)


@pytest.mark.parametrize("H,W,kind", [(10, 13, "random"), (9, 8, "random"), (21, 20, "random"),
                                      (21, 20, "isolated")])
def test_multigrid_levels_are_exact_galerkin_operators_and_the_v_cycle_is_spd(H, W, kind):
    from camzoo.metrics.road.multigrid import Multigrid, interp, restrict
    from camzoo.metrics.road.operators import OFFSETS, FineOperator


    g = torch.Generator().manual_seed(H * W)
    if kind == "random":
        rem = torch.rand(1, H, W, generator=g) < 0.6
        rem[0, 1::2, 1::2] |= torch.rand(H // 2, W // 2, generator=g) < 0.3
    else:  # lone pixels between 4 coarse points that see nothing else: P loses rank
        rem = torch.zeros(1, H, W, dtype=torch.bool)
        rem[0, 1::4, 1::4] = True
    fine = FineOperator(rem, torch.float64, 1)
    mg = Multigrid(fine, coarse_size=2)
    assert len(mg.ops) >= 3  # several coarse levels
    n = H * W

    def fine_apply(E):  # E [n,1,H,W]: the fine operator of this one mask on n fields
        f = FineOperator(rem.expand(E.shape[0], H, W), torch.float64, 1)
        return f.apply((E * f.m1).contiguous(memory_format=torch.channels_last))

    A = _dense(fine_apply, (H, W))
    sup = rem.reshape(n).double()
    for lvl in range(1, len(mg.ops)):
        h, w = mg.sizes[lvl - 1]
        hc, wc = mg.sizes[lvl]
        # P: bilinear from the coarse points, onto the unknowns of the finer level; R = P^T
        P = _dense(lambda E: interp(E, h, w), (hc, wc)) * sup[:, None]
        R = _dense(lambda E: restrict(E * sup.view(1, 1, h, w)), (h, w))  # on the unknowns
        np.testing.assert_allclose(R.numpy(), P.T.numpy(), atol=1e-12)
        Ac = P.T @ A @ P
        S = torch.cat(mg.ops[lvl].S, 1)[0]  # [9, hc, wc]
        dense = torch.zeros(hc * wc, hc * wc, dtype=torch.float64)
        for k, (dy, dx) in enumerate(OFFSETS):
            for iy in range(hc):
                for ix in range(wc):
                    jy, jx = iy + dy, ix + dx
                    if 0 <= jy < hc and 0 <= jx < wc:
                        dense[iy * wc + ix, jy * wc + jx] = S[k, iy, ix]
        np.testing.assert_allclose(dense.numpy(), Ac.numpy(), atol=1e-12)
        A, sup = Ac, mg.support[lvl].reshape(-1).double()
        if lvl < len(mg.ops) - 1:  # its smoother converges: omega_c * lambda_max(D^-1 A) < 2
            on = sup.bool()
            lam = torch.linalg.eigvals(mg.dinv[lvl].reshape(-1)[on, None] * A[on][:, on]).real
            assert float(lam.max()) < 1.9, (lvl, float(lam.max()))
    # the preconditioner: symmetric and positive definite on the fine unknowns
    B = _dense(lambda E: torch.cat([mg(e[None].contiguous(memory_format=torch.channels_last))
                                    for e in E * fine.m1]), (H, W))
    keep = rem.reshape(n)
    B = B[keep][:, keep]
    np.testing.assert_allclose(B.numpy(), B.T.numpy(), atol=1e-10)
    assert float(torch.linalg.eigvalsh(B).min()) > 0


def test_weights_are_the_authors():
    from pytorch_grad_cam.metrics.road import neighbors_weights  # copied from the authors' code

    assert dict(neighbors_weights) == NEIGHBOUR_WEIGHTS


def test_imputation_refuses_fully_removed_images():
    with pytest.raises(ValueError, match="at least one kept pixel"):
        impute(torch.rand(1, 3, 4, 4), torch.ones(1, 4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"fractions must be in \(0, 1\)"):
        removed_count(1.0, 100)


# -- which pixels are removed -------------------------------------------------------------------
def test_removal_masks_counts_orders_and_ties():
    H = W = 32
    V = _maps(3, H, W, smooth=False)  # distinct values
    fr = DEFAULT_FRACTIONS
    morf = removal_masks(V, fr, "morf")
    lerf = removal_masks(V, fr, "lerf")
    for j, p in enumerate(fr):
        k = int(np.floor(round(p * H * W, 9)))  # 0.7 * 1024 = 716.8 -> 716
        assert k == removed_count(p, H * W)
        assert (morf[:, j].flatten(1).sum(1) == k).all() and (lerf[:, j].flatten(1).sum(1) == k).all()
        srt = V.flatten(1).sort(1, descending=True).values
        # MoRF removes exactly the k highest values, LeRF the k lowest
        assert (V.flatten(1)[morf[:, j].flatten(1)].view(3, k).amin(1) == srt[:, k - 1]).all()
        assert (V.flatten(1)[lerf[:, j].flatten(1)].view(3, k).amax(1) == srt[:, -k]).all()
    # a constant map: without tie noise the first pixels in raster order go (a contiguous
    # band, the shape leak ROAD wants to avoid); with the authors' 1e-4 noise they are scattered
    const = torch.ones(1, H, W)
    band = removal_masks(const, (0.25,), "morf")[0, 0]
    assert band[:8].all() and not band[8:].any()
    ties = random_fields(0, 1, (H, W), 1e-4)
    spread = removal_masks(const, (0.25,), "morf", ties)[0, 0]
    assert int(spread.sum()) == 256 and int(spread[:8].sum()) < 128
    # pytorch-grad-cam's percentile threshold removes one pixel more at 32x32 (10 %: 103 vs 102)
    v = V[0].numpy()
    assert int((v >= np.percentile(v, 90)).sum()) == 103 and removed_count(0.1, 1024) == 102


# -- the protocol --------------------------------------------------------------------------------
class _Recorder(nn.Module):
    """Records every input and returns the logits of a fixed linear map of the mean colour."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 4)
        self.inputs = []

    def forward(self, x):
        self.inputs.append(x.detach().clone())
        return self.lin(x.mean(dim=(2, 3)))


def test_noise_is_seeded_in_image_space_and_rows_do_not_depend_on_the_batch():
    H = W = 24
    g = torch.Generator().manual_seed(3)
    x01 = torch.rand(3, 3, H, W, generator=g)
    V = _maps(3, H, W, seed=4)
    c = torch.tensor([0, 1, 2])
    mean, std = torch.tensor([0.4, 0.5, 0.6]), torch.tensor([0.2, 0.3, 0.5])

    def normalize(z):
        return (z - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)

    fr = (0.2, 0.6)
    rec = _Recorder()
    sc = Scorer(rec, eval_batch_size=5)
    cur = road_curves(sc, x01, V, c, normalize, fractions=fr, noise=0.01, seed=7)
    assert sc.counts["road"] == 3 * 2 * 2
    seen = torch.cat(rec.inputs) * std.view(1, 3, 1, 1) + mean.view(1, 3, 1, 1)  # back to [0,1]
    ties = random_fields(7, 4, (H, W), 1e-4)
    noise = random_fields(8, 4, (3, H, W), 0.01)
    q = 0
    for k, order in enumerate(("morf", "lerf")):
        rem = removal_masks(V, fr, order, ties[2 * k:2 * k + 2])
        for i in range(3):
            for j in range(2):
                clean = impute(x01[i:i + 1], rem[i:i + 1, j])[0]
                diff = seen[q] - clean
                m = rem[i, j]
                torch.testing.assert_close(diff[:, m], noise[2 * k + j][:, m], atol=2e-5, rtol=0)
                assert diff[:, ~m].abs().max() < 1e-6  # kept pixels: only normalization rounding
                q += 1
    assert 0.008 < float(noise.std()) < 0.012
    # the same rows image by image, with other chunk sizes (shared, seeded fields)
    for i in range(3):
        one = road_curves(Scorer(rec, 1), x01[i:i + 1], V[i:i + 1], c[i:i + 1], normalize,
                          fractions=fr, seed=7, solve_batch=1)
        for order in ("morf", "lerf"):
            torch.testing.assert_close(one[order][0], cur[order][i], atol=1e-6, rtol=0)
    other = road_curves(Scorer(rec, 4), x01, V, c, normalize, fractions=fr, seed=8)
    assert not torch.allclose(other["morf"], cur["morf"], atol=1e-7, rtol=0)
    # imputed chunks (5 systems) are held until they fill a forward (3 images), in order
    rec.inputs.clear()
    held = road_curves(Scorer(rec, 3), x01, V, c, normalize, fractions=fr, seed=7, solve_batch=5)
    assert [len(t) for t in rec.inputs] == [3, 3, 3, 3]
    for order in ("morf", "lerf"):
        torch.testing.assert_close(held[order], cur[order], atol=1e-6, rtol=0)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # numpy 2 on pytorch-grad-cam's code
def test_morf_lerf_and_combined_equal_pytorch_grad_cam_where_the_definitions_coincide(monkeypatch):
    """Coinciding definitions: pytorch-grad-cam's inputs in [0,1] (the model normalizes inside),
    noise off, distinct map values (no ties), p*H*W an integer (40x40: its percentile threshold
    then removes exactly p*H*W pixels), softmax targets, scores (not differences)."""
    import pytorch_grad_cam.metrics.road as pgc
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    bb = tiny_backbone(input_size=40, seed=2)
    H = W = 40
    g = torch.Generator().manual_seed(5)
    x01 = torch.rand(3, 3, H, W, generator=g)
    V = _maps(3, H, W, seed=6, smooth=False) * 0.5 + _maps(3, H, W, seed=7) * 0.5
    with torch.inference_mode():
        c = bb.model(bb.normalize(x01)).argmax(1)
    ours = road_curves(Scorer(bb.model, 7), x01, V, c, bb.normalize, noise=0.0, tie_noise=0.0)
    wrapped = nn.Sequential(_Normalize(bb), bb.model).eval()
    targets = [ClassifierOutputSoftmaxTarget(int(k)) for k in c]
    cams = V.numpy().astype(np.float32)
    for j, p in enumerate(DEFAULT_FRACTIONS):
        q = round(100 * (1 - p))  # pytorch-grad-cam's percentile keeps the pixels below it
        for cls, order in ((pgc.ROADMostRelevantFirst, "morf"), (pgc.ROADLeastRelevantFirst, "lerf")):
            metric = cls(percentile=q)
            metric.perturbation.imputer.noise = 0.0
            theirs = metric(x01, cams, targets, wrapped, return_diff=False)
            np.testing.assert_allclose(ours[order][:, j].numpy(), theirs, atol=2e-5, rtol=0)
    # ROADCombined (its imputers built inside, noise 0): (LeRF - MoRF) / 2 of the means
    monkeypatch.setattr(pgc.NoisyLinearImputer.__init__, "__defaults__", (0.0, pgc.neighbors_weights))
    combined = pgc.ROADCombined(percentiles=[10, 50, 90])(x01, cams, targets, wrapped)
    sel = [0, 4, 8]
    ref = (ours["lerf"][:, sel].mean(1) - ours["morf"][:, sel].mean(1)) / 2
    np.testing.assert_allclose(ref.numpy(), combined, atol=2e-5, rtol=0)


class _Normalize(nn.Module):
    def __init__(self, bb):
        super().__init__()
        self.bb = bb

    def forward(self, z):
        return self.bb.normalize(z)


def test_protocol_rows_columns_options_and_all_road():
    bb = tiny_backbone()
    g = torch.Generator().manual_seed(0)
    x01 = torch.rand(2, 3, 32, 32, generator=g)
    x = bb.normalize(x01)
    V = _maps(2, 32, 32)
    with torch.inference_mode():
        p = torch.softmax(bb.model(x), 1)
    c = p.argmax(1)
    sc = Scorer(bb.model, 16)
    proto = PROTOCOLS.get("road")
    rows = proto.evaluate(MetricInputs(sc, x, V, c, p.max(1).values, bb.normalize, bb.denormalize,
                                       x01=x01), fractions=(0.25, 0.5))
    # both scales (tests/metrics/test_road_accuracy.py): accuracy (the paper's) and probability of c
    assert set(rows) == set(proto.row_keys()) | set(proto.curve_keys()) == {
        "road_acc_morf", "road_acc_lerf", "road_acc", "road_acc_morf_curve", "road_acc_lerf_curve",
        "road_morf", "road_lerf", "road", "road_morf_curve", "road_lerf_curve"}
    assert rows["road_morf_curve"].shape == (2, 2) and sc.counts["road"] == 2 * 2 * 2
    for scale in ("", "acc_"):
        torch.testing.assert_close(rows[f"road_{scale}morf"], rows[f"road_{scale}morf_curve"].mean(1))
        torch.testing.assert_close(rows[f"road_{scale}lerf"], rows[f"road_{scale}lerf_curve"].mean(1))
    torch.testing.assert_close(rows["road"], (rows["road_lerf"] - rows["road_morf"]) / 2)
    torch.testing.assert_close(rows["road_acc"], (rows["road_acc_lerf"] - rows["road_acc_morf"]) / 2)
    cols = [(m.column + m.arrow, m.key, m.scale) for m in table_metrics(["road"])]
    assert cols == [("ROAD-MoRF\u2193", "road_acc_morf", 100.0), ("ROAD-LeRF\u2191", "road_acc_lerf", 100.0),
                    ("ROAD\u2191", "road_acc", 100.0)]
    with pytest.raises(ValueError, match="has no option.*fractions="):
        proto.options(steps=3)
    # the retired option kernels (compiled CPU kernels, removed): any old value is accepted and
    # changes nothing, so runs stored with it resume and their tables are read
    with pytest.raises(ValueError, match="kernels .deprecated, no effect. must be one of auto, c, "
                                         "torch; got 'gpu'"):
        proto.options(kernels="gpu")
    assert proto.options(kernels="c") == proto.options() and "kernels" not in proto.options()
    assert "kernels" in proto.runtime_options  # not part of a stored run's identity
    assert table_metrics(["road"], {"road": {"kernels": "auto"}}) == table_metrics(["road"])
    inputs = MetricInputs(sc, x, V, c, p.max(1).values, bb.normalize, bb.denormalize, x01=x01)
    for k in ("auto", "c", "torch"):
        again = proto.evaluate(inputs, fractions=(0.25, 0.5), kernels=k)
        for key, v in rows.items():
            assert torch.equal(again[key], v), (k, key)
    # 'all' stays the three papers' protocols; 'all,road' adds ROAD, in table order
    assert resolve_protocols("all") == ["lcam", "rise", "adcc"]
    assert resolve_protocols("all,road") == ["lcam", "rise", "adcc", "road"]
    assert resolve_protocols("road,lcam") == ["lcam", "road"]
    assert resolve_protocols("road,all,lcam") == ["lcam", "rise", "adcc", "road"]
    with pytest.raises(Exception, match="road"):
        resolve_protocols("all,nope")


# -- command line: a tiny ViT from a weights file ---------------------------------------------------
VIT = "py:camzoo.models.testing:tiny_vit"


@pytest.mark.slow
def test_cli_bench_tiny_vit_weights_all_and_road(tmp_path):
    from click.testing import CliRunner

    from camzoo.bench import Run
    from camzoo.cli import main
    from camzoo.data.datasets import open_dataset
    from camzoo.data.images import load_image
    from camzoo.models.testing import tiny_vit

    path = tmp_path / "vit.pt"
    torch.save(tiny_vit(seed=4).model.state_dict(), path)
    # two of the photos without their labels (ImageNet classes are not the tiny ViT's 10)
    data = tmp_path / "photos"
    data.mkdir()
    for it in open_dataset(SAMPLES, limit=2).items:
        shutil.copy(it.path, data / os.path.basename(it.path))
    common = ["bench", "--backbone", VIT, "--weights", "random", "--weights", str(path), "--data", str(data), "--limit", "2",
              "--methods", "gradcam,scorecam,rise", "--opt", "rise.n_masks=16", "--no-progress"]
    runner = CliRunner()
    res = runner.invoke(main, common + ["--metrics", "all", "--steps", "4", "--out", str(tmp_path / "all")])
    assert res.exit_code == 0, res.output
    assert "| scorecam |" in res.output and "AD(100%)↓" in res.output and "ADCC↑" in res.output
    assert "ROAD" not in res.output
    res = runner.invoke(main, common + ["--metrics", "road", "--eval-batch-size", "5",
                                        "--out", str(tmp_path / "road")])
    assert res.exit_code == 0, res.output
    assert "ROAD-MoRF↓" in res.output and "ROAD-LeRF↑" in res.output and "ROAD↑" in res.output
    run = Run(str(tmp_path / "road"))
    rows = run.rows(curves=True)
    assert len(rows) == 6 and len(rows.iloc[0].road_morf_curve) == 9
    # the stored gradcam rows equal an independent per-image computation with the file's weights
    bb = tiny_vit(weights=str(path))
    for it in open_dataset(str(data), limit=2).items:
        x = bb.preprocess(load_image(it.path)).unsqueeze(0)
        with torch.inference_mode():
            c = bb.model(x).argmax(1)
        V = camzoo.explain("gradcam", bb, x, c)
        cur = road_curves(Scorer(bb.model, 1), bb.denormalize(x).clamp(0, 1), V, c, bb.normalize)
        row = rows[(rows.method == "gradcam") & (rows.image_id == it.image_id)].iloc[0]
        np.testing.assert_allclose(row.road_morf_curve, cur["morf"][0].numpy(), atol=1e-5)
        np.testing.assert_allclose(row.road_lerf_curve, cur["lerf"][0].numpy(), atol=1e-5)
        assert row.road == pytest.approx(float((cur["lerf"] - cur["morf"]).mean() / 2), abs=1e-5)
    fw = run.forwards()
    assert int(fw[(fw.method == "gradcam") & (fw.family == "road")].forwards.sum()) == 2 * 18
    run.close()

    # a run stored when ROAD had compiled CPU kernels: the option kernels among its protocol's
    # options and in its bench_config's metric options (and, as if it predated it, no runtime
    # option solve_batch). Its table is read, and it resumes with another chunking (retired and
    # runtime options are no part of a run's identity) with the rows it would have had
    out = tmp_path / "road"
    cfg = json.loads((out / "config.json").read_text())
    opts = cfg["protocols"]["road"]["options"]
    assert "kernels" not in opts and opts["solve_batch"] is None
    opts["kernels"] = "auto"
    del opts["solve_batch"]
    cfg["bench_config"]["metric_options"] = {"road": {"kernels": "c"}}
    (out / "config.json").write_text(json.dumps(cfg))
    res = runner.invoke(main, ["table", str(out)])
    assert res.exit_code == 0 and "ROAD-MoRF↓" in res.output, res.output
    con = sqlite3.connect(out / "rows.sqlite")
    con.execute("DELETE FROM rows WHERE idx >= 1")
    con.commit()
    con.close()
    res = runner.invoke(main, ["bench", "--resume", "--out", str(out), "--no-progress",
                               "--metric-opt", "road.solve_batch=3"])
    assert res.exit_code == 0, res.output
    assert "1 image(s) to do (1 done" in res.output
    with Run(str(out)) as again:
        new = again.rows(curves=True).sort_values(["method", "idx"]).reset_index(drop=True)
    old = rows.sort_values(["method", "idx"]).reset_index(drop=True)
    assert len(new) == len(old) == 6
    for col in ("road_morf", "road_lerf", "road"):
        np.testing.assert_allclose(new[col], old[col], atol=1e-6, rtol=0)
    for col in ("road_morf_curve", "road_lerf_curve"):
        np.testing.assert_allclose(np.stack(new[col]), np.stack(old[col]), atol=1e-6, rtol=0)
    # the resumed run's config drops the retired option from the protocol's options
    opts = json.loads((out / "config.json").read_text())["protocols"]["road"]["options"]
    assert "kernels" not in opts and opts["solve_batch"] == 3
    # what changes a row still refuses: another tolerance is another run
    res = runner.invoke(main, ["bench", "--resume", "--out", str(out), "--no-progress",
                               "--metric-opt", "road.tol=1e-5"])
    assert res.exit_code != 0 and "protocols.road.tol" in res.output, res.output
