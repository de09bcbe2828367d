"""Score-CAM and RISE against independent per-sample reference loops and pytorch-grad-cam; their
autocast, RISE's ``1/(N p1)`` scale, BatchNorm folding."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import camzoo
from camzoo.explainers.base import minmax
from camzoo.models.backbone import hook_count
from camzoo.explainers.rise import rise_grids, rise_masks
from camzoo.models.testing import TinyCNN, tiny_backbone


def _x(b=2, size=32, seed=1):
    return torch.randn(b, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _mm(t):
    """Plain min-max of one map (reference side)."""
    return (t - t.min()) / (t.max() - t.min())


# -- independent reference loops: one image and one channel / mask at a time -------------
def _activations(bb, xb):
    """The default layer's activations of ``bb`` on ``xb`` (a plain forward hook)."""
    feats = {}
    h = bb.layer().register_forward_hook(lambda m, i, o: feats.__setitem__("a", o))
    bb.model(xb)
    h.remove()
    return feats["a"]


def ref_scorecam_official(bb, x, y):
    out = []
    for b in range(x.shape[0]):
        xb = x[b:b + 1]
        with torch.no_grad():
            a = _activations(bb, xb)
            H, W = xb.shape[-2:]
            cam = torch.zeros(1, 1, H, W)
            for k in range(a.shape[1]):
                if a[:, k].max() == a[:, k].min():
                    continue  # constant channel: skipped
                up = F.interpolate(a[:, k:k + 1], size=(H, W), mode="bilinear", align_corners=False)
                prob = F.softmax(bb.model(xb * _mm(up)), dim=1)[0, int(y[b])]
                cam += prob * up
            cam = F.relu(cam)[0, 0]
            out.append(_mm(cam))
    return torch.stack(out)


def ref_scorecam_gradcam(bb, x, y):
    out = []
    for b in range(x.shape[0]):
        xb = x[b:b + 1]
        with torch.no_grad():
            a = _activations(bb, xb)
            H, W = xb.shape[-2:]
            logits = []
            for k in range(a.shape[1]):
                up = nn.UpsamplingBilinear2d(size=(H, W))(a[:, k:k + 1])
                mask = (up - up.min()) / (up.max() - up.min() + 1e-8)
                logits.append(bb.model(xb * mask)[0, int(y[b])])
            w = torch.softmax(torch.stack(logits), dim=0)
            cam = F.relu((w[:, None, None] * a[0]).sum(0))
            cam = _mm(cam)
            out.append(F.interpolate(cam[None, None], size=(H, W), mode="bilinear", align_corners=False)[0, 0])
    return torch.stack(out)


def _skimage_masks(grids, shifts, H, W):
    """RISE masks the authors' way (scikit-image linear resize), edge mode as F.interpolate."""
    from skimage.transform import resize

    s = grids.shape[-1]
    ch, cw = -(-H // s), -(-W // s)
    out = []
    for g, (dy, dx) in zip(grids.numpy().astype(np.float64), shifts.tolist()):
        up = resize(g, ((s + 1) * ch, (s + 1) * cw), order=1, mode="edge", anti_aliasing=False)
        out.append(up[dy:dy + H, dx:dx + W])
    return torch.tensor(np.stack(out), dtype=torch.float32)


def ref_rise(bb, x, y, masks, p1):
    out = []
    with torch.no_grad():
        for b in range(x.shape[0]):
            sal = torch.zeros(x.shape[-2:])
            for m in masks:
                p = F.softmax(bb.model(x[b:b + 1] * m), dim=1)[0, int(y[b])]
                sal += p * m
            out.append(_mm(sal / (len(masks) * p1)))
    return torch.stack(out)


# -- Score-CAM -----------------------------------------------------------------------------
@pytest.mark.parametrize("variant,ref", [("official", ref_scorecam_official),
                                         ("grad-cam", ref_scorecam_gradcam)])
def test_scorecam_equals_reference_loop(tiny, variant, ref):
    x, y = _x(3), torch.tensor([1, 4, 7])
    ours = camzoo.explain("scorecam", tiny, x, y, variant=variant, batch_size=5)
    assert ours.shape == (3, 32, 32) and ours.dtype == torch.float32
    assert torch.isfinite(ours).all() and ours.min() >= 0 and ours.max() <= 1
    torch.testing.assert_close(ours, ref(tiny, x, y), atol=1e-5, rtol=0)


def test_scorecam_gradcam_equals_pytorch_grad_cam(tiny):
    from pytorch_grad_cam import ScoreCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    x, y = _x(2), torch.tensor([3, 8])
    ours = camzoo.explain("scorecam", tiny, x, y, variant="grad-cam", batch_size=7)
    cam = ScoreCAM(tiny.model, [tiny.layer()])
    try:
        theirs = cam(x, [ClassifierOutputTarget(int(c)) for c in y])
    finally:
        cam.activations_and_grads.release()
    # pytorch-grad-cam min-maxes after upsampling: min-max our map once more
    np.testing.assert_allclose(minmax(ours).numpy(), theirs, atol=1e-4, rtol=0)
    # and the official variant is a different method (align_corners, probability weights)
    off = camzoo.explain("scorecam", tiny, x, y, variant="official")
    assert np.abs(minmax(off).numpy() - theirs).max() > 1e-2


def _tiny_with_constant_channels():
    """Tiny CNN whose feature channels 2 (all 0 after ReLU) and 5 (all 0.7) are constant."""
    bb = tiny_backbone()
    conv = bb.model.body[2]
    with torch.no_grad():
        conv.weight[2].zero_()
        conv.bias[2] = -1.0
        conv.weight[5].zero_()
        conv.bias[5] = 0.7
    return bb


def test_official_skips_constant_channels():
    bb = _tiny_with_constant_channels()
    x, y = _x(2), torch.tensor([0, 9])
    rows = []
    h = bb.model.register_forward_pre_hook(lambda m, inp: rows.append(inp[0].shape[0]))
    try:
        ours = camzoo.explain("scorecam", bb, x, y, batch_size=4)
        exp = camzoo.get_explainer("scorecam")
        with torch.inference_mode():
            acts, _ = bb.features_and_logits(x)
            scores = exp.channel_scores(bb, x, y, acts)
    finally:
        h.remove()
    # explain: 1 clean batch of 2 + 2 x (16 - 2) masked inputs; channel_scores: 1 + 28 again
    assert sum(rows) == 2 * (2 + 2 * 14)
    assert (scores[:, [2, 5]] == 0).all() and (scores[:, [0, 1, 3, 4]] > 0).all()
    torch.testing.assert_close(ours, ref_scorecam_official(bb, x, y), atol=1e-5, rtol=0)
    assert torch.isfinite(ours).all()


@pytest.mark.parametrize("variant", ["official", "grad-cam"])
def test_scorecam_chunking_invariant(tiny, variant):
    x, y = _x(2), torch.tensor([2, 5])
    maps = [camzoo.explain("scorecam", tiny, x, y, variant=variant, batch_size=bs) for bs in (1, 7, 1000)]
    torch.testing.assert_close(maps[0], maps[1], atol=1e-6, rtol=0)
    torch.testing.assert_close(maps[0], maps[2], atol=1e-6, rtol=0)


def test_scorecam_channels_last_model_same_maps():
    x, y = _x(2), torch.tensor([2, 5])
    a = camzoo.explain("scorecam", tiny_backbone(), x, y)
    bb = tiny_backbone()
    bb.model.to(memory_format=torch.channels_last)
    torch.testing.assert_close(camzoo.explain("scorecam", bb, x, y), a, atol=1e-5, rtol=0)


def test_forward_passes_and_layer_channels():
    bb = tiny_backbone(channels=5)
    assert camzoo.get_explainer("scorecam").forward_passes(bb) == 6
    assert camzoo.get_explainer("scorecam", variant="grad-cam").forward_passes(bb) == 6
    assert bb.channels() == 5 and hook_count(bb.model) == 0
    assert camzoo.get_explainer("rise").forward_passes(bb) == 4000
    assert camzoo.get_explainer("rise", n_masks=123).forward_passes(bb) == 123


def test_bad_options():
    with pytest.raises(ValueError, match="official, grad-cam"):
        camzoo.get_explainer("scorecam", variant="paper")
    with pytest.raises(ValueError, match="batch_size"):
        camzoo.get_explainer("scorecam", batch_size=0)
    with pytest.raises(ValueError, match="p1"):
        camzoo.get_explainer("rise", p1=0.0)
    with pytest.raises(ValueError, match="amp"):
        camzoo.get_explainer("rise", amp="fp8")


class _Boom(nn.Module):
    def forward(self, f):
        raise RuntimeError("boom")


@pytest.mark.parametrize("method", ["scorecam", "rise"])
def test_no_hooks_left(tiny, method):
    x = _x(2)
    m = camzoo.explain(method, tiny, x, n_masks=8) if method == "rise" else camzoo.explain(method, tiny, x)
    assert m.shape == (2, 32, 32) and torch.isfinite(m).all()
    assert hook_count(tiny.model) == 0
    model = TinyCNN()
    model.fc = _Boom()
    bb = tiny_backbone(model=model)
    with pytest.raises(RuntimeError, match="boom"):
        camzoo.explain(method, bb, x, torch.tensor([0, 1]))
    assert hook_count(bb.model) == 0


# -- RISE ----------------------------------------------------------------------------------
def test_rise_masks_match_skimage_resize():
    g = torch.Generator().manual_seed(3)
    H, W = 32, 30  # cell = ceil(32/7) = ceil(30/7) = 5 -> upsampled 40x40
    grids, shifts = rise_grids(6, 7, 0.5, (H, W), g)
    assert set(grids.unique().tolist()) <= {0.0, 1.0}
    assert shifts.min() >= 0 and shifts.max() < 5
    m = rise_masks(grids, shifts, (H, W))
    assert m.shape == (6, H, W)
    torch.testing.assert_close(m, _skimage_masks(grids, shifts, H, W), atol=1e-5, rtol=0)
    ones = rise_masks(torch.ones(2, 7, 7), shifts[:2], (H, W))
    torch.testing.assert_close(ones, torch.ones(2, H, W), atol=1e-6, rtol=0)


def test_rise_equals_reference_loop(tiny):
    x, y = _x(2), torch.tensor([4, 6])
    n, s, p1, seed = 24, 4, 0.4, 5
    ours = camzoo.explain("rise", tiny, x, y, n_masks=n, s=s, p1=p1, seed=seed, batch_size=5)
    grids, shifts = rise_grids(n, s, p1, (32, 32), torch.Generator().manual_seed(seed))
    ref = ref_rise(tiny, x, y, _skimage_masks(grids, shifts, 32, 32), p1)
    assert ours.shape == (2, 32, 32) and torch.isfinite(ours).all()
    assert ours.min() == 0 and ours.max() == 1
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


def test_rise_seed_and_chunking(tiny):
    x, y = _x(2), torch.tensor([1, 3])
    opts = dict(n_masks=20, s=5)
    a = camzoo.explain("rise", tiny, x, y, seed=1, batch_size=1, **opts)
    b = camzoo.explain("rise", tiny, x, y, seed=1, batch_size=8, **opts)
    c = camzoo.explain("rise", tiny, x, y, seed=1, batch_size=1000, **opts)
    d = camzoo.explain("rise", tiny, x, y, seed=2, batch_size=8, **opts)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    torch.testing.assert_close(a, c, atol=1e-6, rtol=0)
    assert (a - d).abs().max() > 0.05


def test_rise_saliency_scale(tiny):
    """With p1 = 1 every mask is all ones: S = softmax(f(x))[c] everywhere."""
    x, y = _x(2), torch.tensor([1, 2])
    exp = camzoo.get_explainer("rise", n_masks=10, p1=1.0)
    sal = exp.saliency(tiny, x, y)
    with torch.no_grad():
        p = F.softmax(tiny.model(x), dim=1)[torch.arange(2), y]
    torch.testing.assert_close(sal, p[:, None, None].expand(2, 32, 32), atol=1e-6, rtol=0)


# -- BatchNorm folding for the masked forwards ---------------------------------------------
class _BNNet(nn.Module):
    """conv-BN-ReLU-conv(no bias)-BN-ReLU-GAP-linear with non-trivial BN statistics."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.Conv2d(8, 12, 3, 2, 1, bias=False), nn.BatchNorm2d(12), nn.ReLU())
        self.fc = nn.Linear(12, 10)
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
                    m.running_var.copy_(torch.rand(m.num_features, generator=g) * 1.5 + 0.5)

    def forward(self, x):
        return self.fc(self.body(x).mean(dim=(2, 3)))


def test_inference_model_folds_batchnorm():
    from camzoo.models.zoo import backbone_from_module
    from camzoo.explainers.perturb import inference_model

    net = _BNNet()
    bb = backbone_from_module(net, {"features": net.body}, input_size=32)
    fast = inference_model(bb)
    assert fast is not bb.model and not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in bb.model.modules()) == 2  # model untouched
    assert getattr(fast.body, "0") is not bb.model.body[0] and fast.fc is bb.model.fc  # only convs new
    assert inference_model(bb) is fast  # cached
    x, y = _x(2), torch.tensor([1, 2])
    with torch.no_grad():
        torch.testing.assert_close(fast(x), bb.model(x), atol=1e-5, rtol=1e-5)
    for method, opts in (("scorecam", {}), ("scorecam", {"variant": "grad-cam"}), ("rise", {"n_masks": 16})):
        a = camzoo.explain(method, bb, x, y, fuse_bn=True, **opts)
        b = camzoo.explain(method, bb, x, y, fuse_bn=False, **opts)
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    with torch.no_grad():  # an in-place change of the model invalidates the cached copy
        net.body[1].running_mean.add_(1.0)
    fast2 = inference_model(bb)
    assert fast2 is not fast
    with torch.no_grad():
        torch.testing.assert_close(fast2(x), bb.model(x), atol=1e-5, rtol=1e-5)
    tb = tiny_backbone()  # no BatchNorm: the model itself
    assert inference_model(tb) is tb.model


@pytest.mark.parametrize("method,opts", [("scorecam", {}), ("rise", {"n_masks": 16})])
def test_amp_bf16_close_to_fp32(tiny, method, opts):
    """amp is opt-in (CUDA); on CPU it still runs and only changes the maps by bf16 rounding."""
    x, y = _x(2), torch.tensor([3, 4])
    a = camzoo.explain(method, tiny, x, y, **opts)
    b = camzoo.explain(method, tiny, x, y, amp="bf16", **opts)
    assert b.dtype == torch.float32 and torch.isfinite(b).all()
    assert 0 < (a - b).abs().max() < 0.1


@pytest.mark.parametrize("amp,dtype", [("fp16", torch.float16), ("bf16", torch.bfloat16), (None, torch.float32)])
def test_autocast_context_dtypes(amp, dtype):
    from camzoo.utils import autocast as autocast_context

    a, b = torch.randn(4, 4), torch.randn(4, 4)
    with autocast_context(torch.device("cpu"), amp):
        assert torch.mm(a, b).dtype == dtype
    with pytest.raises(ValueError, match="amp='fp8'"):
        autocast_context(torch.device("cpu"), "fp8")


def test_rise_saliency_is_divided_by_n_p1():
    from camzoo.explainers.rise import rise_grids, rise_masks

    bb = tiny_backbone()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([2, 5])
    n, s, p1, seed = 16, 4, 0.3, 7
    ours = camzoo.get_explainer("rise", n_masks=n, s=s, p1=p1, seed=seed).saliency(bb, x, y)
    grids, shifts = rise_grids(n, s, p1, (32, 32), torch.Generator().manual_seed(seed))
    masks = rise_masks(grids, shifts, (32, 32))  # [n,H,W]
    with torch.no_grad():
        probs = torch.stack([F.softmax(bb.model(x * m[None, None]), 1)[torch.arange(2), y] for m in masks], 1)
    ref = torch.einsum("bn,nhw->bhw", probs, masks) / (n * p1)
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-5)
