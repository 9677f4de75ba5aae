"""End to end through the command line, as a user runs it."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from helpers import harness_cli


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli")
    proc = harness_cli("run", "--protocol", "demo", "--method", "source", "--method", "target", "--out", str(out),
                       "--device", "cpu", check=True)
    return out, proc


def test_demo_run_writes_report_runs_and_mlflow(demo_run):
    out, proc = demo_run
    lines = proc.stdout.strip().splitlines()
    assert "demo: 2 methods, 95 % CI shown as ±" in lines[0]  # the summary table comes first
    assert f"report: {out / 'report' / 'table1.md'}" in lines
    assert lines[-1].startswith(f"mlflow: sqlite:///{out / 'mlflow.db'}")
    for name in ("table1.md", "table1.tex", "table1.csv", "grid_demo.png"):
        assert (out / "report" / name).stat().st_size > 0
    md = (out / "report" / "table1.md").read_text()
    assert "ID retrieval top-1 [sface] (%) ↑" in md and "sface_2021dec" in md and "NON-STANDARD" in md
    assert "inception_v3_tf2015" in md and "whenet_effnetb0" in md and "mediapipe_blendshapes_52" in md
    tex = (out / "report" / "table1.tex").read_text()
    assert r"\toprule" in tex and r"\bottomrule" in tex and r"$\uparrow$" in tex

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    exp = client.get_experiment_by_name("codeswap-harness")
    runs = client.search_runs([exp.experiment_id], filter_string="tags.method = 'source'")
    assert len(runs) == 1
    r = runs[0]
    assert r.data.metrics["id_retrieval_top1_sface"] == 1.0
    assert r.data.params["protocol"] == "demo" and len(r.data.params["manifest_sha256"]) == 64
    assert r.data.params["weights.face_recognition_sface_2021dec_int8bq.onnx"].startswith("fb143eea")
    assert r.data.params["weights.WHENet.h5"].startswith("8f8bcf92")
    assert "pkg.torch" in r.data.params and "git_commit" in r.data.params
    artifacts = [a.path for a in client.list_artifacts(r.info.run_id, "run")]
    assert "run/pairs.parquet" in artifacts and "run/summary.json" in artifacts
    parent = client.search_runs([exp.experiment_id], filter_string="params.methods = 'source,target'")[0]
    assert "report/index.html" in [a.path for a in client.list_artifacts(parent.info.run_id, "report")]


def test_rerun_is_served_from_cache_with_identical_numbers(demo_run):
    out, _ = demo_run
    before = pd.read_csv(out / "report" / "table1.csv")
    proc = harness_cli("run", "--protocol", "demo", "--method", "source", "--method", "target", "--out", str(out),
                       check=True)
    assert "0 swapped, 28 cached" in proc.stderr
    after = pd.read_csv(out / "report" / "table1.csv")
    pd.testing.assert_frame_equal(before, after)


def test_report_command_renders_existing_runs(demo_run):
    out, _ = demo_run
    proc = harness_cli("report", "--out", str(out), check=True)
    assert "### Table 1" in proc.stdout and "*source*" in proc.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "-p", "demo", "-m", "sorce"], "error: unknown method 'sorce'; did you mean 'source'?"),
        (["run", "-p", "dmeo", "-m", "source"], "error: unknown protocol 'dmeo'; did you mean 'demo'?"),
        (["run", "-p", "folder", "-m", "source"], "error: protocol 'folder' needs --root"),
        (["run", "-p", "folder", "--root", "/nonexistent/photos", "-m", "source"],
         "error: folder not found: /nonexistent/photos"),
        (["list", "method"], "error: cannot list 'method'; did you mean 'methods'?"),
        (["figure", "regions", "--source", __file__, "--target", __file__, "--regions", "eyes,ears"],
         "error: --regions 'eyes,ears': choose from eyes, mouth, nose"),
        (["figure", "regions", "--source", "/nonexistent.png", "--target", __file__],
         "error: image not found: /nonexistent.png"),
    ],
)
def test_errors_are_one_line_with_exit_code_1(args, message, tmp_path):
    proc = harness_cli(*args, "--out", str(tmp_path)) if args[0] == "run" else harness_cli(*args)
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith(message)
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "Traceback" not in proc.stderr


def test_list_shows_readiness():
    proc = harness_cli("list", "methods", check=True)
    assert any(line.startswith("source") and "ready" in line for line in proc.stdout.splitlines())


def test_folder_protocol_on_photos_the_demo_never_saw(demo_photos: Path, tmp_path):
    proc = harness_cli("run", "--protocol", "folder", "--root", str(demo_photos), "--method", "source",
                       "--method", "target", "--out", str(tmp_path), "--no-mlflow", check=True)
    assert "6 photos: 4 aligned, 2 skipped" in proc.stderr
    summary_rows = pd.read_csv(tmp_path / "report" / "table1.csv")
    top1 = summary_rows.set_index(["method", "metric"])["value"]
    assert top1[("source", "id_retrieval_top1_sface")] == 1.0
    assert top1[("target", "id_retrieval_top1_sface")] == 0.0
    skipped = next((tmp_path / "cache" / "crops").glob("folder-*/skipped.csv")).read_text()
    assert "broken.jpg,unreadable" in skipped and "noise.png,no_face" in skipped
    md = (tmp_path / "report" / "table1.md").read_text()
    assert "2 skipped" in md


def test_method_all_takes_every_runnable_method(monkeypatch, tmp_path):
    from harness.evaluation import expand_methods

    monkeypatch.setenv("HARNESS_WEIGHTS_DIR", str(tmp_path))  # an empty weights folder
    said = []
    chosen = expand_methods(["all"], log=said.append)
    assert {"source", "target", "classical", "codeswap", "codeswap_wo_m"} <= set(chosen)
    assert "precomputed" not in chosen  # needs a folder of outputs: run it by name
    assert "inswapper_128" not in chosen  # its weights are missing
    # ablations the shipped demo model lacks would train for long on first use: skipped, named
    assert "codeswap_wo_c" not in chosen
    assert any(line.startswith("skipping codeswap_wo_c (not in the shipped demo model") for line in said)
