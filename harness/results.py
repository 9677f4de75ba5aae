"""What one evaluation produced, as a Python object and as one ``results.json``.

``evaluate(...)`` returns a :class:`Results`; ``load_results(out_dir)`` reads the same
object back from the ``results.json`` a run wrote (the lm-evaluation-harness
``--output_path`` idea: one file with every method, every metric and the provenance).

Files, per ``harness run`` (each written atomically):
    <out>/results/<protocol>-<UTC time>-<hash>.json   this run
    <out>/results.json                                 a copy of the latest run's file

Example:
    >>> from harness import evaluate, load_results
    >>> res = evaluate("demo", ["source", "target"], mlflow=False)  # doctest: +SKIP
    >>> res.to_pandas()[["method", "metric", "value"]]              # doctest: +SKIP
    >>> load_results("harness-out").pairs("source")                 # doctest: +SKIP
"""

from __future__ import annotations

import datetime as _dt
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from faceeval.errors import HarnessError
from faceeval.summaries import RunSummary, local_summary, portable_summary

FORMAT = "codeswap-harness-results"
FORMAT_VERSION = 1
LATEST = "results.json"
#: columns of :meth:`Results.to_pandas`, one row per method x metric key
COLUMNS = ("method", "protocol", "metric", "label", "value", "ci_low", "ci_high", "n", "unit",
           "higher_is_better", "backend")


def _plain(obj: Any) -> Any:
    """JSON-shaped copy (tuples -> lists, paths -> str), so a result in memory and the
    one read back from disk compare equal."""
    return json.loads(json.dumps(obj, default=str))


@dataclass
class Results:
    """Every method's summary of one evaluation, with where its files are."""

    protocol: str
    manifest_sha256: str
    out_dir: Path
    runs: list[RunSummary] = field(default_factory=list)  # one per method (faceeval.summaries)
    settings: dict[str, Any] = field(default_factory=dict)  # the evaluate() options that shaped the numbers
    report_files: dict[str, Path] = field(default_factory=dict)  # rendered files by kind (reports.render)
    tracking_uri: str | None = None  # the MLflow store, when logging was on
    seconds: float = 0.0
    path: Path | None = None  # the results file written for this run
    #: how the work was spread: ranks, workers per rank, process-seconds per stage (faceeval.timing)
    scale: dict[str, Any] = field(default_factory=dict)

    @property
    def methods(self) -> list[str]:
        return [r.method for r in self.runs]

    @property
    def summaries(self) -> list[dict[str, Any]]:
        """Each method's summary in its stored form (as in its ``summary.json``)."""
        return [r.to_dict() for r in self.runs]

    def to_pandas(self):
        """One row per method x metric key: ``method, protocol, metric, label, value,
        ci_low, ci_high, n, unit, higher_is_better, backend`` (value as in summary.json,
        unscaled: a fraction, not a percentage)."""
        import pandas as pd

        rows = []
        for r in self.runs:
            for key, e in r.metrics.items():
                rows.append({"method": r.method, "protocol": r.protocol, "metric": key, "label": e.label,
                             "value": e.value, "ci_low": e.ci_low, "ci_high": e.ci_high, "n": e.n, "unit": e.unit,
                             "higher_is_better": e.higher_is_better, "backend": e.backend})
        frame = pd.DataFrame(rows, columns=list(COLUMNS))
        for col in ("value", "ci_low", "ci_high"):
            frame[col] = frame[col].astype("float64")  # None (dataset-level CI) -> NaN
        return frame

    def run(self, method: str) -> RunSummary:
        """The summary of ``method``'s run, typed."""
        for r in self.runs:
            if r.method == method:
                return r
        raise HarnessError(f"no method {method!r} in these results (methods: {', '.join(self.methods) or 'none'})")

    def summary(self, method: str) -> dict[str, Any]:
        """The summary of ``method``'s run in its stored form (its ``summary.json``)."""
        return self.run(method).to_dict()

    def run_dir(self, method: str) -> Path:
        """The method's run folder; found under ``out_dir`` when the folder was moved."""
        recorded = Path(self.run(method).run_dir)
        if recorded.is_dir():
            return recorded
        moved = self.out_dir / "runs" / recorded.parent.name / recorded.name
        if moved.is_dir():
            return moved
        raise HarnessError(f"run folder of {method} not found: neither {recorded} nor {moved}")

    def pairs(self, method: str):
        """The method's per-pair frame (``pairs.parquet`` of its run folder): one row per
        pair, a column per per-pair metric key, NaN where an output was flagged."""
        import pandas as pd

        return pd.read_parquet(self.run_dir(method) / "pairs.parquet")

    def report(self, path: Path | str | None = None) -> dict[str, Path]:
        """Render the report (tables, grids, HTML) for every run in ``out_dir``, into
        ``out_dir/report``; with ``path``, copy the rendered files into that folder too.
        Returns the files by kind."""
        from reports.render import render_report

        files = render_report(self.out_dir)
        self.report_files = files
        if path is None:
            return files
        dest = Path(path)
        dest.mkdir(parents=True, exist_ok=True)
        copied = {}
        for kind, p in files.items():
            target = dest / p.relative_to(self.out_dir / "report")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(p, target)
            copied[kind] = target
        return copied

    def to_dict(self) -> dict[str, Any]:
        """The ``results.json`` content: every method and metric with its provenance."""
        from faceeval.provenance import environment

        first = self.runs[0] if self.runs else None
        return _plain({
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "protocol": self.protocol,
            "manifest_sha256": self.manifest_sha256,
            "gallery_sha256": None if first is None else first.gallery_sha256,
            "seed": None if first is None else first.seed,
            "num_pairs": None if first is None else first.num_pairs,
            "settings": self.settings,
            "methods": self.methods,
            "results": self.to_pandas().to_dict(orient="records"),
            "backends": {r.method: r.backends for r in self.runs},
            "environment": environment(),
            "tracking_uri": self.tracking_uri,
            # paths inside the output folder are stored relative to it: the folder may be moved or copied
            "report": {k: _relative(v, self.out_dir) for k, v in self.report_files.items()},
            "seconds": round(self.seconds, 3),
            "scale": self.scale,
            "summaries": [portable_summary(s, self.out_dir) for s in self.summaries],
        })


def _tracking_uri(stored: str | None, out_dir: Path) -> str | None:
    """The MLflow store of a results file: the SQLite store inside ``out_dir`` where the
    file named one (its path as it is now, the folder may have moved), else as stored."""
    if (stored and stored.startswith("sqlite:///") and stored.endswith("/mlflow.db")
            and (out_dir / "mlflow.db").is_file()):
        from faceeval.tracking import default_uri

        return default_uri(out_dir)
    return stored


def _relative(path: Path | str, out_dir: Path) -> str:
    """``path`` relative to ``out_dir`` (posix) when inside it, else as it is."""
    p, base = Path(path).resolve(), Path(out_dir).resolve()
    return p.relative_to(base).as_posix() if p.is_relative_to(base) else str(path)


def _inside(out_dir: Path, stored: str) -> Path:
    """A stored report path under ``out_dir`` as it is now: relative ones joined to it, an
    absolute one (an older results file) re-rooted at its ``report/`` part."""
    p = Path(stored)
    if not p.is_absolute():
        return out_dir / p
    parts = p.parts
    return out_dir / Path(*parts[parts.index("report"):]) if "report" in parts else out_dir / "report" / p.name


def write_results(results: Results) -> Path:
    """Write ``<out>/results/<protocol>-<time>-<hash>.json`` and ``<out>/results.json``
    (atomically); returns the first."""
    from faceeval.cache import stable_hash
    from faceeval.images import atomic_write_text

    data = results.to_dict()
    text = json.dumps(data, indent=1) + "\n"
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    path = results.out_dir / "results" / f"{results.protocol}-{stamp}-{stable_hash(data)[:8]}.json"
    atomic_write_text(path, text)
    atomic_write_text(results.out_dir / LATEST, text)
    results.path = path
    return path


def load_results(out_dir: Path | str) -> Results:
    """The :class:`Results` of the latest ``harness run`` in ``out_dir`` (its
    ``results.json``), or of a results file named directly."""
    p = Path(out_dir).expanduser()
    file = p / LATEST if p.is_dir() else p
    if not file.is_file():
        raise HarnessError(f"no results in {p}: {file} does not exist (run `harness run --out {p}` first)")
    try:
        data = json.loads(file.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise HarnessError(f"{file} is not a results file: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise HarnessError(f"{file} is not a {FORMAT} file")
    if data.get("format_version") != FORMAT_VERSION:
        raise HarnessError(f"{file} has format version {data.get('format_version')}, this harness reads "
                           f"{FORMAT_VERSION}")
    out = p if p.is_dir() else (file.parent.parent if file.parent.name == "results" else file.parent)
    out = out.resolve()
    try:  # paths re-derived from where the folder is now (it may have been moved or copied)
        runs = [RunSummary.from_dict(local_summary(s, out)) for s in data["summaries"]]
    except (KeyError, TypeError, AttributeError) as exc:
        raise HarnessError(f"{file} is not a readable results file ({type(exc).__name__}: {exc})") from None
    return Results(protocol=data["protocol"], manifest_sha256=data["manifest_sha256"], out_dir=out,
                   runs=runs, settings=data["settings"],
                   report_files={k: _inside(out, v) for k, v in data.get("report", {}).items()},
                   tracking_uri=_tracking_uri(data.get("tracking_uri"), out), seconds=data.get("seconds", 0.0),
                   path=file.resolve(), scale=data.get("scale", {}))
