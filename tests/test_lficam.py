"""LFI-CAM: model pieces, wiring, frozen / end-to-end training, explainer, stability."""
import math

import pytest
import torch
import torch.nn.functional as F

from camzoo.lficam import (FIN, LFICAM, attention_map, channel_minmax, clone_backbone,
                           gray_image, minmax_maps, replace_classifier)
from camzoo.stability import (DEFAULT_THRESHOLD, binarize, iou, map_iou, pick_baseline,
                              stability_from_maps)


# -- pieces ---------------------------------------------------------------------------------
def test_fin_shapes_and_softmax():
    fin = FIN(16, depth=4)
    fin.reset_parameters(torch.Generator().manual_seed(0))
    convs = [m for m in fin.modules() if isinstance(m, torch.nn.Conv2d)]
    bns = [m for m in fin.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(convs) == 4 and len(bns) == 4
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) and c.bias is None
               and c.in_channels == c.out_channels == 16 for c in convs)
    fin.eval()
    w = fin(torch.randn(3, 16, 7, 5))
    assert w.shape == (3, 16) and w.dtype == torch.float32
    assert (w >= 0).all()
    torch.testing.assert_close(w.sum(1), torch.ones(3))
    # independent computation: 4 x (conv, BN, ReLU), GAP, softmax
    m = torch.randn(2, 16, 6, 6)
    h = m
    for c, b in zip(convs, bns):
        h = F.relu(F.batch_norm(F.conv2d(h, c.weight, padding=1), b.running_mean, b.running_var,
                                b.weight, b.bias, False, 0.0, b.eps))
    torch.testing.assert_close(fin(m), torch.softmax(h.mean((2, 3)), 1))


def test_channel_minmax_constant_and_zero_channels():
    f = torch.zeros(1, 4, 2, 2)
    f[0, 0] = torch.tensor([[1.0, 3.0], [5.0, 9.0]])
    f[0, 1] = 2.0            # constant non-zero -> 1 everywhere
    f[0, 2] = 0.0            # all zero -> 0 everywhere
    f[0, 3] = -3.0           # constant negative (non-zero) -> 1
    f.requires_grad_(True)
    s = channel_minmax(f)
    expect = torch.stack([torch.tensor([[0.0, 0.25], [0.5, 1.0]]), torch.ones(2, 2),
                          torch.zeros(2, 2), torch.ones(2, 2)])[None]
    torch.testing.assert_close(s, expect)
    s.sum().backward()
    assert torch.isfinite(f.grad).all()


def test_gray_image_and_attention_map_by_hand():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    g = gray_image(x, (2, 2))
    ref = F.interpolate(x.mean(1, keepdim=True), size=(2, 2), mode="bilinear", align_corners=False)
    torch.testing.assert_close(g, ref)
    assert g.shape == (2, 1, 2, 2)
    torch.testing.assert_close(gray_image(x, (4, 4)), x.mean(1, keepdim=True))
    # L = minmax(ReLU(sum_k w_k F_k)): w = (0.75, 0.25), F_0 = [[4,0],[0,-8]], F_1 = [[0,4],[-4,8]]
    f = torch.tensor([[[[4.0, 0.0], [0.0, -8.0]], [[0.0, 4.0], [-4.0, 8.0]]]])
    w = torch.tensor([[0.75, 0.25]])
    # weighted sum = [[3,1],[-1,-4]] -> ReLU [[3,1],[0,0]] -> minmax [[1,1/3],[0,0]]
    torch.testing.assert_close(attention_map(f, w), torch.tensor([[[1.0, 1 / 3], [0.0, 0.0]]]))
    # constant map -> zeros, and no NaN gradient
    c = torch.full((1, 3, 3), 2.0, requires_grad=True)
    out = minmax_maps(c)
    assert out.abs().sum() == 0
    out.sum().backward()
    assert torch.isfinite(c.grad).all()


def test_lficam_wiring_matches_manual_computation(tiny):
    model = LFICAM(tiny, mode="frozen", seed=3).eval()
    x = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits, L = model(x)
        f = tiny.features(x, "features")                     # independent forward
        m = channel_minmax(f) * gray_image(x, f.shape[-2:])
        w = model.fin(m)
        cam = F.relu((w[:, :, None, None] * f).sum(1))
        lo = cam.flatten(1).min(1).values[:, None, None]
        hi = cam.flatten(1).max(1).values[:, None, None]
        L_ref = (cam - lo) / (hi - lo)
        logits_ref = tiny.head((1 + L_ref[:, None]) * f, "features")
    assert L.shape == (5, 8, 8) and logits.shape == (5, 10)
    torch.testing.assert_close(model.last["F"], f)
    torch.testing.assert_close(model.last["w"].sum(1), torch.ones(5))
    torch.testing.assert_close(L, L_ref)
    torch.testing.assert_close(logits, logits_ref)
    # the attention changes the logits (L is not all zero) and the map is one forward
    assert not torch.allclose(logits, tiny.model(x))
    V = model.explain(x)
    assert V.shape == (5, 32, 32) and V.min() >= 0 and V.max() <= 1
    torch.testing.assert_close(V, F.interpolate(L[:, None], size=(32, 32), mode="bilinear",
                                                align_corners=False)[:, 0].clamp(0, 1))


def test_frozen_mode_trains_only_the_fin(tiny):
    before = {k: v.clone() for k, v in tiny.model.state_dict().items()}
    model = LFICAM(tiny, mode="frozen", seed=0)
    assert set(model.state_dict()) == {k for k in model.state_dict() if k.startswith("fin.")}
    fin_before = {k: v.clone() for k, v in model.fin.state_dict().items()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    model.train()
    assert not tiny.model.training
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        x = torch.randn(8, 3, 32, 32, generator=g)
        loss = F.cross_entropy(model(x)[0], torch.randint(0, 10, (8,), generator=g))
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = tiny.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(not p.requires_grad for p in tiny.model.parameters())
    changed = [k for k, v in model.fin.state_dict().items() if not torch.equal(v, fin_before[k])]
    assert any(k.endswith("weight") for k in changed)


def test_end_to_end_trains_a_copy_never_the_original(tiny):
    before = {k: v.clone() for k, v in tiny.model.state_dict().items()}
    model = LFICAM(tiny, mode="end-to-end", seed=0)
    assert model.bb.model is not tiny.model
    assert any(k.startswith("body.") for k in model.state_dict())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    F.cross_entropy(model(x)[0], torch.arange(8)).backward()
    opt.step()
    assert all(torch.equal(before[k], v) for k, v in tiny.model.state_dict().items())
    assert not torch.equal(model.bb.model.fc.weight, tiny.model.fc.weight)
    assert all(not p.requires_grad for p in tiny.model.parameters()) and not tiny.model.training


def test_clone_backbone_heads_point_at_the_copy(tiny):
    c = clone_backbone(tiny)
    f = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        c.model.fc.bias.add_(5.0)
    torch.testing.assert_close(c.head(f) - tiny.head(f), torch.full((2, 10), 5.0))
    assert c.layer("features") is c.model.body
    replace_classifier(c, 3, torch.Generator().manual_seed(0))
    assert c.num_classes == 3 and c.head(f).shape == (2, 3) and c.model(torch.zeros(1, 3, 32, 32)).shape == (1, 3)
    assert tiny.num_classes == 10 and tiny.model.fc.out_features == 10


# -- stability ------------------------------------------------------------------------------
def test_iou_hand_computed():
    a = torch.tensor([[[1, 1, 0], [0, 1, 0]], [[0, 0, 0], [0, 0, 0]], [[1, 0, 0], [0, 0, 0]]], dtype=torch.bool)
    b = torch.tensor([[[1, 0, 0], [1, 1, 1]], [[0, 0, 0], [0, 0, 0]], [[0, 0, 0], [0, 0, 1]]], dtype=torch.bool)
    # image 0: inter {(0,0),(1,1)} = 2, union {(0,0),(0,1),(1,0),(1,1),(1,2)} = 5
    # image 1: both empty -> 1; image 2: disjoint -> 0
    torch.testing.assert_close(iou(a, b), torch.tensor([0.4, 1.0, 0.0]))


def test_binarize_threshold_is_the_papers_127_of_255():
    q = torch.tensor([[[0, 126, 127, 128, 255]]], dtype=torch.float32)
    assert binarize(q / 255).tolist() == [[[False, False, True, True, True]]]
    assert binarize(q / 255, 0.5).tolist() == [[[False, False, False, True, True]]]
    assert math.isclose(DEFAULT_THRESHOLD, 127 / 255)
    with pytest.raises(ValueError, match="threshold"):
        binarize(q, 2.0)


def test_stability_from_maps_uses_most_accurate_baseline():
    base = torch.tensor([[[0.9, 0.8], [0.1, 0.0]]])       # mask {(0,0),(0,1)}
    m1 = torch.tensor([[[0.9, 0.2], [0.6, 0.0]]])         # {(0,0),(1,0)}: IoU 1/3
    m2 = torch.tensor([[[0.7, 0.7], [0.1, 0.1]]])         # same as base: IoU 1
    res = stability_from_maps({"m1": m1, "base": base, "m2": m2},
                              accuracy={"m1": 0.5, "base": 0.9, "m2": 0.7})
    assert res.baseline == "base"
    assert res.per_model == pytest.approx({"m1": 1 / 3, "m2": 1.0})
    assert res.overall == pytest.approx(2 / 3)
    assert pick_baseline({"a": None, "b": 0.1}) == "b"
    torch.testing.assert_close(map_iou(m1, base), torch.tensor([1 / 3]))
