"""Table 1 rendering: directions, best/second marks, references unranked, run selection."""

from __future__ import annotations

import numpy as np
import pandas as pd

from faceeval.summaries import RunSummary
from reports.ranking import RankRule, paired_pvalue, rank_methods
from reports.tables import build_ablation_table, build_table, select_runs, to_csv, to_latex, to_markdown


def _summary(protocol, method, values, manifest="m1", finished="2026-01-01T00:00:00"):
    metrics = {
        "id_retrieval_top1": {"label": "ID retrieval top-1", "higher_is_better": True, "unit": "%", "scale": 100.0,
                              "metric": "identity", "backend": "b", "value": values[0], "ci_low": values[0] - 0.01,
                              "ci_high": values[0] + 0.01, "n": 10},
        "pose_error": {"label": "Pose error", "higher_is_better": False, "unit": "deg", "scale": 1.0,
                       "metric": "pose", "backend": "p", "value": values[1], "ci_low": None, "ci_high": None, "n": 10},
    }
    return RunSummary.from_dict({"protocol": protocol, "method": method, "metrics": metrics,
                                 "manifest_sha256": manifest,
            "gallery_sha256": "g", "finished": finished, "num_pairs": 10, "seed": 0, "resolution": 256,
            "confidence": 0.95, "bootstrap_resamples": 100, "notes": [],
            "backends": {"identity": {"name": "b", "description": "test id", "standard": False, "weights": []},
                         "pose": {"name": "p", "description": "test pose", "standard": True, "weights": []}}})


RUNS = [
    _summary("celebahq", "a", (0.90, 3.0)),
    _summary("celebahq", "b", (0.95, 2.0)),
    _summary("celebahq", "c", (0.50, 1.0)),
    _summary("celebahq", "source", (1.00, 9.0)),
    _summary("ffpp", "a", (0.70, 2.5)),
    _summary("ffpp", "b", (0.60, 2.6)),
]


def _frames(runs, spread=0.001, n=10):
    """Per-pair values around each run's means; every method gets the same per-pair offsets,
    so differences between methods are constant over the pairs (clearly significant)."""
    offsets = spread * (np.arange(n) - (n - 1) / 2)
    return {(s.protocol, s.method): pd.DataFrame(
        {"pair_id": [f"{i:05d}" for i in range(n)],
         **{k: e.value + offsets for k, e in s.metrics.items()}}) for s in runs}


def test_best_bold_second_underlined_respecting_direction():
    t = build_table(RUNS, frames=_frames(RUNS))
    assert t.protocols == ["celebahq", "ffpp"]
    assert t.methods == ["a", "b", "c", "source"]  # references last
    r = t.rank
    assert r[("b", "celebahq", "id_retrieval_top1")] == 1 and r[("a", "celebahq", "id_retrieval_top1")] == 2
    assert r[("c", "celebahq", "pose_error")] == 1 and r[("b", "celebahq", "pose_error")] == 2  # lower is better
    assert ("source", "celebahq", "id_retrieval_top1") not in r  # the bound is not ranked
    md = to_markdown(t)
    # ffpp has two ranked methods: the second has no next method to differ from, so no underline
    assert "| b | **95.0 ± 1.0** | <u>2.000</u> | 60.0 ± 1.0 |" in md
    assert "paired sign-flip permutation test" in md
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
    methods = {(s.protocol, s.method): s for s in chosen}
    assert ("celebahq", "old_method") not in methods
    assert methods[("celebahq", "a")].metrics["id_retrieval_top1"].value == 0.10


def test_table3_lists_the_ablations_in_the_papers_order_on_celebahq():
    runs = [_summary("demo", "codeswap_wo_c", (0.2, 1.0)), _summary("celebahq", "codeswap", (0.9, 1.0)),
            _summary("celebahq", "codeswap_wo_q1", (0.5, 2.0)), _summary("celebahq", "codeswap_wo_c", (0.4, 3.0)),
            _summary("celebahq", "target", (0.0, 0.0))]
    t = build_ablation_table(runs, frames=_frames(runs))
    assert t.protocols == ["celebahq"]
    assert t.methods == ["codeswap_wo_c", "codeswap_wo_q1", "codeswap"]
    md = to_markdown(t)
    rows = [line.split(" | ")[0] for line in md.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert rows == ["| w/o C", "| w/o Q1", "| Ours"]
    assert "**90.0 ± 1.0**" in md
    assert build_ablation_table([_summary("celebahq", "codeswap", (0.9, 1.0))]) is None


def test_ties_and_insignificant_differences_are_not_marked():
    runs = [_summary("celebahq", "a", (0.0, 0.0)), _summary("celebahq", "b", (0.0, 0.0)),
            _summary("celebahq", "c", (0.0, 0.0))]
    t = build_table(runs, frames=_frames(runs, spread=0.0))
    assert t.rank == {}  # 0.0 +- 0.0 everywhere: nobody is best
    assert {t.shared_rank[(m, "celebahq", "pose_error")] for m in "abc"} == {1}
    # without pair-level values nothing can be tested, so nothing is marked
    assert build_table(RUNS, frames={}).rank == {}


def test_rank_groups_follow_the_paired_test():
    rng = np.random.default_rng(0)
    base = rng.normal(0.5, 0.2, 200)  # pair difficulty, shared by every method
    values = {"a": base + 0.10, "b": base + 0.099 + rng.normal(0, 0.05, 200), "c": base - 0.2}
    means = {m: float(v.mean()) for m, v in values.items()}
    r = rank_methods(means, values, True, RankRule(resamples=500, seed=1))
    assert r.order[2] == "c"
    assert r.rank["a"] == r.rank["b"] == 1 and r.rank["c"] == 2  # a ~ b share rank 1
    assert r.mark == {"a": 1, "b": 1}  # both bold: the shared group is significantly above c
    assert r.pvalue_to_next[r.order[1]] < 0.01
    # the same means without pairing information rank but never mark
    assert rank_methods(means, None, True, RankRule()).mark == {}
    # the test is paired: a constant offset on noisy pairs is significant, noise alone is not
    assert paired_pvalue(base + 0.01, base, 500, 0) < 0.01
    assert paired_pvalue(base + rng.normal(0, 0.05, 200), base + rng.normal(0, 0.05, 200), 500, 0) > 0.05
    assert paired_pvalue(base, base, 500, 0) == 1.0
