"""``harness report --conventions A,B,...``: the newest ``harness run`` in an output folder (its
``results.json``: protocol, methods, seed, options) scored again under each preset
(:mod:`faceeval.presets`) from the swap cache, nothing swapped again (a missing swap is an
error); the comparison of the presets' numbers and rankings is :mod:`reports.sensitivity`'s.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from faceeval.errors import HarnessError
from faceeval.summaries import RunSummary
from harness.evaluation import evaluate
from harness.results import load_results
from harness.settings import RunSettings
from reports.sensitivity import write_sensitivity_report


def rescore(out: Path, presets: list[str], allow_substitute: bool,
            log: Callable[[str], None]) -> dict[str, list[RunSummary]]:
    """Each preset's summaries of the newest run's methods, scored from the caches."""
    last = load_results(out).settings
    found = {}
    for name in presets:
        log(f"convention {name}: scoring {', '.join(last['methods'])} from the cache")
        res = evaluate(last["protocol"], last["methods"], root=last.get("root"), seed=last["seed"],
                       num_pairs=last.get("num_pairs"), options=last.get("options") or {},
                       method_options=last.get("method_options") or {},
                       batch_size=last.get("batch_size", RunSettings.batch_size),
                       out=out, mlflow=False, report=False, progress=False, convention=name,
                       allow_substitute=allow_substitute, cached_swaps_only=True, preset_protocol=False, log=log)
        found[name] = res.runs
    return found


def write_sensitivity(out: Path, presets: list[str], allow_substitute: bool = False,
                      log: Callable[[str], None] = print) -> Path:
    """Rescore under ``presets`` and write ``OUT/report/conventions.md``; returns its path."""
    from faceeval.presets import preset

    if len(presets) < 1:
        raise HarnessError("--conventions needs at least one preset name (e.g. codeswap,reliableswap)")
    for name in presets:
        preset(name)  # every name checked (did-you-mean) before any work
    return write_sensitivity_report(Path(out), rescore(Path(out), presets, allow_substitute, log))
