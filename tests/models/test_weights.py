"""Pretrained weights as their owners ship them, tested against local sources (never the network).

torchvision's weights API downloads from an HTTP server on 127.0.0.1 (or a ``file://`` URL) into a
temporary ``TORCH_HOME``; timm reads a pre-seeded temporary Hugging Face cache with the hub
offline. Random weights only when asked, and marked in every output.
"""
import functools
import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading

import pytest
import torch
import torchvision
from click.testing import CliRunner
from torchvision.models import ResNet18_Weights
from torchvision.models._api import Weights, WeightsEnum

import camzoo
from camzoo.cli import main
from camzoo.models.backbone import hash_state_dict
from tests.conftest import REPO

TINY = "py:camzoo.models.testing:tiny_backbone"


class _Server:
    """A static file server on 127.0.0.1 (its own thread) that counts the files it served."""

    def __init__(self, root):
        self.served = []
        handler = functools.partial(type("Handler", (self._Handler,), {"served": self.served}),
                                    directory=str(root))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    class _Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            type(self).served.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def _hashed_file(folder, stem, sd):
    """Save ``sd`` as ``<stem>-<sha256[:8]>.pth`` (torch hub's hash-in-the-name convention)."""
    tmp = folder / f"{stem}.tmp"
    torch.save(sd, tmp)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()[:8]
    path = folder / f"{stem}-{digest}.pth"
    tmp.rename(path)
    return path


def _fake_resnet18_weights(v1_url, v2_url):
    """A weights enum like ``ResNet18_Weights`` whose files live at the given URLs."""
    v1 = ResNet18_Weights.IMAGENET1K_V1

    class FakeResNet18Weights(WeightsEnum):
        IMAGENET1K_V1 = Weights(url=v1_url, transforms=v1.transforms, meta=v1.meta)
        IMAGENET1K_V2 = Weights(url=v2_url, transforms=functools.partial(
            type(v1.transforms()), crop_size=224, resize_size=232), meta=v1.meta)
        DEFAULT = IMAGENET1K_V2

    return FakeResNet18Weights


@pytest.fixture
def resnet18_sds():
    """Two different resnet18 state dicts (float16 keeps the served files at 23 MB)."""
    out = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        out.append({k: v.half() if v.is_floating_point() else v
                    for k, v in torchvision.models.resnet18(weights=None).state_dict().items()})
    return out


def test_torchvision_downloads_the_papers_weights_into_torch_hub_cache(tmp_path, monkeypatch, resnet18_sds):
    srv_dir = tmp_path / "srv"
    srv_dir.mkdir()
    f1 = _hashed_file(srv_dir, "resnet18", resnet18_sds[0])
    f2 = _hashed_file(srv_dir, "resnet18v2", resnet18_sds[1])
    server = _Server(srv_dir)
    try:
        fake = _fake_resnet18_weights(f"{server.url}/{f1.name}", f"{server.url}/{f2.name}")
        monkeypatch.setattr(torchvision.models, "ResNet18_Weights", fake)
        monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
        bb = camzoo.load_backbone("resnet18", device="cpu")  # no weights: IMAGENET1K_V1, downloaded
        cached = tmp_path / "torch" / "hub" / "checkpoints" / f1.name
        assert cached.is_file() and server.served == [f"/{f1.name}"]
        want = {k: v.float() for k, v in resnet18_sds[0].items()}
        for k, v in bb.model.state_dict().items():
            torch.testing.assert_close(v.float(), want[k], rtol=0, atol=0)
        assert bb.weights_id == f"torchvision:{f1.name}#{hash_state_dict(resnet18_sds[0])}"
        assert not bb.weights_id.startswith("random")
        # a tag of the same enum: its own file and its own preprocessing (resize 232)
        v2 = camzoo.load_backbone("resnet18", weights="IMAGENET1K_V2", device="cpu")
        assert v2.weights_id.startswith(f"torchvision:IMAGENET1K_V2:{f2.name}#")
        assert "232" in repr(v2.preprocess.__closure__[0].cell_contents.transforms[0])
    finally:
        server.close()
    # the server is gone: the cache serves the same weights, nothing is fetched again
    again = camzoo.load_backbone("resnet18", device="cpu")
    assert again.weights_id == bb.weights_id and server.served == [f"/{f1.name}", f"/{f2.name}"]


def test_a_failed_download_names_the_url_the_cache_file_and_the_error(tmp_path, monkeypatch, resnet18_sds):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    missing = (tmp_path / "nowhere" / "resnet18-0123abcd.pth").as_uri()  # a file:// URL
    monkeypatch.setattr(torchvision.models, "ResNet18_Weights", _fake_resnet18_weights(missing, missing))
    with pytest.raises(FileNotFoundError) as ei:
        camzoo.load_backbone("resnet18", device="cpu")
    msg = str(ei.value)
    cache_file = tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-0123abcd.pth"
    assert missing in msg and str(cache_file) in msg and "--weights FILE" in msg
    assert "URLError" in msg and "offline" not in msg  # the error, no guess about the network
    # a file whose content does not match the hash in its name is refused, and not kept
    srv = tmp_path / "srv"
    srv.mkdir()
    good = _hashed_file(srv, "resnet18", resnet18_sds[0])
    bad = srv / "resnet18-00000000.pth"
    good.rename(bad)
    monkeypatch.setattr(torchvision.models, "ResNet18_Weights",
                        _fake_resnet18_weights(bad.as_uri(), bad.as_uri()))
    with pytest.raises(FileNotFoundError, match="invalid hash value"):
        camzoo.load_backbone("resnet18", device="cpu")
    assert not (cache_file.parent / bad.name).exists()


def test_torchvision_weights_values(tmp_path):
    with pytest.raises(FileNotFoundError, match="IMAGENET1K_V1, IMAGENET1K_V2, DEFAULT"):
        camzoo.load_backbone("resnet50", weights=str(tmp_path / "nope.pth"))
    with pytest.raises(ValueError, match="no ImageNet classifier"):
        camzoo.load_backbone("vgg16", weights="IMAGENET1K_FEATURES")  # refused before any download
    bb = camzoo.load_backbone("resnet18", weights="random", device="cpu")
    assert bb.weights_id == "random"
    out = CliRunner().invoke(main, ["list"])
    assert "ResNet50_Weights.IMAGENET1K_V1 (also: IMAGENET1K_V2, DEFAULT)" in out.output
    assert "VGG16_Weights.IMAGENET1K_V1 (also: DEFAULT)" in out.output


# -- timm -------------------------------------------------------------------------------------
def _seed_hf_cache(cache, repo, sd):
    """Lay ``sd`` into a Hugging Face hub cache the way ``hf_hub_download`` leaves it."""
    from safetensors.torch import save_file

    commit = "0123456789abcdef0123456789abcdef01234567"
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    snap = root / "snapshots" / commit
    snap.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(snap / "model.safetensors"))


def _test_vit_state_dict(seed=3):
    import timm

    torch.manual_seed(seed)
    return timm.create_model("test_vit", pretrained=False).state_dict()


def test_timm_bench_reads_pretrained_weights_from_a_seeded_hub_cache_offline(tmp_path):
    """The CLI as a user runs it: timm's loading finds the weights in the hub cache (HF_HUB_CACHE)
    with the hub offline; nothing says random, the run identity has the weights' hash."""
    sd = _test_vit_state_dict()
    _seed_hf_cache(tmp_path / "hf", "timm/test_vit.r160_in1k", sd)
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": REPO}
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "camzoo", "bench", "--backbone", "timm:test_vit",
                        "--methods", "gradcam,fakecam", "--metrics", "lcam", "--limit", "2", "--out",
                        str(out), "--no-progress", "--device", "cpu"],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    cfg = json.loads((out / "config.json").read_text())
    import timm

    model = timm.create_model("test_vit", pretrained=False)
    model.load_state_dict(sd)
    assert cfg["backbone"]["weights_id"] == f"timm:timm/test_vit.r160_in1k#{hash_state_dict(model.state_dict())}"
    assert cfg["backbone"]["random_weights"] is False
    assert "random" not in (out / "table.md").read_text() and "RANDOM" not in r.stderr


def test_timm_refusals_and_local_file(tmp_path, monkeypatch):
    import huggingface_hub.constants as hf

    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", True)
    with pytest.raises(FileNotFoundError) as ei:  # neither cached nor downloadable
        camzoo.load_backbone("timm:test_resnet", device="cpu")
    msg = str(ei.value)
    assert "timm/test_resnet.r160_in1k" in msg and str(tmp_path / "empty") in msg and "--weights FILE" in msg
    with pytest.raises(ValueError, match="has no pretrained weights in timm"):
        camzoo.load_backbone("timm:darknet17", device="cpu")
    with pytest.raises(ValueError, match="unknown timm model"):
        camzoo.load_backbone("timm:no_such_model", weights="random")
    # a local file through timm's own loading (pretrained_cfg_overlay=dict(file=...))
    import timm

    torch.manual_seed(5)
    src = timm.create_model("test_resnet", pretrained=False)
    torch.save(src.state_dict(), tmp_path / "w.pth")
    bb = camzoo.load_backbone("timm:test_resnet", weights=str(tmp_path / "w.pth"), device="cpu")
    for k, v in bb.model.state_dict().items():
        torch.testing.assert_close(v, src.state_dict()[k], rtol=0, atol=0)
    assert bb.weights_id.startswith("file:w.pth#")
    torch.save(_test_vit_state_dict(), tmp_path / "vit.pth")
    with pytest.raises(ValueError, match="do not fit timm:test_resnet"):
        camzoo.load_backbone("timm:test_resnet", weights=str(tmp_path / "vit.pth"))


# -- py: factories and plugins ------------------------------------------------------------------
def test_py_factory_weights_are_passed_on_or_refused_clearly(tmp_path, monkeypatch):
    mod = tmp_path / "my_models.py"
    mod.write_text(
        "from camzoo.models.testing import tiny_backbone\n"
        "def with_weights(weights=None):\n"
        "    bb = tiny_backbone(seed=1)\n"
        "    bb.weights_id = 'random' if weights == 'random' else f'mine:{weights}'\n"
        "    return bb\n"
        "def without_weights():\n"
        "    bb = tiny_backbone()\n"
        "    bb.weights_id = 'trained-here'\n"
        "    return bb\n")
    monkeypatch.chdir(tmp_path)
    bb = camzoo.load_backbone("py:my_models:with_weights", weights=str(mod), device="cpu")
    assert bb.weights_id.startswith(f"mine:{mod}|weights=my_models.py#")
    with pytest.raises(ValueError, match=r"without_weights\(\) takes no 'weights' argument"):
        camzoo.load_backbone("py:my_models:without_weights", weights=str(mod))
    with pytest.raises(ValueError, match="takes no 'weights' argument and its backbone has weights 'trained-here'"):
        camzoo.load_backbone("py:my_models:without_weights", weights="random")
    assert camzoo.load_backbone("py:my_models:without_weights").weights_id == "trained-here"
    r = CliRunner().invoke(main, ["bench", "--backbone", "py:my_models:without_weights", "--weights", str(mod),
                                  "--out", str(tmp_path / "run")])
    assert r.exit_code == 1 and "Traceback" not in r.output and "takes no 'weights' argument" in r.output
    assert not (tmp_path / "run").exists()


def test_random_weights_only_when_asked_for_every_kind_of_backbone(monkeypatch):
    from camzoo.models.zoo import BACKBONES
    from camzoo.models.testing import tiny_backbone

    monkeypatch.setitem(BACKBONES._items, "untrained_plugin", lambda weights=None: tiny_backbone())
    for name in ("untrained_plugin", TINY, "py:camzoo.models.testing:tiny_vit"):
        with pytest.raises(ValueError, match="random \\(untrained\\) weights.*--weights random"):
            camzoo.load_backbone(name)
        assert camzoo.load_backbone(name, weights="random", device="cpu").weights_id.startswith("random")
    with pytest.raises(ValueError, match="has no pretrained weights in timm"):
        camzoo.load_backbone("timm:darknet17")
    assert camzoo.load_backbone("timm:test_resnet", weights="random").weights_id == "random"
    assert camzoo.load_backbone("vgg16", weights="random").weights_id == "random"


def test_random_weights_are_marked_in_every_output(tmp_path, monkeypatch):
    from camzoo.results import plots

    titles = []
    real_save = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path, dpi=110, suptitle=None, fontsize=9: (
        titles.append((os.path.basename(path), suptitle)), real_save(fig, path, dpi, suptitle, fontsize)))
    out = tmp_path / "run"
    r = CliRunner().invoke(main, [
        "bench", "--backbone", TINY, "--weights", "random", "--methods", "gradcam,fakecam",
        "--limit", "2", "--steps", "4", "--out", str(out), "--no-progress", "--device", "cpu"])
    assert r.exit_code == 0, r.output + r.stderr
    mark = f"{TINY} (random weights)"
    assert "RANDOM weights" in r.stderr and "RANDOM" not in r.stdout.split("|")[0]
    assert mark in (out / "table.md").read_text() and "RANDOM WEIGHTS" in (out / "table.md").read_text()
    assert "random weights" in (out / "table.tex").read_text()
    assert (out / "table.csv").read_text().splitlines()[1].startswith(f"{mark},gradcam,")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["backbone"]["random_weights"] is True and cfg["backbone"]["label"] == mark
    assert cfg["summary"].startswith(mark)
    assert dict(titles) == {"curves.png": mark, "grid.png": mark}
    for fmt in ("markdown", "csv", "latex"):
        cmp = CliRunner().invoke(main, ["compare", str(out), str(out), "--format", fmt, "--no-ci"])
        assert cmp.exit_code == 0 and "(random weights)" in cmp.output, fmt


@pytest.mark.skipif(not os.path.isdir(os.path.join(REPO, "..", "shared", "data", "imagenette-224")),
                    reason="needs ../shared/data/imagenette-224")
def test_the_papers_protocol_needs_nothing_but_the_data(tmp_path, monkeypatch, resnet18_sds):
    """``camzoo bench --backbone B --data VAL --subset lcam-2000 --preset lcam-table1`` on a fresh
    cache: the weights come from the (local) server, the images from the list; nothing else given."""
    from tests.conftest import IMAGENETTE

    srv_dir = tmp_path / "srv"
    srv_dir.mkdir()
    f1 = _hashed_file(srv_dir, "resnet18", resnet18_sds[0])
    server = _Server(srv_dir)
    try:
        url = f"{server.url}/{f1.name}"
        monkeypatch.setattr(torchvision.models, "ResNet18_Weights", _fake_resnet18_weights(url, url))
        monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
        out = tmp_path / "run"
        r = CliRunner().invoke(main, ["bench", "--backbone", "resnet18", "--methods", "gradcam,gradcam++",
                                      "--data", IMAGENETTE, "--subset", "lcam-2000", "--preset", "lcam-table1",
                                      "--allow-missing", "--out", str(out), "--no-progress", "--device", "cpu"])
    finally:
        server.close()
    assert r.exit_code == 0, r.output
    assert server.served == [f"/{f1.name}"] and "random" not in r.output.lower()
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["backbone"]["weights_id"].startswith(f"torchvision:{f1.name}#")
    assert cfg["data"]["n_images"] == 7 and list(cfg["protocols"]) == ["lcam"] and cfg["target"] == "pred"
