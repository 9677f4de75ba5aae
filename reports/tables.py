"""Table 1 (and Table 3) from run summaries: Markdown, LaTeX (booktabs) and CSV.

Layout as in the paper: one row per method, one block of metric columns per protocol,
side by side; a direction arrow on every column; within each column the best method in
bold and the second underlined. The reference rows ``source`` and ``target`` bound the
table (identity upper bound, no-swap lower bound) and are not ranked. Each cell shows the
mean and, after ±, half the width of its bootstrap confidence interval. Under the table:
the backend that produced each column, its unit, and whether it is the papers' standard.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

REFERENCE_METHODS = ("source", "target")


def select_runs(summaries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per protocol, the manifest of the newest run; per method, its newest run on that
    manifest. Runs on other manifests (another seed, older pairs) are left out."""
    summaries = sorted(summaries, key=lambda s: s["finished"])  # oldest first
    newest: dict[str, tuple[str, str]] = {}
    for s in summaries:
        newest[s["protocol"]] = (s["manifest_sha256"], s["gallery_sha256"])
    chosen: dict[tuple[str, str], dict[str, Any]] = {}
    for s in summaries:
        if (s["manifest_sha256"], s["gallery_sha256"]) == newest[s["protocol"]]:
            chosen[(s["protocol"], s["method"])] = s
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
        return f"{self.label}{unit} {'↑' if self.higher_is_better else '↓'}"


@dataclass(frozen=True)
class Table:
    title: str
    protocols: list[str]
    columns: list[Column]
    methods: list[str]
    cells: dict[tuple[str, str, str], dict[str, Any]]  # (method, protocol, key) -> metric entry
    rank: dict[tuple[str, str, str], int]  # 1 = best, 2 = second
    footer: list[str]
    labels: dict[str, str] = field(default_factory=dict)  # method -> row label

    def label(self, method: str) -> str:
        return self.labels.get(method, method)


# Table 3 (paper §4.4): ablation rows in the paper's order, with its labels
ABLATIONS = {"codeswap_wo_c": "w/o C", "codeswap_wo_s": "w/o S", "codeswap_wo_q1": "w/o Q1",
             "codeswap_wo_q2": "w/o Q2", "codeswap_wo_m": "w/o M", "codeswap": "Ours"}


def _ranks(cells, columns, methods) -> dict[tuple[str, str, str], int]:
    rank = {}
    for c in columns:
        scored = [(cells[(m, c.protocol, c.key)]["value"], m) for m in methods
                  if m not in REFERENCE_METHODS and (m, c.protocol, c.key) in cells
                  and math.isfinite(cells[(m, c.protocol, c.key)]["value"])]
        distinct = sorted({v for v, _ in scored}, reverse=c.higher_is_better)
        for v, m in scored:  # ties share a rank
            position = distinct.index(v) + 1
            if position <= 2:
                rank[(m, c.protocol, c.key)] = position
    return rank


def build_ablation_table(summaries: list[dict[str, Any]], prefer: str = "celebahq") -> Table | None:
    """Table 3: CodeSwap and its ablations on one protocol (CelebA-HQ when it was run, as in
    the paper; otherwise the newest protocol with ablation runs). None without ablation runs."""
    runs = [s for s in select_runs(summaries) if s["method"] in ABLATIONS]
    protocols = [s["protocol"] for s in sorted(runs, key=lambda s: s["finished"]) if s["method"] != "codeswap"]
    if not protocols:
        return None
    protocol = prefer if prefer in protocols else protocols[-1]
    chosen = [s for s in runs if s["protocol"] == protocol]
    return build_table(chosen, f"Table 3: ablations of CodeSwap on {protocol}", method_order=list(ABLATIONS),
                       labels=ABLATIONS)


def build_table(summaries: list[dict[str, Any]], title: str = "Table 1",
                method_order: list[str] | None = None, labels: dict[str, str] | None = None) -> Table:
    runs = select_runs(summaries)
    if not runs:
        raise ValueError("no runs to report")
    protocols = list(dict.fromkeys(s["protocol"] for s in runs))
    columns: list[Column] = []
    cells = {}
    for p in protocols:
        for s in (s for s in runs if s["protocol"] == p):
            for key, e in s["metrics"].items():
                col = Column(p, key, e["label"], e["unit"], e["higher_is_better"], e.get("scale", 1.0))
                if col not in columns:
                    columns.append(col)
                cells[(s["method"], p, key)] = e
    seen = list(dict.fromkeys(s["method"] for s in runs))
    if method_order:
        seen = [m for m in method_order if m in seen] + [m for m in seen if m not in method_order]
    methods = [m for m in seen if m not in REFERENCE_METHODS] + [m for m in REFERENCE_METHODS if m in seen]
    return Table(title, protocols, columns, methods, cells, _ranks(cells, columns, methods), _footer(runs, protocols),
                 labels or {})


def _footer(runs, protocols) -> list[str]:
    lines = []
    for p in protocols:
        rs = [s for s in runs if s["protocol"] == p]
        s0 = rs[0]
        lines.append(f"{p}: {s0['num_pairs']} pairs, seed {s0['seed']}, manifest sha256 {s0['manifest_sha256'][:12]}, "
                     f"gallery sha256 {s0['gallery_sha256'][:12]}, {s0['resolution']}px crops, "
                     f"± = half-width of the {round(100 * s0['confidence'])}% bootstrap CI "
                     f"({s0['bootstrap_resamples']} resamples)")
        backends = {}
        for s in rs:
            backends.update(s["backends"])
        for metric, b in backends.items():
            status = "standard" if b["standard"] else "NON-STANDARD (not the papers' model)"
            weights = ", ".join(f"{n} sha256 {h[:12]}" for n, h in b["weights"]) or "no weights"
            lines.append(f"  {metric} <- {b['name']}: {b['description']} [{status}; {weights}]")
        for note in dict.fromkeys(n for s in rs for n in s.get("notes", [])):
            lines.append(f"  note: {note}")
        checked = [s for s in rs if "output_checks" in s]
        if checked:
            bad = [f"{s['method']} {s['output_checks']['flagged']} of {s['num_pairs']}" for s in checked
                   if s["output_checks"]["flagged"]]
            lines.append("  output checks: outputs with non-finite values, blank (constant) images or no face found "
                         "are counted per method and left out of the per-pair means and n (identity, pose, "
                         "expression); dataset-level columns (FID) include them. Flagged: "
                         + ("; ".join(bad) if bad else "none"))
    lines.append("source/target are reference rows (identity upper bound / no swap) and are not ranked.")
    return lines


def _fmt(entry: dict[str, Any] | None, scale: float, digits: int) -> str:
    if entry is None or entry.get("value") is None or not math.isfinite(entry["value"]):
        return "–"
    text = f"{entry['value'] * scale:.{digits}f}"
    lo, hi = entry.get("ci_low"), entry.get("ci_high")
    if lo is not None and hi is not None and math.isfinite(lo) and math.isfinite(hi):
        text += f" ± {(hi - lo) / 2 * scale:.{digits}f}"
    return text


def _digits(col: Column) -> int:
    return 1 if col.unit == "%" else 3


def to_markdown(t: Table) -> str:
    head = ["Method"] + [f"{c.protocol}: {c.header}" for c in t.columns]
    lines = [f"### {t.title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in t.methods:
        row = [f"*{m}*" if m in REFERENCE_METHODS else t.label(m)]
        for c in t.columns:
            text = _fmt(t.cells.get((m, c.protocol, c.key)), c.scale, _digits(c))
            r = t.rank.get((m, c.protocol, c.key))
            row.append(f"**{text}**" if r == 1 else f"<u>{text}</u>" if r == 2 else text)
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    lines += [f"- {line.strip()}" if not line.startswith("  ") else f"  - {line.strip()}" for line in t.footer]
    return "\n".join(lines) + "\n"


def _tex_escape(s: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"), ("#", r"\#"),
                 ("↑", r"$\uparrow$"), ("↓", r"$\downarrow$"), ("±", r"$\pm$"), ("–", "--"), ("<-", r"$\leftarrow$")):
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
    out.append(" & " + " & ".join(rf"\multicolumn{{{b - a + 1}}}{{c}}{{{_tex_escape(p)}}}" for p, a, b in groups) + r" \\")
    out.append(" ".join(rf"\cmidrule(lr){{{a}-{b}}}" for _, a, b in groups))
    out.append("Method & " + " & ".join(_tex_escape(c.header) for c in t.columns) + r" \\")
    out.append(r"\midrule")
    for i, m in enumerate(t.methods):
        if m in REFERENCE_METHODS and (i == 0 or t.methods[i - 1] not in REFERENCE_METHODS) and i > 0:
            out.append(r"\midrule")
        row = [rf"\textit{{{_tex_escape(m)}}}" if m in REFERENCE_METHODS else _tex_escape(t.label(m))]
        for c in t.columns:
            text = _tex_escape(_fmt(t.cells.get((m, c.protocol, c.key)), c.scale, _digits(c)))
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
            w.writerow([c.protocol, m, c.key, e["value"], e.get("ci_low"), e.get("ci_high"), e.get("n"), c.unit,
                        c.scale, c.higher_is_better, e["backend"], t.rank.get((m, c.protocol, c.key), "")])
    return buf.getvalue()
