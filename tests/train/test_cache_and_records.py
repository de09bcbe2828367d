"""The feature cache (same per-step losses as the uncached loop, reuse, refusal and rebuild),
the training records (train_log.csv columns, the best-checkpoint rule, training.png, resume),
and the CLI's cache options. Tiny models and a dozen small PNG files: seconds of CPU."""
import os

import pytest
import torch
from PIL import Image

from camzoo.data.datasets import open_dataset
from camzoo.explainers.learned.lficam import LFICAM, gray_image
from camzoo.models.testing import TinyCNN, tiny_backbone
from camzoo.models.zoo import backbone_from_module
from camzoo.train.cache import (CacheMismatch, CachedViews, FeatureCache, FixedViews, cache_folder,
                                cache_key, open_cache, parse_views)
from camzoo.train.data import TrainImages
from camzoo.train.lcam import train_lcam
from camzoo.train.lficam import LFICAMImages, train_lficam
from camzoo.train.loop import TrainTask, fit, load_checkpoint, sgd
from camzoo.train.records import LEADING_COLUMNS, read_log, run_files

QUIET = dict(progress=False, log=lambda s: None)
NOFIG = dict(QUIET, figure=False)  # training.png costs ~1.5 CPU-s per epoch: drawn in one test only


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """12 small RGB photos (40x48, noise + a bright square) with labels 0..3 in labels.csv."""
    root = tmp_path_factory.mktemp("photos")
    g = torch.Generator().manual_seed(0)
    rows = ["file,class_index"]
    for i in range(12):
        img = (torch.rand(40, 48, 3, generator=g) * 120).to(torch.uint8)
        r, c = int(torch.randint(0, 24, (1,), generator=g)), int(torch.randint(0, 32, (1,), generator=g))
        img[r:r + 14, c:c + 14, i % 3] = 250
        Image.fromarray(img.numpy()).save(root / f"p{i:02d}.png")
        rows.append(f"p{i:02d}.png,{i % 4}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return str(root)


def _bb(seed=0, name="tiny"):
    """A tiny 4-class backbone with two layers (``features`` has a head, ``conv1`` none)."""
    g = torch.Generator().manual_seed(seed)
    model = TinyCNN(4, 16)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return backbone_from_module(model, {"conv1": model.body[1], "features": model.body},
                                name=name, default_layer="features",
                                heads={"features": model.head}, input_size=32)


def _images(photos, bb, cls=TrainImages, **kw):
    ds = open_dataset(photos)
    return cls(ds.items, bb, augment=True, seed=3, root=ds.root, **kw)


def _steps(out):
    return [r for r in read_log(run_files(out).log) if r["split"] == "train"]


# -- the cache gives the uncached loop's losses ---------------------------------------------
@pytest.mark.parametrize("views", ["center+flip", "random:2"])
@pytest.mark.parametrize("which", ["lcam-fm", "lcam-img", "lficam"])
def test_cached_training_equals_the_uncached_loop_on_the_same_views(photos, tmp_path, which, views):
    bb = _bb()
    cls = LFICAMImages if which == "lficam" else TrainImages
    base = _images(photos, bb, cls)
    # the uncached loop on the same views: FixedViews for the center views; for random:2 the
    # plain augmented dataset itself (its epochs 0 and 1 are the two cached views)
    plain = FixedViews(base, views) if views == "center+flip" else base
    sd = {k: v.clone() for k, v in bb.model.state_dict().items()}
    res = {}
    for name, cache in (("cached", str(tmp_path / "cache")), ("plain", None)):
        out = str(tmp_path / f"{name}.pt")
        kw = dict(epochs=2, batch_size=4, out=out, seed=1, cache=cache, views=views, **NOFIG)
        if which == "lficam":
            train_lficam(bb, base if cache else plain, None, mode="frozen", depth=1, lr=0.05, **kw)
        else:
            train_lcam(bb, base if cache else plain, None, variant=which[5:], lr=0.5, **kw)
        res[name] = (_steps(out), load_checkpoint(out)["state_dict"])
    (a, wa), (b, wb) = res["cached"], res["plain"]
    assert len(a) == len(b) == 6  # 12 images, batch 4, 2 epochs
    keys = ["loss", "ce"] + (["tv", "av", "area"] if which != "lficam" else ["area"])
    for ra, rb in zip(a, b):
        for k in keys:  # equal up to the float16 rounding of the stored features
            assert ra[k] == pytest.approx(rb[k], rel=2e-3, abs=2e-4), (k, ra, rb)
    assert a[0]["loss"] != a[3]["loss"]  # training moved
    for k in wb:
        assert torch.allclose(wa[k].float(), wb[k].float(), rtol=1e-2, atol=1e-3), k
    assert all(torch.equal(sd[k], v) for k, v in bb.model.state_dict().items())


def test_the_cache_holds_each_views_features_top1_and_gray(photos, tmp_path):
    bb = _bb()
    base = _images(photos, bb)
    cache = open_cache(tmp_path, bb, "features", base, "center+flip", batch_size=5, **QUIET)
    assert cache.features.dtype == torch.float16 and cache.features.shape == (24, 16, 8, 8)
    ds = CachedViews(base, cache)
    ds.set_epoch(3)  # odd epoch: the flipped view
    twin = FixedViews(base, "center+flip")
    twin.set_epoch(3)
    for i in (0, 7):
        d, y = ds[i]
        x, y2 = twin[i]
        assert y == y2 == base.label(i)
        with torch.no_grad():
            A, logits = bb.features_and_logits(x[None])
        assert torch.allclose(d["A"].float(), A[0], rtol=1e-3, atol=1e-3)
        assert int(d["top1"]) == int(logits.argmax())
        assert torch.allclose(d["gray"].float(), gray_image(x[None], (8, 8))[0], atol=2e-3)
    # epoch 3 used the flip of epoch 0's view
    x0, _ = FixedViews(base, "center+flip")[2]
    assert torch.equal(twin[2][0], x0.flip(-1))


def test_cache_reused_and_rebuilt_when_backbone_weights_layer_or_views_differ(photos, tmp_path):
    bb = _bb()
    base = _images(photos, bb)
    logs = []
    c1 = open_cache(tmp_path, bb, "features", base, "center", progress=False, log=logs.append)
    assert logs[-1].startswith("feature cache: building")
    stamp = os.path.getmtime(os.path.join(c1.path, "features.f16"))
    c2 = open_cache(tmp_path, bb, "features", base, "center", progress=False, log=logs.append)
    assert logs[-1].startswith("feature cache: reusing") and c2.path == c1.path
    assert os.path.getmtime(os.path.join(c1.path, "features.f16")) == stamp
    assert torch.equal(c1.features, c2.features)
    key = cache_key(bb, "features", base, "center")
    others = {
        "backbone": (_bb(name="tiny2"), "features", "center"),
        "backbone_hash": (_bb(seed=1), "features", "center"),  # same name and weights_id
        "layer": (bb, "conv1", "center"),
        "views": (bb, "features", "center+flip"),
    }
    for field, (b, layer, views) in others.items():
        k = cache_key(b, layer, _images(photos, b), views)
        assert [f for f in key if key[f] != k[f]] == [field]
        with pytest.raises(CacheMismatch, match=rf"{field}: stored .*, now "):
            FeatureCache.open(c1.path, k)  # the first cache is refused for this setup
        c = open_cache(tmp_path, b, layer, _images(photos, b), views, progress=False,
                       log=logs.append)
        assert logs[-1].startswith("feature cache: building") and c.path != c1.path
        assert c.path == cache_folder(tmp_path, k)
    # random views depend on the augmentation seed; centre views do not
    assert cache_key(bb, "features", _images(photos, bb), "random:2")["view_seed"] == 3
    # a folder whose key differs (e.g. edited, or another version) is rebuilt in place
    kp = os.path.join(c1.path, "key.json")
    with open(kp) as f:
        text = f.read()
    with open(kp, "w") as f:
        f.write(text.replace('"layer": "features"', '"layer": "elsewhere"'))
    open_cache(tmp_path, bb, "features", base, "center", progress=False, log=logs.append)
    assert "layer: stored 'elsewhere', now 'features'" in logs[-1] and "rebuilding" in logs[-1]
    assert FeatureCache.open(c1.path, key).n == 12
    # an interrupted build (no key.json) is rebuilt too
    os.remove(kp)
    open_cache(tmp_path, bb, "features", base, "center", progress=False, log=logs.append)
    assert logs[-1].startswith("feature cache: building")


def test_views_parse_and_refuse():
    assert parse_views("center").count == 1 and parse_views("center+flip").count == 2
    assert parse_views("random:5").count == 5 and parse_views("3").spec == "random:3"
    for bad in ("random:0", "crops", "flip"):
        with pytest.raises(ValueError, match="valid: 'center', 'center\\+flip', 'random:N'"):
            parse_views(bad)


def test_the_cache_needs_image_files_and_a_frozen_backbone(photos, tmp_path):
    bb = tiny_backbone(num_classes=4)
    data = torch.utils.data.TensorDataset(torch.randn(4, 3, 32, 32), torch.zeros(4).long())
    with pytest.raises(ValueError, match="needs image-folder training data.*--no-cache"):
        train_lcam(bb, data, None, variant="fm", epochs=1, batch_size=4, cache=str(tmp_path), **QUIET)
    with pytest.raises(ValueError, match="needs a frozen backbone"):
        train_lficam(bb, _images(photos, bb, LFICAMImages), None, mode="end-to-end", labels="gt",
                     epochs=1, batch_size=4, cache=str(tmp_path), **QUIET)


def test_lficam_from_stored_features_equals_the_image_forward():
    bb = tiny_backbone(num_classes=4)
    lf = LFICAM(bb, mode="frozen", depth=2, seed=0).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        logits, L = lf(x)
        F_ = lf.last["F"]
        logits2, L2 = lf(features=F_, gray=gray_image(x, F_.shape[-2:]))
    assert torch.allclose(logits, logits2, atol=1e-6) and torch.allclose(L, L2, atol=1e-6)
    with pytest.raises(ValueError, match="gray must be"):
        lf(features=F_, gray=None)


# -- records --------------------------------------------------------------------------------
def test_train_log_columns_rows_and_png(photos, tmp_path):
    bb = _bb()
    tr = _images(photos, bb)
    va = TrainImages(tr.items[:4], bb, augment=False, root=tr.root)
    out = str(tmp_path / "head.pt")
    res = train_lcam(bb, tr, va, variant="img", epochs=3, batch_size=5, lr=0.5, out=out,
                     cache=True, **QUIET)
    files = run_files(out)
    assert files.log == str(tmp_path / "head.train_log.csv")
    with open(files.log) as f:
        header = f.readline().strip().split(",")
    assert header == list(LEADING_COLUMNS) + ["loss", "tv", "av", "ce", "masked_acc", "area",
                                              "ad100", "ic100"]
    rows = read_log(files.log)
    train = [r for r in rows if r["split"] == "train"]
    val = [r for r in rows if r["split"] == "val"]
    assert [r["step"] for r in train] == list(range(1, 10))  # 12 images / 5 = 3 steps x 3
    assert [(r["epoch"], r["step"]) for r in val] == [(1, 3), (2, 6), (3, 9)]
    assert all("ad100" not in r for r in train) and all(0 <= r["ad100"] <= 100 for r in val)
    # the epoch means of the step rows are the history's train logs (equal batches of 5, 5, 2)
    h = res["history"]
    for e in range(3):
        steps = train[3 * e:3 * e + 3]
        mean = (5 * steps[0]["ce"] + 5 * steps[1]["ce"] + 2 * steps[2]["ce"]) / 12
        assert mean == pytest.approx(h[e]["train"]["ce"], rel=1e-5)
        assert val[e]["ad100"] == pytest.approx(h[e]["val"]["ad100"])
        assert train[3 * e]["lr"] == pytest.approx(h[e]["lr"])
    with open(files.plot, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image as mpimg

    img = mpimg.imread(files.plot)
    assert img.shape[0] > 300 and img.shape[1] > 600 and img[..., :3].std() > 0.05
    # the cache went beside the checkpoint
    assert os.listdir(tmp_path / "feature_cache")


class _Scripted(TrainTask):
    """A task whose held-out metric follows a script, to test the best-checkpoint rule."""

    name = "scripted"

    def __init__(self, values, key="score"):
        self.net = torch.nn.Linear(2, 1)
        self.values, self.key, self.seen = list(values), key, []

    def modules(self):
        return self.net

    def loss(self, net, x, y):
        loss = net(x).pow(2).mean()
        return loss, {"sq": loss.detach()}

    def evaluate(self, loader):
        self.seen.append({k: v.clone() for k, v in self.net.state_dict().items()})
        return {self.key: self.values[len(self.seen) - 1]}


@pytest.mark.parametrize("values,mode,best_epoch", [
    ([3.0, 1.0, 2.0, 1.0], "min", 2),          # ties keep the earlier epoch
    ([0.1, 0.5, float("nan"), 0.7], "max", 4),  # a NaN is never best
    ([2.0, 3.0, 4.0], "min", 1),
])
def test_best_checkpoint_rule(tmp_path, values, mode, best_epoch):
    data = torch.utils.data.TensorDataset(torch.randn(8, 2), torch.zeros(8).long())
    task = _Scripted(values)
    out = str(tmp_path / "s.pt")
    res = fit(task, data, data, epochs=len(values), batch_size=4, optimizer=sgd(0.1),
              out=out, best_metric=("score", mode), **NOFIG)
    best = load_checkpoint(run_files(out).best)
    assert best["epoch"] == best_epoch == res["best"]["epoch"]
    assert res["best"] == {"metric": "score", "mode": mode, "value": values[best_epoch - 1],
                           "epoch": best_epoch}
    for k, v in task.seen[best_epoch - 1].items():
        assert torch.equal(best["state_dict"][k], v), k
    assert load_checkpoint(out)["epoch"] == len(values)
    with pytest.raises(ValueError, match="'min' or 'max'"):
        fit(_Scripted(values), data, data, epochs=1, batch_size=4, optimizer=sgd(0.1),
            best_metric=("score", "lowest"), **QUIET)


def test_resume_continues_the_log_and_the_best(photos, tmp_path):
    bb = _bb()
    tr = _images(photos, bb)
    va = TrainImages(tr.items[:4], bb, augment=False, root=tr.root)
    kw = dict(variant="fm", batch_size=4, lr=0.5, seed=2, cache=str(tmp_path / "c"), **NOFIG)
    full = str(tmp_path / "full.pt")
    train_lcam(bb, tr, va, epochs=3, out=full, **kw)
    part = str(tmp_path / "part.pt")
    train_lcam(bb, tr, va, epochs=2, out=part, **kw)
    train_lcam(bb, tr, va, epochs=3, out=part, resume=True, **kw)
    a, b = read_log(run_files(full).log), read_log(run_files(part).log)
    assert [(r["epoch"], r["step"], r["split"]) for r in a] == [(r["epoch"], r["step"], r["split"]) for r in b]
    for ra, rb in zip(a, b):
        assert ra["loss"] == pytest.approx(rb["loss"], rel=1e-6)
    assert load_checkpoint(full)["best"] == load_checkpoint(part)["best"]


# -- CLI ------------------------------------------------------------------------------------
def test_cli_cache_options(photos, tmp_path):
    from click.testing import CliRunner

    from camzoo.cli import main

    base = ["--backbone", "py:camzoo.models.testing:tiny_backbone", "--weights", "random", "--data", photos, "--epochs", "1", "--batch-size", "4", "--device", "cpu",
            "--no-progress"]
    r = CliRunner().invoke(main, ["train", "lcam", "--variant", "fm", *base, "--no-cache",
                                  "--cache", str(tmp_path), "--out", str(tmp_path / "a.pt")])
    assert r.exit_code != 0 and "contradict" in r.output
    r = CliRunner().invoke(main, ["train", "lcam", "--variant", "fm", *base, "--views", "crops",
                                  "--out", str(tmp_path / "a.pt")])
    assert r.exit_code == 2 and "unknown views 'crops'" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(main, ["train", "lcam", "--variant", "fm", *base, "--views", "random:2",
                                  "--val-fraction", "0.25", "--out", str(tmp_path / "a.pt")])
    assert r.exit_code == 0, r.output
    assert "feature cache: building" in r.output
    assert sorted(os.listdir(tmp_path)) == ["a.best.pt", "a.pt", "a.train_log.csv",
                                            "a.training.png", "feature_cache"]
    assert os.listdir(tmp_path / "feature_cache")[0].startswith("tiny-features-random_2-")
    r = CliRunner().invoke(main, ["train", "lficam", "--mode", "end-to-end", *base, "--target", "gt",
                                  "--num-classes", "4", "--cache", str(tmp_path / "c"),
                                  "--out", str(tmp_path / "e.pt")])
    assert r.exit_code == 1 and "--cache needs --mode frozen" in r.output
