"""Core: backbones, the explain API, gradient explainers vs pytorch-grad-cam, registry, hooks."""
import csv
import os
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch

import camzoo
from camzoo.models import hook_count
from camzoo.explainers.base import cam_to_map, minmax
from camzoo.registry import Registry, UnknownNameError

from .conftest import SAMPLES


# -- embedded backbone ---------------------------------------------------------------------
def _subset(n=40):
    with open(os.path.join(SAMPLES, "labels.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    return rows[::len(rows) // n][:n]


def test_lite0_top1_on_fixed_subset(lite0):
    rows = _subset(40)
    x = torch.stack([lite0.preprocess(camzoo.data.load_image(os.path.join(SAMPLES, r["file"])))
                     for r in rows])
    y = torch.tensor([int(r["class_index"]) for r in rows])
    with torch.inference_mode():
        pred = lite0.model(x).argmax(1)
    acc = (pred == y).float().mean().item()
    assert acc >= 0.85, acc


def test_lite0_chelsea_is_a_cat(lite0, sample_batch):
    with torch.inference_mode():
        top1 = lite0.model(sample_batch[:1]).argmax(1).item()
    assert top1 in (281, 282, 285)
    assert lite0.class_names[top1].endswith("cat")


def test_lite0_layers_and_heads(lite0, sample_batch):
    x = sample_batch[:2]
    with torch.inference_mode():
        logits = lite0.model(x)
        for layer, shape in (("blocks", (320, 7, 7)), ("conv_head", (1280, 7, 7))):
            f, lg = lite0.features_and_logits(x, layer)
            assert tuple(f.shape[1:]) == shape
            torch.testing.assert_close(lite0.head(f, layer), logits, rtol=0, atol=1e-5)
    assert lite0.default_layer == "conv_head"
    assert torch.allclose(lite0.mean, torch.full((3,), 0.5)) and torch.allclose(lite0.std, torch.full((3,), 0.5))
    x01 = torch.rand(1, 3, 8, 8)
    torch.testing.assert_close(lite0.denormalize(lite0.normalize(x01)), x01)
    assert all(not p.requires_grad for p in lite0.model.parameters()) and not lite0.model.training


# -- torchvision / timm backbones ----------------------------------------------------------
def test_torchvision_weights_file_and_cached_weights(tmp_path, monkeypatch):
    """(Downloads and their failures: tests/models/test_weights.py, against a local server.)"""
    import torchvision

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    torch.manual_seed(0)
    ref = torchvision.models.resnet18(weights=None).eval()
    path = tmp_path / "r18.pt"
    torch.save(ref.state_dict(), path)
    bb = camzoo.load_backbone("resnet18", weights=str(path), device="cpu")
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(bb.model(x), ref(x), rtol=1e-4, atol=1e-4)
        f, logits = bb.features_and_logits(x)
        torch.testing.assert_close(bb.head(f), logits, rtol=0, atol=1e-5)
    assert bb.default_layer == "layer4" and f.shape[1] == 512
    assert bb.weights_id.startswith("file:r18.pt#")
    assert bb.class_names[282] == "tiger cat"
    # the torchvision cache is used when the expected file is there
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(ref.state_dict(), tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth")
    bb2 = camzoo.load_backbone("resnet18", device="cpu")
    assert bb2.weights_id.startswith("torchvision:resnet18-f37072fd.pth#")


def test_vgg16_layers_random():
    bb = camzoo.load_backbone("vgg16", weights="random", device="cpu")
    x = torch.randn(1, 3, 224, 224)
    with torch.inference_mode():
        logits = bb.model(x)
        for layer, shape in (("conv5", (512, 14, 14)), ("pool5", (512, 7, 7))):
            f, _ = bb.features_and_logits(x, layer)
            assert tuple(f.shape[1:]) == shape
            torch.testing.assert_close(bb.head(f, layer), logits, rtol=0, atol=1e-5)
    assert bb.default_layer == "conv5"
    with pytest.raises(ValueError, match="conv5, pool5"):
        bb.layer("conv4")


def test_timm_backbone_head():
    bb = camzoo.load_backbone("timm:resnet18", weights="random", device="cpu")
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        f, logits = bb.features_and_logits(x)
        torch.testing.assert_close(bb.head(f), logits, rtol=0, atol=1e-5)
    assert bb.default_layer == "layer4"


def test_unknown_backbone_lists_names():
    with pytest.raises(UnknownNameError, match="efficientnet_lite0.*vgg16|vgg16"):
        camzoo.load_backbone("alexnet")


# -- explain API -----------------------------------------------------------------------------
GRADIENT = ["gradcam", "gradcam++", "xgradcam"]


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


def test_maps_contract(lite0, sample_batch):
    x = sample_batch[:2]
    for m in GRADIENT + ["smoothgradcam++", "fakecam"]:
        v = camzoo.explain(m, lite0, x)
        assert v.shape == (2, 224, 224) and v.dtype == torch.float32
        assert torch.isfinite(v).all() and v.min() >= 0 and v.max() <= 1
        assert v.flatten(1).max(1).values.gt(0.9).all(), m  # normalized, informative
    assert hook_count(lite0.model) == 0


def test_default_target_is_top1(lite0, sample_batch):
    x = sample_batch[:2]
    with torch.inference_mode():
        top1 = lite0.model(x).argmax(1)
    torch.testing.assert_close(camzoo.explain("gradcam", lite0, x), camzoo.explain("gradcam", lite0, x, top1))
    other = camzoo.explain("gradcam", lite0, x, torch.tensor([5, 5]))
    assert (other - camzoo.explain("gradcam", lite0, x)).abs().max() > 0.1


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


def test_fakecam(tiny):
    v = camzoo.explain("fakecam", tiny, torch.randn(3, 3, 32, 32))
    assert v[:, 0, 0].eq(0).all() and v.sum().item() == 3 * (32 * 32 - 1)
    assert camzoo.get_explainer("fakecam").forward_passes(tiny) == 0


def test_minmax_constant_map_is_zero():
    m = torch.stack([torch.full((4, 4), 3.0), torch.arange(16.0).view(4, 4), torch.full((4, 4), float("nan"))])
    out = minmax(m)
    assert out[0].eq(0).all() and out[2].eq(0).all()
    assert out[1].min() == 0 and out[1].max() == 1


def test_bad_arguments(tiny):
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(ValueError, match=r"out of range.*0\.\.9"):
        camzoo.explain("gradcam", tiny, x, torch.tensor([10]))
    with pytest.raises(UnknownNameError, match="gradcam"):
        camzoo.explain("gradkam", tiny, x)
    with pytest.raises(ValueError, match="has no layer 'nope'; layers: features"):
        camzoo.explain("gradcam", tiny, x, layer="nope")
    with pytest.raises(ValueError, match="no option.*bogus.*layer"):
        camzoo.explain("gradcam", tiny, x, bogus=1)


def test_hooks_removed_when_explain_raises(tiny):
    class Boom(Exception):
        pass

    def explode(module, inputs, output):
        raise Boom()

    h = tiny.model.fc.register_forward_hook(explode)
    try:
        for m in GRADIENT + ["smoothgradcam++"]:
            with pytest.raises(Boom):
                camzoo.explain(m, tiny, torch.randn(1, 3, 32, 32), torch.tensor([0]))
    finally:
        h.remove()
    assert hook_count(tiny.model) == 0


# -- registry and plugins ----------------------------------------------------------------
def _fake_dist(tmp_path, name, module_src, ep_value):
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(module_src))
    info = tmp_path / f"{name}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[camzoo.explainers]\n{ep_value}\n")


def test_entry_point_plugins(tmp_path, monkeypatch, tiny):
    _fake_dist(tmp_path, "camzoo_goodplugin", """
        import torch
        from camzoo import Explainer

        class CenterCAM(Explainer):
            name = "center"
            defaults = {"sigma": 0.25}
            def forward_passes(self, model):
                return 0
            def _explain(self, model, x, y):
                H, W = x.shape[-2:]
                yy, xx = torch.meshgrid(torch.linspace(-1, 1, H), torch.linspace(-1, 1, W), indexing="ij")
                g = torch.exp(-(xx ** 2 + yy ** 2) / (2 * self.options["sigma"] ** 2))
                return g.expand(x.shape[0], H, W).clone()
        """, "center = camzoo_goodplugin:CenterCAM")
    _fake_dist(tmp_path, "camzoo_badplugin", "raise ImportError('missing dependency xyz')\n",
               "broken = camzoo_badplugin:Nope")
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = Registry("explainer", "camzoo.explainers")
    reg.add("gradcam", object)
    with pytest.warns(RuntimeWarning, match="broken.*missing dependency xyz"):
        names = reg.names()
    assert "center" in names and "gradcam" in names and "broken" not in names
    # through the global registry and the one-call API
    from camzoo.explainers.base import EXPLAINERS

    monkeypatch.setattr(EXPLAINERS, "_entry_points_loaded", False)
    monkeypatch.setattr(EXPLAINERS, "_items", dict(EXPLAINERS._items))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        v = camzoo.explain("center", tiny, torch.randn(2, 3, 32, 32))
    assert v.shape == (2, 32, 32) and float(v[0, 16, 16]) > 0.95 and float(v[0, 0, 0]) < 0.01
