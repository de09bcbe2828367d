"""Explainer plugins: entry points are loaded (a broken one warns), names are checked, and a plugin
never replaces a built-in."""
import textwrap
import warnings

import pytest
import torch

import camzoo
from camzoo.explainers.base import EXPLAINERS
from camzoo.registry import Registry
from tests.helpers import Boom


def _fake_dist(tmp_path, name, module_src, ep_value):
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(module_src))
    info = tmp_path / f"{name}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[camzoo.explainers]\n{ep_value}\n")


def test_entry_point_plugins(tmp_path, monkeypatch, tiny):
    _fake_dist(tmp_path, "camzoo_goodplugin", """
        import torch
        from camzoo import Explainer

        class CenterCAM(Explainer):
            name = "center"
            defaults = {"sigma": 0.25}
            def forward_passes(self, model):
                return 0
            def _explain(self, model, x, y):
                H, W = x.shape[-2:]
                yy, xx = torch.meshgrid(torch.linspace(-1, 1, H), torch.linspace(-1, 1, W), indexing="ij")
                g = torch.exp(-(xx ** 2 + yy ** 2) / (2 * self.options["sigma"] ** 2))
                return g.expand(x.shape[0], H, W).clone()
        """, "center = camzoo_goodplugin:CenterCAM")
    _fake_dist(tmp_path, "camzoo_badplugin", "raise ImportError('missing dependency xyz')\n",
               "broken = camzoo_badplugin:Nope")
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = Registry("explainer", "camzoo.explainers")
    reg.add("gradcam", object)
    with pytest.warns(RuntimeWarning, match="broken.*missing dependency xyz"):
        names = reg.names()
    assert "center" in names and "gradcam" in names and "broken" not in names
    # through the global registry and the one-call API
    from camzoo.explainers.base import EXPLAINERS

    monkeypatch.setattr(EXPLAINERS, "_entry_points_loaded", False)
    monkeypatch.setattr(EXPLAINERS, "_items", dict(EXPLAINERS._items))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        v = camzoo.explain("center", tiny, torch.randn(2, 3, 32, 32))
    assert v.shape == (2, 32, 32) and float(v[0, 16, 16]) > 0.95 and float(v[0, 0, 0]) < 0.01


def test_names_are_checked_and_plugins_never_replace_a_built_in(tmp_path, monkeypatch):
    from camzoo.registry import Registry

    with pytest.raises(ValueError, match="not allowed"):
        EXPLAINERS.add("../../escaped", Boom)
    (tmp_path / "camzoo_evil.py").write_text("from camzoo.explainers.fakecam import FakeCAM as Evil\n")
    info = tmp_path / "camzoo_evil-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: camzoo_evil\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[camzoo.explainers]\ngradcam = camzoo_evil:Evil\n"
                                           "../../escaped = camzoo_evil:Evil\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = Registry("explainer", "camzoo.explainers")
    from camzoo.explainers.gradient import GradCAM

    reg.add("gradcam", GradCAM)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        names = reg.names()
    msgs = " | ".join(str(x.message) for x in w)
    assert reg.get("gradcam") is GradCAM and "../../escaped" not in names
    assert "'gradcam' (camzoo_evil:Evil) is ignored" in msgs
    assert "camzoo.explainers.gradient.GradCAM" in msgs and "not allowed" in msgs
