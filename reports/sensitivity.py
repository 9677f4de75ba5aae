"""How much the evaluation convention moves a ranking: the comparison behind
``harness report --conventions A,B,...`` (``report/conventions.md``).

The application (``harness.rescore``) scores the newest ``harness run`` of an output folder
again under each preset (:mod:`faceeval.presets`) from the swap cache and hands the summaries
here. Per quantity (ID retrieval top-1, ID similarity, pose, expression, FID): each method's
number and rank under each preset, and Kendall's τ between every two presets' rankings of
the methods (the ``source``/``target`` bounds are not ranked). A preset's protocol settings
(frame sampling, compression) would need other pairs and are not applied, which every table says.
"""

from __future__ import annotations

from itertools import combinations
from pathlib import Path

from faceeval.summaries import NO_VALUE, MetricEntry, RunSummary
from faceeval.summaries import direction as in_words
from reports.tables import REFERENCE_METHODS

#: quantities compared across presets: metric key prefix -> label
QUANTITIES = {"id_retrieval_top1": "ID retrieval top-1", "id_similarity": "ID similarity",
              "pose_error": "pose error", "expression_error": "expression error", "fid": "FID"}


def _entry(summary: RunSummary, prefix: str) -> MetricEntry | None:
    return next((e for k, e in summary.metrics.items() if k == prefix or k.startswith(prefix + "_")), None)


def ranks(values: dict[str, float], higher_is_better: bool) -> dict[str, int]:
    """Competition ranks (1 = best; equal values share a rank)."""
    ordered = sorted(values.values(), reverse=higher_is_better)
    return {m: 1 + ordered.index(v) for m, v in values.items()}


def kendall_tau(a: dict[str, float], b: dict[str, float]) -> float:
    """Kendall's τ-b of two presets' values over the methods both scored (NaN under 2 methods)."""
    from scipy.stats import kendalltau

    common = [m for m in a if m in b]
    if len(common) < 2:
        return float("nan")
    return float(kendalltau([a[m] for m in common], [b[m] for m in common]).statistic)


def sensitivity_markdown(by_preset: dict[str, list[RunSummary]]) -> str:
    """The comparison: per quantity a table of methods x presets (value, rank), then τ per preset pair."""
    presets = list(by_preset)
    methods = list(dict.fromkeys(s.method for runs in by_preset.values() for s in runs))
    lines = [f"# Sensitivity to the evaluation convention ({', '.join(presets)})", ""]
    for prefix, label in QUANTITIES.items():
        values: dict[str, dict[str, float]] = {}
        direction = None
        for p, runs in by_preset.items():
            for s in runs:
                e = _entry(s, prefix)
                if e is None or e.value is None:
                    continue
                direction = e.higher_is_better
                values.setdefault(p, {})[s.method] = float(e.value) * float(e.scale)
        if not values:
            continue
        ranked = {p: ranks({m: v for m, v in vs.items() if m not in REFERENCE_METHODS}, bool(direction))
                  for p, vs in values.items()}
        lines += [f"## {label} ({in_words(bool(direction))})", "",
                  "| method | " + " | ".join(presets) + " |", "|---" * (len(presets) + 1) + "|"]
        for m in methods:
            cells = [(f"{values[p][m]:.3f}" + (f" (#{ranked[p][m]})" if m in ranked.get(p, {}) else ""))
                     if m in values.get(p, {}) else NO_VALUE for p in presets]
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        taus = [f"{a} vs {b}: τ = {kendall_tau(ranked.get(a, {}), ranked.get(b, {})):.2f}"
                for a, b in combinations(presets, 2)]
        lines += ["", "Kendall τ of the rankings: " + ("; ".join(taus) if taus else "one preset only"), ""]
    lines.append("Settings and substitutions per preset:")
    for p, runs in by_preset.items():
        s = runs[0]
        conv = "; ".join(f"{m}: {', '.join(f'{k}={v}' for k, v in c.items())}" for m, c in s.conventions.items())
        lines.append(f"- {p}: {conv}")
        lines += [f"  - SUBSTITUTED: {x}" for x in s.substitutions]
    return "\n".join(lines) + "\n"


def write_sensitivity_report(out: Path, by_preset: dict[str, list[RunSummary]]) -> Path:
    """Write ``OUT/report/conventions.md`` (:func:`sensitivity_markdown` of each preset's
    summaries); returns its path."""
    from faceeval.images import atomic_write_text

    path = Path(out) / "report" / "conventions.md"
    atomic_write_text(path, sensitivity_markdown(by_preset))
    return path
