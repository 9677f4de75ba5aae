"""The Python API (``from harness import evaluate, load_results``), results.json, the
``--json`` listings and what a run tells MLflow."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner


@pytest.fixture(scope="module")
def api_run(tmp_path_factory):
    from harness import evaluate

    out = tmp_path_factory.mktemp("api")
    lines: list[str] = []
    res = evaluate("demo", ["source", "target"], out=out, device="cpu", mlflow=False, report=False,
                   progress=False, log=lines.append)
    return out, res, lines


def test_to_pandas_has_one_row_per_method_and_metric_key(api_run):
    _, res, _ = api_run
    frame = res.to_pandas()
    keys = list(res.summaries[0]["metrics"])
    assert len(keys) >= 5
    assert len(frame) == 2 * len(keys)
    assert list(frame.columns) == ["method", "protocol", "metric", "label", "value", "ci_low", "ci_high", "n",
                                   "unit", "higher_is_better", "backend"]
    for s in res.summaries:
        for key, e in s["metrics"].items():
            row = frame[(frame["method"] == s["method"]) & (frame["metric"] == key)]
            assert len(row) == 1
            row = row.iloc[0]
            assert row["protocol"] == "demo" and row["label"] == e["label"] and row["backend"] == e["backend"]
            np.testing.assert_equal(row["value"], e["value"])
            assert row["n"] == e["n"] and bool(row["higher_is_better"]) == e["higher_is_better"]
    # the source image as the swap retrieves its own identity every time
    src = frame[(frame["method"] == "source") & (frame["metric"] == "id_retrieval_top1_sface")]
    assert src["value"].iloc[0] == 1.0


def test_pairs_is_the_per_pair_frame(api_run):
    _, res, _ = api_run
    pairs = res.pairs("source")
    assert len(pairs) == 28 and pairs["pair_id"].is_unique
    key = "id_retrieval_top1_sface"
    np.testing.assert_allclose(np.nanmean(pairs[key]), res.summary("source")["metrics"][key]["value"])
    with pytest.raises(Exception, match="no method 'simswap'"):
        res.pairs("simswap")


def test_results_json_is_written_and_loads_back_equal(api_run):
    from harness import load_results

    out, res, lines = api_run
    latest = out / "results.json"
    data = json.loads(latest.read_text())
    assert data["format"] == "codeswap-harness-results" and data["protocol"] == "demo"
    assert data["methods"] == ["source", "target"] and len(data["manifest_sha256"]) == 64
    assert data["seed"] == 0 and data["settings"]["batch_size"] == 16
    assert "git_commit" in data["environment"] and "torch" in data["environment"]["packages"]
    assert len(data["results"]) == len(res.to_pandas())
    assert res.path.parent == out / "results" and json.loads(res.path.read_text()) == data
    assert any(str(res.path) in line for line in lines)

    loaded = load_results(out)
    pd.testing.assert_frame_equal(loaded.to_pandas(), res.to_pandas())
    assert json.dumps(loaded.summaries) == json.dumps(res.summaries)
    assert loaded.settings == res.settings and loaded.manifest_sha256 == res.manifest_sha256
    pd.testing.assert_frame_equal(loaded.pairs("target"), res.pairs("target"))


def test_load_results_says_what_is_missing(tmp_path):
    from faceeval.errors import HarnessError
    from harness import load_results

    with pytest.raises(HarnessError, match="no results in"):
        load_results(tmp_path)
    (tmp_path / "results.json").write_text("{}")
    with pytest.raises(HarnessError, match="not a codeswap-harness-results file"):
        load_results(tmp_path)


def test_report_renders_for_the_out_folder(api_run, tmp_path):
    _, res, _ = api_run
    files = res.report(tmp_path / "copy")
    assert (tmp_path / "copy" / "table1.md").read_text().count("*source*") == 1
    assert all(p.is_file() for p in files.values())


def test_evaluate_defaults_match_harness_run():
    import inspect

    from harness.cli import run
    from harness.evaluation import evaluate
    from harness.settings import RunSettings

    # evaluate() declares no default: its keywords are RunSettings' fields (tests/harness/test_run_settings.py)
    assert [p.kind for p in inspect.signature(evaluate).parameters.values()][-1] is inspect.Parameter.VAR_KEYWORD
    cli = inspect.signature(run).parameters
    for name in ("seed", "num_pairs", "device", "batch_size", "out", "save_images", "mlflow", "tracking_uri",
                 "report", "progress", "weights_dir", "root"):
        assert cli[name].default == getattr(RunSettings, name), name


def test_list_and_weights_json():
    from harness.cli import app

    runner = CliRunner()
    for what, known in (("methods", "source"), ("protocols", "demo"), ("metrics", "identity")):
        r = runner.invoke(app, ["list", what, "--json"])
        assert r.exit_code == 0, r.output
        rows = json.loads(r.stdout)
        names = [row["name"] for row in rows]
        assert known in names
        assert all(row["ready"] == (not row["weights_missing"]) for row in rows)
    r = runner.invoke(app, ["weights", "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    by_name = {f["name"]: f for f in data["files"]}
    dlib = by_name["dlib_face_recognition_resnet_model_v1.dat"]
    assert dlib["state"] == "present" and dlib["sha256"].startswith("55533b28") and Path(dlib["path"]).is_file()
    assert all(f["state"] in ("present", "present (no pinned sha256)", "missing", "WRONG-SHA") for f in data["files"])


def _in_git_checkout() -> bool:
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True)
    return proc.returncode == 0


def test_mlflow_parent_run_has_the_manifest_dataset_and_git_tag(tmp_path):
    from mlflow.tracking import MlflowClient

    from harness import evaluate

    res = evaluate("demo", ["source"], out=tmp_path, device="cpu", metrics=["identity"], report=False,
                   progress=False, log=lambda _: None)
    client = MlflowClient(tracking_uri=res.tracking_uri)
    exp = client.get_experiment_by_name("codeswap-harness")
    parent = client.search_runs([exp.experiment_id], filter_string="params.methods = 'source'")[0]
    inputs = parent.inputs.dataset_inputs
    assert len(inputs) == 1
    ds = inputs[0].dataset
    assert ds.name == "demo-manifest" and ds.digest == res.manifest_sha256[:16]
    assert json.loads(ds.profile)["num_rows"] == 28
    if _in_git_checkout():
        sha = parent.data.tags["mlflow.source.git.commit"]
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parents[2],
                              capture_output=True, text=True).stdout.strip()
        assert sha == head
