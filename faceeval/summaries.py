"""Run summaries on disk: the ``summary.json`` each method's run folder holds, written by the
runner (``harness.runner.run_method``) and read by the report (``reports``), the results file
(``harness.results``) and MLflow logging.

A summary is one JSON object per method x protocol run, at
``<out>/runs/<protocol>/<method>-<run id>/summary.json``: ``run_id``, ``protocol``,
``method``, ``metrics`` (key -> ``value``, ``ci_low``, ``ci_high``, ``n``, ``label``,
``unit``, ``higher_is_better``, ``scale``, ``backend``), ``backends``, ``notes``,
``finished`` (UTC, orders the runs), ``run_dir``, ``root``, provenance and timings.
Paths inside the output folder are stored relative to it (:func:`portable_summary`), so the
folder can be moved or copied; :func:`local_summary` re-derives them where it is now.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from faceeval.checks import check_name


def portable_summary(summary: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """``summary`` as it is stored inside the output folder: paths inside ``out_dir`` (the
    run folder; a dataset root under ``cache/``, such as prepared photo crops) relative to
    it, so the folder can be moved or copied. :func:`local_summary` reverses it."""
    out = dict(summary)
    base = Path(out_dir).resolve()
    for key in ("run_dir", "root"):
        value = out.get(key)
        if not value:
            continue
        path = Path(value)
        if path.is_absolute() and path.resolve().is_relative_to(base):
            out[key] = path.resolve().relative_to(base).as_posix()
            out[f"{key}_in_out"] = True
    return out


def local_summary(summary: dict[str, Any], out_dir: Path, run_dir: Path | None = None) -> dict[str, Any]:
    """A stored summary with its paths re-derived from where the output folder is now:
    ``run_dir`` is the folder the summary was found in (``run_dir``) or
    ``out_dir/runs/<protocol>/<its name>``, whatever the file says (it may have been moved,
    copied or edited: nothing outside ``out_dir`` is read through it); a root stored
    relative to the folder is joined to ``out_dir``."""
    out = dict(summary)
    base = Path(out_dir).resolve()
    if run_dir is None:
        name = Path(str(out.get("run_dir") or "")).name
        check_name("run folder", name)
        run_dir = base / "runs" / str(out.get("protocol")) / name
    out["run_dir"] = str(Path(run_dir).resolve())
    out.pop("run_dir_in_out", None)
    if out.pop("root_in_out", False):
        rel = Path(str(out.get("root")))
        full = (base / rel).resolve()
        out["root"] = str(full if not rel.is_absolute() and full.is_relative_to(base) else base / "cache" / "missing-root")
    return out


def load_summaries(out_dir: Path, unreadable: list[Path] | None = None) -> list[dict[str, Any]]:
    """Every run summary under ``out_dir/runs``, newest last. A summary that cannot be read
    (torn by a crash before writes were atomic, edited by hand) is left out and appended to
    ``unreadable``; re-running that method rewrites it."""
    found = []
    for p in sorted((out_dir / "runs").glob("*/*/summary.json")):
        try:
            s = json.loads(p.read_text())
            if not isinstance(s, dict) or "finished" not in s or "metrics" not in s:
                raise ValueError("not a run summary")
        except (ValueError, OSError, UnicodeDecodeError):
            if unreadable is not None:
                unreadable.append(p)
            continue
        found.append(local_summary(s, out_dir, p.parent))
    return sorted(found, key=lambda s: s["finished"])
