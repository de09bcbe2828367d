"""ROAD on the paper's scale (issue 24): the accuracy of the imputed images (the authors'
``road/road.py`` ``run_road`` -> ``res_acc``: the fraction still classified as their class),
stored beside the probability of ``c`` from the same forwards; the table shows the accuracy
unless ``road.scale`` asks for the probability; runs stored before the accuracy keys existed
keep their layout (read and resumed)."""
import json
import sqlite3

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from camzoo.bench import Run
from camzoo.cli import main
from camzoo.metrics.protocol import PROTOCOLS, MetricInputs, table_metrics
from camzoo.metrics.road.curves import road_curves
from camzoo.metrics.scorer import Scorer
from camzoo.results.store import ResultStore

from ..conftest import SAMPLES

ACC_VALUES = ["road_acc_morf", "road_acc_lerf", "road_acc"]
ACC_CURVES = ["road_acc_morf_curve", "road_acc_lerf_curve"]
PROB_VALUES = ["road_morf", "road_lerf", "road"]
PROB_CURVES = ["road_morf_curve", "road_lerf_curve"]
T, S = 1e-6, 1e6  # the stub's threshold and logit scale


class _LeftHalfIntact(nn.Module):
    """A classifier whose top-1 the test controls: class 1 while the left half of the image is
    untouched (every value 0.5), class 0 once imputed pixels (noise 0.01) fall there.

    logits = S * [e, T] with ``e`` the mean squared deviation from 0.5 over the left half: 0
    exactly while no pixel there is removed (ROAD keeps kept pixels bit for bit; the imputation
    of a constant image is that constant), about 1e-4 * (removed share of the half) otherwise.
    So an intact image scores softmax [0.269, 0.731] and a damaged one about [1, 0].
    Counts the images it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.one = nn.Parameter(torch.ones(()))
        self.seen = 0

    def forward(self, x):
        self.seen += x.shape[0]
        e = ((x[..., : x.shape[-1] // 2] - 0.5) ** 2).mean(dim=(1, 2, 3))
        return torch.stack([e, torch.full_like(e, T)], 1) * S * self.one


def _identity(z):
    return z


# three 16x16 gray images; image 0 and 2: map high on the left half, image 1 on the right half;
# classes: 1 (the clean top-1) for images 0 and 1, 0 (not the clean top-1) for image 2
H = W = 16
FR = (0.25, 0.5, 0.75)  # 64, 128, 192 of 256 pixels removed
C = torch.tensor([1, 1, 0])


def _inputs(model, eval_batch_size=4):
    x01 = torch.full((3, 3, H, W), 0.5)
    V = torch.zeros(3, H, W)
    V[0, :, : W // 2] = V[2, :, : W // 2] = 1.0
    V[1, :, W // 2:] = 1.0
    sc = Scorer(model, eval_batch_size)
    return sc, MetricInputs(sc, x01, V, C, torch.full((3,), 0.731), _identity, _identity, x01=x01)


# which imputed images keep the top-1 class 1 (left half intact), per fraction:
# MoRF removes the high half first, LeRF the low half; the left half is hit when it is removed
INTACT = {("morf", 0): [0, 0, 0], ("lerf", 0): [1, 1, 0],   # map on the left
          ("morf", 1): [1, 1, 0], ("lerf", 1): [0, 0, 0],   # map on the right
          ("morf", 2): [0, 0, 0], ("lerf", 2): [1, 1, 0]}   # as image 0


def _expected_acc(order, i):
    top1 = torch.tensor(INTACT[(order, i)], dtype=torch.float32)  # top-1 is 1 where intact
    return top1 if int(C[i]) == 1 else 1 - top1


def test_scorer_hits_come_from_the_same_forward():
    model = _LeftHalfIntact()
    sc = Scorer(model, eval_batch_size=2)
    x = torch.full((5, 3, 8, 8), 0.5)
    x[1, :, :, :2] += 0.05  # left half damaged: top-1 is 0
    x[3, :, :, :2] -= 0.05
    c = torch.tensor([1, 1, 0, 0, 1])
    p = sc.probs(x, c, "f")
    assert sc.counts["f"] == 5 and model.seen == 5
    p2, hits = sc.probs(x, c, "f", hits=True)
    assert sc.counts["f"] == 10 and model.seen == 10  # one forward per image, hits or not
    assert torch.equal(p, p2) and hits.dtype == torch.bool
    assert hits.tolist() == [True, False, False, True, True]  # argmax == c
    torch.testing.assert_close(p[[0, 4]], torch.full((2,), 0.7311), atol=1e-4, rtol=0)
    ps, hs = sc.probs_stream(iter([(x[:3], c[:3]), (x[3:], c[3:])]), "g", hits=True)
    assert torch.equal(ps, p) and torch.equal(hs, hits) and sc.counts["g"] == 5
    assert torch.equal(sc.probs_stream(iter([(x, c)]), "g"), p)
    e, eh = sc.probs(x[:0], c[:0], "f", hits=True)
    assert e.shape == eh.shape == (0,) and eh.dtype == torch.bool
    e, eh = sc.probs_stream(iter([]), "g", hits=True)
    assert e.shape == eh.shape == (0,)


def test_accuracy_curves_by_hand_from_the_probability_forwards():
    model = _LeftHalfIntact()
    sc, inp = _inputs(model)
    cur = road_curves(sc, inp.x01, inp.V, C, _identity, fractions=FR)
    assert sc.counts["road"] == model.seen == 2 * 3 * len(FR)  # no forward for the accuracy
    for order in ("morf", "lerf"):
        for i in range(3):
            assert torch.equal(cur[order + "_acc"][i], _expected_acc(order, i)), (order, i)
            # the probability of c from the same forwards: 0.731 / ~0 for class 1, 0.269 / ~1 for 0
            intact = torch.tensor(INTACT[(order, i)], dtype=torch.bool)
            want = torch.where(intact, torch.tensor(0.7311), torch.tensor(0.0))
            want = want if int(C[i]) == 1 else torch.where(intact, 1 - want, torch.tensor(1.0))
            torch.testing.assert_close(cur[order][i], want, atol=1e-4, rtol=0)


def test_protocol_stores_both_scales_and_shows_the_accuracy():
    model = _LeftHalfIntact()
    sc, inp = _inputs(model, eval_batch_size=5)
    proto = PROTOCOLS.get("road")
    rows = proto.evaluate(inp, fractions=FR)
    assert list(rows) and set(rows) == set(proto.row_keys()) | set(proto.curve_keys())
    assert proto.row_keys() == ACC_VALUES + PROB_VALUES and proto.curve_keys() == ACC_CURVES + PROB_CURVES
    assert sc.counts["road"] == model.seen == 18  # 2 orders x 3 fractions x 3 images, as before
    for order in ("morf", "lerf"):
        curve = rows[f"road_acc_{order}_curve"]
        assert set(curve.unique().tolist()) <= {0.0, 1.0} and curve.shape == (3, 3)
        for i in range(3):
            assert torch.equal(curve[i], _expected_acc(order, i))
    # the means by hand: image 0 keeps class 1 in LeRF 2 of 3 times, never in MoRF, ...
    torch.testing.assert_close(rows["road_acc_morf"], torch.tensor([0.0, 2 / 3, 1.0]))
    torch.testing.assert_close(rows["road_acc_lerf"], torch.tensor([2 / 3, 0.0, 1 / 3]))
    torch.testing.assert_close(rows["road_acc"], torch.tensor([1 / 3, -1 / 3, -1 / 3]))
    # the probability keys hold the probability of c, as before
    torch.testing.assert_close(rows["road_morf"], rows["road_morf_curve"].mean(1))
    torch.testing.assert_close(rows["road"], (rows["road_lerf"] - rows["road_morf"]) / 2)
    torch.testing.assert_close(rows["road_lerf"][0], torch.tensor(2 * 0.7311 / 3), atol=1e-4, rtol=0)

    # the table: the paper's accuracy by default; the probability with scale=probability|both
    def headers(**o):
        return [(s.header, s.key) for s in table_metrics(["road"], {"road": o} if o else None)]

    acc = [("ROAD-MoRF\u2193", "road_acc_morf"), ("ROAD-LeRF\u2191", "road_acc_lerf"), ("ROAD\u2191", "road_acc")]
    prob = [("ROAD-MoRF(p)\u2193", "road_morf"), ("ROAD-LeRF(p)\u2191", "road_lerf"), ("ROAD(p)\u2191", "road")]
    assert headers() == headers(scale="accuracy") == acc
    assert headers(scale="probability") == prob and headers(scale="both") == acc + prob
    assert all(s.scale == 100.0 for s in table_metrics(["road"], include_hidden=True))
    # scale picks columns only: the stored keys, the values and the identity do not change
    for scale in ("accuracy", "probability", "both"):
        assert proto.row_keys(scale=scale) == ACC_VALUES + PROB_VALUES
        assert proto.curve_keys(scale=scale) == ACC_CURVES + PROB_CURVES
        assert [s.key for s in table_metrics(["road"], {"road": {"scale": scale}}, include_hidden=True)] \
            == ACC_VALUES + PROB_VALUES
    assert "scale" in proto.runtime_options and "accuracy" not in proto.runtime_options
    again = proto.evaluate(_inputs(model)[1], fractions=FR, scale="probability")
    assert all(torch.equal(again[k], v) for k, v in rows.items())
    with pytest.raises(ValueError, match="scale must be one of accuracy, probability, both"):
        proto.options(scale="logit")


def test_a_layout_stored_before_the_accuracy_keys_is_kept(tmp_path):
    """Runs stored before the accuracy keys hold the probability keys only; their config.json
    options lack ``accuracy``, which :meth:`stored_options` reads as ``False``: that layout."""
    proto = PROTOCOLS.get("road")
    stored = {"fractions": list(FR), "noise": 0.01, "tie_noise": 1e-4, "seed": 0, "tol": 1e-6,
              "solve_batch": None}  # a road run's options before issue 24
    was = proto.stored_options(stored)
    assert was == {**stored, "accuracy": False} and proto.stored_options(proto.options()) == proto.options()
    assert proto.row_keys(**was) == PROB_VALUES and proto.curve_keys(**was) == PROB_CURVES
    for scale in ("accuracy", "probability", "both"):  # only the probability exists: shown
        assert [(s.key, s.column, s.in_table) for s in proto.metrics(**was, scale=scale)] == [
            ("road_morf", "ROAD-MoRF(p)", True), ("road_lerf", "ROAD-LeRF(p)", True), ("road", "ROAD(p)", True)]
    model = _LeftHalfIntact()
    sc, inp = _inputs(model)
    old = proto.evaluate(inp, **was)
    assert sorted(old) == sorted(PROB_VALUES + PROB_CURVES) and sc.counts["road"] == 18
    new = proto.evaluate(_inputs(model)[1], fractions=FR)
    assert all(torch.equal(old[k], new[k]) for k in old)
    # the store: such a layout opens with the stored options; today's default layout is refused
    # (which is why a resumed old run must compute with accuracy=False)
    path = str(tmp_path / "rows.sqlite")
    legacy = {"road": {"values": proto.row_keys(**was), "curves": proto.curve_keys(**was)}}
    ResultStore(path, protocols=legacy).close()
    with ResultStore(path, protocols=legacy) as st:
        assert st.value_columns == PROB_VALUES and st.curve_columns == PROB_CURVES
    with pytest.raises(ValueError, match="protocol road: the store holds"):
        ResultStore(path, protocols={"road": {"values": proto.row_keys(), "curves": proto.curve_keys()}})


# -- runs on the command line: a tiny CNN (1000 classes) on random weights, three photos ----------
TINY = "py:tests.helpers:tiny1000"  # ImageNet labels are classes of it
COMMON = ["--backbone", TINY, "--weights", "random", "--data", SAMPLES, "--limit", "3", "--methods",
          "gradcam,fakecam", "--batch-size", "2", "--no-progress", "--no-figures", "--metrics", "road",
          "--metric-opt", "road.fractions=0.25,0.5"]


def _bench(*args):
    return CliRunner().invoke(main, ["bench", *args], catch_exceptions=False)


def _rows(out):
    with Run(str(out)) as r:
        return r.rows(curves=True).sort_values(["method", "idx"]).reset_index(drop=True)


def test_a_new_run_stores_both_and_resumes_with_another_scale(tmp_path):
    out = tmp_path / "new"
    res = _bench(*COMMON, "--out", str(out))
    assert res.exit_code == 0, res.output
    assert "ROAD-MoRF\u2193" in res.output and "ROAD\u2191" in res.output and "(p)" not in res.output
    rows = _rows(out)
    assert all(k in rows.columns for k in ACC_VALUES + PROB_VALUES + ACC_CURVES + PROB_CURVES)
    for order in ("morf", "lerf"):
        curves = np.stack(rows[f"road_acc_{order}_curve"])
        assert curves.shape == (6, 2) and set(np.unique(curves)) <= {0.0, 1.0}
        np.testing.assert_allclose(rows[f"road_acc_{order}"], curves.mean(1), atol=1e-7)
    with Run(str(out)) as r:
        fw = r.forwards()
    assert int(fw[fw.family == "road"].forwards.sum()) == 6 * 2 * 2  # no forward for accuracy
    # scale is no part of the identity: a resume shows the probability too, values unchanged
    res = _bench("--resume", "--out", str(out), "--no-progress", "--no-figures",
                 "--metric-opt", "road.scale=both")
    assert res.exit_code == 0, res.output
    assert "ROAD-MoRF(p)\u2193" in res.output and "ROAD-MoRF\u2193" in res.output
    after = _rows(out)
    for k in ACC_VALUES + PROB_VALUES:
        np.testing.assert_array_equal(after[k], rows[k])
    with Run(str(out)) as r:
        assert [s.column for s in r.specs()] == ["ROAD-MoRF", "ROAD-LeRF", "ROAD", "ROAD-MoRF(p)",
                                                 "ROAD-LeRF(p)", "ROAD(p)"]


def test_a_run_stored_before_the_accuracy_keys_reads_and_resumes(tmp_path):
    out = tmp_path / "old"
    # the probability-only layout, then config.json as the code before issue 24 wrote it
    res = _bench(*COMMON, "--metric-opt", "road.accuracy=false", "--out", str(out))
    assert res.exit_code == 0, res.output
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["columns"]["values"] == PROB_VALUES and cfg["columns"]["curves"] == PROB_CURVES
    del cfg["protocols"]["road"]["options"]["accuracy"], cfg["protocols"]["road"]["options"]["scale"]
    del cfg["bench_config"]["metric_options"]["road"]["accuracy"]
    (out / "config.json").write_text(json.dumps(cfg))
    before = _rows(out)
    # its table: the probability columns it holds, named as such
    res = CliRunner().invoke(main, ["table", str(out)])
    assert res.exit_code == 0, res.output
    assert "ROAD-MoRF(p)\u2193" in res.output and "ROAD-MoRF\u2193" not in res.output
    with Run(str(out)) as r:
        assert [s.key for s in r.specs()] == PROB_VALUES
        table = r.table()
        road = ["ROAD-MoRF(p)\u2193", "ROAD-LeRF(p)\u2191", "ROAD(p)\u2191"]
        assert list(table.columns[:3]) == road and len(table) == 2 and table[road].notna().all().all()
    # it resumes with its layout: the missing image computed, the stored rows kept
    con = sqlite3.connect(out / "rows.sqlite")
    con.execute("DELETE FROM rows WHERE idx >= 1")
    con.commit()
    con.close()
    res = _bench("--resume", "--out", str(out), "--no-progress", "--no-figures")
    assert res.exit_code == 0, res.output
    after = _rows(out)
    assert list(after.columns) == list(before.columns) and len(after) == 6
    for k in PROB_VALUES:
        np.testing.assert_allclose(after[k], before[k], atol=1e-6, rtol=0)
    assert json.loads((out / "config.json").read_text())["protocols"]["road"]["options"]["accuracy"] is False
    # asking it for the accuracy keys is another run
    res = _bench("--resume", "--out", str(out), "--no-progress", "--no-figures",
                 "--metric-opt", "road.accuracy=true")
    assert res.exit_code != 0 and "protocols.road.accuracy" in res.output, res.output
