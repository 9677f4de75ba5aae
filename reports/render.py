"""Render an output folder's report: Table 1, Table 3 when ablations ran (Markdown,
LaTeX, CSV) and one qualitative grid per protocol, under ``<out>/report/``."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from faceeval.errors import HarnessError
from faceeval.images import atomic_write_text
from faceeval.summaries import load_summaries
from reports.figures import swap_grid
from reports.tables import build_ablation_table, build_table, to_csv, to_latex, to_markdown

_FORMATS = (("markdown", "md", to_markdown), ("latex", "tex", to_latex), ("csv", "csv", to_csv))


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def render_report(out_dir: Path, grid_rows: int = 6, log: Callable[[str], None] = _stderr) -> dict[str, Path]:
    """Write the tables and grids for every run under ``out_dir/runs`` (each file
    atomically); returns the files by kind (``markdown``, ``latex``, ``csv``, ``table3_*``,
    ``grid_<protocol>``, ``html``). A run summary that cannot be read is left out, said through ``log``."""
    from reports.html import write_html_report

    unreadable: list[Path] = []
    summaries = load_summaries(out_dir, unreadable)
    for bad in unreadable:
        log(f"  skipped unreadable run summary {bad} (re-run that method to rewrite it)")
    if not summaries:
        raise HarnessError(f"no runs under {out_dir / 'runs'}: run `harness run` first")
    folder = out_dir / "report"
    folder.mkdir(parents=True, exist_ok=True)
    table = build_table(summaries, "Table 1: face swapping")
    paths: dict[str, Path] = {}
    for kind, suffix, render in _FORMATS:
        paths[kind] = folder / f"table1.{suffix}"
        atomic_write_text(paths[kind], render(table))
    ablation = build_ablation_table(summaries)
    if ablation is not None:
        for kind, suffix, render in _FORMATS:
            paths[f"table3_{kind}"] = folder / f"table3.{suffix}"
            atomic_write_text(paths[f"table3_{kind}"], render(ablation))
    for p in table.protocols:
        grid = swap_grid(summaries, out_dir, p, folder / f"grid_{p}.png", rows=grid_rows)
        if grid:
            paths[f"grid_{p}"] = grid
    paths["html"] = write_html_report(out_dir, summaries)
    return paths
