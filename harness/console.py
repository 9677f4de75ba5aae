"""The end-of-run summary `harness run` prints: methods x main metrics with their 95 % CIs,
then where the results, report and MLflow store are (a ``rich`` table).

Main metrics: every metric key a run scored except the secondary ones in
:data:`SECONDARY` (top-5 retrieval, which Table 1 and results.json still hold).
"""

from __future__ import annotations

from typing import Any, TextIO

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from faceeval.summaries import MetricEntry, cell, entries_of
from harness.results import Results

#: key prefixes left out of the console table (kept in results.json and the report)
SECONDARY = ("id_retrieval_top5",)


def main_keys(summaries: list[dict[str, Any]]) -> list[str]:
    """The metric keys shown, in the order the run scored them."""
    keys = dict.fromkeys(k for s in summaries for k in s["metrics"])
    return [k for k in keys if not k.startswith(SECONDARY)]


def summary_table(result: Results) -> Table:
    """One row per method, one column per main metric key (header: label, direction, unit)."""
    table = Table(title=escape(f"{result.protocol}: {len(result.summaries)} methods, 95 % CI shown as ±"),
                  title_justify="left", header_style="bold")
    table.add_column("method", no_wrap=True)
    keys = main_keys(result.summaries)
    runs = [entries_of(s) for s in result.summaries]
    first: dict[str, MetricEntry] = {k: next(r[k] for r in runs if k in r) for k in keys}
    for e in first.values():
        unit = f" ({e.unit})" if e.unit else ""
        table.add_column(escape(f"{e.label} {e.arrow}{unit}"), justify="right")
    for s, entries in zip(result.summaries, runs):
        table.add_row(escape(s["method"]), *(cell(entries.get(k)) for k in keys))  # in each entry's own scale
    return table


def print_summary(result: Results, file: TextIO | None = None, width: int | None = None) -> None:
    """The table, then where results.json, the report and the MLflow store are."""
    console = Console(file=file, width=width, highlight=False, soft_wrap=False)
    if not console.is_terminal and width is None:
        console.width = 160  # a log or a pipe: wide rows rather than wrapped headers
    if result.summaries:
        console.print(summary_table(result))
    where = []
    preset = next((s.get("convention") for s in result.summaries if s.get("convention")), "")
    if preset:
        where.append(f"convention: {preset} (every setting in summary.json, results.json and the report)")
    where += [f"SUBSTITUTED: {x}"
              for x in dict.fromkeys(x for s in result.summaries for x in s.get("substitutions", []))]
    if result.report_files:
        where += [f"report: {result.report_files['markdown']}",
                  f"html:   {result.report_files['html']}  (open in a browser; works from disk, no network)"]
    where += [f"run:    {s['run_dir']}" for s in result.summaries]
    where.append(f"results: {result.path}  (latest also in {result.out_dir / 'results.json'}; "
                 "Python: harness.load_results)")
    if result.tracking_uri:
        where.append(f"mlflow: {result.tracking_uri}  (open with: mlflow ui --backend-store-uri {result.tracking_uri})")
    for line in where:
        console.print(line, markup=False, highlight=False, overflow="ignore", crop=False, soft_wrap=True)
