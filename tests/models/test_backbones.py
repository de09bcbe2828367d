"""Backbones: the embedded Lite0 (accuracy, layers, heads), torchvision, VGG-16 and timm layers and
heads, torch's weights cache; unknown names, unreadable weights files and broken ``py:``
backbones refused with one clear message."""
import os
import sys
import textwrap

import pytest
import torch
from click.testing import CliRunner

import camzoo
from camzoo.cli import main
from camzoo.registry import UnknownNameError
from tests.conftest import SAMPLES
from tests.helpers import bench_cli as _bench
from tests.helpers import sample_rows as _subset


def test_lite0_top1_on_fixed_subset(lite0):
    rows = _subset(40)
    x = torch.stack([lite0.preprocess(camzoo.data.images.load_image(os.path.join(SAMPLES, r["file"])))
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


class _Unsafe:
    """An object only ``weights_only=False`` could unpickle."""


def test_weights_files_are_refused_with_one_clear_message(tmp_path):
    import torchvision

    m = torchvision.models.resnet18(weights=None, num_classes=10)
    good = tmp_path / "r18.pt"
    (tmp_path / "corrupt.pt").write_bytes(b"this is not a pytorch file" * 20)
    torch.save({"state_dict": torchvision.models.resnet18(weights=None).state_dict()}, good)
    torch.save(m.state_dict(), tmp_path / "ten.pt")
    torch.save({"x.weight": torch.zeros(2), **{k: v for k, v in list(m.state_dict().items())[3:]}},
               tmp_path / "other.pt")

    torch.save({"a": _Unsafe()}, tmp_path / "pickle.pt")  # needs an unsafe load
    assert camzoo.load_backbone("resnet18", weights=str(good), device="cpu").weights_id.startswith("file:r18.pt#")
    for f, msg in (("corrupt.pt", "cannot read weights file"), ("pickle.pt", "not a file camzoo can load safely"),
                   ("ten.pt", "shape mismatch(es): fc.weight (file (10, 512), model (1000, 512))"),
                   ("other.pt", "missing key(s): conv1.weight, bn1.weight, bn1.bias")):
        res = _bench("--backbone", "resnet18", "--weights", str(tmp_path / f), "--out", str(tmp_path / f"o{f}"))
        assert res.exit_code == 1 and msg in res.output, (f, res.output)
        assert "weights_only=False" not in res.output and "Traceback" not in res.output
    res = _bench("--backbone", "resnet18", "--weights", str(tmp_path / "other.pt"), "--out", str(tmp_path / "o"))
    assert "1 unexpected key(s): x.weight" in res.output


def test_python_backbones_import_from_the_current_directory_with_clear_errors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mynets.py").write_text(textwrap.dedent("""
        from camzoo.models.testing import tiny_backbone

        def small():
            return tiny_backbone(seed=1)
        """))
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    res = CliRunner().invoke(main, ["bench", "--backbone", "py:mynets:small", "--weights", "random", "--methods", "fakecam",
                                    "--metrics", "lcam", "--limit", "1", "--out", "r", "--no-progress"])
    assert res.exit_code == 0, res.output
    for name, msg in (("py:nosuchmodule:f", "cannot import module 'nosuchmodule'"),
                      ("py:mynets:nothere", "module 'mynets' has no function 'nothere'")):
        res = CliRunner().invoke(main, ["bench", "--backbone", name, "--out", "r2"])
        assert res.exit_code == 1 and msg in res.output and "Traceback" not in res.output, res.output
