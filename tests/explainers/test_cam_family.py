"""The rest of pytorch-grad-cam's CAM family behind explain(): every method equal to
pytorch-grad-cam on the tiny CNN and on Lite0 (2 photos), Ablation-CAM batched (forwards counted,
independent of the chunk size, the no-head path), FullGrad refused where it cannot apply, every
method through the sanity check.

pytorch-grad-cam upsamples and min-maxes; camzoo min-maxes at feature resolution, then upsamples:
``minmax(camzoo map)`` is compared with its output (as in test_gradient.py)."""
import copy

import numpy as np
import pytest
import torch
from torch import nn

import camzoo
from camzoo.explainers.base import minmax
from camzoo.models.backbone import hook_count
from camzoo.models.testing import tiny_backbone, tiny_vit
from camzoo.utils import forward_meter
from tests.conftest import SAMPLES

NEW = ["hirescam", "gradcam-elementwise", "layercam", "eigencam", "eigengradcam", "ablationcam",
       "fullgrad", "kpcacam", "shapleycam", "finercam"]
#: methods whose pytorch-grad-cam class takes (model, [layer]) and one ClassifierOutputTarget per sample
PLAIN = {"hirescam": "HiResCAM", "gradcam-elementwise": "GradCAMElementWise", "layercam": "LayerCAM",
         "eigencam": "EigenCAM", "eigengradcam": "EigenGradCAM", "kpcacam": "KPCA_CAM"}
ATOL = 1e-5


def _pgc(cls_name, model, layers, x, targets, **call):
    import pytorch_grad_cam

    with getattr(pytorch_grad_cam, cls_name)(model, layers) as cam:
        # the backbone's parameters are frozen: the input carries the graph
        return cam(x.clone().requires_grad_(True), targets, **call)


def _logit_targets(y):
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    return [ClassifierOutputTarget(int(c)) for c in y]


def _close(ours, theirs):
    np.testing.assert_allclose(minmax(ours).numpy(), theirs, rtol=0, atol=ATOL)


@pytest.fixture(scope="module")
def tiny_x():
    return torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def lite_x(sample_batch):
    """2 sample photos for Lite0 (the session's Lite0 is built once)."""
    return sample_batch[:2]


def _tiny():
    """The tiny CNN with a second layer, ``body.0`` (its first convolution, before the ReLU):
    signed activations, gradients that vary over space. (At ``features``, followed by global
    pooling and the classifier, the gradient is constant over space and the activations are
    >= 0: Grad-CAM, HiResCAM, LayerCAM and Grad-CAM element-wise coincide there.)"""
    bb = tiny_backbone()
    bb.layers["body.0"] = bb.model.body[0]
    return bb


def _case(request, which):
    """``(backbone, x, y, layer)`` of ``"tiny"``, ``"lite0"`` or ``"<backbone>:<layer>"``."""
    name, _, layer = which.partition(":")
    if name == "tiny":
        bb, x = _tiny(), request.getfixturevalue("tiny_x")
        y = torch.tensor([1, 3, 0, 7])  # not all the top-1
    else:
        bb, x = request.getfixturevalue("lite0"), request.getfixturevalue("lite_x")
        y = torch.tensor([282, 967])
    return bb, x, y, layer or None


CASES = ["tiny", "tiny:body.0", "lite0", "lite0:blocks"]


@pytest.mark.parametrize("which", CASES)
@pytest.mark.parametrize("method", sorted(PLAIN))
def test_wrapped_and_projection_methods_equal_pytorch_grad_cam(method, which, request):
    bb, x, y, layer = _case(request, which)
    ours = camzoo.explain(method, bb, x, y, layer=layer)
    _close(ours, _pgc(PLAIN[method], bb.model, [bb.layer(layer)], x, _logit_targets(y)))
    assert hook_count(bb.model) == 0


def test_the_element_wise_methods_differ_where_gradients_vary(request):
    """So that the equalities above tell the methods apart: at Lite0's ``blocks`` (signed, and
    the gradient varies over space and sign) no two of them coincide."""
    bb, x, y, layer = _case(request, "lite0:blocks")
    maps = {m: camzoo.explain(m, bb, x, y, layer=layer)
            for m in ("gradcam", "hirescam", "layercam", "gradcam-elementwise", "eigengradcam")}
    names = list(maps)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert (maps[a] - maps[b]).abs().max() > 0.2, (a, b)


def test_kpcacam_kernels_and_gamma_equal_scikit_learn(tiny_x):
    import pytorch_grad_cam

    bb = tiny_backbone()
    y = torch.tensor([1, 3, 0, 7])
    for kernel, gamma in (("rbf", None), ("poly", 0.5), ("linear", None), ("cosine", None), ("sigmoid", 0.02)):
        ours = camzoo.explain("kpcacam", bb, tiny_x, y, kernel=kernel, gamma=gamma)
        with pytorch_grad_cam.KPCA_CAM(bb.model, [bb.layer()], kernel=kernel, gamma=gamma) as cam:
            theirs = cam(tiny_x, _logit_targets(y))
        _close(ours, theirs)
    with pytest.raises(ValueError, match="kpcacam: unknown kernel 'chi2'; valid: sigmoid, rbf"):
        camzoo.get_explainer("kpcacam", kernel="chi2")


@pytest.mark.parametrize("which", CASES)
def test_finercam_equals_pytorch_grad_cam(which, request):
    bb, x, _, layer = _case(request, which)
    top1 = bb.model(x).argmax(1)
    # pytorch-grad-cam picks the comparison classes itself (targets=None: the top-1 explained)
    _close(camzoo.explain("finercam", bb, x, layer=layer), _pgc("FinerCAM", bb.model, [bb.layer(layer)], x, None))
    # another class for every image (target_idx), another alpha
    c = int(top1[0]) + 1
    ours = camzoo.explain("finercam", bb, x, torch.full_like(top1, c), alpha=0.5, layer=layer)
    _close(ours, _pgc("FinerCAM", bb.model, [bb.layer(layer)], x, None, target_idx=c, alpha=0.5))


@pytest.mark.parametrize("which", ["tiny", "lite0"])
def test_shapleycam_equals_pytorch_grad_cam(which, request):
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputReST

    bb, x, y, _ = _case(request, which)
    # ReST (the paper's target): the softmax makes the Hessian-vector product non-zero
    rest = camzoo.explain("shapleycam", bb, x, y, target="rest")
    _close(rest, _pgc("ShapleyCAM", bb.model, [bb.layer()], x, [ClassifierOutputReST(int(c)) for c in y]))
    gradcam = camzoo.explain("gradcam", bb, x, y)
    assert (rest - gradcam).abs().max() > 0.05
    # the logit: piecewise linear after the layer, H A = 0, so ShapleyCAM is Grad-CAM (where
    # pytorch-grad-cam's ShapleyCAM raises: the gradient has no graph)
    torch.testing.assert_close(camzoo.explain("shapleycam", bb, x, y, target="logit"), gradcam, rtol=0, atol=1e-6)
    # the default is the paper's ReST
    torch.testing.assert_close(camzoo.explain("shapleycam", bb, x, y), rest, rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="does not require grad"):
        _pgc("ShapleyCAM", bb.model, [bb.layer()], x, _logit_targets(y))
    assert hook_count(bb.model) == 0


# -- Ablation-CAM ---------------------------------------------------------------------------------
def _zero_ablation():
    """pytorch-grad-cam's AblationLayer with the paper's ablation: the channel set to 0."""
    from pytorch_grad_cam.ablation_layer import AblationLayer

    class ZeroAblation(AblationLayer):
        def __call__(self, x):
            out = self.activations
            for i in range(out.size(0)):
                out[i, self.indices[i], :] = 0
            return out

    return ZeroAblation()


def test_ablationcam_equals_pytorch_grad_cam_on_tiny(tiny_x):
    import pytorch_grad_cam

    bb = tiny_backbone()
    y = torch.tensor([1, 3, 0, 7])
    # after a ReLU the activations reach 0: both variants ablate to 0, as pytorch-grad-cam
    assert (bb.features(tiny_x).flatten(1).amin(1) == 0).all()
    theirs = _pgc("AblationCAM", bb.model, [bb.layer()], tiny_x, _logit_targets(y))
    for variant in ("official", "grad-cam"):
        _close(camzoo.explain("ablationcam", bb, tiny_x, y, variant=variant), theirs)
    with pytorch_grad_cam.AblationCAM(bb.model, [bb.layer()], ablation_layer=_zero_ablation()) as cam:
        _close(camzoo.explain("ablationcam", bb, tiny_x, y), cam(tiny_x, _logit_targets(y)))
    # body.0: no head from there (the whole model, the layer's output replaced by a hook), and
    # signed activations (pytorch-grad-cam's very negative ablation values)
    bb = _tiny()
    assert "body.0" not in bb.heads and (bb.features(tiny_x, "body.0").flatten(1).amin(1) < 0).all()
    layer = [bb.layer("body.0")]
    grad_cam = camzoo.explain("ablationcam", bb, tiny_x, y, layer="body.0", variant="grad-cam")
    _close(grad_cam, _pgc("AblationCAM", bb.model, layer, tiny_x, _logit_targets(y)))
    official = camzoo.explain("ablationcam", bb, tiny_x, y, layer="body.0")
    with pytorch_grad_cam.AblationCAM(bb.model, layer, ablation_layer=_zero_ablation()) as cam:
        _close(official, cam(tiny_x, _logit_targets(y)))
    assert hook_count(bb.model) == 0


class _FromBlocks(nn.Module):
    """Lite0 from its ``blocks``' output on (``self.blocks``, an Identity, stands for them): the
    same logits without recomputing the blocks for each ablated copy. pytorch-grad-cam reruns
    the whole network per copy (218 s for 2 photos on 2 cores); this way about 1 s.
    ``conv_head`` and ``bn2`` are Lite0's own modules."""

    def __init__(self, net):
        super().__init__()
        self.blocks = nn.Identity()
        self.conv_head, self.bn2 = net.conv_head, net.bn2
        self._net = [net]  # not a submodule: pytorch-grad-cam swaps a layer of this wrapper only

    def forward(self, f):
        return self._net[0].forward_head(self.bn2(self.conv_head(self.blocks(f))))


def test_ablationcam_equals_pytorch_grad_cam_on_lite0(lite0, lite_x):
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.image import scale_cam_image

    y = torch.tensor([282, 967])
    with torch.no_grad():
        f = lite0.features(lite_x, "blocks")
    net = _FromBlocks(lite0.model)
    torch.testing.assert_close(net(f), lite0.model(lite_x), rtol=0, atol=1e-4)

    def theirs(layer, **kw):
        with pytorch_grad_cam.AblationCAM(net, [layer], **kw) as cam:
            small = cam(f, _logit_targets(y))  # 7x7, the input's size: upsample as for an image
        return scale_cam_image(scale_cam_image(small, (224, 224)))

    # conv_head (Lite0's bn2: BatchNorm + ReLU6) reaches 0: both variants ablate to 0
    assert lite0.layer("conv_head") is net.bn2 and (lite0.features(lite_x).flatten(1).amin(1) == 0).all()
    ref = theirs(net.bn2)
    for variant in ("official", "grad-cam"):
        _close(camzoo.explain("ablationcam", lite0, lite_x, y, variant=variant), ref)
    # blocks (the last block's projection, no activation) is signed: pytorch-grad-cam ablates to
    # min - 1e7, the paper (official) to 0
    assert (f.flatten(1).amin(1) < 0).all()
    grad_cam = camzoo.explain("ablationcam", lite0, lite_x, y, layer="blocks", variant="grad-cam")
    _close(grad_cam, theirs(net.blocks))
    official = camzoo.explain("ablationcam", lite0, lite_x, y, layer="blocks")
    _close(official, theirs(net.blocks, ablation_layer=_zero_ablation()))
    assert (official - grad_cam).abs().max() > 0.05  # the ablation value matters there
    assert hook_count(lite0.model) == 0 and lite0.layer("conv_head") is lite0.model.bn2


def test_ablationcam_forwards_chunks_and_the_path_without_a_head(tiny_x):
    bb = tiny_backbone()
    with torch.no_grad():
        bb.model.body[2].bias[3] = -100.0  # channel 3 dead (all 0 after the ReLU) in every image
    y = torch.tensor([1, 3, 0, 7])
    ex = camzoo.get_explainer("ablationcam", batch_size=5)
    assert ex.forward_passes(bb) == 16 + 1  # K + 1, as Score-CAM
    chunks = []
    with forward_meter(chunks.append):
        ref = ex.explain(bb, tiny_x, y)
    acts = bb.features(tiny_x)
    live = int((acts.flatten(2).amax(2) > 0).sum())  # dead (all-zero) channels are not forwarded
    assert live == 4 * 15 and sum(chunks) == live and max(chunks) == 5 and len(chunks) == 12
    for bs in (1, 7, 1000):
        torch.testing.assert_close(camzoo.explain("ablationcam", bb, tiny_x, y, batch_size=bs), ref,
                                   rtol=0, atol=1e-6)
    # without a head from the layer: the whole model, the layer's output replaced by a hook
    bb.heads = {}
    torch.testing.assert_close(camzoo.explain("ablationcam", bb, tiny_x, y), ref, rtol=0, atol=1e-6)
    assert hook_count(bb.model) == 0


def test_ablationcam_forward_passes_on_lite0(lite0):
    assert camzoo.get_explainer("ablationcam").forward_passes(lite0) == 1281
    assert camzoo.get_explainer("ablationcam", layer="blocks").forward_passes(lite0) == 321


# -- FullGrad --------------------------------------------------------------------------------------
def test_fullgrad_equals_pytorch_grad_cam_on_tiny(tiny_x):
    bb = tiny_backbone()
    y = torch.tensor([1, 3, 0, 7])
    _close(camzoo.explain("fullgrad", bb, tiny_x, y), _pgc("FullGrad", bb.model, [], tiny_x, _logit_targets(y)))
    assert hook_count(bb.model) == 0


def _split_batchnorm_act(model):
    """A copy of ``model`` with every timm BatchNormAct2d split into nn.BatchNorm2d + drop + act
    (the same function; the BatchNorms are then of the type pytorch-grad-cam's FullGrad finds)."""
    model = copy.deepcopy(model)
    for name, m in list(model.named_modules()):
        if type(m).__name__ == "BatchNormAct2d":
            bn = nn.BatchNorm2d(m.num_features, eps=m.eps, momentum=m.momentum).eval()
            bn.load_state_dict(m.state_dict())
            parent, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, leaf, nn.Sequential(bn, m.drop, m.act))
    return model


def test_fullgrad_on_lite0_counts_the_batchnorm_act_biases(lite0, lite_x):
    y = torch.tensor([282, 967])
    ours = camzoo.explain("fullgrad", lite0, lite_x, y)
    split = _split_batchnorm_act(lite0.model)
    assert sum(type(m) is nn.BatchNorm2d for m in split.modules()) == 49
    torch.testing.assert_close(split(lite_x), lite0.model(lite_x), rtol=0, atol=0)
    _close(ours, _pgc("FullGrad", split, [], lite_x, _logit_targets(y)))
    # on Lite0 itself pytorch-grad-cam's FullGrad finds no bias layer: the input-gradient alone
    alone = _pgc("FullGrad", lite0.model, [], lite_x, _logit_targets(y))
    assert np.abs(minmax(ours).numpy() - alone).max() > 0.3
    assert hook_count(lite0.model) == 0


def test_fullgrad_refuses_a_vision_transformer_and_has_no_layer():
    ex = camzoo.get_explainer("fullgrad")
    vit = tiny_vit()
    with pytest.raises(ValueError, match=r"fullgrad: backbone 'tiny_vit' is a vision transformer"):
        ex.check_backbone(vit)
    with pytest.raises(ValueError, match="vision transformer"):
        ex.explain(vit, torch.zeros(1, 3, 32, 32))
    assert hook_count(vit.model) == 0
    with pytest.raises(ValueError, match="has no option"):
        camzoo.get_explainer("fullgrad", layer="features")
    # a CNN with biased layers FullGrad's formula leaves out (GroupNorm)
    from camzoo.models.zoo import backbone_from_module

    body = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.GroupNorm(2, 4), nn.ReLU())
    gn = backbone_from_module(nn.Sequential(body, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)),
                              {"body": body}, name="gn", input_size=16)
    with pytest.raises(ValueError, match=r"fullgrad: backbone 'gn' has biased layers .*0\.1 \(GroupNorm\)"):
        ex.check_backbone(gn)


# -- all of them -----------------------------------------------------------------------------------
def test_options_are_checked():
    for name, bad, match in (("ablationcam", {"variant": "x"}, "valid: official, grad-cam"),
                             ("ablationcam", {"batch_size": 0}, "batch_size must be >= 1"),
                             ("ablationcam", {"variant": "grad-cam", "amp": "fp16"}, "overflows float16"),
                             ("shapleycam", {"target": "prob"}, "valid: logit, rest"),
                             ("finercam", {"n_compare": 0}, "n_compare must be >= 1"),
                             ("kpcacam", {"gamma": -1.0}, "gamma must be a positive number")):
        with pytest.raises(ValueError, match=match):
            camzoo.get_explainer(name, **bad)
    for name in NEW:
        cls = camzoo.explainers.base.EXPLAINERS.get(name)
        assert cls.summary, name  # shown by camzoo list
        assert ("layer" in cls.defaults) == (name != "fullgrad") and "amp" in cls.defaults


def test_every_new_method_works_on_a_vision_transformer_but_fullgrad():
    vit = tiny_vit()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    for name in NEW:
        if name == "fullgrad":
            continue
        V = camzoo.explain(name, vit, x)
        assert V.shape == (2, 32, 32) and torch.isfinite(V).all() and V.amax() > 0, name
        assert hook_count(vit.model) == 0, name


def test_every_new_method_through_the_sanity_check():
    from camzoo.sanity import SIMILARITIES

    bb = tiny_backbone()
    res = camzoo.sanity.run(bb, ",".join(NEW), SAMPLES, limit=2, progress=False, figures=False)
    assert set(res.rows.method) == set(NEW) and len(res.rows) == 4 * 2 * len(NEW)
    vals = res.rows[list(SIMILARITIES)].to_numpy(dtype=float)
    assert np.isfinite(vals).all(), res.rows[~np.isfinite(vals).all(axis=1)]
    first = res.rows[res.rows.step == 0]
    np.testing.assert_allclose(first[list(SIMILARITIES)].to_numpy(dtype=float), 1.0, atol=1e-9)
    sp = res.summary("spearman")
    assert (sp.iloc[-1] < 0.95).all(), sp  # every map depends on the weights
    # Eigen-CAM and KPCA-CAM read the activations only: a random classifier leaves them alone
    assert sp.loc["fc", ["eigencam", "kpcacam"]].tolist() == pytest.approx([1.0, 1.0])
    assert (sp.loc["fc"].drop(["eigencam", "kpcacam"]) < 0.95).all(), sp
