"""The contracts of the layered package: every registered explainer's map contract, no cache
keeping a model alive, metric protocols as plugins, one config path for the API and the CLI,
and run directories of the code before the layered package read and resumed."""
import gc
import os
import shutil
import sqlite3
import textwrap
import warnings
import weakref

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

import camzoo
from camzoo.cli import main
from camzoo.models import hook_count
from camzoo.models.synthetic import ShapesDataset
from camzoo.models.testing import tiny_backbone

HERE = os.path.dirname(os.path.abspath(__file__))
LEGACY = os.path.join(HERE, "fixtures", "run_v0")
QUIET = dict(progress=False, log=lambda s: None)
TINY = "py:camzoo.models.testing:tiny_backbone"
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
    cls = camzoo.explainers.EXPLAINERS.get(name)
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


# -- protocols are plugins ---------------------------------------------------------------------
TOY_PROTOCOL = """
    import torch
    from camzoo.metrics import MetricSpec, Protocol

    class MeanMap(Protocol):
        name = "meanmap"
        summary = "mean map value (a toy protocol)"
        source = "a test"

        def metrics(self, **opts):
            return [MetricSpec("mean_map", "MeanMap", False, 100.0, self.source)]

        def evaluate(self, inputs, **opts):
            return {"mean_map": inputs.V.float().mean(dim=(1, 2))}
    """


def _fake_dist(tmp_path, name, module_src, group, ep_value):
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(module_src))
    info = tmp_path / f"{name}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{group}]\n{ep_value}\n")


@pytest.fixture
def toy_protocol(tmp_path, monkeypatch):
    from camzoo.metrics.protocol import PROTOCOLS

    _fake_dist(tmp_path, "camzoo_toyproto", TOY_PROTOCOL, "camzoo.protocols",
               "meanmap = camzoo_toyproto:MeanMap")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(PROTOCOLS, "_entry_points_loaded", False)
    monkeypatch.setattr(PROTOCOLS, "_items", dict(PROTOCOLS._items))
    return tmp_path


def test_a_protocol_plugin_gets_its_column_into_the_tables(toy_protocol):
    out = toy_protocol / "run"
    res = CliRunner().invoke(main, ["bench", "--backbone", TINY, "--weights", "random", "--methods", "fakecam,gradcam",
                                    "--steps", "4", "--out", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    rows = pd.read_csv(out / "per_image.csv")
    assert "mean_map" in rows.columns and "ins_auc" in rows.columns  # 'all' = built-ins + plugin
    fake = rows[rows.method == "fakecam"]["mean_map"]
    np.testing.assert_allclose(fake, 1 - 1 / (32 * 32), rtol=1e-6)  # ones but one pixel of 32x32
    md = (out / "table.md").read_text()
    header = md.splitlines()[0]
    assert header.index("ADCC") < header.index("MeanMap↓")  # order 100: after the built-ins
    assert "| fakecam |" in md and "99.90" in md.split("| fakecam |")[1].splitlines()[0]
    tex = (out / "table.tex").read_text()
    assert r"MeanMap$\downarrow$" in tex and "99.90" in tex
    fw = camzoo.bench.Run(str(out)).forwards()
    assert "meanmap" not in set(fw.family)  # it needs no forward
    # alone, and listed
    res = CliRunner().invoke(main, ["bench", "--backbone", TINY, "--weights", "random", "--methods", "fakecam",
                                    "--metrics", "meanmap", "--out", str(toy_protocol / "r2"),
                                    "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "| Method | MeanMap↓ | #FW | s/img |" in (toy_protocol / "r2" / "table.md").read_text()
    assert "meanmap" in CliRunner().invoke(main, ["list"]).output


def test_the_engine_names_no_protocol():
    """No protocol name is a string in the engine's code (docstrings aside): no special case."""
    import ast

    root = os.path.join(os.path.dirname(HERE), "camzoo", "engine")
    for f in sorted(os.listdir(root)):
        if not f.endswith(".py"):
            continue
        tree = ast.parse(open(os.path.join(root, f)).read())
        docs = {id(n.body[0].value) for n in ast.walk(tree)
                if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef)) and n.body
                and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
        # the presets name explainers (RISE's n_masks), not protocols
        presets = {id(c) for n in ast.walk(tree) if isinstance(n, ast.AnnAssign)
                   and getattr(n.target, "id", "") == "PRESETS" for c in ast.walk(n)}
        named = [(n.lineno, n.value) for n in ast.walk(tree) if isinstance(n, ast.Constant)
                 and id(n) not in docs | presets
                 and n.value in ("lcam", "rise", "adcc", "insertion", "deletion")]
        assert not named, f"engine/{f} names protocols: {named}"


# -- one config path ---------------------------------------------------------------------------
def test_the_api_applies_the_same_preset_as_the_cli():
    from camzoo.engine.config import BenchConfig, apply_preset

    cfg, picked = apply_preset(BenchConfig())
    assert cfg.preset == "quick" and cfg.steps == 16 and cfg.options["rise"] == {"n_masks": 64}
    assert "scorecam" not in cfg.methods.split(",") and "gradcam" in cfg.methods.split(",")
    assert apply_preset(cfg)[0] == cfg  # idempotent: a resumed run gets nothing new
    full, picked = apply_preset(BenchConfig(data="somewhere"))
    assert full.preset == "full" and full.steps is None and not picked and "rise" not in full.options
    explicit, _ = apply_preset(BenchConfig(methods="all", steps=8, options={"rise": {"n_masks": 9}}))
    assert explicit.methods == "all" and explicit.steps == 8 and explicit.options["rise"] == {"n_masks": 9}
    cli = BenchConfig.from_cli({"backbone": TINY, "options": ("rise.n_masks=5",),
                                "metric_options": ("lcam.nus=1,0.5",)})
    assert cli == BenchConfig(backbone=TINY, options={"rise": {"n_masks": 5}},
                              metric_options={"lcam": {"nus": [1, 0.5]}})


def test_explain_takes_a_python_backbone(tmp_path):
    res = CliRunner().invoke(main, ["explain", "--backbone", TINY, "--weights", "random", "--methods", "gradcam,fakecam",
                                    "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    v = np.load(tmp_path / "chelsea" / "gradcam.npy")
    bb = tiny_backbone()
    x = bb.preprocess(camzoo.data.sample_photos()[0][1])[None]
    np.testing.assert_allclose(v, camzoo.explain("gradcam", bb, x)[0].numpy(), atol=1e-6)


# -- run directories of the code before the layered package --------------------------------------
def _legacy_run(tmp_path):
    run = tmp_path / "legacy"
    run.mkdir()
    for f in ("config.json", "manifest.csv"):
        shutil.copy(os.path.join(LEGACY, f), run / f)
    con = sqlite3.connect(run / "rows.sqlite")
    con.executescript(open(os.path.join(LEGACY, "rows.sql")).read())
    con.close()
    return run


def _rows(run):
    with camzoo.bench.Run(str(run)) as r:
        return r.rows(curves=True).drop(columns=["seconds"]).sort_values(["method", "idx"]).reset_index(drop=True)


def test_a_legacy_run_is_read_by_table(tmp_path):
    run = _legacy_run(tmp_path)
    res = CliRunner().invoke(main, ["table", str(run)])
    assert res.exit_code == 0, res.output
    rows = _rows(run)
    g = rows[rows.method == "gradcam"]
    line = [ln for ln in res.output.splitlines() if ln.startswith("| gradcam |")][0]
    assert f"{100 * g.adcc.mean():.2f}" in line and f"{g.ad_100.mean():.2f}" in line
    res = CliRunner().invoke(main, ["table", str(run), "--format", "latex"])
    assert res.exit_code == 0 and r"\toprule" in res.output


def test_a_legacy_run_is_resumed_with_the_rows_it_would_have_had(tmp_path):
    run = _legacy_run(tmp_path)
    full = _rows(run)
    con = sqlite3.connect(run / "rows.sqlite")
    con.execute("DELETE FROM rows WHERE idx >= 4")  # as if killed after two batches of two
    con.commit()
    con.close()
    assert len(_rows(run)) == 8
    res = CliRunner().invoke(main, ["bench", "--resume", "--out", str(run), "--no-progress"],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "2 image(s) to do (4 done" in res.output
    again = _rows(run)
    assert len(again) == len(full) == 12
    for col in full.columns:
        if col.endswith("_curve"):
            for a, b in zip(full[col], again[col]):
                np.testing.assert_allclose(a, b, rtol=0, atol=2e-6)
        elif full[col].dtype.kind == "f":
            # the legacy rows were computed on another CPU: float32 rounding of the
            # probabilities (~1e-7) differs by instruction set, and AD / IC (in per cent) divide
            # differences of close probabilities (seen: 3e-5 on an AD of 0.045 on AVX-512)
            np.testing.assert_allclose(full[col], again[col], rtol=0, atol=1e-4, err_msg=col)
        else:
            assert list(full[col]) == list(again[col]), col
