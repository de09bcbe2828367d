"""Metric protocols are plugins: an entry-point protocol gets its column into the tables, and the
engine names no protocol."""
import os
import textwrap

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

import camzoo
from camzoo.cli import main
from tests.conftest import REPO
from tests.helpers import TINY

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

    root = os.path.join(REPO, "camzoo", "engine")
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
