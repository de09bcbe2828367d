"""The controls of issue 26 (camzoo/explainers/controls.py): ``blur:<method>`` (a parametrized
name of the one registry), ``centre`` and ``random``; hand-computed maps, scipy as the
independent blur, and a tiny bench run that stores, resumes and tabulates them."""
import json
import os

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from scipy import ndimage

import camzoo
import camzoo.cli
from camzoo.explainers.base import EXPLAINERS
from camzoo.explainers.controls import gaussian_blur
from camzoo.models.testing import tiny_backbone
from camzoo.registry import UnknownNameError, file_name
from tests.conftest import SAMPLES


def _x(n=4, size=32, seed=7):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _scipy_blur_minmax(V, sigma):
    """The independent reference: scipy's Gaussian filter (reflect about the edge pixels:
    scipy's ``mirror``, torch's ``reflect``), then a per-map min-max, in float64."""
    out = []
    for m in V.double().cpu().numpy():
        b = ndimage.gaussian_filter(m, sigma, mode="mirror")
        out.append((b - b.min()) / (b.max() - b.min()))
    return np.stack(out)


# -- blur ---------------------------------------------------------------------------------------------
def test_blur_of_a_delta_is_a_gaussian_hand_computed():
    d = torch.zeros(1, 33, 33)
    d[0, 16, 16] = 1.0  # 16 pixels from every edge: beyond the kernel's radius int(4*3+0.5) = 12
    V = camzoo.explainers.base.minmax(gaussian_blur(d, 3.0))[0]
    # min-max of the blurred delta = exp(-r^2 / (2 sigma^2)) (the peak is the delta, the min 0)
    assert float(V[16, 16]) == pytest.approx(1.0, abs=1e-6)
    assert float(V[19, 16]) == pytest.approx(0.6065307, abs=1e-6)  # exp(-9/18) = exp(-0.5)
    assert float(V[16, 13]) == pytest.approx(0.6065307, abs=1e-6)
    assert float(V[19, 19]) == pytest.approx(0.3678794, abs=1e-6)  # exp(-18/18)
    assert float(V[16, 22]) == pytest.approx(0.1353353, abs=1e-6)  # exp(-36/18)
    assert float(V[16, 29]) == 0.0 and float(V[3, 16]) == 0.0  # 13 pixels away: past the radius
    # reflect padding about the edge pixel: a delta in row 1 is mirrored into row -1, so row 0
    # gets 2 k(1) and row 1 gets k(0) + k(2): V[1] / V[0] = (1 + e^(-4/18)) / (2 e^(-1/18))
    e = torch.zeros(1, 33, 33)
    e[0, 1, 16] = 1.0
    W = camzoo.explainers.base.minmax(gaussian_blur(e, 3.0))[0]
    assert float(W[0, 16]) == pytest.approx(1.0, abs=1e-6)
    assert float(W[1, 16]) == pytest.approx(0.9518047, abs=1e-6)
    assert float(W[1, 19]) == pytest.approx(0.9518047 * 0.6065307, abs=1e-6)


@pytest.mark.parametrize("shape,sigma", [((2, 20, 13), 8.0), ((1, 7, 5), 3.3), ((1, 1, 6), 2.0), ((2, 224, 224), 8.0)])
def test_gaussian_blur_equals_scipy_any_size(shape, sigma):
    """Also when the kernel's radius exceeds the map (a pad longer than the axis keeps reflecting)."""
    V = torch.rand(shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ref = np.stack([ndimage.gaussian_filter(m, sigma, mode="mirror") for m in V.numpy()])
    np.testing.assert_allclose(gaussian_blur(V, sigma).numpy(), ref, atol=1e-6)
    assert torch.equal(gaussian_blur(V, 0), V.float())


@pytest.mark.parametrize("opts", [{}, {"sigma": 4, "layer": "blocks"}])
def test_blur_of_gradcam_on_lite0_equals_scipy(lite0, sample_batch, opts):
    """blur:gradcam on the real backbone = the inner map (with the same inner options) blurred by
    scipy and min-maxed; ``sigma`` and the inner's ``layer`` both reach their owner."""
    x = sample_batch[:3]
    inner_opts = {k: v for k, v in opts.items() if k != "sigma"}
    inner = camzoo.explain("gradcam", lite0, x, **inner_opts)
    got = camzoo.explain("blur:gradcam", lite0, x, **opts)
    assert got.shape == inner.shape and got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), _scipy_blur_minmax(inner, opts.get("sigma", 8.0)), atol=1e-4)
    assert float((got - inner).abs().max()) > 0.02  # it did blur


def test_blur_delegates_to_the_inner_method(tmp_path):
    bb = tiny_backbone()
    ex = camzoo.get_explainer("blur:rise", n_masks=24, sigma=2)
    assert ex.forward_passes(bb) == 24 == camzoo.get_explainer("rise", n_masks=24).forward_passes(bb)
    assert ex.options == {**camzoo.get_explainer("rise", n_masks=24).options, "sigma": 2}
    assert ex.evaluated_backbone(bb) is bb
    assert camzoo.get_explainer("blur:gradcam").forward_passes(bb) == 1
    cls = EXPLAINERS.get("blur:lcam-img")
    assert cls.needs_checkpoint and cls is EXPLAINERS.get("blur:lcam-img")  # one class per name
    assert EXPLAINERS.get("blur:gradcam").uses_gradients
    # check_backbone is the inner's (the layer), the message names blur:<method> and the option
    with pytest.raises(ValueError, match=r"blur:gradcam: option layer='nope'.*layers: features"):
        camzoo.get_explainer("blur:gradcam", layer="nope").check_backbone(bb)
    camzoo.get_explainer("blur:gradcam", layer="features").check_backbone(bb)
    # a learned inner method's own check (its checkpoint), which the base class does not make
    with pytest.raises(ValueError, match=r"^blur:lcam-img: option checkpoint='.*missing.pt' cannot be used: "
                                         r"checkpoint not found"):
        camzoo.get_explainer("blur:lcam-img", checkpoint=str(tmp_path / "missing.pt")).check_backbone(bb)


def test_blur_takes_the_inner_methods_classifier_forwards_and_declarations():
    from camzoo.explainers.base import Explainer
    from tests.helpers import registered

    other = tiny_backbone(num_classes=10)

    class Own(Explainer):  # an explainer that is its own classifier (as an end-to-end LFI-CAM)
        name = "own-test"
        defaults: dict = {"k": 3}
        modifies_input = True

        def forward_passes(self, model):
            return self.options["k"]

        def evaluated_backbone(self, model):
            return other

        def _explain(self, model, x, y):
            x.mul_(0)  # declared: the engine hands it a copy
            return torch.rand(x.shape[0], x.shape[2], x.shape[3])

    with registered(Own):
        ex = camzoo.get_explainer("blur:own-test", k=5)
        assert ex.forward_passes(tiny_backbone()) == 5 and ex.evaluated_backbone(tiny_backbone()) is other
        assert type(ex).modifies_input and not type(ex).uses_gradients and not type(ex).needs_checkpoint
        assert type(ex).inner_cls is Own and EXPLAINERS.get("blur:own-test") is type(ex)
    assert "blur:own-test" not in EXPLAINERS  # gone with its inner method, nothing kept stale

    class Own2(Own):
        pass

    with registered(Own2):  # the name registered again, for another class: a new blur class
        assert EXPLAINERS.get("blur:own-test").inner_cls is Own2


def test_blur_refuses_bad_options_and_names_naming_them():
    with pytest.raises(ValueError, match=r"explainer 'blur:gradcam' has no option\(s\) n_masks;.*layer=.*sigma=8.0"):
        camzoo.get_explainer("blur:gradcam", n_masks=3)
    with pytest.raises(ValueError, match=r"'blur:gradcam': option sigma expects a number"):
        camzoo.get_explainer("blur:gradcam", sigma="wide")
    with pytest.raises(ValueError, match=r"blur:gradcam: option sigma must be a number >= 0"):
        camzoo.get_explainer("blur:gradcam", sigma=-1)
    with pytest.raises(ValueError, match=r"blur:scorecam: .*variant 'nope'"):  # the inner's own check
        camzoo.get_explainer("blur:scorecam", variant="nope")
    with pytest.raises(ValueError, match=r"'blur:rise': option n_masks expects an integer"):
        camzoo.get_explainer("blur:rise", n_masks="many")
    with pytest.raises(UnknownNameError, match=r"blur:nope: unknown explainer 'nope'; available: .*gradcam"):
        camzoo.get_explainer("blur:nope")
    with pytest.raises(UnknownNameError, match=r"unknown explainer 'blurr:gradcam'; available: .*blur:<method>"):
        camzoo.get_explainer("blurr:gradcam")
    assert "blur:gradcam" in EXPLAINERS and "blur:nope" not in EXPLAINERS


def test_the_registry_lists_a_family_once():
    names = camzoo.list_explainers()
    assert {"centre", "random", "blur:gradcam"} <= set(names)
    assert [n for n in names if n.startswith("blur:")] == ["blur:gradcam"]
    assert "blur:gradcam" not in EXPLAINERS.names()  # 'all' runs the registered names only
    out = CliRunner().invoke(camzoo.cli.main, ["list"]).output
    assert out.count("blur:") == 2 and "  blur:<method>  " in out and "e.g. blur:gradcam" in out
    assert file_name("blur:gradcam") == "blur@gradcam" and file_name("gradcam++") == "gradcam++"


def test_an_invalid_inner_map_is_not_hidden_by_the_blur():
    from camzoo.explainers.base import Explainer
    from tests.helpers import registered

    class Broken(Explainer):
        name = "broken-test"
        defaults: dict = {}

        def forward_passes(self, model):
            return 0

        def _explain(self, model, x, y):
            V = torch.rand(x.shape[0], x.shape[2], x.shape[3])
            V[0, 3, 3] = float("nan")
            return V

    with registered(Broken):
        V = camzoo.get_explainer("blur:broken-test").explain(tiny_backbone(), _x(2))
    assert torch.isnan(V[0]).any()  # left for the engine to flag, never scored
    assert camzoo.explainers.base.valid_maps(V).tolist() == [False, True]


# -- centre -------------------------------------------------------------------------------------------
def test_centre_is_a_centred_gaussian_hand_computed():
    bb = tiny_backbone()
    x = torch.zeros(2, 3, 33, 33)
    ex = camzoo.get_explainer("centre")
    assert ex.forward_passes(bb) == 0
    V = ex.explain(bb, x, torch.tensor([0, 1]))
    assert torch.equal(V[0], V[1])
    V = V[0]
    assert torch.equal(V, V.flip(0)) and torch.equal(V, V.flip(1)) and torch.allclose(V, V.T)
    assert float(V[16, 16]) == 1.0 and int(V.argmax()) == 16 * 33 + 16
    assert float(V[0, 0]) == 0.0  # the corners are the min
    # s = 0.25 * 33 = 8.25; V = (g - g_corner) / (1 - g_corner), g = exp(-d^2 / (2 s^2)),
    # g_corner = exp(-512 / 136.125)
    assert float(V[16, 26]) == pytest.approx(0.4673005, abs=1e-6)  # d^2 = 100
    assert float(V[10, 20]) == pytest.approx(0.6749345, abs=1e-6)  # d^2 = 52
    assert float(V[0, 16]) == pytest.approx(0.1323172, abs=1e-6)  # d^2 = 256
    # even side: the four middle pixels share the peak; it ignores the images and the model
    E = camzoo.get_explainer("centre", sigma=0.1).explain(bb, _x(2, 32))
    assert torch.equal(E[0], E[1]) and torch.equal(E[0], E[0].flip(0)) and torch.equal(E[0], E[0].flip(1))
    assert E[0, 15:17, 15:17].eq(1).all() and int((E[0] == 1).sum()) == 4
    with pytest.raises(ValueError, match="centre: option sigma must be a number > 0"):
        camzoo.get_explainer("centre", sigma=0)


# -- random -------------------------------------------------------------------------------------------
def test_random_is_seeded_and_each_maps_depends_on_its_image_only():
    bb = tiny_backbone()
    x = _x(5)
    V = camzoo.get_explainer("random").explain(bb, x)
    assert camzoo.get_explainer("random").forward_passes(bb) == 0
    assert torch.equal(V, camzoo.get_explainer("random", seed=0).explain(bb, x))  # deterministic
    assert float(V.amin(dim=(1, 2)).max()) == 0.0 and float(V.amax(dim=(1, 2)).min()) == 1.0
    other = camzoo.get_explainer("random", seed=1).explain(bb, x)
    assert (V - other).abs().amax(dim=(1, 2)).min() > 0.5  # another seed: other maps for every image
    assert (V[0] - V[1]).abs().max() > 0.5  # one independent field per image, not one shared
    # an image's map depends only on the seed and the image: alone, at another position, in
    # another batch, on a channels-last copy
    ex = camzoo.get_explainer("random")
    assert torch.equal(ex.explain(bb, x[3:4]), V[3:4])
    assert torch.equal(ex.explain(bb, x.flip(0))[1], V[3])
    assert torch.equal(ex.explain(bb, torch.cat([_x(2, seed=9), x[2:3]]))[2], V[2])
    assert torch.equal(ex.explain(bb, x.contiguous(memory_format=torch.channels_last)), V)
    assert torch.equal(ex.explain(bb, x, torch.zeros(5, dtype=torch.long)), V)  # the class plays no part


# -- the engine ---------------------------------------------------------------------------------------
def test_bench_stores_resumes_and_tabulates_the_controls(tmp_path):
    from camzoo.bench import BenchConfig, Run, run
    from camzoo.results.run import map_path
    from tests.helpers import TINY1000

    out = str(tmp_path / "run")
    methods = "gradcam,blur:gradcam,centre,random"
    cfg = dict(backbone=TINY1000, weights="random", methods=methods, data=SAMPLES, limit=4, seed=3,
               metric_options={"rise": {"steps": 4}}, batch_size=3, eval_batch_size=16, progress=False,
               grid_images=2)
    run(BenchConfig(**cfg, options={"blur:gradcam": {"sigma": 4}}, out=out), echo=lambda s: None)
    r = Run(out)
    rows = r.rows()
    assert list(r.methods) == methods.split(",")
    assert len(rows) == 16 and sorted(set(rows.method)) == sorted(methods.split(","))
    assert rows[["ad_100", "ins_auc", "adcc"]].notna().all().all()
    stored = json.load(open(os.path.join(out, "config.json")))["methods"]
    assert stored["blur:gradcam"]["options"] == {"amp": None, "layer": None, "sigma": 4}
    # the forward counts: blur's are gradcam's, the model-independent ones make none
    assert {m: stored[m]["forward_passes"] for m in stored} == {"gradcam": 1, "blur:gradcam": 1, "centre": 0, "random": 0}
    for it in rows[rows.method == "blur:gradcam"].image_id[:2]:
        assert os.path.isfile(map_path(out, "grid", "blur:gradcam", it))
    # resumed through the command line, the option given as --opt blur:gradcam.sigma=4: same
    # run identity (a mis-split name would be refused as a changed option), nothing to redo
    res = CliRunner().invoke(camzoo.cli.main, ["bench", "--resume", "--out", out, "--no-progress",
                                               "--opt", "blur:gradcam.sigma=4"])
    assert res.exit_code == 0, res.output
    again = Run(out).rows()
    assert len(again) == 16
    cols = ["method", "image_id", "ad_100", "ins_auc", "adcc"]
    assert again[cols].sort_values(cols[:2]).reset_index(drop=True).equals(
        rows[cols].sort_values(cols[:2]).reset_index(drop=True))
    # a changed blur option on resume is refused, naming the option
    res = CliRunner().invoke(camzoo.cli.main, ["bench", "--resume", "--out", out, "--no-progress",
                                               "--opt", "blur:gradcam.sigma=5"])
    assert res.exit_code != 0 and "blur:gradcam" in res.output and "sigma" in res.output
    table = CliRunner().invoke(camzoo.cli.main, ["table", out])
    assert table.exit_code == 0, table.output
    lines = [ln.split(" | ")[0] for ln in table.output.splitlines() if ln.startswith("| ")]
    assert lines[1:] == [f"| {m}" for m in methods.split(",")]


def test_opt_parses_a_parametrized_name():
    from camzoo.bench import BenchConfig

    cfg = BenchConfig.from_cli({"methods": "gradcam,blur:gradcam", "options": ["blur:gradcam.sigma=4",
                                                                              "blur:gradcam.layer=features"]})
    assert cfg.options == {"blur:gradcam": {"sigma": 4, "layer": "features"}}


def test_the_controls_through_the_sanity_check():
    """A control that knows nothing of the model keeps its map when the model is randomized
    (similarity 1 at every step): the sanity check shows what it is; blur:gradcam follows the
    model as Grad-CAM does."""
    import camzoo.sanity

    res = camzoo.sanity.run(tiny_backbone(), "centre,random,blur:gradcam", SAMPLES, limit=2,
                            progress=False, figures=False)
    sp = res.summary("spearman")
    assert np.isfinite(sp.to_numpy(dtype=float)).all()
    assert sp[["centre", "random"]].to_numpy() == pytest.approx(1.0)
    assert sp["blur:gradcam"].iloc[-1] < 0.95
