"""A method whose values cover fewer images than the others' is never marked best, second nor ≈ (a
footnote says why), and a resume that retries failed pairs counts each image's clean forward once."""
import pytest
import torch

import camzoo
from camzoo.bench import BenchConfig, run
from camzoo.explainers.base import EXPLAINERS, Explainer
from camzoo.results.tables import marks, near_best, summary, to_latex, to_markdown
from tests.helpers import QUIET, TINY
from tests.helpers import marker_of as _marker_of


class Flaky(Explainer):
    """Keeps (nearly) every pixel: the best AD(100%) and Coherency there are, but raises on the
    images other than 'chelsea' and 'rocket' while ``BROKEN``; one forward per map (declared)."""

    name = "flaky"
    defaults: dict = {}
    BROKEN = True
    works_on = ()

    def forward_passes(self, model):
        return 1

    def _explain(self, model, x, y):
        if Flaky.BROKEN and not all(float(v) in Flaky.works_on for v in x[:, 0, 0, 0]):
            raise RuntimeError("flaky on purpose")
        V = torch.ones(x.shape[0], *x.shape[-2:])
        V[:, -1, -1] = 0.0  # not the pixel the marker is read from (ADCC explains x * V)
        return V


@pytest.fixture
def flaky(monkeypatch):
    monkeypatch.setattr(EXPLAINERS, "_items", dict(EXPLAINERS._items))
    camzoo.register_explainer(Flaky)
    monkeypatch.setattr(Flaky, "BROKEN", True)
    monkeypatch.setattr(Flaky, "works_on", (_marker_of("chelsea"), _marker_of("rocket")))


def _line(text: str, method: str) -> str:
    return [ln for ln in text.splitlines() if ln.startswith((f"| {method} |", f"{method} &"))][0]


def test_a_method_with_fewer_images_is_never_marked_and_retries_count_clean_forwards_once(tmp_path, flaky):
    out = str(tmp_path / "run")
    cfg = dict(backbone=TINY, weights="random", methods="flaky,gradcam", metrics="lcam,adcc",
               batch_size=1, max_failed_batches=10, out=out, **QUIET)
    r = run(BenchConfig(**cfg), echo=lambda s: None)
    rows = r.rows()
    assert len(rows[rows.method == "flaky"]) == 2 and len(rows[rows.method == "gradcam"]) == 6
    assert len(r.failures()) == 4
    t = summary(r)
    mk, nb = marks(t), near_best(t)
    assert set(mk.loc["flaky"]) == {""} and not nb.loc["flaky"].any()
    md, tex = to_markdown(t), to_latex(t)
    assert "**" not in _line(md, "flaky") and "<u>" not in _line(md, "flaky") and "≈" not in _line(md, "flaky")
    assert "\\mathbf" not in _line(tex, "flaky") and "\\underline" not in _line(tex, "flaky")
    assert "approx" not in _line(tex, "flaky")
    assert "flaky: values on 2 of 6 images; not ranked" in md
    assert "flaky: values on 2 of 6 images; not ranked" in tex
    assert "**" in _line(md, "gradcam")  # the others are still ranked
    # the first run: one clean forward per image; flaky's map forwards only where it succeeded
    fw = {(m, f): n for m, f, n in r.forwards().itertuples(index=False)}
    assert fw[("*", "clean")] == 6 and fw[("flaky", "explain")] == 2 and fw[("gradcam", "explain")] == 6
    r.close()

    # fixed: the resume retries flaky's 4 failed images (their clean forward is made again,
    # but counted once)
    Flaky.BROKEN = False
    r = run(BenchConfig(**{**cfg, "resume": True}), echo=lambda s: None)
    assert len(r.rows()) == 12 and not len(r.failures())
    fw = {(m, f): n for m, f, n in r.forwards().itertuples(index=False)}
    assert fw[("*", "clean")] == 6  # not 6 + 4
    # flaky and gradcam: 6 images each, 1 forward per map, the same protocols
    assert fw[("flaky", "explain")] == fw[("gradcam", "explain")] == 6
    assert {f: n for (m, f), n in fw.items() if m == "flaky"} == {f: n for (m, f), n in fw.items() if m == "gradcam"}
    t = summary(r)
    assert "not ranked" not in to_markdown(t)
    assert "**" in _line(to_markdown(t), "flaky")  # all its images: ranked (AD(100%) is 0)
    r.close()
