"""L-CAM-Fm / L-CAM-Img: loss terms, gradient flow, frozen backbone, the synthetic
known-answer task, checkpoints (mismatch, resume), the CLI on the embedded backbone, and a
gloo DDP run under torchrun."""
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import camzoo
from camzoo.explainers.base import minmax, upsample
from camzoo.explainers.learned.lcam import LCAMHead, av_loss, lcam_loss, tv_loss
from camzoo.models.synthetic import ShapesDataset, peak_in_object_rate, train_tiny_classifier
from camzoo.models.testing import tiny_backbone
from camzoo.train.lcam import LCAMTask, train_lcam
from camzoo.train.loop import load_checkpoint
from tests.conftest import IMAGENETTE, REPO

QUIET = dict(progress=False, log=lambda s: None, figure=False)  # no training.png (~1.5 CPU-s per epoch)


# -- loss terms -----------------------------------------------------------------------------
def test_loss_terms_equal_hand_computed_values():
    S = torch.tensor([[[0.0, 1.0, 0.0],
                       [0.0, 0.0, 0.0],
                       [1.0, 0.0, 0.0]],
                      [[0.5, 0.5, 0.5],
                       [0.5, 0.5, 0.5],
                       [0.5, 0.5, 0.25]]])
    # map 1: horizontal pairs (0,1),(1,0) in row 0 and (1,0) in row 2 -> 3;
    #        vertical pairs (0,1) in col 0 (rows 1-2) and (1,0) in col 1 (rows 0-1) -> 2
    # map 2: only the corner differs: (0.5-0.25)^2 horizontally and vertically
    tv1, tv2 = 5.0, 2 * 0.25 ** 2
    assert tv_loss(S).item() == pytest.approx((tv1 + tv2) / 2, abs=1e-6)
    av1 = (2 * 1.0005 ** 0.3 + 7 * 0.0005 ** 0.3) / 9
    av2 = (8 * 0.5005 ** 0.3 + 0.2505 ** 0.3) / 9
    assert av_loss(S).item() == pytest.approx((av1 + av2) / 2, abs=1e-6)
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    y = torch.tensor([0, 2])
    ce1 = -math.log(math.exp(2) / (math.exp(2) + 1 + math.exp(-1)))
    ce2 = math.log(3)
    ce = (ce1 + ce2) / 2
    loss, logs = lcam_loss(S, logits, y)
    assert logs["tv"].item() == pytest.approx((tv1 + tv2) / 2, abs=1e-6)
    assert logs["av"].item() == pytest.approx((av1 + av2) / 2, abs=1e-6)
    assert logs["ce"].item() == pytest.approx(ce, abs=1e-6)
    want = 0.01 * (tv1 + tv2) / 2 + 2 * (av1 + av2) / 2 + 1.5 * ce
    assert loss.item() == pytest.approx(want, abs=1e-5)
    loss0, _ = lcam_loss(S, logits, y, l1=0.0, l2=0.0)  # the CE-only ablation
    assert loss0.item() == pytest.approx(1.5 * ce, abs=1e-6)
    # AV's eps keeps the gradient finite at S = 0
    z = torch.zeros(1, 2, 2, requires_grad=True)
    av_loss(z).backward()
    assert torch.isfinite(z.grad).all() and (z.grad > 0).all()


def test_authors_regularizers_equal_hand_computed_values():
    from camzoo.explainers.learned.lcam import authors_regularizers

    # 2 images x 2 batch labels, 2x2 masks
    S = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]], [[0.5, 0.5], [0.5, 0.5]]],
                      [[[0.0, 0.0], [0.0, 1.0]], [[0.0, 0.0], [0.0, 0.0]]]])
    # squared neighbour differences: each one-hot map 1 vertical + 1 horizontal, constants 0
    # edges: every pixel of a 2x2 map lies on two edges: 2 * sum(S^2) per map
    diffs = 2 + 2
    edges = 2 * (1 + 4 * 0.25 + 1 + 0)
    tv, av = authors_regularizers(S)
    assert tv.item() == pytest.approx((diffs + 0.3 * edges) / (2 * 2), abs=1e-6)
    want_av = (2 * 1.0005 ** 0.3 + 4 * 0.5005 ** 0.3 + 10 * 0.0005 ** 0.3) / 16
    assert av.item() == pytest.approx(want_av, abs=1e-6)
    # the pair maps of the head: entry [i, j] is map y[j] of image i; the diagonal is own maps
    head = LCAMHead(3, 5, generator=torch.Generator().manual_seed(0))
    A = torch.randn(4, 3, 2, 2)
    y = torch.tensor([4, 0, 0, 2])
    P = head(A, y, pairs=True)
    assert P.shape == (4, 4, 2, 2)
    full = head(A)
    for i in range(4):
        for j in range(4):
            assert torch.allclose(P[i, j], full[i, y[j]], atol=1e-6)
    assert torch.allclose(torch.diagonal(P, dim1=0, dim2=1).permute(2, 0, 1), head(A, y), atol=1e-6)


def test_authors_regularizer_trains_and_is_recorded():
    bb = tiny_backbone(num_classes=4, seed=0)
    data = ShapesDataset(16, bb, seed=1)
    res = train_lcam(bb, data, None, variant="fm", epochs=1, batch_size=8, lr=0.1,
                     regularizer="authors", **QUIET)
    assert res["metadata"]["regularizer"] == "authors"
    assert res["history"][0]["train"]["tv"] > 0
    with pytest.raises(ValueError, match="unknown regularizer 'mine'; valid: paper, authors"):
        LCAMTask(bb, "fm", regularizer="mine")


def test_head_selects_each_samples_own_class_map():
    g = torch.Generator().manual_seed(0)
    head = LCAMHead(5, 7, generator=g)
    A = torch.randn(3, 5, 4, 4, generator=g)
    y = torch.tensor([6, 0, 3])
    full = F.conv2d(A, head.weight, head.bias)  # reference: the 1x1 conv, all R maps
    assert torch.allclose(head(A), full, atol=1e-6)
    assert torch.allclose(head(A, y), full[torch.arange(3), y], atol=1e-6)
    # default init of nn.Conv2d(5, 7, 1): |w|, |b| <= 1/sqrt(5)
    assert head.weight.abs().max() <= 1 / math.sqrt(5) and head.bias.abs().max() <= 1 / math.sqrt(5)


@pytest.mark.parametrize("variant", ["fm", "img"])
def test_gradients_reach_only_the_head(variant):
    bb = tiny_backbone(num_classes=4)
    task = LCAMTask(bb, variant)
    x = torch.randn(4, 3, 32, 32)
    loss, logs = task.loss(task.net, x, torch.full((4,), -1))
    loss.backward()
    assert task.net.weight.grad is not None and task.net.weight.grad.abs().sum() > 0
    assert task.net.bias.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in bb.model.parameters())
    assert set(logs) == {"tv", "av", "ce", "masked_acc", "area"}


def test_ce_only_and_metadata():
    bb = tiny_backbone(num_classes=4)
    t = LCAMTask(bb, "img", ce_only=True)
    assert (t.weights["l1"], t.weights["l2"], t.weights["l3"]) == (0.0, 0.0, 1.5)
    meta = t.metadata()
    assert meta["variant"] == "img" and meta["layer"] == "features" and meta["in_channels"] == 16
    with pytest.raises(ValueError, match="variants: fm, img"):
        LCAMTask(bb, "xyz")


# -- the synthetic known-answer task --------------------------------------------------------
@pytest.fixture(scope="module")
def shapes():
    torch.manual_seed(0)
    bb = train_tiny_classifier(seed=0)
    assert bb.train_accuracy > 0.95
    train = ShapesDataset(384, bb, seed=1)
    held = ShapesDataset(256, bb, seed=2)
    return bb, train, held


def _untrained_rate(bb, held, seed):
    task = LCAMTask(bb, "img", seed=seed)
    with torch.inference_mode():
        A, _ = bb.features_and_logits(held.x)
        L = task.net(A, held.y)
    return peak_in_object_rate(upsample(minmax(L), (32, 32)), held.mask)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["img", "fm"])
def test_lcam_finds_the_object_on_the_synthetic_task(shapes, variant, tmp_path):
    bb, train, held = shapes
    sd = {k: v.clone() for k, v in bb.model.state_dict().items()}
    out = str(tmp_path / f"{variant}.pt")
    res = train_lcam(bb, train, held, variant=variant, epochs=3, batch_size=32, lr=0.3,
                     lr_decay=0.95, out=out, seed=0, **QUIET)
    maps = camzoo.explain(f"lcam-{variant}", bb, held.x, checkpoint=out)  # y: top-1
    assert maps.shape == (256, 32, 32) and maps.min() >= 0 and maps.max() <= 1
    rate = peak_in_object_rate(maps, held.mask)
    assert rate >= 0.9, (variant, rate, res["history"])
    # the same head before training does not pass the bar
    assert _untrained_rate(bb, held, seed=0) < 0.85
    # the backbone is bit-for-bit unchanged and still in eval mode
    assert all(torch.equal(sd[k], v) for k, v in bb.model.state_dict().items())
    assert not bb.model.training
    # per-epoch held-out metrics are logged
    val = res["history"][-1]["val"]
    assert {"loss", "tv", "av", "ce", "ad100", "ic100"} <= set(val)
    assert 0 <= val["ad100"] <= 100 and 0 <= val["ic100"] <= 100


@pytest.mark.slow
def test_untrained_heads_fail_the_bar(shapes):
    bb, _, held = shapes
    rates = [_untrained_rate(bb, held, s) for s in range(3)]
    assert max(rates) < 0.9, rates


# -- checkpoints ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_ckpt(tmp_path_factory):
    bb = tiny_backbone(num_classes=4, seed=0)
    data = ShapesDataset(32, bb, seed=1)
    out = str(tmp_path_factory.mktemp("ck") / "fm.pt")
    train_lcam(bb, data, None, variant="fm", epochs=1, batch_size=16, lr=0.1, out=out, **QUIET)
    return out, data


def test_checkpoint_mismatch_is_refused(small_ckpt):
    out, data = small_ckpt
    bb = tiny_backbone(num_classes=4, seed=0)
    x = data.x[:2]
    assert camzoo.explain("lcam-fm", bb, x, checkpoint=out).shape == (2, 32, 32)
    with pytest.raises(ValueError, match=r"variant: checkpoint 'fm', here 'img'"):
        camzoo.explain("lcam-img", bb, x, checkpoint=out)
    other = tiny_backbone(num_classes=4, seed=0)
    other.name = "other-net"
    with pytest.raises(ValueError, match=r"backbone: checkpoint 'tiny', here 'other-net'"):
        camzoo.explain("lcam-fm", other, x, checkpoint=out)
    other = tiny_backbone(num_classes=4, seed=0)
    other.layers = {"body0": other.model.body[0]}
    with pytest.raises(ValueError, match=r"layer: checkpoint 'features'.* has body0"):
        camzoo.explain("lcam-fm", other, x, checkpoint=out)
    with pytest.raises(ValueError, match="needs checkpoint=PATH"):
        camzoo.explain("lcam-fm", bb, x)
    with pytest.raises(FileNotFoundError):
        camzoo.explain("lcam-fm", bb, x, checkpoint=out + ".missing")


def test_warm_start_from_another_head(small_ckpt):
    out, data = small_ckpt
    bb = tiny_backbone(num_classes=4, seed=0)
    task = LCAMTask(bb, "img", init_from=out)
    ck = load_checkpoint(out)
    assert all(torch.equal(v, ck["state_dict"][k]) for k, v in task.net.state_dict().items())
    meta = task.metadata()["init_from"]
    assert meta["file"] == "fm.pt" and meta["variant"] == "fm" and meta["epoch"] == 1
    assert LCAMTask(bb, "img").metadata()["init_from"] is None
    other = tiny_backbone(num_classes=4, seed=0)
    other.name = "other-net"
    with pytest.raises(ValueError, match="cannot start from .*backbone: checkpoint 'tiny', here 'other-net'"):
        LCAMTask(other, "img", init_from=out)


def test_forward_passes_and_single_forward_inference(small_ckpt):
    out, data = small_ckpt
    bb = tiny_backbone(num_classes=4, seed=0)
    ex = camzoo.get_explainer("lcam-fm", checkpoint=out)
    assert ex.forward_passes(bb) == 1
    calls = []
    h = bb.model.register_forward_hook(lambda *a: calls.append(1))
    try:
        maps = ex.explain(bb, data.x[:3])  # y=None: top-1 from the same forward
    finally:
        h.remove()
    assert len(calls) == 1
    # reference: head map of the top-1 class, min-max, upsample
    ck = load_checkpoint(out)
    head = LCAMHead(16, 4)
    head.load_state_dict(ck["state_dict"])
    with torch.no_grad():
        A, logits = bb.features_and_logits(data.x[:3])
        ref = upsample(minmax(head(A)[torch.arange(3), logits.argmax(1)]), (32, 32))
    assert torch.allclose(maps, ref, atol=1e-6)


def test_resume_continues_to_the_same_weights(tmp_path):
    bb = tiny_backbone(num_classes=4, seed=0)
    data = ShapesDataset(48, bb, seed=1)
    kw = dict(variant="img", batch_size=16, lr=0.1, lr_decay=0.5, seed=3, **QUIET)
    full = train_lcam(bb, data, None, epochs=2, out=str(tmp_path / "a.pt"), **kw)
    part = str(tmp_path / "b.pt")
    train_lcam(bb, data, None, epochs=1, out=part, **kw)
    assert load_checkpoint(part)["epoch"] == 1
    with pytest.raises(FileExistsError, match="--resume"):
        train_lcam(bb, data, None, epochs=2, out=part, **kw)
    with pytest.raises(ValueError, match="variant: checkpoint 'img' vs now 'fm'"):
        train_lcam(bb, data, None, epochs=2, out=part, resume=True, **{**kw, "variant": "fm"})
    res = train_lcam(bb, data, None, epochs=2, out=part, resume=True, **kw)
    ck = load_checkpoint(part)
    assert ck["epoch"] == 2 and [h["epoch"] for h in ck["history"]] == [1, 2]
    assert ck["history"][1]["lr"] == pytest.approx(0.05)
    for k, v in full["state_dict"].items():
        assert torch.allclose(v, res["state_dict"][k], atol=1e-7), k
    meta = ck["metadata"]
    assert meta["camzoo_version"] == camzoo.__version__ and len(meta["data"]["train_manifest"]) == 16


def test_lite0_stays_bit_for_bit_unchanged_by_training(lite0, sample_batch, tmp_path):
    # Img runs the whole network (all BatchNorms) with gradients on the masked image
    sd = {k: v.clone() for k, v in lite0.model.state_dict().items()}  # incl. BatchNorm buffers
    data = torch.utils.data.TensorDataset(sample_batch[:4], torch.full((4,), -1))
    res = train_lcam(lite0, data, None, variant="img", epochs=1, batch_size=4, lr=0.01,
                     out=str(tmp_path / "h.pt"), **QUIET)
    assert res["history"][0]["train"]["ce"] > 0
    assert not lite0.model.training
    assert all(not p.requires_grad for p in lite0.model.parameters())
    assert all(torch.equal(sd[k], v) for k, v in lite0.model.state_dict().items())


# -- the CLI on the embedded backbone, then the bench ---------------------------------------
@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir(IMAGENETTE), reason="shared imagenette-224 not present")
def test_cli_train_on_lite0_then_explain_and_bench(lite0, tmp_path):
    from click.testing import CliRunner

    from camzoo.cli import main

    out = str(tmp_path / "lite0-img.pt")
    sd = {k: v.clone() for k, v in lite0.model.state_dict().items()}
    r = CliRunner().invoke(main, [
        "train", "lcam", "--variant", "img", "--data", IMAGENETTE, "--limit", "32",
        "--epochs", "1", "--batch-size", "16", "--val-fraction", "0.25", "--lr", "1e-3",
        "--out", out, "--device", "cpu", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "24 training / 8 held-out" in r.output and "ad100=" in r.output
    ck = load_checkpoint(out)
    assert ck["metadata"]["backbone"] == "efficientnet_lite0"
    assert ck["metadata"]["layer"] == "conv_head" and ck["metadata"]["in_channels"] == 1280
    assert ck["state_dict"]["weight"].shape == (1000, 1280, 1, 1)
    # the checkpoint drives the registered explainer on the (separately built) fixture backbone
    from camzoo.train.data import training_data

    _, held = training_data(IMAGENETTE, lite0, val_fraction=0.25, limit=32)
    x = torch.stack([held[i][0] for i in range(3)])
    maps = camzoo.explain("lcam-img", lite0, x, checkpoint=out)
    assert maps.shape == (3, 224, 224)
    # the map is the trained head's class map of the top-1 class: min-max at 7x7, upsampled
    head = LCAMHead(1280, 1000)
    head.load_state_dict(ck["state_dict"])
    with torch.no_grad():
        A, logits = lite0.features_and_logits(x, "conv_head")
        c = logits.argmax(1)
        ref = upsample(minmax(head(A, c)), (224, 224))
        untrained = upsample(minmax(LCAMHead(1280, 1000, torch.Generator().manual_seed(5))(A, c)), (224, 224))
    torch.testing.assert_close(maps, ref, atol=1e-5, rtol=0)
    assert (maps - untrained).abs().max() > 0.1  # the checkpoint's head, not any head
    assert all(torch.equal(sd[k], v) for k, v in lite0.model.state_dict().items())
    # camzoo bench evaluates it next to Grad-CAM
    run = str(tmp_path / "run")
    r = CliRunner().invoke(main, [
        "bench", "--methods", "gradcam,lcam-img", "--opt", f"lcam-img.checkpoint={out}",
        "--data", IMAGENETTE, "--limit", "2", "--metrics", "lcam", "--out", run,
        "--device", "cpu", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "lcam-img" in r.output


def test_cli_refuses_fm_at_a_layer_without_head(tmp_path):
    from click.testing import CliRunner

    from camzoo.cli import main

    from PIL import Image

    (tmp_path / "data").mkdir()  # refused before any image is decoded
    for i in range(4):
        Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(tmp_path / "data" / f"{i}.png")
    r = CliRunner().invoke(main, ["train", "lcam", "--variant", "fm", "--backbone", "timm:resnet18",
                                  "--weights", "random", "--layer", "layer1", "--data",
                                  str(tmp_path / "data"), "--limit", "4", "--out", str(tmp_path / "x.pt"),
                                  "--device", "cpu"])
    assert r.exit_code != 0
    assert "layer 'layer1'" in r.output and "layers with a head: layer4" in r.output


# -- DistributedDataParallel (gloo) ---------------------------------------------------------
@pytest.mark.slow
def test_torchrun_ddp_gloo_matches_single_process(tmp_path):
    script = os.path.join(REPO, "tests", "_lcam_ddp.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO}
    ddp = str(tmp_path / "ddp.pt")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                        "--nproc_per_node", "2", script, ddp], env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    # the same script as one plain process, in this process (saves an interpreter start)
    import importlib.util

    spec = importlib.util.spec_from_file_location("_lcam_ddp", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    single = str(tmp_path / "single.pt")
    threads = torch.get_num_threads()
    try:
        mod.main(single)
    finally:
        torch.set_num_threads(threads)
    lines = [open(f"{ddp}.rank{k}").read().split() for k in (0, 1)]
    assert [ln[0] for ln in lines] == ["2", "2"] and lines[0][1] == lines[1][1]
    a, b = load_checkpoint(ddp), load_checkpoint(single)
    assert a["metadata"]["world_size"] == 2 and b["metadata"]["world_size"] == 1
    # the 2 ranks' half-batches together are the single process's batches: same training
    assert float(lines[0][1]) == pytest.approx(float(open(f"{single}.rank0").read().split()[1]),
                                               rel=1e-5)
    for k, v in b["state_dict"].items():
        assert torch.allclose(a["state_dict"][k], v, atol=1e-6), k


def test_training_progress_in_a_log_is_plain_lines(capfd, monkeypatch):
    """Rank 0's progress of each epoch: plain lines (no carriage return, no escape code) when
    stderr is not a terminal, the running loss in them, the last at 100 %."""
    monkeypatch.setenv("CAMZOO_PROGRESS_INTERVAL", "0")
    bb = tiny_backbone(num_classes=4, seed=0)
    data = ShapesDataset(16, bb, seed=1)
    train_lcam(bb, data, None, variant="fm", epochs=1, batch_size=8, lr=0.1, progress=True,
               log=lambda s: None, figure=False)
    err = capfd.readouterr().err
    assert "\r" not in err and "\x1b" not in err
    lines = [s for s in err.splitlines() if s.startswith("epoch 1/1")]
    assert len(lines) == 3 and lines[-1].startswith("epoch 1/1 100% 2/2 step [")
    assert "loss" in lines[-1]
