"""Table 1 (and Table 3) from run summaries: Markdown, LaTeX (booktabs) and CSV.

Layout as in the paper: one row per method, one block of metric columns per protocol,
side by side; a direction arrow on every column; within each column the best method in
bold and the second underlined, only where the difference to the next method is
significant on the same pairs (``reports.ranking``; ties share a rank). The reference
rows ``source`` and ``target`` bound the table (identity upper bound, no-swap lower
bound) and are not ranked. Each cell shows the mean and, after ±, half the width of its
bootstrap confidence interval. Under the table: the backend that produced each column, its
unit, and whether it is the papers' standard.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from codeswap.variants import VARIANTS, method_name, table_label
from faceeval.summaries import BackendRecord, MetricEntry, RunSummary, arrow, cell, digits
from reports.ranking import RankRule, aligned_values, load_pair_frames, rank_methods

REFERENCE_METHODS = ("source", "target")


def convention_of(summary: RunSummary) -> tuple[str, str]:
    """(preset, protocol settings) a run was made under: runs that differ in either are never one table."""
    settings = ",".join(f"{k}={v}" for k, v in sorted(summary.protocol_settings.items()) if k != "num_pairs")
    return str(summary.convention or ""), settings


def _agrees(a: RunSummary, b: RunSummary) -> bool:
    """Every metric the two runs share was scored under the same settings (faceeval.conventions)."""
    ca, cb = a.conventions, b.conventions
    return all(ca[m] == cb[m] for m in ca.keys() & cb.keys())


def select_runs(summaries: list[RunSummary], convention: str | None = None) -> list[RunSummary]:
    """Per protocol, the manifest and convention of the newest run; per method, its newest run on
    that manifest under that convention (preset, protocol settings and the settings of every
    metric it shares with the newest run). Runs on other manifests (another seed, older pairs) or
    under another convention are left out: one table never mixes conventions. ``convention``:
    only runs under that preset ("" for runs without one)."""
    summaries = sorted(summaries, key=lambda s: s.finished)  # oldest first
    if convention is not None:
        summaries = [s for s in summaries if str(s.convention or "") == convention]
    newest: dict[str, RunSummary] = {}
    for s in summaries:
        newest[s.protocol] = s
    chosen: dict[tuple[str, str], RunSummary] = {}
    for s in summaries:
        n = newest[s.protocol]
        if ((s.manifest_sha256, s.gallery_sha256) == (n.manifest_sha256, n.gallery_sha256)
                and convention_of(s) == convention_of(n) and _agrees(s, n)):
            chosen[(s.protocol, s.method)] = s
    return list(chosen.values())


@dataclass(frozen=True)
class Column:
    protocol: str
    key: str
    label: str
    unit: str
    higher_is_better: bool
    scale: float

    @property
    def header(self) -> str:
        unit = f" ({self.unit})" if self.unit and self.unit not in ("cosine",) else ""
        return f"{self.label}{unit} {self.arrow}"

    @property
    def arrow(self) -> str:
        return arrow(self.higher_is_better)

    @property
    def digits(self) -> int:
        return digits(self.key, self.unit)


@dataclass(frozen=True)
class Table:
    title: str
    protocols: list[str]
    columns: list[Column]
    methods: list[str]
    cells: dict[tuple[str, str, str], MetricEntry]  # (method, protocol, key) -> metric entry
    rank: dict[tuple[str, str, str], int]  # marks: 1 = bold (best), 2 = underline (second), if significant
    footer: list[str]
    labels: dict[str, str] = field(default_factory=dict)  # method -> row label
    shared_rank: dict[tuple[str, str, str], int] = field(default_factory=dict)  # 1 = best group; ties share
    warned: frozenset = frozenset()  # (method, protocol, key) cells under a small-sample warning (†)

    def label(self, method: str) -> str:
        return self.labels.get(method, method)


# Table 3 (paper §4.4): ablation rows in the paper's order, then the full model, with its labels
# (method name -> label), from CodeSwap's variant table
ABLATIONS = {method_name(v): table_label(v) for v in (*(v for v in VARIANTS if v != "full"), "full")}


def _ranks(cells, columns, methods, frames, rule: RankRule) -> tuple[dict, dict]:
    """(marks, shared ranks) per (method, protocol, key): marks are 1 (bold) / 2 (underline)."""
    marks, ranks = {}, {}
    for c in columns:
        ranked = [m for m in methods if m not in REFERENCE_METHODS and (m, c.protocol, c.key) in cells]
        means = {m: cells[(m, c.protocol, c.key)].value for m in ranked}
        per_method = {m: frames[(c.protocol, m)] for m in ranked if (c.protocol, m) in frames}
        values = aligned_values(per_method, c.key) if len(per_method) == len(ranked) else None
        r = rank_methods(means, values, c.higher_is_better, rule)
        for m, v in r.mark.items():
            marks[(m, c.protocol, c.key)] = v
        for m, v in r.rank.items():
            ranks[(m, c.protocol, c.key)] = v
    return marks, ranks


def build_ablation_table(summaries: list[RunSummary], prefer: str = "celebahq",
                         frames: dict[tuple[str, str], Any] | None = None) -> Table | None:
    """Table 3: CodeSwap and its ablations on one protocol (CelebA-HQ when it was run, as in
    the paper; otherwise the newest protocol with ablation runs). None without ablation runs."""
    runs = [s for s in select_runs(summaries) if s.method in ABLATIONS]
    protocols = [s.protocol for s in sorted(runs, key=lambda s: s.finished) if s.method != "codeswap"]
    if not protocols:
        return None
    protocol = prefer if prefer in protocols else protocols[-1]
    chosen = [s for s in runs if s.protocol == protocol]
    return build_table(chosen, f"Table 3: ablations of CodeSwap on {protocol}", method_order=list(ABLATIONS),
                       labels=ABLATIONS, frames=frames)


def build_table(summaries: list[RunSummary], title: str = "Table 1",
                method_order: list[str] | None = None, labels: dict[str, str] | None = None,
                frames: dict[tuple[str, str], Any] | None = None) -> Table:
    """``frames``: (protocol, method) -> per-pair values (a DataFrame with ``pair_id`` and
    one column per metric key); by default each run folder's pairs.parquet."""
    runs = select_runs(summaries)
    if not runs:
        raise ValueError("no runs to report")
    protocols = list(dict.fromkeys(s.protocol for s in runs))
    columns: list[Column] = []
    cells = {}
    for p in protocols:
        for s in (s for s in runs if s.protocol == p):
            for key, e in s.metrics.items():
                col = Column(p, key, e.label, e.unit, e.higher_is_better, e.scale)
                if col not in columns:
                    columns.append(col)
                cells[(s.method, p, key)] = e
    seen = list(dict.fromkeys(s.method for s in runs))
    if method_order:
        seen = [m for m in method_order if m in seen] + [m for m in seen if m not in method_order]
    methods = [m for m in seen if m not in REFERENCE_METHODS] + [m for m in REFERENCE_METHODS if m in seen]
    frames = load_pair_frames(runs) if frames is None else frames
    rule = RankRule(seed=runs[0].seed, alpha=round(1 - runs[0].confidence, 6))
    marks, shared = _ranks(cells, columns, methods, frames, rule)
    warned = frozenset((s.method, s.protocol, k) for s in runs for k, e in s.metrics.items()
                       if small_sample_warning(e, s.backend_of(e)))
    return Table(title, protocols, columns, methods, cells, marks, _footer(runs, protocols, rule), labels or {}, shared,
                 warned)


def _footer(runs: list[RunSummary], protocols: list[str], rule: RankRule) -> list[str]:
    lines = []
    for p in protocols:
        rs = [s for s in runs if s.protocol == p]
        s0 = rs[0]
        lines.append(f"{p}: {s0.num_pairs} pairs, seed {s0.seed}, manifest sha256 {s0.manifest_sha256[:12]}, "
                     f"gallery sha256 {s0.gallery_sha256[:12]}, {s0.resolution}px crops, "
                     f"± = half-width of the {round(100 * s0.confidence)}% bootstrap CI "
                     f"({s0.bootstrap_resamples} resamples)")
        preset = s0.convention or "none (the harness's defaults and the settings given)"
        settings = "; ".join(f"{m}: {', '.join(f'{k}={v}' for k, v in c.items())}"
                             for m, c in {m: c for s in rs for m, c in s.conventions.items()}.items())
        lines.append(f"  convention: {preset}" + (f" ({settings})" if settings else ""))
        for line in dict.fromkeys(x for s in rs for x in s.substitutions):
            lines.append(f"  SUBSTITUTED: {line}")
        backends = {}
        for s in rs:
            backends.update(s.backends)
        for metric, b in backends.items():
            weights = ", ".join(f"{n} sha256 {h[:12]}" for n, h in b.weights) or "no weights"
            lines.append(f"  {metric} <- {b.name}: {b.description} [{b.status}; {weights}]")
        warned = {}
        for s in rs:
            for e in s.metrics.values():
                w = small_sample_warning(e, s.backend_of(e))
                if w:
                    warned.setdefault(w, []).append(s.method)
        for w, who in warned.items():
            lines.append(f"  warning (†): {w} ({', '.join(who)})")
        for s in rs:
            for e in s.metrics.values():
                raw = e.value if e.raw_value is None else e.raw_value
                if raw is not None and math.isfinite(raw) and e.shown != raw:
                    lines.append(f"  note: {s.method}: {e.label} is {raw:.3g} by rounding, shown as "
                                 f"{e.shown:g} (raw value kept in summary.json)")
        for note in dict.fromkeys(n for s in rs for n in s.notes):
            lines.append(f"  note: {note}")
        checked = [s for s in rs if s.output_checks]  # summaries from before the checks have none
        if checked:
            bad = [f"{s.method} {s.flagged_outputs} of {s.num_pairs}" for s in checked if s.flagged_outputs]
            lines.append("  output checks: outputs with non-finite values, blank (constant) images or no face found "
                         "are counted per method and left out of the per-pair means and n (identity, pose, "
                         "expression); dataset-level columns (FID) include them. Flagged: "
                         + ("; ".join(bad) if bad else "none"))
    lines.append(f"Ranking: {rule.describe()}.")
    lines.append("source/target are reference rows (identity upper bound / no swap) and are not ranked.")
    return lines


def feature_dim(entry: MetricEntry, backend: BackendRecord | None = None) -> int | None:
    """Feature dimension of a dataset-level metric (FID): recorded in the entry, or for
    older runs read from its backend's description ("512-d")."""
    if entry.feature_dim:
        return int(entry.feature_dim)
    if entry.ci_low is None and backend is not None:  # dataset-level
        found = re.search(r"(\d+)-d\b", backend.description)
        return int(found.group(1)) if found else None
    return None


def small_sample_warning(entry: MetricEntry, backend: BackendRecord | None = None) -> str | None:
    """A warning when a dataset-level metric saw fewer samples than its feature dimension."""
    dim = feature_dim(entry, backend)
    n = entry.n
    if dim and n is not None and n < dim:
        return (f"{entry.label} computed on {n} samples with {dim}-d features: fewer samples than dimensions, "
                "so the covariance is singular and the value is not comparable with one on a larger set")
    return None


def to_markdown(t: Table) -> str:
    head = ["Method"] + [f"{c.protocol}: {c.header}" for c in t.columns]
    lines = [f"### {t.title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in t.methods:
        row = [f"*{m}*" if m in REFERENCE_METHODS else t.label(m)]
        for c in t.columns:
            text = cell(t.cells.get((m, c.protocol, c.key)), c.scale)
            text += " †" if (m, c.protocol, c.key) in t.warned else ""
            r = t.rank.get((m, c.protocol, c.key))
            row.append(f"**{text}**" if r == 1 else f"<u>{text}</u>" if r == 2 else text)
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    lines += [f"- {line.strip()}" if not line.startswith("  ") else f"  - {line.strip()}" for line in t.footer]
    return "\n".join(lines) + "\n"


def _tex_escape(s: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"), ("#", r"\#"),
                 ("↑", r"$\uparrow$"), ("↓", r"$\downarrow$"), ("±", r"$\pm$"), ("–", "--"), ("<-", r"$\leftarrow$"),
                 ("†", r"$^\dagger$")):
        s = s.replace(a, b)
    return s


def to_latex(t: Table) -> str:
    """A booktabs table: \\usepackage{booktabs} in the preamble."""
    spec = "l" + "".join("c" for _ in t.columns)
    caption = re.sub(r"^Table \d+:\s*", "", t.title)  # LaTeX numbers tables itself
    out = [r"\begin{table}[t]", r"\centering", r"\small", rf"\caption{{{_tex_escape(caption)}}}",
           rf"\begin{{tabular}}{{{spec}}}", r"\toprule"]
    groups, start = [], 2
    for p in t.protocols:
        n = sum(c.protocol == p for c in t.columns)
        groups.append((p, start, start + n - 1))
        start += n
    out.append(" & " + " & ".join(rf"\multicolumn{{{b - a + 1}}}{{c}}{{{_tex_escape(p)}}}" for p, a, b in groups)
               + r" \\")
    out.append(" ".join(rf"\cmidrule(lr){{{a}-{b}}}" for _, a, b in groups))
    out.append("Method & " + " & ".join(_tex_escape(c.header) for c in t.columns) + r" \\")
    out.append(r"\midrule")
    for i, m in enumerate(t.methods):
        if m in REFERENCE_METHODS and (i == 0 or t.methods[i - 1] not in REFERENCE_METHODS) and i > 0:
            out.append(r"\midrule")
        row = [rf"\textit{{{_tex_escape(m)}}}" if m in REFERENCE_METHODS else _tex_escape(t.label(m))]
        for c in t.columns:
            text = _tex_escape(cell(t.cells.get((m, c.protocol, c.key)), c.scale))
            text += r"$^\dagger$" if (m, c.protocol, c.key) in t.warned else ""
            r = t.rank.get((m, c.protocol, c.key))
            row.append(rf"\textbf{{{text}}}" if r == 1 else rf"\underline{{{text}}}" if r == 2 else text)
        out.append(" & ".join(row) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}"]
    out.append(r"\par\smallskip\footnotesize " + r" \\ ".join(_tex_escape(line.strip()) for line in t.footer))
    out.append(r"\end{table}")
    return "\n".join(out) + "\n"


def to_csv(t: Table) -> str:
    """Long format: one row per (method, protocol, metric), unscaled values, backends."""
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["protocol", "method", "metric", "value", "ci_low", "ci_high", "n", "unit", "scale",
                "higher_is_better", "backend", "rank"])
    for m in t.methods:
        for c in t.columns:
            e = t.cells.get((m, c.protocol, c.key))
            if e is None:
                continue
            w.writerow([c.protocol, m, c.key, e.value, e.ci_low, e.ci_high, e.n, c.unit,
                        c.scale, c.higher_is_better, e.backend, t.rank.get((m, c.protocol, c.key), "")])
    return buf.getvalue()
