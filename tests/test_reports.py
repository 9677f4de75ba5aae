"""Table 1 rendering: directions, best/second marks, references unranked, run selection."""

from __future__ import annotations

from reports.tables import build_ablation_table, build_table, select_runs, to_csv, to_latex, to_markdown


def _summary(protocol, method, values, manifest="m1", finished="2026-01-01T00:00:00"):
    metrics = {
        "id_retrieval_top1": {"label": "ID retrieval top-1", "higher_is_better": True, "unit": "%", "scale": 100.0,
                              "metric": "identity", "backend": "b", "value": values[0], "ci_low": values[0] - 0.01,
                              "ci_high": values[0] + 0.01, "n": 10},
        "pose_error": {"label": "Pose error", "higher_is_better": False, "unit": "deg", "scale": 1.0,
                       "metric": "pose", "backend": "p", "value": values[1], "ci_low": None, "ci_high": None, "n": 10},
    }
    return {"protocol": protocol, "method": method, "metrics": metrics, "manifest_sha256": manifest,
            "gallery_sha256": "g", "finished": finished, "num_pairs": 10, "seed": 0, "resolution": 256,
            "confidence": 0.95, "bootstrap_resamples": 100, "notes": [],
            "backends": {"identity": {"name": "b", "description": "test id", "standard": False, "weights": []},
                         "pose": {"name": "p", "description": "test pose", "standard": True, "weights": []}}}


RUNS = [
    _summary("celebahq", "a", (0.90, 3.0)),
    _summary("celebahq", "b", (0.95, 2.0)),
    _summary("celebahq", "c", (0.50, 1.0)),
    _summary("celebahq", "source", (1.00, 9.0)),
    _summary("ffpp", "a", (0.70, 2.5)),
    _summary("ffpp", "b", (0.60, 2.6)),
]


def test_best_bold_second_underlined_respecting_direction():
    t = build_table(RUNS)
    assert t.protocols == ["celebahq", "ffpp"]
    assert t.methods == ["a", "b", "c", "source"]  # references last
    r = t.rank
    assert r[("b", "celebahq", "id_retrieval_top1")] == 1 and r[("a", "celebahq", "id_retrieval_top1")] == 2
    assert r[("c", "celebahq", "pose_error")] == 1 and r[("b", "celebahq", "pose_error")] == 2  # lower is better
    assert ("source", "celebahq", "id_retrieval_top1") not in r  # the bound is not ranked
    md = to_markdown(t)
    assert "| b | **95.0 ± 1.0** | <u>2.000</u> | <u>60.0 ± 1.0</u> |" in md
    assert "Pose error (deg) ↓" in md and "NON-STANDARD" in md
    tex = to_latex(t)
    assert r"\textbf{95.0 $\pm$ 1.0}" in tex and r"\multicolumn{2}{c}{celebahq}" in tex
    csv = to_csv(t).splitlines()
    assert csv[0].startswith("protocol,method,metric,value")
    assert len(csv) == 1 + 4 * 2 + 2 * 2


def test_only_runs_on_the_newest_manifest_are_reported():
    old = _summary("celebahq", "old_method", (0.99, 0.5), manifest="m0", finished="2025-01-01T00:00:00")
    newer = _summary("celebahq", "a", (0.10, 5.0), finished="2026-06-01T00:00:00")
    chosen = select_runs([old, *RUNS, newer])
    methods = {(s["protocol"], s["method"]): s for s in chosen}
    assert ("celebahq", "old_method") not in methods
    assert methods[("celebahq", "a")]["metrics"]["id_retrieval_top1"]["value"] == 0.10


def test_table3_lists_the_ablations_in_the_papers_order_on_celebahq():
    runs = [_summary("demo", "codeswap_wo_c", (0.2, 1.0)), _summary("celebahq", "codeswap", (0.9, 1.0)),
            _summary("celebahq", "codeswap_wo_q1", (0.5, 2.0)), _summary("celebahq", "codeswap_wo_c", (0.4, 3.0)),
            _summary("celebahq", "target", (0.0, 0.0))]
    t = build_ablation_table(runs)
    assert t.protocols == ["celebahq"]
    assert t.methods == ["codeswap_wo_c", "codeswap_wo_q1", "codeswap"]
    md = to_markdown(t)
    rows = [line.split(" | ")[0] for line in md.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert rows == ["| w/o C", "| w/o Q1", "| Ours"]
    assert "**90.0 ± 1.0**" in md
    assert build_ablation_table([_summary("celebahq", "codeswap", (0.9, 1.0))]) is None
