"""Run records: a summary's metric entries are read and written by faceeval.summaries alone
(summary.json unchanged on disk), and how a metric is shown (direction arrow, digits, the
``value ± half CI`` cell) is written once there."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from faceeval.api import MetricKey
from faceeval.summaries import (
    BackendRecord,
    MetricEntry,
    RunSummary,
    arrow,
    cell,
    digits,
    load_summaries,
    portable_summary,
)

ROOT = Path(__file__).resolve().parents[2]

#: the three shapes the runner writes: a mean over pairs, an RMS aggregate, a dataset-level value
ENTRIES = {
    "id_retrieval_top1": {"label": "ID retrieval top-1", "higher_is_better": True, "unit": "%", "scale": 100.0,
                          "metric": "identity", "backend": "facenet", "value": 0.9375, "ci_low": 0.875,
                          "ci_high": 1.0, "n": 16},
    "pose_error": {"label": "Pose error", "higher_is_better": False, "unit": "deg", "scale": 1.0, "metric": "pose",
                   "backend": "whenet", "value": 3.25, "ci_low": 2.5, "ci_high": 4.0, "n": 15, "aggregate": "rms"},
    "fid": {"label": "FID", "higher_is_better": False, "unit": "", "scale": 1.0, "metric": "fid",
            "backend": "inception", "value": 0.0, "raw_value": -0.0001, "ci_low": None, "ci_high": None, "n": 16,
            "lower_bound": 0.0, "feature_dim": 2048},
    "expression_error": {"label": "Expression error", "higher_is_better": False, "unit": "", "scale": 1.0,
                         "metric": "expression", "backend": "b", "value": float("nan"), "ci_low": float("nan"),
                         "ci_high": float("nan"), "n": 0},
}


def _text(obj) -> str:
    return json.dumps(obj, indent=1, default=str) + "\n"  # as the runner writes summary.json


def test_metric_entries_round_trip_key_for_key():
    for key, stored in ENTRIES.items():
        entry = MetricEntry.from_dict(key, stored)
        assert _text(entry.to_dict()) == _text(stored)
        assert list(entry.to_dict()) == list(stored)  # the key order too
    unknown = dict(ENTRIES["pose_error"], added_later=[1, 2])
    assert MetricEntry.from_dict("pose_error", unknown).to_dict() == unknown  # kept, not dropped


def test_a_summary_read_and_written_again_is_the_same_file(tmp_path):
    out = tmp_path / "out"
    run_dir = out / "runs" / "demo" / "source-abc123"
    run_dir.mkdir(parents=True)
    entries = {k: MetricEntry.from_dict(k, e) for k, e in ENTRIES.items()}
    backend = BackendRecord("dlib_resnet_v1", "dlib ResNet, 128-d", False, (("w.dat", "0" * 64),))
    record = RunSummary(run_id="abc123", protocol="demo", method="source", metrics=entries, notes=["a note"],
                        backends={"identity": backend}, finished="2026-12-07T12:00:00.000001+00:00",
                        run_dir="runs/demo/source-abc123")
    stored = {**record.to_dict(), "run_dir_in_out": True}  # as the runner writes it (write_summary)
    assert stored["metrics"] == ENTRIES
    text = _text(stored)
    (run_dir / "summary.json").write_text(text)
    (summary,) = load_summaries(out)
    assert summary.run_dir == str(run_dir.resolve())
    assert list(summary.metrics) == list(entries) and summary.notes == ["a note"]
    assert summary.backends == {"identity": backend} and summary.backend_of(summary.metrics["fid"]) is None
    assert _text(portable_summary(summary.to_dict(), out)) == text
    # keys this harness does not know are kept, in place after the known ones
    unknown = RunSummary.from_dict({**stored, "future_field": [1, 2]})
    assert unknown.to_dict()["future_field"] == [1, 2]
    assert list(unknown.to_dict())[-2:] == ["run_dir_in_out", "future_field"]


def test_the_arrow_is_written_once():
    assert (arrow(True), arrow(False)) == ("↑", "↓")
    assert MetricKey("x", "X", True, "").arrow == arrow(True)
    assert MetricEntry.from_dict("pose_error", ENTRIES["pose_error"]).arrow == "↓"
    written = []
    for package in ("faceeval", "harness", "reports", "methods", "protocols", "codeswap"):
        for path in (ROOT / package).rglob("*.py"):
            if re.search(r"""["']↑["']\s+if\b|["']↓["']\s+if\b|\bif\b[^\n]*else\s+["'][↑↓]["']""", path.read_text()):
                written.append(path.relative_to(ROOT).as_posix())
    assert written == ["faceeval/summaries.py"]


def test_the_cell_format_and_digits_are_one_rule_for_console_and_tables():
    from harness.console import summary_table
    from harness.results import Results
    from reports.tables import build_table, to_markdown

    entries = {k: MetricEntry.from_dict(k, e) for k, e in ENTRIES.items()}
    assert [digits(k, e.unit) for k, e in entries.items()] == [1, 3, 2, 3]
    assert entries["id_retrieval_top1"].cell() == "93.8 ± 6.2"
    assert entries["pose_error"].cell() == "3.250 ± 0.750"
    assert entries["fid"].cell() == "0.00"  # dataset-level: no CI; clamped at its bound
    assert entries["expression_error"].cell() == "–" == cell(None)
    assert not math.isfinite(entries["expression_error"].value)

    summary = {"protocol": "demo", "method": "a", "metrics": ENTRIES, "manifest_sha256": "m", "gallery_sha256": "g",
               "finished": "2026-01-01T00:00:00", "num_pairs": 16, "seed": 0, "resolution": 256, "confidence": 0.95,
               "bootstrap_resamples": 100, "notes": [], "backends": {}, "run_dir": "/nowhere"}
    markdown = to_markdown(build_table([RunSummary.from_dict(summary)], frames={}))
    columns = summary_table(Results("demo", "m", Path("."), [RunSummary.from_dict(summary)])).columns
    for key, e in entries.items():
        assert f" {e.cell()} " in markdown, key
        if key in [c for c in summary["metrics"] if not c.startswith("id_retrieval_top5")]:
            shown = next(c for c in columns if c.header.startswith(e.label))
            assert list(shown.cells) == [e.cell()]
            assert e.arrow in shown.header
