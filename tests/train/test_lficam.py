"""LFI-CAM: model pieces, wiring, frozen / end-to-end training, explainer, stability."""
import math
import os

import pytest
import torch
import torch.nn.functional as F

import camzoo

from camzoo.explainers.base import minmax as minmax_maps  # one min-max, differentiable
from camzoo.explainers.learned.lficam import FIN, LFICAM, attention_map, channel_minmax, gray_image
from camzoo.metrics.stability import (DEFAULT_THRESHOLD, binarize, iou, map_iou, pick_baseline,
                                      stability_from_maps)
from camzoo.models.surgery import clone_backbone, replace_classifier
from tests.conftest import IMAGENETTE


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


# -- the synthetic known-answer task ------------------------------------------------------------
class _DecoyBody(torch.nn.Module):
    """A trained shapes CNN's body plus one decoy channel: a fixed bump at feature cell
    (1.5, 1.5), far stronger than the class channels, that carries no class evidence."""

    def __init__(self, body: torch.nn.Module, strength: float) -> None:
        super().__init__()
        self.body = body
        self.strength = strength

    def forward(self, x):
        f = self.body(x)
        h, w = f.shape[-2:]
        ii = torch.arange(h, dtype=f.dtype).view(h, 1)
        jj = torch.arange(w, dtype=f.dtype).view(1, w)
        bump = torch.exp(-((ii - 1.5) ** 2 + (jj - 1.5) ** 2) / 2.0)
        return torch.cat([f, self.strength * bump.expand(f.shape[0], 1, h, w)], 1)


class _DecoyNet(torch.nn.Module):
    """``fc(GAP(features))`` with a zero weight on the decoy; class logits divided by
    ``temperature`` (same decisions, unsaturated softmax, so CE still has a gradient)."""

    def __init__(self, tiny, strength: float = 100.0, temperature: float = 5.0) -> None:
        super().__init__()
        self.body = _DecoyBody(tiny.body, strength)
        k, c = tiny.fc.in_features, tiny.fc.out_features
        self.fc = torch.nn.Linear(k + 1, c)
        with torch.no_grad():
            self.fc.weight.zero_()
            self.fc.weight[:, :k] = tiny.fc.weight / temperature
            self.fc.bias.copy_(tiny.fc.bias / temperature)

    def head(self, f):
        return self.fc(f.mean(dim=(2, 3)))

    def forward(self, x):
        return self.head(self.body(x))


@pytest.fixture(scope="module")
def shapes():
    """(frozen decoy backbone, held-out x, mask, two frozen-mode checkpoints trained with seeds 0, 1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: a second thread only adds synchronization
    try:
        return _shapes_setup()
    finally:
        torch.set_num_threads(threads)


def _shapes_setup():
    import tempfile

    from camzoo.models.zoo import backbone_from_module
    from camzoo.models.synthetic import ShapesDataset, make_shapes, train_tiny_classifier
    from camzoo.train.lficam import train_lficam

    tiny = train_tiny_classifier(seed=0, steps=300)
    net = _DecoyNet(tiny.model)
    bb = backbone_from_module(net, {"features": net.body}, name="decoy-shapes",
                              default_layer="features", heads={"features": net.head},
                              num_classes=4, input_size=32)
    x01, y, mask = make_shapes(256, seed=99)
    train = ShapesDataset(1024, bb, seed=11)
    val = ShapesDataset(128, bb, seed=12)
    d = tempfile.mkdtemp(prefix="lficam-test-")
    cks = []
    for seed in (0, 1):
        path = f"{d}/frozen_s{seed}.pt"
        train_lficam(bb, train, val, mode="frozen", epochs=5, batch_size=32, lr=0.3, seed=seed,
                     out=path, progress=False, log=lambda s: None, figure=False)
        cks.append(path)
    return bb, bb.normalize(x01), y, mask, cks


def test_frozen_lficam_finds_the_object_and_beats_an_untrained_fin(shapes):
    from camzoo.models.synthetic import peak_in_object_rate

    bb, x, y, mask, cks = shapes
    before = {k: v.clone() for k, v in bb.model.state_dict().items()}
    with torch.no_grad():
        untrained = peak_in_object_rate(LFICAM(bb, seed=0).eval().explain(x), mask)
    V = camzoo_explain("lficam", bb, x, checkpoint=cks[0])
    trained = peak_in_object_rate(V, mask)
    print(f"peak inside the object: trained FIN {trained:.3f}, untrained {untrained:.3f}")
    assert trained >= 0.9, (trained, untrained)
    assert untrained <= trained - 0.1, (trained, untrained)
    # the frozen model is still the same model, and the explainer evaluates it
    assert all(torch.equal(before[k], v) for k, v in bb.model.state_dict().items())
    from camzoo import get_explainer

    assert get_explainer("lficam", checkpoint=cks[0]).evaluated_backbone(bb) is bb


def camzoo_explain(method, bb, x, **opts):
    import camzoo

    return camzoo.explain(method, bb, x, **opts)


def test_two_seeds_stability_on_the_synthetic_task(shapes, tmp_path):
    from PIL import Image

    from camzoo.engine.cross_model import run_stability, sources_from_checkpoints
    from camzoo.train.loop import load_checkpoint

    bb, x, y, mask, cks = shapes
    maps = {f"s{i}": camzoo_explain("lficam", bb, x, checkpoint=c) for i, c in enumerate(cks)}
    acc = {f"s{i}": load_checkpoint(c)["history"][-1]["val"]["top1"] for i, c in enumerate(cks)}
    res = stability_from_maps(maps, acc)
    assert res.baseline == max(acc, key=acc.get)
    assert 0.0 <= res.overall <= 1.0
    # the two seeds agree (the paper reports >= 0.6 for LFI-CAM), and the agreement is about
    # each image's object: paired with the *next* image's map, the IoU collapses
    trained_iou = res.overall
    shuffled_iou = float(map_iou(maps["s0"], maps["s1"].roll(1, dims=0)).mean())
    assert trained_iou >= 0.6, trained_iou
    assert shuffled_iou <= trained_iou - 0.3, (trained_iou, shuffled_iou)
    # the same through the image-folder path (PNG files, checkpoints read back)
    for i in range(24):
        x01 = bb.denormalize(x[i:i + 1])[0].clamp(0, 1)
        Image.fromarray((x01.permute(1, 2, 0) * 255).round().byte().numpy()).save(tmp_path / f"{i:02d}.png")
    sources = sources_from_checkpoints(cks, backbones={("decoy-shapes", None): bb})
    assert [s.accuracy_source for s in sources] == ["checkpoint:top1"] * 2
    res2 = run_stability(sources, tmp_path, progress=False)
    assert res2.n_images == 24
    # the PNGs are the same images (8-bit rounding): the same agreement, to a few pixels
    assert abs(res2.overall - trained_iou) < 0.05, (res2.overall, trained_iou)
    print(f"stability IoU (2 seeds): {trained_iou:.3f} maps, {res2.overall:.3f} PNGs; other "
          f"image's map {shuffled_iou:.3f}")


def test_checkpoint_mismatch_is_refused(shapes):
    import camzoo
    from camzoo.models.testing import tiny_backbone

    bb, x, y, mask, cks = shapes
    other = tiny_backbone(num_classes=4)
    other.name = "decoy-shapes"  # same name, different weights
    with pytest.raises(ValueError, match="exact model"):
        camzoo.explain("lficam", other, x[:2], checkpoint=cks[0])
    rn = camzoo.load_backbone("timm:test_resnet", weights="random", device="cpu")
    with pytest.raises(ValueError, match="backbone: checkpoint 'decoy-shapes', here 'timm:test_resnet'"):
        camzoo.explain("lficam", rn, torch.zeros(1, 3, 64, 64), checkpoint=cks[0])
    with pytest.raises(ValueError, match="checkpoint=PATH"):
        camzoo.explain("lficam", bb, x[:2])


def test_end_to_end_checkpoint_is_its_own_classifier(tiny, tmp_path):
    import camzoo
    from camzoo.models.synthetic import ShapesDataset
    from camzoo.train.lficam import train_lficam

    before = {k: v.clone() for k, v in tiny.model.state_dict().items()}
    tr = ShapesDataset(48, tiny, seed=1, num_classes=3)
    va = ShapesDataset(16, tiny, seed=2, num_classes=3)
    path = tmp_path / "e2e.pt"
    res = train_lficam(tiny, tr, va, mode="end-to-end", num_classes=3, epochs=1, batch_size=16,
                       lr=0.05, seed=0, out=path, progress=False, log=lambda s: None,
                       figure=False)
    meta = res["metadata"]
    assert meta["mode"] == "end-to-end" and meta["num_classes"] == 3 and meta["new_classifier"]
    assert {"backbone", "layer", "seed", "camzoo_version", "data"} <= set(meta)
    assert "top1" in res["history"][-1]["val"]
    assert all(torch.equal(before[k], v) for k, v in tiny.model.state_dict().items())
    ex = camzoo.get_explainer("lficam", checkpoint=str(path))
    ev = ex.evaluated_backbone(tiny)
    assert ev is not tiny and ev is ex.evaluated_backbone(tiny)
    assert ev.name == "lficam[tiny]" and ev.num_classes == 3
    assert ev.weights_id.startswith("lficam:e2e.pt#")
    x = tr.x[:5]
    # the evaluated classifier is the LFI-CAM model itself: logits of backbone copy + FIN
    from camzoo.explainers.learned.lficam import load_lficam

    lf, _, _ = load_lficam(str(path), tiny)
    with torch.no_grad():
        logits, L = lf(x)
        torch.testing.assert_close(ev.model(x), logits)
        assert not torch.allclose(ev.model(x)[:, :3], tiny.model(x)[:, :3])
    V = ex.explain(tiny, x, ev.model(x).argmax(1))
    torch.testing.assert_close(V, F.interpolate(L[:, None], size=(32, 32), mode="bilinear",
                                                align_corners=False)[:, 0].clamp(0, 1))
    assert ex.forward_passes(tiny) == 1


# -- command line -------------------------------------------------------------------------------
@pytest.mark.skipif(not os.path.isdir(IMAGENETTE), reason="shared imagenette-224 not present")
def test_cli_train_frozen_then_stability_of_methods(tmp_path):
    from click.testing import CliRunner

    from camzoo.cli import main
    from camzoo.train.loop import load_checkpoint

    out = tmp_path / "f.pt"
    tiny_timm = ["--backbone", "timm:test_resnet", "--weights", "random", "--device", "cpu"]
    r = CliRunner().invoke(main, ["train", "lficam", "--mode", "frozen", "--layer", "layer3",
                                  "--data", IMAGENETTE, "--limit", "10", "--image-size", "64",
                                  "--epochs", "1", "--batch-size", "4", "--out", str(out),
                                  "--no-progress", *tiny_timm])
    assert r.exit_code == 0, r.output
    assert "held-out top-1" in r.output and "--opt lficam.checkpoint=" in r.output
    ck = load_checkpoint(out)
    meta = ck["metadata"]
    assert (meta["mode"], meta["layer"], meta["labels"], meta["image_size"]) == ("frozen", "layer3", "model", 64)
    assert meta["backbone"] == "timm:test_resnet"
    assert meta["data"]["n_train"] == 8 and meta["data"]["n_val"] == 2
    assert set(ck["state_dict"]) == {k for k in ck["state_dict"] if k.startswith("fin.")}
    assert {"top1", "backbone_top1", "agree"} <= set(ck["history"][0]["val"])
    # a frozen-mode flag that makes no sense is refused with the reason
    r = CliRunner().invoke(main, ["train", "lficam", "--mode", "frozen", "--num-classes", "10",
                                  "--data", IMAGENETTE, "--out", str(tmp_path / "x.pt")])
    assert r.exit_code != 0 and "--mode end-to-end" in r.output
    # stability between two explainers' maps on one model (timm's random init draws from the
    # global RNG: seeded, so that the model is rebuilt below with the same weights)
    torch.manual_seed(11)
    r = CliRunner().invoke(main, ["stability", "--methods", "gradcam,gradcam++", "--limit", "2",
                                  *tiny_timm, "--json", str(tmp_path / "s.json")])
    assert r.exit_code == 0, r.output
    import json

    res = json.loads((tmp_path / "s.json").read_text())
    assert res["baseline"] == "gradcam" and res["n_images"] == 2
    # the IoU of the two methods' binarized maps, computed here independently
    from camzoo.data.datasets import open_dataset

    torch.manual_seed(11)
    bb = camzoo.load_backbone("timm:test_resnet", weights="random", device="cpu")
    ds = open_dataset(None, limit=2)  # the --limit 2 subset
    x = torch.stack([bb.preprocess(ds.load(it)) for it in ds.items])
    a, b = (camzoo.explain(m, bb, x) >= 127 / 255 for m in ("gradcam", "gradcam++"))
    inter, union = (a & b).flatten(1).sum(1).float(), (a | b).flatten(1).sum(1).float()
    want = float(torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union)).mean())
    assert res["per_model"]["gradcam++"] == pytest.approx(want, abs=1e-6)
    assert want < 0.999  # two different methods: not a trivial 1
