"""The footer under a finished run's table: the model-independent baseline, methods identical
at the layer, few images, the next commands."""
from types import SimpleNamespace

import numpy as np
import pandas as pd

from camzoo.engine.footer import footer, identical_methods, model_independent
from camzoo.metrics.protocol import MetricSpec

SPECS = [MetricSpec("ad", "AD", False, 1.0, "test"), MetricSpec("ins", "Ins", True, 1.0, "test")]


def fake_run(values, n=6, preset="quick"):
    """A stand-in of a Run: ``values[method] = [(ad, ins)] * n`` rows."""
    rows = pd.DataFrame([{"method": m, "image_id": f"im{i}", "ad": v[i][0], "ins": v[i][1]}
                         for m, v in values.items() for i in range(n)])
    cfg = {"methods": {m: {"forward_passes": 0 if m == "fakecam" else 1} for m in values},
           "backbone": {"layer": "conv_head"}, "bench_config": {"preset": preset}}
    return SimpleNamespace(rows=lambda: rows, specs=lambda: SPECS, methods=list(values), config=cfg,
                           dir="results/run")


def test_identical_methods_to_float_rounding_only():
    rng = np.random.default_rng(0)
    base = [(float(a), float(b)) for a, b in rng.uniform(0, 100, (6, 2))]
    near = [(a * (1 + 2e-6), b) for a, b in base]  # float32 rounding of the same map
    other = [(a + 0.5, b) for a, b in base]
    run = fake_run({"gradcam": base, "xgradcam": near, "gradcam++": other})
    assert identical_methods(run) == [("gradcam", "xgradcam", 6)]
    assert model_independent(run) == []
    lines = footer(run)
    note = next(s for s in lines if "gradcam and xgradcam" in s)
    assert "not a bug" in note and "conv_head" in note and "Fu et al. 2020" in note


def test_one_image_in_common_is_not_enough():
    same = [(1.0, 2.0)]
    assert identical_methods(fake_run({"a": same, "b": same}, n=1)) == []


def test_footer_names_the_baseline_few_images_and_next_commands():
    rng = np.random.default_rng(1)
    run = fake_run({m: [tuple(r) for r in rng.uniform(0, 100, (6, 2))] for m in ("fakecam", "gradcam")})
    lines = footer(run, ["camzoo bench --preset full --dry-run"])
    assert lines[0].startswith("note: fakecam makes its maps without looking at the model")
    assert any(s.startswith("note: 6 images give wide intervals") for s in lines)
    nxt = lines.index("next:")
    assert lines[nxt + 1] == "  camzoo bench --preset full --dry-run"
    assert [s.split()[1] for s in lines[nxt + 2:]] == ["report", "stats", "table", "explain"]
    assert not any("wide intervals" in s for s in footer(fake_run(
        {"gradcam": [(float(i), 1.0) for i in range(40)]}, n=40)))
