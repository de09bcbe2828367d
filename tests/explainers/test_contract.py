"""Every registered explainer keeps the map contract; no explainer keeps a model alive or attaches
anything to the user's module."""
import gc
import weakref

import pytest
import torch

import camzoo
from camzoo.models.backbone import hook_count
from camzoo.models.synthetic import ShapesDataset
from camzoo.models.testing import tiny_backbone

QUIET = dict(progress=False, log=lambda s: None)

#: fast options per explainer (the contract does not depend on them)
FAST = {"rise": {"n_masks": 24}, "smoothgradcam++": {"n_samples": 2}}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A tiny trained checkpoint for every learned explainer, on ``tiny_backbone()``."""
    from camzoo.train.lcam import train_lcam
    from camzoo.train.lficam import train_lficam

    d = tmp_path_factory.mktemp("ck")
    bb = tiny_backbone()
    data = ShapesDataset(16, bb, seed=1)
    out = {}
    for v in ("fm", "img"):
        out[f"lcam-{v}"] = str(d / f"{v}.pt")
        train_lcam(bb, data, None, variant=v, epochs=1, batch_size=16, lr=0.1, out=out[f"lcam-{v}"],
                   **QUIET)
    out["lficam"] = str(d / "lfi.pt")
    train_lficam(bb, data, None, mode="frozen", epochs=1, batch_size=16, lr=0.1, out=out["lficam"],
                 **QUIET)
    return out


def _options(name, checkpoints):
    cls = camzoo.explainers.base.EXPLAINERS.get(name)
    opts = dict(FAST.get(name, {}))
    if cls.needs_checkpoint:
        opts["checkpoint"] = checkpoints[name]
    return opts


def _x(n=3):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(7))


@pytest.mark.parametrize("name", camzoo.list_explainers())
def test_every_explainer_keeps_the_map_contract(name, checkpoints):
    bb = tiny_backbone()
    x = _x()
    ex = camzoo.get_explainer(name, **_options(name, checkpoints))
    V = ex.explain(bb, x)
    assert V.shape == (3, 32, 32) and V.dtype == torch.float32
    assert torch.isfinite(V).all() and float(V.min()) >= 0.0 and float(V.max()) <= 1.0
    assert hook_count(bb.model) == 0
    # the same seed (explicit classes this time) gives the same maps, with a fresh instance too
    y = bb.model(x).argmax(1)
    again = camzoo.get_explainer(name, **_options(name, checkpoints)).explain(bb, x, y)
    assert torch.equal(V, again) and torch.equal(V, ex.explain(bb, x, y))
    assert hook_count(bb.model) == 0


@pytest.mark.parametrize("name", camzoo.list_explainers())
def test_no_cache_keeps_a_model_alive(name, checkpoints):
    bb = tiny_backbone()
    ex = camzoo.get_explainer(name, **_options(name, checkpoints))
    ex.explain(bb, _x(2))
    ex.evaluated_backbone(bb)
    ex.forward_passes(bb)
    ref = weakref.ref(bb.model)
    del bb
    gc.collect()
    assert ref() is None, f"{name}: something still holds the model"
    assert ex is not None  # the explainer itself stays alive: its own state must not hold it
    assert not hasattr(tiny_backbone().model, "camzoo_backbone")


def test_nothing_is_attached_to_the_users_module(checkpoints):
    bb = tiny_backbone()
    before = set(vars(bb.model))
    for name in camzoo.list_explainers():
        ex = camzoo.get_explainer(name, **_options(name, checkpoints))
        ex.explain(bb, _x(2))
        ex.evaluated_backbone(bb)
    assert set(vars(bb.model)) == before
