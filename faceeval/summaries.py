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

A summary is read and written as a :class:`RunSummary` (typed fields in the file's order;
:func:`write_summary` stores one, :func:`load_summaries` reads them back), its metric entries
as :class:`MetricEntry`, which owns how a number is shown: the direction :func:`arrow`, the
:func:`digits` rule and the table :meth:`MetricEntry.cell` (the console, Table 1/3 and the
HTML report all format through it), and each metric's network as :class:`BackendRecord`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from faceeval.checks import check_name


def arrow(higher_is_better: bool) -> str:
    """The direction arrow of a metric column: the one place it is written."""
    return "↑" if higher_is_better else "↓"


def direction(higher_is_better: bool) -> str:
    """The direction in words (a tooltip)."""
    return "higher is better" if higher_is_better else "lower is better"


def digits(key: str, unit: str) -> int:
    """Decimal places a metric's numbers are shown with (console, tables, HTML): one for
    percentages, two for FID, three otherwise."""
    return 1 if unit == "%" else 2 if key.startswith("fid") else 3


#: what a table shows where a method has no value
NO_VALUE = "–"


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


@dataclass(frozen=True)
class MetricEntry:
    """One metric key's entry of a run summary (``summary["metrics"][key]``): the value, its
    bootstrap CI and how it is shown. :meth:`from_dict` / :meth:`to_dict` are the only
    readers and writers of the stored form (key order as the runner always wrote it)."""

    key: str  # the metric key it is stored under (not repeated inside the entry)
    label: str
    higher_is_better: bool
    unit: str
    value: float | None  # NaN (or None) where nothing could be scored
    ci_low: float | None = None
    ci_high: float | None = None
    n: int | None = None
    scale: float = 1.0
    metric: str = ""  # the Metric that produced it (its backend is summary["backends"][metric])
    backend: str = ""
    #: dataset-level entries (FID): the value before clamping at ``lower_bound``; None per pair
    raw_value: float | None = None
    lower_bound: float | None = None
    feature_dim: int | None = None
    aggregate: str | None = None  # set for entries aggregated other than by the mean ("rms")
    extra: tuple[tuple[str, Any], ...] = ()  # keys this harness does not know, kept as read

    @classmethod
    def from_dict(cls, key: str, d: dict[str, Any]) -> MetricEntry:
        known = {f.name for f in fields(cls)} - {"key", "extra"}
        return cls(key=key, **{k: v for k, v in d.items() if k in known},
                   extra=tuple((k, v) for k, v in d.items() if k not in known))

    @property
    def dataset_level(self) -> bool:
        return self.raw_value is not None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"label": self.label, "higher_is_better": self.higher_is_better, "unit": self.unit,
                             "scale": self.scale, "metric": self.metric, "backend": self.backend, "value": self.value}
        if self.dataset_level:
            d["raw_value"] = self.raw_value
        d.update(ci_low=self.ci_low, ci_high=self.ci_high, n=self.n)
        if self.dataset_level:
            d.update(lower_bound=self.lower_bound, feature_dim=self.feature_dim)
        if self.aggregate is not None:
            d["aggregate"] = self.aggregate
        d.update(self.extra)
        return d

    @property
    def arrow(self) -> str:
        return arrow(self.higher_is_better)

    @property
    def digits(self) -> int:
        return digits(self.key, self.unit)

    @property
    def has_value(self) -> bool:
        return _finite(self.value)

    @property
    def has_ci(self) -> bool:
        return _finite(self.ci_low) and _finite(self.ci_high)

    @property
    def shown(self) -> float:
        """The value shown: below the metric's lower bound only by rounding (FID of identical
        sets, -1e-4) it is clamped to the bound; ``raw_value`` keeps the original. Summaries
        written before the bound was recorded clamp FID at 0."""
        # the stored bound where the entry records one (dataset-level entries), else FID's 0
        bound = self.lower_bound if self.dataset_level else 0.0 if self.metric.startswith("fid") else None
        return max(self.value, bound) if bound is not None and math.isfinite(self.value) else self.value

    def value_text(self, scale: float | None = None) -> str:
        """The shown value in display units (``scale``: the column's; default the entry's)."""
        s = self.scale if scale is None else scale
        return f"{self.shown * s:.{self.digits}f}"

    def half_ci_text(self, scale: float | None = None) -> str:
        """Half the CI's width in display units, "" without a CI."""
        if not self.has_ci:
            return ""
        s = self.scale if scale is None else scale
        return f"{(self.ci_high - self.ci_low) / 2 * s:.{self.digits}f}"

    def cell(self, scale: float | None = None) -> str:
        """``value ± half the CI`` in display units, as every table shows it."""
        if not self.has_value:
            return NO_VALUE
        half = self.half_ci_text(scale)
        return self.value_text(scale) + (f" ± {half}" if half else "")


@dataclass(frozen=True)
class BackendRecord:
    """The network behind one Metric of a run (``summary["backends"][metric]``), as
    :class:`faceeval.api.Backend` describes it: what every table names under its columns."""

    name: str
    description: str
    standard: bool  # the papers' model for this column
    weights: tuple[tuple[str, str], ...] = ()  # (file name, sha256)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BackendRecord:
        return cls(name=d["name"], description=d.get("description", ""), standard=bool(d.get("standard", False)),
                   weights=tuple((str(n), str(h)) for n, h in d.get("weights", ())))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "standard": self.standard,
                "weights": [list(w) for w in self.weights]}

    @property
    def status(self) -> str:
        return "standard" if self.standard else "NON-STANDARD (not the papers' model)"


@dataclass(frozen=True, kw_only=True)
class RunSummary:
    """One method x protocol run (``summary.json``), typed. Fields are in the order the file
    stores them; :meth:`from_dict` / :meth:`to_dict` are the only readers and writers of the
    stored form (keys this harness does not know are kept in ``extra``, as read). The runner
    builds one and :func:`write_summary` stores it; the report, the console, the results file
    and MLflow read these attributes, never the file's keys."""

    run_id: str = ""
    # the pair set
    protocol: str
    protocol_version: str = ""
    protocol_settings: dict[str, Any] = field(default_factory=dict)
    manifest_sha256: str = ""
    gallery_sha256: str = ""
    seed: int = 0
    num_pairs: int = 0
    resolution: int = 0
    root: str = ""  # the dataset root (local_summary re-derives one stored inside the output folder)
    # the method and its numbers
    method: str
    method_info: dict[str, Any] = field(default_factory=dict)  # the method's describe(): its settings
    method_key: str = ""  # the swap cache's key of the method and its settings
    metrics: dict[str, MetricEntry] = field(default_factory=dict)  # key -> entry, in scoring order
    backends: dict[str, BackendRecord] = field(default_factory=dict)  # metric -> its network
    # every choice that moves a number (faceeval.conventions)
    convention: str | None = None  # the preset, if one was given
    conventions: dict[str, dict[str, Any]] = field(default_factory=dict)  # metric -> its settings
    substitutions: list[str] = field(default_factory=list)  # what a preset substituted (--allow-substitute)
    scored_by_training_model: list[str] = field(default_factory=list)  # keys scored by the method's own identity net
    confidence: float = 0.95
    bootstrap_resamples: int = 0
    notes: list[str] = field(default_factory=list)
    # the work
    swaps: dict[str, int] = field(default_factory=dict)  # computed, cached (, failed)
    swap_errors: list[dict[str, str]] = field(default_factory=list)  # pairs skipped by --on-error skip
    features: dict[str, int] = field(default_factory=dict)  # computed, cached
    output_checks: dict[str, Any] = field(default_factory=dict)  # flagged outputs by kind (runner.OUTPUT_FLAGS)
    timing_s: dict[str, float] = field(default_factory=dict)  # swap, score, aggregate (wall seconds)
    stage_s: dict[str, float] = field(default_factory=dict)  # process-seconds per stage (faceeval.timing)
    processes: dict[str, int] = field(default_factory=dict)  # ranks, workers_per_rank
    device: str = ""
    finished: str  # UTC, ISO 8601 to the microsecond: orders the runs
    environment: dict[str, Any] = field(default_factory=dict)  # faceeval.provenance.environment()
    run_dir: str = ""  # the run folder (as it is now, when read through load_summaries)
    extra: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunSummary:
        """A stored summary (``summary.json``, or one of ``results.json``'s) as a record."""
        known = {f.name for f in fields(cls)} - {"extra"}
        values = {k: v for k, v in d.items() if k in known}
        values["metrics"] = {k: MetricEntry.from_dict(k, e) for k, e in d.get("metrics", {}).items()}
        values["backends"] = {k: BackendRecord.from_dict(b) for k, b in d.get("backends", {}).items()}
        return cls(**values, extra=tuple((k, v) for k, v in d.items() if k not in known))

    def to_dict(self) -> dict[str, Any]:
        """The stored form, keys in the order the file has always had them."""
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        d["metrics"] = {k: e.to_dict() for k, e in self.metrics.items()}
        d["backends"] = {k: b.to_dict() for k, b in self.backends.items()}
        d.update(self.extra)
        return d

    def entry(self, key: str) -> MetricEntry | None:
        """The entry of metric key ``key``, None where this run has none."""
        return self.metrics.get(key)

    def backend_of(self, entry: MetricEntry) -> BackendRecord | None:
        """The backend record of the Metric that produced ``entry``."""
        return self.backends.get(entry.metric)

    @property
    def flagged_outputs(self) -> int:
        """Outputs the interface checks flagged (left out of the per-pair means)."""
        return int(self.output_checks.get("flagged", 0))

    @property
    def git_commit(self) -> str:
        return str(self.environment.get("git_commit", "unknown"))


def write_summary(summary: RunSummary, out_dir: Path) -> RunSummary:
    """Store ``summary`` as ``<its run_dir>/summary.json`` (paths inside ``out_dir`` relative
    to it, atomically); returns it as a reader will see it (plain JSON values)."""
    from faceeval.images import atomic_write_text

    plain = json.loads(json.dumps(summary.to_dict(), default=str))
    atomic_write_text(Path(summary.run_dir) / "summary.json",
                      json.dumps(portable_summary(plain, out_dir), indent=1) + "\n")
    return RunSummary.from_dict(plain)


def cell(entry: MetricEntry | None, scale: float | None = None) -> str:
    """:meth:`MetricEntry.cell`, or ``–`` where a method has no entry."""
    return NO_VALUE if entry is None else entry.cell(scale)


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
        out["root"] = str(full if not rel.is_absolute() and full.is_relative_to(base)
                          else base / "cache" / "missing-root")
    return out


def load_summaries(out_dir: Path, unreadable: list[Path] | None = None) -> list[RunSummary]:
    """Every run summary under ``out_dir/runs``, newest last. A summary that cannot be read
    (torn by a crash before writes were atomic, edited by hand) is left out and appended to
    ``unreadable``; re-running that method rewrites it."""
    found = []
    for p in sorted((out_dir / "runs").glob("*/*/summary.json")):
        try:
            s = json.loads(p.read_text())
            if not isinstance(s, dict) or "finished" not in s or "metrics" not in s:
                raise ValueError("not a run summary")
            found.append(RunSummary.from_dict(local_summary(s, out_dir, p.parent)))
        except (ValueError, TypeError, AttributeError, OSError, UnicodeDecodeError):
            if unreadable is not None:
                unreadable.append(p)
    return sorted(found, key=lambda s: s.finished)
