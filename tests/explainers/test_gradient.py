"""The Grad-CAM family: equal to pytorch-grad-cam, Grad-CAM by hand, Smooth Grad-CAM++ seeded and
independent of the batch, fp16 gradients scaled (an overflow recomputed in fp32)."""
import numpy as np
import pytest
import torch

import camzoo
from camzoo.explainers.base import cam_to_map, minmax
from camzoo.models.backbone import hook_count
from camzoo.models.testing import tiny_backbone
from tests.helpers import GRADIENT


@pytest.mark.parametrize("method", GRADIENT)
def test_gradient_methods_equal_pytorch_grad_cam(method, lite0, sample_batch):
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cls = {"gradcam": pytorch_grad_cam.GradCAM, "gradcam++": pytorch_grad_cam.GradCAMPlusPlus,
           "xgradcam": pytorch_grad_cam.XGradCAM}[method]
    x = sample_batch[:3]
    y = torch.tensor([282, 967, 0])  # one target per sample, one of them not the top-1
    ours = camzoo.explain(method, lite0, x, y)
    with cls(model=lite0.model, target_layers=[lite0.layer()]) as cam:
        # the backbone's parameters are frozen, so the input must carry the graph
        theirs = cam(input_tensor=x.clone().requires_grad_(True), targets=[ClassifierOutputTarget(int(c)) for c in y])
    # pytorch-grad-cam upsamples and min-maxes again; camzoo min-maxes then upsamples
    np.testing.assert_allclose(minmax(ours).numpy(), theirs, atol=1e-5)
    assert hook_count(lite0.model) == 0


def test_gradcam_hand_computed_on_tiny(tiny):
    """Grad-CAM = ReLU(sum_k mean(dy/dA_k) A_k), min-max at feature res, bilinear upsample."""
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([1, 3])
    A = tiny.model.body(x)
    # head = fc(mean(A)): dy_c/dA_k(i,j) = W[c,k] / (h*w)
    w = tiny.model.fc.weight[y] / (A.shape[2] * A.shape[3])
    cam = (w[:, :, None, None] * A).sum(1)
    ref = cam_to_map(cam.detach(), (32, 32))
    torch.testing.assert_close(camzoo.explain("gradcam", tiny, x, y), ref, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_smoothgradcampp_seeded(lite0, sample_batch):
    x = sample_batch[:1]
    a = camzoo.explain("smoothgradcam++", lite0, x, seed=3)
    b = camzoo.explain("smoothgradcam++", lite0, x, seed=3)
    c = camzoo.explain("smoothgradcam++", lite0, x, seed=4)
    torch.testing.assert_close(a, b)
    assert (a - c).abs().max() > 1e-4
    # with no noise it is exactly Grad-CAM++
    z = camzoo.explain("smoothgradcam++", lite0, x, noise_std=0.0, n_samples=2)
    torch.testing.assert_close(z, camzoo.explain("gradcam++", lite0, x), atol=1e-5, rtol=0)
    assert camzoo.get_explainer("smoothgradcam++").forward_passes(lite0) == 5


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
