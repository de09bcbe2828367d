"""The prepared GPU check's CPU parts (``benchmarks/gpu_check.sh OUT --cpu --quick``).

The check is one command for a lent GPU machine; its every step must already work here, so a
GPU session spends its minutes measuring, not debugging. This runs the whole script on the CPU
with its quick settings (tiny CNN, 2 photos) and checks each output file holds what the GPU run
will report. About 1.5 minutes on 2 cores.
"""
from __future__ import annotations

import json
import os
import subprocess

import pytest
from tests.conftest import REPO, SAMPLES


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir(SAMPLES), reason="needs ../shared/data/imagenet-samples")
def test_gpu_check_cpu_parts_run_and_write_every_result(tmp_path):
    out = tmp_path / "check"
    env = {**os.environ, "PYTHONPATH": REPO}
    proc = subprocess.run(["bash", os.path.join(REPO, "benchmarks", "gpu_check.sh"), str(out), "--cpu", "--quick"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=1500)
    summary = (out / "summary.md").read_text()
    log = (out / "log.txt").read_text() if (out / "log.txt").exists() else ""
    # the exit status is the number of failed steps
    assert proc.returncode == 0, summary + "\n" + log[-4000:]
    assert "0 step(s) failed" in summary
    for step in ("cuda tests", "throughput", "engine overhead", "Score-CAM vs pytorch-grad-cam",
                 "ROAD on the device", "bf16 vs fp32 agreement"):
        assert any(line.startswith(f"| {step}") and "| ok |" in line for line in summary.splitlines()), step
    # the CUDA tests were collected and skipped (no GPU here), not missing
    assert "skipped" in (out / "cuda_tests.txt").read_text()
    # throughput: a forward rate per batch size and precision, and per-method seconds
    tp = json.loads((out / "throughput.json").read_text())
    (name, res), = tp["backbones"].items()
    for prec in ("fp32", "bf16"):
        fwd = res["forward"][prec]
        assert fwd["best"] == max(fwd["rates"].values()) > 0
        assert str(fwd["best_batch"]) in fwd["rates"]
    assert res["engine"]["methods"] and all(v > 0 for v in res["engine"]["methods"].values())
    assert "| " in (out / "throughput.md").read_text()
    # engine overhead and the same-object Score-CAM comparison (maps agree with pytorch-grad-cam)
    assert "strict" in (out / "engine.txt").read_text()
    sc = (out / "scorecam.txt").read_text()
    assert "same nn.Module for both sides" in sc and "pytorch-grad-cam ScoreCAM" in sc
    diffs = [float(line.split()[-1]) for line in sc.splitlines() if line.startswith("camzoo grad-cam")]
    assert diffs and max(diffs) < 1e-4
    # ROAD on the device: camzoo's protocol against its forward limit, with the imputation share
    road = (out / "road.txt").read_text()
    assert "camzoo road" in road and "forward limit" in road and "imputation" in road
    # bf16 vs fp32: per-column differences of the same (method, image) rows, and the rankings
    ag = (out / "agreement.md").read_text()
    assert "mean abs diff" in ag and "| Y |" in ag and "ADCC" in ag
