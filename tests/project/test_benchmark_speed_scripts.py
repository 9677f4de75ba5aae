"""The speed benchmarks run on CPU and print their figures (their own file so that pytest-xdist's
``--dist loadfile`` runs them beside, not after, the recipe benchmark in test_benchmarks.py).
Nothing here times anything: the timeouts only guard against a hung subprocess."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from helpers import HANG_GUARD_S, REPO


def test_metrics_speed_smoke_on_cpu():
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "metrics_speed.py"), "--device", "cpu",
                           "--pairs", "2", "--naive-pairs", "2", "--sizes", "64"],
                          capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert proc.returncode == 0, proc.stderr
    assert "64px: suite 2 pairs" in proc.stdout and "speed-up" in proc.stdout


def test_metrics_speed_default_suite_smoke_on_cpu(default_suite_weights):
    """--suite default scores demo pairs with the harness's own networks (fetched weights)."""
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "metrics_speed.py"), "--suite", "default",
                           "--device", "cpu", "--pairs", "4", "--batch", "4"],
                          capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert proc.returncode == 0, proc.stderr
    assert "default suite (identity_sface, pose_whenet, expression_blendshapes, fid) on cpu: 4 pairs" in proc.stdout


@pytest.mark.parametrize("script, args, expect", [
    ("stage1_speed.py", ["--configs", "tiny,fast", "--resolution", "64", "--perceptual", "none"], "fast"),
    ("stage2_speed.py", ["--config", "tiny", "--resolution", "64", "--layers", "1", "--heads", "2",
                         "--selector-hidden", "32", "--identity", "random", "--perceptual", "none"], "full"),
])
def test_training_speed_scripts_run_a_real_step_on_cpu(script, args, expect, tmp_path):
    out = tmp_path / "figures.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), "--device", "cpu", "--batch-size", "2",
                           "--steps", "1", "--warmup", "1", "--precision", "fp32", "--json", str(out), *args],
                          capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(out.read_text())["results"][expect]
    assert results["images_per_s"] > 0 and results["ms_per_step"] > 0
    flops = results.get("train_gflops_per_image", results.get("step_gflops_per_pair"))
    assert flops > 0
    if script == "stage1_speed.py":  # one row per config, each in its own process, naming its settings
        rows = json.loads(out.read_text())["results"]
        assert sorted(rows) == ["fast", "tiny"] and rows["tiny"]["params_g_M"] < rows["fast"]["params_g_M"]
        assert all(r["settings"].startswith("fp32 sdpa fused-adam ckpt0 eager") and r["peak_mem_GiB"] > 0
                   for r in rows.values())
        assert "fast vs codeformer" not in proc.stdout and "settings" in proc.stdout
