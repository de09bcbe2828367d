"""camzoo.metrics against hand-computed values, independent reference loops and known properties.

The stub classifiers have logits that are a known function of the input, so every softmax
probability below is computed by hand (with ``math``) rather than by the code under test.
"""
import math

import pytest
import torch
from torch import nn

from camzoo.metrics.protocol import PROTOCOLS, MetricInputs, evaluate_all, table_metrics
from camzoo.metrics.scorer import Scorer
from camzoo.metrics import adcc, insertion_deletion
from camzoo.metrics.adcc import adcc_scores, coherency, complexity, explanation_map, pearson
from camzoo.metrics.lcam_protocol import ascending_rank, average_drop, increase_in_confidence, keep_count, keep_mask, keep_top, masked_confidence
from camzoo.metrics.rise_protocol import auc, blur, blur_kernel, step_counts


def sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


class MeanStub(nn.Module):
    """Two classes: logits = [alpha * mean(x), 0] -> p(class 0) = sigmoid(alpha * mean(x)).

    Records the batch size of every call.
    """

    def __init__(self, alpha: float = 1.0) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.tensor(float(alpha)), requires_grad=False)
        self.calls = []

    def forward(self, x):
        self.calls.append(x.shape[0])
        m = x.float().mean(dim=(1, 2, 3)) * self.alpha
        return torch.stack([m, torch.zeros_like(m)], dim=1)


def norm(z):  # a simple affine "normalization" for the stub
    return (z - 0.5) / 0.25


# ----------------------------------------------------------------------------- Scorer
def test_scorer_chunking_counts_and_values():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(10, 3, 4, 4, generator=g)
    c = torch.tensor([0, 1] * 5)
    expected = torch.tensor([sigmoid(float(x[i].mean())) if c[i] == 0 else 1 - sigmoid(float(x[i].mean()))
                             for i in range(10)])
    results = []
    for bs in (1, 3, 64):
        model = MeanStub()
        s = Scorer(model, eval_batch_size=bs)
        p = s.probs(x, c, "fam")
        assert p.dtype == torch.float32 and p.shape == (10,)
        assert s.counts["fam"] == 10 and s.total == 10
        assert model.calls == [min(bs, 10 - a) for a in range(0, 10, bs)]
        results.append(p)
    for p in results:
        torch.testing.assert_close(p, expected, atol=1e-6, rtol=0)
    # stream: an oversized chunk is split, counts go to the named family only
    model = MeanStub()
    s = Scorer(model, eval_batch_size=4)
    p = s.probs_stream(iter([(x[:7], c[:7]), (x[7:], c[7:])]), "other")
    torch.testing.assert_close(p, expected, atol=1e-6, rtol=0)
    assert model.calls == [4, 3, 3] and dict(s.counts) == {"other": 10}
    with pytest.raises(ValueError, match="eval_batch_size"):
        Scorer(model, eval_batch_size=0)
    # a bfloat16 model gets its inputs cast; probabilities come back float32
    p16 = Scorer(MeanStub().to(torch.bfloat16), 4).probs(x, c, "f")
    assert p16.dtype == torch.float32
    torch.testing.assert_close(p16, expected, atol=2e-2, rtol=0)


# ----------------------------------------------------------------------------- lcam
def test_keep_top_ties_follow_lcam_drop_order():
    V = torch.tensor([[0.9, 0.5, 0.5, 0.5], [0.5, 0.1, 0.5, 0.2]])[None]
    assert ascending_rank(V)[0].tolist() == [7, 2, 3, 4, 5, 0, 6, 1]  # stable: ties by index
    out = keep_top(V, 0.5)
    # 4 kept: 0.9 and three of the five tied 0.5s; the first tied in raster order are dropped
    expected = torch.tensor([[0.9, 0.0, 0.0, 0.5], [0.5, 0.0, 0.5, 0.0]])[None]
    assert torch.equal(out, expected)
    assert torch.equal(keep_top(V, 1.0), V)
    assert int((keep_top(V, 0.3) > 0).sum()) == 3  # ceil(2.4)
    with pytest.raises(ValueError, match="nu"):
        keep_top(V, 0.0)


def test_keep_count_float_noise():
    assert 0.07 * 100 > 7 and 0.55 * 100 > 55  # the float noise the function must absorb
    assert keep_count(0.07, 100) == 7 and keep_count(0.55, 100) == 55
    assert keep_count(0.15, 100) == 15
    assert keep_count(0.15, 224 * 224) == 7527
    assert keep_count(0.5, 224 * 224) == 25088
    assert keep_count(1.0, 7) == 7 and keep_count(1e-9, 7) == 1


def _lcam_reference_drop(v, nu):
    """Independent re-implementation of L-CAM's drop_Npercent (positive maps, plain python)."""
    n = len(v)
    K = keep_count(nu, n)
    if K == n:
        return list(v)
    m = sorted(v)[n - K - 1]  # the (n-K)-th smallest value (kthvalue with k = n-K)
    out = [0.0 if a < m else a for a in v]
    extra = sum(1 for a in out if a > 0) - K
    for idx in [i for i, a in enumerate(v) if a == m][:max(0, extra)]:
        out[idx] = 0.0
    return out


def test_keep_top_matches_reference_on_tied_maps():
    g = torch.Generator().manual_seed(1)
    V = (torch.randint(1, 6, (4, 7, 9), generator=g).float() / 5)  # 5 levels: many ties
    for nu in (0.5, 0.15, 0.33, 1.0):
        out = keep_top(V, nu)
        for b in range(4):
            ref = _lcam_reference_drop(V[b].flatten().tolist(), nu)
            assert out[b].flatten().tolist() == pytest.approx(ref, abs=0)
            assert int((out[b] > 0).sum()) == keep_count(nu, 63)


def test_keep_mask_equals_stable_rank_definition():
    """kthvalue + tie rule == "ascending stable rank >= n - k" on untied, tied and constant maps."""
    g = torch.Generator().manual_seed(2)
    fake = torch.ones(1, 8, 8)
    fake[0, 0, 0] = 0.0  # Fake-CAM: one pixel below a plateau of ties
    maps = [torch.rand(3, 8, 8, generator=g),                               # no ties
            torch.randint(0, 3, (3, 8, 8), generator=g).float() / 2,        # 3 levels
            fake, torch.zeros(2, 8, 8)]                                     # all tied
    # one batch mixing a map that splits its ties with maps that do not
    mixed = torch.cat([torch.rand(2, 8, 8, generator=g), torch.full((1, 8, 8), 0.5)])
    nan = torch.rand(2, 8, 8, generator=g)
    nan[0, 1, ::3] = float("nan")  # not from an explainer, but keep_mask is public
    for V in maps + [mixed, nan]:
        n = 64
        for nu in (0.5, 0.15, 0.33, 1 / 64, 63 / 64, 1.0):
            k = keep_count(nu, n)
            got = keep_mask(V, nu)
            if k == n:
                assert got is None
                continue
            expected = ascending_rank(V) >= n - k
            assert torch.equal(got, expected), (V[0, 0, :3], nu)
            assert got.sum(1).eq(k).all()


def test_keep_mask_without_kthvalue_falls_back_to_the_sort(monkeypatch):
    def missing(*a, **k):
        raise NotImplementedError("kthvalue: no kernel for this backend")

    V = torch.randint(0, 3, (3, 8, 8), generator=torch.Generator().manual_seed(4)).float()
    expected = keep_mask(V, 0.15)
    monkeypatch.setattr(torch, "kthvalue", missing)
    assert torch.equal(keep_mask(V, 0.15), expected)


def test_masked_confidence_fused_normalization_equals_generic():
    """mean_std builds x01/std*phi - mean/std in one pass: equal to normalize(x01 * phi)."""
    g = torch.Generator().manual_seed(3)
    x01 = torch.rand(5, 3, 6, 6, generator=g)
    V = torch.randint(0, 4, (5, 6, 6), generator=g).float() / 3  # ties at the thresholds
    c = torch.tensor([0, 1, 0, 1, 0])
    mean, std = torch.tensor([0.4, 0.5, 0.6]), torch.tensor([0.2, 0.25, 0.3])

    def normalize(z):
        return (z - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)

    class Affine(nn.Module):  # logits depend on every pixel and channel differently
        def __init__(self):
            super().__init__()
            # small weights: logits of order 1, so the softmax is not saturated at 0 / 1 and
            # a wrong input changes the probabilities
            self.w = nn.Parameter(0.05 * torch.randn(2, 3 * 36, generator=g), requires_grad=False)

        def forward(self, x):
            return x.flatten(1) @ self.w.t()

    model = Affine()
    nus = (1.0, 0.5, 0.15)
    ref = masked_confidence(Scorer(model, 64), x01, V, c, normalize, nus)
    assert ((ref > 0.05) & (ref < 0.95)).all(), ref  # informative probabilities
    for bs in (1, 4, 7, 64):  # chunks straddling thresholds and images
        s = Scorer(model, bs)
        got = masked_confidence(s, x01, V, c, normalize, nus, mean_std=(mean, std))
        torch.testing.assert_close(got, ref, atol=1e-6, rtol=0)
        assert s.counts["lcam"] == 15
    # and each O is the prob on normalize(x01 * keep_top(V)) computed image by image
    for j, nu in enumerate(nus):
        z = normalize(x01 * keep_top(V, nu)[:, None])
        p = torch.softmax(model(z), 1).gather(1, c[:, None])[:, 0]
        torch.testing.assert_close(ref[:, j], p, atol=1e-6, rtol=0)


def test_masked_confidence_ad_ic_by_hand():
    # 2 images of constant colour, 4x4 maps with values 0/15 .. 15/15 in raster order
    x01 = torch.stack([torch.full((3, 4, 4), 0.8), torch.full((3, 4, 4), 0.2)])
    V = (torch.arange(16, dtype=torch.float32) / 15).view(1, 4, 4).repeat(2, 1, 1)
    c = torch.tensor([0, 1])  # image 1 is scored on class 1: darker = more confident
    model = MeanStub(alpha=1.0)
    s = Scorer(model, eval_batch_size=4)
    O = masked_confidence(s, x01, V, c, norm, nus=(1.0, 0.5, 0.15))
    assert O.shape == (2, 3) and s.counts["lcam"] == 6 and model.calls == [4, 2]

    def p(cls, mean01):  # prob of cls on a normalized image whose [0,1] mean is mean01
        m = (mean01 - 0.5) / 0.25
        return sigmoid(m) if cls == 0 else 1 - sigmoid(m)

    mean_phi = {1.0: sum(range(16)) / 15 / 16,        # all 16 pixels
                0.5: sum(range(8, 16)) / 15 / 16,     # top 8
                0.15: sum(range(13, 16)) / 15 / 16}   # top ceil(2.4) = 3
    exp = torch.tensor([[p(0, 0.8 * mean_phi[nu]) for nu in (1.0, 0.5, 0.15)],
                        [p(1, 0.2 * mean_phi[nu]) for nu in (1.0, 0.5, 0.15)]])
    torch.testing.assert_close(O, exp, atol=1e-6, rtol=0)
    Y = torch.tensor([p(0, 0.8), p(1, 0.2)])
    ad = average_drop(Y, O)
    ic = increase_in_confidence(Y, O)
    for j in range(3):
        y0, o0 = float(Y[0]), float(exp[0, j])
        assert float(ad[0, j]) == pytest.approx(100 * (y0 - o0) / y0, abs=1e-4)
        assert float(ad[1, j]) == 0.0  # confidence rose: no drop
        assert float(ic[0, j]) == 0.0 and float(ic[1, j]) == 100.0
    # strictness: O == Y is not an increase; 1-D inputs work too
    assert float(increase_in_confidence(torch.tensor([0.5]), torch.tensor([0.5]))[0]) == 0.0
    assert float(average_drop(torch.tensor([0.5]), torch.tensor([0.2]))[0]) == pytest.approx(60.0)
    assert float(average_drop(torch.tensor([0.0]), torch.tensor([0.2]))[0]) == 0.0


# ----------------------------------------------------------------------------- adcc
def test_pearson_coherency_complexity_by_hand():
    A = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 2, 2)
    B = torch.tensor([1.0, 3.0, 2.0, 4.0]).view(1, 2, 2)
    # centred: a = [-1.5,-.5,.5,1.5], b = [-1.5,.5,-.5,1.5]; cov 4, var 5 each -> r = 0.8
    assert float(pearson(A, B)[0]) == pytest.approx(0.8, abs=1e-6)
    assert float(coherency(A, B)[0]) == pytest.approx(0.9, abs=1e-6)
    assert float(coherency(A, A)[0]) == pytest.approx(1.0, abs=1e-6)
    assert float(coherency(A, 5 - A)[0]) == pytest.approx(0.0, abs=1e-6)
    # constant map: undefined correlation counts as 0 -> coherency 0.5 (configurable)
    const = torch.full((1, 2, 2), 0.3)
    assert float(coherency(A, const)[0]) == 0.5
    assert float(coherency(const, const)[0]) == 0.5
    assert float(coherency(A, const, nan_correlation=-1.0)[0]) == 0.0
    nan_map = torch.tensor([1.0, float("nan"), 0.0, 0.0]).view(1, 2, 2)
    assert float(coherency(A, nan_map)[0]) == 0.5
    V = torch.tensor([[0.0, 0.5], [1.0, 0.25]])[None]
    assert float(complexity(V)[0]) == pytest.approx(1.75 / 4)


def test_adcc_harmonic_mean_and_zero_terms():
    ad = torch.tensor([0.5, 1.0, 0.2, 0.2, 0.0])
    coh = torch.tensor([0.8, 0.9, 0.0, 0.9, 1.0])
    cpx = torch.tensor([0.25, 0.1, 0.1, 1.0, 0.0])
    out = adcc(ad, coh, cpx)
    expected0 = 3 / (1 / 0.8 + 1 / 0.75 + 1 / 0.5)  # = 0.654545...
    assert float(out[0]) == pytest.approx(expected0, abs=1e-6)
    assert out[1:4].tolist() == [0.0, 0.0, 0.0]  # a zero term -> 0 (no inf / nan)
    assert float(out[4]) == pytest.approx(1.0)
    assert torch.isfinite(out).all()


def test_adcc_scores_with_stub_explainer():
    x = torch.stack([torch.full((3, 2, 2), 2.0), torch.full((3, 2, 2), -1.0)])
    V = torch.tensor([[[1.0, 0.5], [0.0, 0.5]], [[0.2, 0.2], [0.2, 0.2]]])
    c = torch.tensor([0, 0])
    E = explanation_map(x, V)
    assert torch.equal(E[0, 1], torch.tensor([[2.0, 1.0], [0.0, 1.0]]))
    Y = torch.tensor([sigmoid(2.0), sigmoid(-1.0)])
    seen = {}

    def explain_fn(E_, c_):
        seen["E"], seen["c"] = E_, c_
        return torch.stack([V[0].flip(-1), V[1]])  # image 0: r(V, V') computable; image 1: const

    s = Scorer(MeanStub(), eval_batch_size=8)
    r = adcc_scores(s, x, V, c, Y, explain_fn)
    assert torch.equal(seen["E"], E) and torch.equal(seen["c"], c)
    O = [sigmoid(2.0 * 0.5), sigmoid(-1.0 * 0.2)]  # mean(E) = mean(x) * mean(V) here
    assert r["O"].tolist() == pytest.approx(O, abs=1e-6)
    ad0 = (sigmoid(2.0) - O[0]) / sigmoid(2.0)
    assert r["average_drop"].tolist() == pytest.approx([ad0, 0.0], abs=1e-6)  # image 1 rose
    # V0 = [1,.5,0,.5] vs flipped [.5,1,.5,0]: centred [.5,0,-.5,0]·[0,.5,0,-.5] = 0 -> r = 0
    assert r["coherency"].tolist() == pytest.approx([0.5, 0.5], abs=1e-6)
    assert r["complexity"].tolist() == pytest.approx([0.5, 0.2], abs=1e-6)
    exp_adcc = [3 / (1 / 0.5 + 1 / 0.5 + 1 / (1 - ad0)), 3 / (2 + 1 / 0.8 + 1)]
    assert r["adcc"].tolist() == pytest.approx(exp_adcc, abs=1e-6)
    assert dict(s.counts) == {"adcc": 2}


# ----------------------------------------------------------------------------- rise
def test_blur_kernel_matches_rise_gkern():
    ndimage = pytest.importorskip("scipy.ndimage")
    import numpy as np

    dirac = np.zeros((11, 11))
    dirac[5, 5] = 1
    ref = torch.from_numpy(ndimage.gaussian_filter(dirac, 5)).float()  # RISE's gkern(11, 5)
    torch.testing.assert_close(blur_kernel(11, 5, "rise"), ref, atol=1e-7, rtol=0)
    g = blur_kernel(11, 5, "gaussian")
    t = torch.arange(-5, 6, dtype=torch.float64)
    w = torch.exp(-t ** 2 / 50)
    torch.testing.assert_close(g, torch.outer(w, w).float() / float(w.sum()) ** 2, atol=1e-7, rtol=0)
    with pytest.raises(ValueError, match="gaussian"):
        blur_kernel(11, 5, "box")


def test_blur_against_explicit_loop_and_zero_border():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 7, 6, generator=g)
    k = blur_kernel(5, 2.0)
    out = blur(x, 5, 2.0)
    ref = torch.zeros_like(x)
    for b in range(2):
        for ch in range(3):
            for i in range(7):
                for j in range(6):
                    acc = 0.0
                    for u in range(5):
                        for v in range(5):
                            ii, jj = i + u - 2, j + v - 2
                            if 0 <= ii < 7 and 0 <= jj < 6:  # zero padding outside
                                acc += float(k[u, v]) * float(x[b, ch, ii, jj])
                    ref[b, ch, i, j] = acc
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    # constant image: interior stays, the corner only sees one quadrant of the kernel
    ones = torch.ones(1, 3, 16, 16)
    bo = blur(ones)  # defaults: 11x11, sigma 5, padding 5
    K = blur_kernel()
    assert float(bo[0, 0, 8, 8]) == pytest.approx(1.0, abs=1e-5)
    assert float(bo[0, 2, 0, 0]) == pytest.approx(float(K[5:, 5:].sum()), abs=1e-6)
    assert float(bo[0, 1, 0, 8]) == pytest.approx(float(K[5:, :].sum()), abs=1e-6)


def test_step_counts_and_auc_by_hand():
    assert step_counts(224 * 224, 224).tolist() == [224 * k for k in range(225)]
    sc = step_counts(1024, 224)
    assert sc[0] == 0 and sc[-1] == 1024 and len(sc) == 225 and bool((sc[1:] >= sc[:-1]).all())
    assert step_counts(10, 4).tolist() == [0, 2, 5, 7, 10]
    with pytest.raises(ValueError, match="steps"):
        step_counts(10, 11)
    curves = torch.tensor([[1.0, 0.5, 0.0, 0.0], [0.0, 1.0, 1.0, 0.0], [0.2, 0.2, 0.2, 0.2]])
    # (sum - first/2 - last/2) / (len - 1)
    assert auc(curves).tolist() == pytest.approx([(1.5 - 0.5) / 3, 2 / 3, 0.2])
    assert float(auc(torch.tensor([1.0, 0.0]))) == pytest.approx(0.5)


def _naive_curves(model, x, V, c, steps, mode):
    """Per-image, per-step reference: python's stable sorted() for the order, explicit copies."""
    B, C, H, W = x.shape
    n = H * W
    out = torch.zeros(B, steps + 1)
    base_all = blur(x) if mode == "insertion" else None
    for b in range(B):
        vals = V[b].flatten().tolist()
        order = sorted(range(n), key=lambda p: -vals[p])  # stable: ties keep raster order
        for k in range(steps + 1):
            nk = k * n // steps
            if mode == "deletion":
                img = x[b].clone().reshape(C, n)
                img[:, order[:nk]] = 0.0
            else:
                img = base_all[b].clone().reshape(C, n)
                img[:, order[:nk]] = x[b].reshape(C, n)[:, order[:nk]]
            with torch.no_grad():
                out[b, k] = torch.softmax(model(img.view(1, C, H, W)), 1)[0, c[b]]
    return out


def test_insertion_deletion_against_naive_loop(tiny):
    g = torch.Generator().manual_seed(3)
    x = tiny.normalize(torch.rand(3, 3, 32, 32, generator=g))
    V = torch.randint(0, 4, (3, 32, 32), generator=g).float() / 3  # heavy ties
    c = torch.tensor([1, 4, 7])
    steps = 6
    s = Scorer(tiny.model, eval_batch_size=5)
    curves = insertion_deletion(s, x, V, c, steps=steps)
    assert dict(s.counts) == {"insertion": 3 * 7, "deletion": 3 * 7}
    for mode in ("insertion", "deletion"):
        ref = _naive_curves(tiny.model, x, V, c, steps, mode)
        torch.testing.assert_close(curves[mode], ref, atol=1e-5, rtol=0)
    with torch.no_grad():
        p_clean = torch.softmax(tiny.model(x), 1)[torch.arange(3), c]
        p_zero = torch.softmax(tiny.model(torch.zeros_like(x)), 1)[torch.arange(3), c]
    torch.testing.assert_close(curves["deletion"][:, 0], p_clean, atol=1e-5, rtol=0)
    torch.testing.assert_close(curves["deletion"][:, -1], p_zero, atol=1e-5, rtol=0)
    torch.testing.assert_close(curves["insertion"][:, -1], p_clean, atol=1e-5, rtol=0)


def test_insertion_deletion_packs_pairs_across_images():
    model = MeanStub()
    s = Scorer(model, eval_batch_size=4)
    x = torch.randn(3, 3, 4, 4)
    V = torch.rand(3, 4, 4)
    out = insertion_deletion(s, x, V, torch.zeros(3, dtype=torch.long), steps=4, modes=("deletion",))
    assert model.calls == [4, 4, 4, 3]  # 15 (image, step) pairs, never more than 4 at once
    assert out["deletion"].shape == (3, 5)
    # deletion to 0 of a mean model: prob at the last point is sigmoid(0) = 0.5 for every image
    assert out["deletion"][:, -1].tolist() == pytest.approx([0.5] * 3, abs=1e-6)
    with pytest.raises(ValueError, match="insertion"):
        insertion_deletion(s, x, V, torch.zeros(3, dtype=torch.long), steps=4, modes=("ins",))


# ----------------------------------------------------------------------------- protocols
def test_protocol_specs_and_table_columns():
    cols = [m.column for m in table_metrics()]
    assert cols == ["AD(100%)", "IC(100%)", "AD(50%)", "IC(50%)", "AD(15%)", "IC(15%)",
                    "Ins", "Del", "Coherency", "Complexity", "ADCC"]
    arrows = "".join(m.arrow for m in table_metrics())
    assert arrows == "↓↑↓↑↓↑↑↓↑↓↑"
    assert all(m.source for m in table_metrics(include_hidden=True))
    # road and localization are registered but not in 'all': the default columns stay the three papers'
    assert set(PROTOCOLS.names()) == {"lcam", "adcc", "rise", "road", "localization"}
    with pytest.raises(KeyError, match="adcc, lcam, localization, rise"):
        table_metrics(["lcam", "nope"])
    with pytest.raises(ValueError, match="steps=224"):
        PROTOCOLS.get("rise").options(step=3)
    assert [m.column for m in PROTOCOLS.get("lcam").metrics(nus=(0.25,))] == ["AD(25%)", "IC(25%)"]


def test_end_to_end_on_tiny_backbone(tiny):
    from camzoo.explainers.base import get_explainer

    g = torch.Generator().manual_seed(4)
    x = tiny.normalize(torch.rand(4, 3, 32, 32, generator=g))
    with torch.no_grad():
        probs = torch.softmax(tiny.model(x), 1)
    c = probs.argmax(1)
    Y = probs[torch.arange(4), c]
    ex = get_explainer("gradcam")
    V = ex(tiny, x, c)
    s = Scorer(tiny.model, eval_batch_size=16)
    inputs = MetricInputs(s, x, V, c, Y, tiny.normalize, tiny.denormalize,
                          explain_fn=lambda E, cc: ex(tiny, E, cc))
    opts = {"rise": {"steps": 8}}
    out = evaluate_all(inputs, options=opts)
    for name in ("lcam", "adcc", "rise"):
        p = PROTOCOLS.get(name)
        for key in p.row_keys(**opts.get(name, {})):
            assert out[key].shape == (4,) and torch.isfinite(out[key]).all(), key
        for key in p.curve_keys(**opts.get(name, {})):
            assert out[key].shape == (4, 9)
    assert dict(s.counts) == {"lcam": 12, "adcc": 4, "insertion": 36, "deletion": 36}
    for key in ("ad_100", "ad_50", "ad_15"):
        assert bool(((out[key] >= 0) & (out[key] <= 100)).all())
    for key in ("coherency", "complexity", "adcc", "adcc_ad", "ins_auc", "del_auc"):
        assert bool(((out[key] >= 0) & (out[key] <= 1)).all()), key
    # deletion starts from the clean image: first point == Y; lcam nu=1 equals x01 * V
    torch.testing.assert_close(out["del_curve"][:, 0], Y, atol=1e-5, rtol=0)
    with torch.no_grad():
        o1 = torch.softmax(tiny.model(tiny.normalize(tiny.denormalize(x) * V[:, None])), 1)
    torch.testing.assert_close(out["O_100"], o1[torch.arange(4), c], atol=1e-5, rtol=0)
    torch.testing.assert_close(out["complexity"], V.mean((1, 2)), atol=1e-6, rtol=0)
