"""Vision transformers through timm: token layers as feature maps, every explainer on them."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import camzoo
from camzoo.explainers.base import minmax
from camzoo.explainers.learned.lficam import LFICAM, attention_map, channel_minmax, gray_image
from camzoo.models.backbone import hook_count
from camzoo.models.synthetic import ShapesDataset
from camzoo.models.testing import tiny_deit, tiny_swin, tiny_vit
from camzoo.models.tokens import ChannelsLast, PatchTokens

QUIET = dict(progress=False, log=lambda s: None)


@pytest.fixture(scope="module")
def vit():
    return tiny_vit()


@pytest.fixture(scope="module")
def swin():
    return tiny_swin()


def _x(bb, n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, bb.input_size, bb.input_size, generator=g)


def _tokens_at(bb, layer, x):
    """The raw (un-reshaped) output of ``layer`` for ``x`` through a plain hook."""
    out = {}
    h = bb.layer(layer).register_forward_hook(lambda m, i, o: out.update(t=o.detach()))
    try:
        with torch.no_grad():
            bb.model(x)
    finally:
        h.remove()
    return out["t"]


# -- layouts --------------------------------------------------------------------------------
def test_patch_tokens_use_the_models_grid_and_drop_prefix_tokens():
    # a non-square 2x3 grid with 2 prefix tokens: token 2 + r*3 + q is patch (r, q)
    lay = PatchTokens((2, 3), prefix=2)
    t = torch.arange(2 * 8 * 5, dtype=torch.float32).view(2, 8, 5)  # [B, 2 + 6, D=5]
    f = lay(t)
    assert f.shape == (2, 5, 2, 3)
    for r in range(2):
        for q in range(3):
            torch.testing.assert_close(f[:, :, r, q], t[:, 2 + r * 3 + q, :])
    back = lay.inverse(f * 2, like=t)
    torch.testing.assert_close(back[:, :2], t[:, :2])          # prefix tokens unchanged
    torch.testing.assert_close(back[:, 2:], 2 * t[:, 2:])
    assert torch.equal(lay.inverse(f)[:, :2], torch.zeros(2, 2, 5))
    with pytest.raises(ValueError, match=r"2 \+ 2\*3.*input size"):
        lay(torch.zeros(1, 9, 5))
    cl = ChannelsLast()
    m = torch.randn(2, 4, 3, 6)
    assert cl(m).shape == (2, 6, 4, 3) and torch.equal(cl.inverse(cl(m)), m)


def test_timm_vit_deit_swin_layers_defaults_and_grids():
    vit = tiny_vit()
    assert vit.input_size == 32 and vit.default_layer == "blocks.1.norm1"
    assert list(vit.layers) == ["blocks.0", "blocks.1", "blocks.1.norm1"]
    assert vit.layer() is vit.model.blocks[-1].norm1
    lay = vit.reshape_of()
    assert (lay.grid, lay.prefix) == (tuple(vit.model.patch_embed.grid_size), 1) == ((4, 4), 1)
    deit = tiny_deit()
    assert deit.reshape_of().prefix == 2 and deit.model.num_prefix_tokens == 2
    # another image size: the grid comes from the model (64 px / patch 8 = 8x8), not a constant
    big = tiny_vit(img_size=64)
    assert big.input_size == 64 and big.reshape_of().grid == (8, 8)
    assert big.features(_x(big, 1)).shape == (1, 32, 8, 8)
    sw = tiny_swin()
    assert sw.default_layer == "layers.1.blocks.0.norm1" and sw.layer() is sw.model.layers[-1].blocks[-1].norm1
    assert set(sw.layers) == {"layers.0", "layers.1", "layers.1.blocks.0.norm1", "norm"}
    assert isinstance(sw.reshape_of("norm"), ChannelsLast)
    # a CNN keeps its layers as they are
    assert camzoo.load_backbone("timm:resnet18", weights="random", device="cpu").reshapes == {}


def test_features_channels_and_heads_of_token_layers(vit, swin):
    x = _x(vit)
    for name in vit.layers:
        A, logits = vit.features_and_logits(x, name)
        t = _tokens_at(vit, name, x)
        ref = t[:, 1:].reshape(3, 4, 4, 32).permute(0, 3, 1, 2)  # pytorch-grad-cam's recipe
        torch.testing.assert_close(A, ref, rtol=0, atol=0)
        assert vit.channels(name) == 32
    with pytest.raises(NotImplementedError, match="cannot run its head"):
        vit.head(A, "blocks.1")  # class-token pooling: the class token is dropped
    # average-pooled ViT: the rest of the network runs from the last block's patch tokens
    avg = tiny_vit(global_pool="avg")
    with torch.no_grad():
        A, logits = avg.features_and_logits(x, "blocks.1")
        torch.testing.assert_close(avg.head(A, "blocks.1"), logits, rtol=0, atol=1e-5)
    xs = _x(swin)
    with torch.no_grad():
        for name in ("norm", "layers.1"):
            A, logits = swin.features_and_logits(xs, name)
            assert A.shape == (3, 32, 8, 8)
            torch.testing.assert_close(swin.head(A, name), logits, rtol=0, atol=1e-5)
        torch.testing.assert_close(swin.features(xs, "layers.0"),
                                   _tokens_at(swin, "layers.0", xs).permute(0, 3, 1, 2))


def test_capture_layer_reshapes_activation_and_gradient(vit):
    x = _x(vit)
    y = torch.tensor([0, 1, 2])
    raw = {}

    def keep(m, i, o):
        raw["t"] = o
        o.register_hook(lambda g: raw.update(g=g))

    h = vit.layer().register_forward_hook(keep)
    try:
        with torch.enable_grad(), vit.capture_layer(grad=True) as cap:
            logits = vit.model(x.clone().requires_grad_(True))
            logits.gather(1, y[:, None]).sum().backward()
    finally:
        h.remove()
    lay = vit.reshape_of()
    assert cap.activation.shape == cap.gradient.shape == (3, 32, 4, 4)
    torch.testing.assert_close(cap.activation, lay(raw["t"]))
    torch.testing.assert_close(cap.gradient, lay(raw["g"]), rtol=0, atol=0)
    assert float(cap.gradient.abs().amax()) > 0 and hook_count(vit.model) == 0


def test_weights_file_loads_into_the_tiny_vit(tmp_path):
    other = tiny_vit(seed=1)
    path = tmp_path / "vit.pt"
    torch.save(other.model.state_dict(), path)
    bb = tiny_vit(weights=str(path))
    x = _x(bb)
    with torch.no_grad():
        torch.testing.assert_close(bb.model(x), other.model(x), rtol=0, atol=0)
        assert not torch.allclose(bb.model(x), tiny_vit().model(x))
    assert bb.weights_id.startswith("file:vit.pt#")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        tiny_vit(weights=str(tmp_path / "missing.pt"))


# -- explainers -------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "xgradcam"])
@pytest.mark.parametrize("factory", [tiny_vit, tiny_deit, tiny_swin])
def test_gradient_cams_equal_pytorch_grad_cam_with_its_reshape_transform(method, factory):
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    bb = factory()
    cls = {"gradcam": pytorch_grad_cam.GradCAM, "gradcam++": pytorch_grad_cam.GradCAMPlusPlus,
           "xgradcam": pytorch_grad_cam.XGradCAM}[method]
    x = _x(bb)
    y = torch.tensor([1, 7, 3])
    if isinstance(bb.reshape_of(), PatchTokens):
        h, w = bb.model.patch_embed.grid_size
        prefix = bb.model.num_prefix_tokens

        def reshape_transform(t):  # pytorch-grad-cam's tutorials/vision_transformers.md
            r = t[:, prefix:, :].reshape(t.size(0), h, w, t.size(2))
            return r.transpose(2, 3).transpose(1, 2)
    else:
        def reshape_transform(t):  # timm Swin outputs [B,H,W,C]
            return t.permute(0, 3, 1, 2)
    ours = camzoo.explain(method, bb, x, y)
    with cls(model=bb.model, target_layers=[bb.layer()], reshape_transform=reshape_transform) as cam:
        theirs = cam(input_tensor=x.clone().requires_grad_(True),
                     targets=[ClassifierOutputTarget(int(c)) for c in y])
    assert float(ours.amax()) > 0  # a real map, not the all-zero case
    np.testing.assert_allclose(minmax(ours).numpy(), theirs, atol=1e-5)
    assert hook_count(bb.model) == 0


@pytest.mark.parametrize("factory", [tiny_vit, tiny_swin])
def test_every_feature_map_explainer_runs_on_token_layers(factory):
    bb = factory()
    x = _x(bb, 2)
    S = bb.input_size
    for method, opts in [("smoothgradcam++", {"n_samples": 2}), ("scorecam", {}),
                         ("scorecam", {"variant": "grad-cam"}), ("rise", {"n_masks": 16}),
                         ("fakecam", {})]:
        V = camzoo.explain(method, bb, x, torch.tensor([0, 1]), **opts)
        assert V.shape == (2, S, S) and V.min() >= 0 and V.max() <= 1 and torch.isfinite(V).all()
        assert hook_count(bb.model) == 0
    ex = camzoo.get_explainer("scorecam")
    assert ex.forward_passes(bb) == bb.channels() + 1 == 33
    # Score-CAM's activation masks are the reshaped token maps: by hand on the first image
    with torch.no_grad():
        A = bb.features(x[:1]).float()
        up = F.interpolate(A[0][:, None], size=(S, S), mode="bilinear", align_corners=False)[:, 0]
        lo, hi = up.flatten(1).amin(1), up.flatten(1).amax(1)
        keep = hi > lo
        masks = (up[keep] - lo[keep, None, None]) / (hi - lo)[keep, None, None]
        w = torch.zeros(A.shape[1])
        w[keep] = torch.softmax(bb.model(x[:1] * masks[:, None]), 1)[:, 0]
        cam = F.interpolate((w[:, None, None] * A[0]).sum(0)[None, None], size=(S, S),
                            mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(camzoo.explain("scorecam", bb, x[:1], torch.tensor([0])),
                               minmax(F.relu(cam)), atol=2e-5, rtol=0)


def test_lcam_img_trains_on_a_vit_and_fm_is_refused_without_a_head(vit, tmp_path):
    from camzoo.train.lcam import train_lcam

    data = ShapesDataset(16, vit, size=32, seed=1)
    out = str(tmp_path / "img.pt")
    train_lcam(vit, data, None, variant="img", epochs=1, batch_size=8, lr=0.1, out=out, **QUIET)
    V = camzoo.explain("lcam-img", vit, data.x[:2], checkpoint=out)
    assert V.shape == (2, 32, 32) and float(V.amax()) == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r"L-CAM-Fm needs the rest of the network after layer "
                                         r"'blocks.1.norm1'.*L-CAM-Img works at any layer"):
        train_lcam(vit, data, None, variant="fm", epochs=1, out=str(tmp_path / "fm.pt"), **QUIET)


def test_lcam_fm_trains_on_swin_norm(swin, tmp_path):
    from camzoo.train.lcam import train_lcam

    data = ShapesDataset(16, swin, size=64, seed=1)
    out = str(tmp_path / "fm.pt")
    train_lcam(swin, data, None, variant="fm", layer="norm", epochs=1, batch_size=8, lr=0.1,
               out=out, **QUIET)
    V = camzoo.explain("lcam-fm", swin, data.x[:2], checkpoint=out)
    assert V.shape == (2, 64, 64) and float(V.amax()) == pytest.approx(1.0)


def test_lficam_reweights_vit_tokens_and_keeps_the_class_token(vit):
    model = LFICAM(vit, mode="frozen", seed=3).eval()
    x = _x(vit, 4)
    layer = vit.layer()
    with torch.no_grad():
        logits, L = model(x)
        t = _tokens_at(vit, vit.default_layer, x)               # independent forward
        f = t[:, 1:].reshape(4, 4, 4, 32).permute(0, 3, 1, 2)
        w = model.fin(channel_minmax(f) * gray_image(x, (4, 4)))
        L_ref = attention_map(f, w)
        t2 = t.clone()
        t2[:, 1:] = t[:, 1:] * (1 + L_ref.reshape(4, 16, 1))  # patch tokens re-weighted
        h = layer.register_forward_hook(lambda m, i, o: t2)
        try:
            logits_ref = vit.model(x)
        finally:
            h.remove()
    assert L.shape == (4, 4, 4)
    torch.testing.assert_close(L, L_ref)
    torch.testing.assert_close(logits, logits_ref)
    assert not torch.allclose(logits, vit.model(x))
    assert hook_count(vit.model) == 0
    V = model.explain(x)
    assert V.shape == (4, 32, 32)


def test_lficam_explainer_from_a_checkpoint_on_a_vit(vit, tmp_path):
    from camzoo.train.lficam import train_lficam

    data = ShapesDataset(16, vit, size=32, seed=1)
    path = tmp_path / "lfi.pt"
    train_lficam(vit, data, None, mode="frozen", epochs=1, batch_size=8, lr=0.05, seed=0,
                 out=path, progress=False, log=lambda s: None)
    V = camzoo.explain("lficam", vit, data.x[:3], checkpoint=str(path))
    assert V.shape == (3, 32, 32) and torch.isfinite(V).all()


def test_lficam_refuses_a_reshape_without_inverse():
    from camzoo.models.zoo import backbone_from_module

    vit = tiny_vit()
    bb = backbone_from_module(vit.model, {"t": vit.layer()}, input_size=32,
                              reshapes={"t": lambda o: o[:, 1:].mT.reshape(o.shape[0], -1, 4, 4)})
    assert bb.features(_x(bb, 1)).shape == (1, 32, 4, 4)
    with pytest.raises(ValueError, match="LFI-CAM cannot re-weight layer 't'.*no inverse"):
        LFICAM(bb, "t")


def test_camzoo_list_names_the_transformer_layers_and_road():
    from click.testing import CliRunner

    from camzoo.cli import main

    out = CliRunner().invoke(main, ["list"]).output
    assert "blocks.<last>.norm1*" in out and "layers.<last>.blocks.<last>.norm1*" in out
    assert "'all' = lcam,rise,adcc)" in out and "road " in out and "all,road" in out
