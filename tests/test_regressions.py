"""Behaviours a broken version used to pass the suite with (each was broken on purpose in a
copy and a test here failed): Pearson's constant-map guard on full-size maps, the autocast
dtypes, marks per block in ``compare``, LaTeX escaping, RISE's ``1/(N p1)`` scale, and
``camzoo explain --target N`` with a target-dependent explainer."""
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

import camzoo
from camzoo.cli import main
from camzoo.models.testing import tiny_backbone


def test_pearson_guards_constant_full_size_maps():
    from camzoo.metrics import coherency, pearson

    g = torch.Generator().manual_seed(0)
    const = torch.full((3, 224, 224), 0.7)  # its float32 mean is not exactly 0.7
    other = torch.rand(3, 224, 224, generator=g)
    assert float((const.reshape(3, -1) - const.reshape(3, -1).mean(1, keepdim=True)).abs().max()) > 0
    torch.testing.assert_close(pearson(const, other), torch.zeros(3))
    torch.testing.assert_close(pearson(other, const, nan_value=-1.0), torch.full((3,), -1.0))
    torch.testing.assert_close(coherency(const, other), torch.full((3,), 0.5))
    # and a real correlation is still computed
    torch.testing.assert_close(pearson(other, 2 * other + 1), torch.ones(3), atol=1e-5, rtol=0)


@pytest.mark.parametrize("amp,dtype", [("fp16", torch.float16), ("bf16", torch.bfloat16), (None, torch.float32)])
def test_autocast_context_dtypes(amp, dtype):
    from camzoo.explainers.perturb import autocast_context

    a, b = torch.randn(4, 4), torch.randn(4, 4)
    with autocast_context(torch.device("cpu"), amp):
        assert torch.mm(a, b).dtype == dtype
    with pytest.raises(ValueError, match="amp='fp8'"):
        autocast_context(torch.device("cpu"), "fp8")


def test_compare_marks_best_and_second_within_each_block():
    from camzoo.results.tables import Table, marks, to_latex, to_markdown

    idx = pd.MultiIndex.from_tuples([("A", "m1"), ("A", "m2"), ("A", "m3"), ("B", "m1"), ("B", "m2")],
                                    names=["Backbone", "Method"])
    # block B is worse than block A everywhere: marks must still be given inside B
    df = pd.DataFrame({"AD(100%)↓": [10.0, 20.0, 30.0, 50.0, 40.0]}, index=idx)
    t = Table(df, {"AD(100%)↓": False})
    mk = marks(t)["AD(100%)↓"].tolist()
    assert mk == ["best", "second", "", "second", "best"]
    md = to_markdown(t)
    assert "| B | m2 | **40.00** |" in md and "| B | m1 | <u>50.00</u> |" in md
    tex = to_latex(t)
    assert r"m2 & $\mathbf{40.00}$" in tex and r"\multicolumn{2}{c}{\textit{B}}" in tex


def test_latex_escapes_every_special_character():
    from camzoo.results.tables import Table, to_latex

    df = pd.DataFrame({"A_B%↑": [1.0]}, index=pd.Index(["my_cam&v2#1"], name="Method"))
    tex = to_latex(Table(df, {"A_B%↑": True}, ["note: 50% of {x} ~ $y^2$ \\ z"]))
    assert r"my\_cam\&v2\#1" in tex and r"A\_B\%$\uparrow$" in tex
    assert (r"note: 50\% of \{x\} \textasciitilde{} \$y\textasciicircum{}2\$ \textbackslash{} z") in tex
    body = tex.replace(r"\&", "").replace(r"\%", "").replace(r"\#", "").replace(r"\$", "").replace(r"\_", "")
    assert "#" not in body and "%" not in body and "_" not in body


def test_rise_saliency_is_divided_by_n_p1():
    from camzoo.explainers.rise import rise_grids, rise_masks

    bb = tiny_backbone()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([2, 5])
    n, s, p1, seed = 16, 4, 0.3, 7
    ours = camzoo.get_explainer("rise", n_masks=n, s=s, p1=p1, seed=seed).saliency(bb, x, y)
    grids, shifts = rise_grids(n, s, p1, (32, 32), torch.Generator().manual_seed(seed))
    masks = rise_masks(grids, shifts, (32, 32))  # [n,H,W]
    with torch.no_grad():
        probs = torch.stack([F.softmax(bb.model(x * m[None, None]), 1)[torch.arange(2), y] for m in masks], 1)
    ref = torch.einsum("bn,nhw->bhw", probs, masks) / (n * p1)
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-5)


def test_explain_cli_target_changes_a_target_dependent_map(tmp_path, lite0):
    out = tmp_path / "o"
    res = CliRunner().invoke(main, ["explain", "--methods", "gradcam", "--target", "285", "--out", str(out),
                                    "--device", "cpu"])
    assert res.exit_code == 0, res.output
    v = np.load(out / "chelsea" / "gradcam.npy")
    x = lite0.preprocess(camzoo.data.sample_photos()[0][1])[None]
    want = camzoo.explain("gradcam", lite0, x, torch.tensor([285]))[0].numpy()
    top1 = camzoo.explain("gradcam", lite0, x)[0].numpy()
    np.testing.assert_allclose(v, want, atol=2e-5)
    assert int(lite0.model(x).argmax()) != 285 and np.abs(want - top1).max() > 0.2
