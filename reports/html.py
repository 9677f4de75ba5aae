"""The HTML report: ``report/index.html``, one page that opens from disk with no network.

Styles, script and data are inlined into the page; the only files beside it are the
pair browser's thumbnails under ``report/thumbs/`` (see ``reports.thumbs``). Sections:
Table 1 (and Table 3 when ablations ran) with the honest ranking of ``reports.ranking``;
per-pair distributions of every metric; the pair browser (paged, sortable by any metric
or by the difference between two methods); evaluator agreement when two backends scored
the same quantity; runs and provenance (backends once each, notes grouped and counted).
"""

from __future__ import annotations

import datetime as _dt
import html
import itertools
import json
import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from faceeval.checks import input_root, inside
from faceeval.errors import HarnessError
from faceeval.summaries import NO_VALUE, MetricEntry, RunSummary, direction, load_summaries
from reports.ranking import load_pair_frames
from reports.tables import (
    REFERENCE_METHODS,
    Table,
    build_ablation_table,
    build_table,
    select_runs,
    small_sample_warning,
)
from reports.thumbs import ThumbnailStore

STATIC = Path(__file__).resolve().parent / "static"
ESC = html.escape


def _num(v: Any) -> float | None:
    """A JSON-safe number with 5 significant digits (NaN/inf -> null)."""
    if v is None:
        return None
    v = float(v)
    return float(f"{v:.5g}") if math.isfinite(v) else None


def _base_label(label: str) -> str:
    return re.sub(r"\s*\[[^\]]*\]\s*$", "", label)


def _packaged(file: str) -> str:
    """' (from package==version, licence)' for an evaluator file that ships in a registry package."""
    from faceeval.fetch import asset_for_file

    a = asset_for_file(file)
    return "" if a is None else f' <span class="muted">(from {ESC(a.spec)}; licence: {ESC(a.licence)})</span>'


def _agreement(protocol: str, runs: list[RunSummary], frames: dict) -> list[dict[str, Any]]:
    """Every pair of columns measuring the same quantity under two backends (same label
    without its [backend] suffix): Kendall tau of the methods' means, Spearman rho per pair."""
    from scipy.stats import kendalltau, spearmanr

    rs = [s for s in runs if s.protocol == protocol]
    entries = {s.method: s.metrics for s in rs}
    groups: dict[str, dict[str, MetricEntry]] = {}
    for s in rs:
        for key, e in entries[s.method].items():
            groups.setdefault(_base_label(e.label), {}).setdefault(key, e)
    out = []
    for base, cols in groups.items():
        for (ka, ea), (kb, eb) in itertools.combinations(cols.items(), 2):
            if ea.backend == eb.backend:
                continue
            with_both = [s for s in rs if ka in entries[s.method] and kb in entries[s.method]]
            ranked = [s for s in with_both if s.method not in REFERENCE_METHODS]
            used = ranked if len(ranked) >= 3 else with_both
            tau = float("nan")
            if len(used) >= 2:
                a = [entries[s.method][ka].value for s in used]
                b = [entries[s.method][kb].value for s in used]
                if len(set(a)) > 1 and len(set(b)) > 1:
                    tau = float(kendalltau(a, b).statistic)
            per_method = []
            for s in with_both:
                f = frames.get((protocol, s.method))
                rho, n = float("nan"), 0
                if f is not None and ka in f.columns and kb in f.columns:
                    x, y = f[ka].to_numpy(np.float64), f[kb].to_numpy(np.float64)
                    ok = np.isfinite(x) & np.isfinite(y)
                    n = int(ok.sum())
                    if n >= 3 and np.ptp(x[ok]) > 0 and np.ptp(y[ok]) > 0:
                        rho = float(spearmanr(x[ok], y[ok]).statistic)
                per_method.append({"method": s.method, "rho": rho, "n": n})
            out.append({"quantity": base, "a": ka, "b": kb, "label_a": ea.label, "label_b": eb.label,
                        "backend_a": ea.backend, "backend_b": eb.backend, "tau": tau,
                        "tau_methods": [s.method for s in used],
                        "tau_includes_references": len(used) != len(ranked), "per_method": per_method})
    return out


def _protocol_data(protocol: str, runs: list[RunSummary], frames: dict, out_dir: Path, thumbs: ThumbnailStore,
                   methods: list[str]) -> dict[str, Any]:
    """The pair browser's and the distributions' data for one protocol, column-wise."""
    rs = {s.method: s for s in runs if s.protocol == protocol}
    methods = [m for m in methods if m in rs]
    columns: dict[str, dict] = {}
    for m in methods:
        for key, e in rs[m].metrics.items():
            columns.setdefault(key, {"key": key, "label": e.label, "unit": e.unit, "scale": e.scale,
                                     "hib": e.higher_is_better, "backend": e.backend, "per_pair": False})
    with_frames = [m for m in methods if (protocol, m) in frames]
    order: list[str] = []
    inputs: dict[str, tuple[str, str, str, str]] = {}
    for m in with_frames:
        f = frames[(protocol, m)]
        for pid, src, tgt, sid, tid in zip(*(f[c].tolist() for c in ("pair_id", "source", "target", "source_id",
                                                                    "target_id"))):
            if pid not in inputs:
                inputs[pid] = (src, tgt, sid, tid)
                order.append(pid)
    position = {pid: i for i, pid in enumerate(order)}
    first = next(iter(rs.values()))
    root = input_root(first.root, first.run_dir, out_dir)
    missing = 0

    def thumb(path: tuple[Path, str], key: str | None = None) -> int:  # -1 (counted, shown as "no image") when gone
        nonlocal missing
        try:
            return thumbs.add(inside(*path), key)  # (folder, relative path from a run file): never outside it
        except HarnessError:
            missing += 1
            return -1

    src_idx = [thumb((root, inputs[p][0])) for p in order]
    tgt_idx = [thumb((root, inputs[p][1])) for p in order]
    values: dict[str, dict[str, list]] = {}
    swaps: dict[str, list[int]] = {}
    for m in with_frames:
        f = frames[(protocol, m)]
        rows = np.array([position[p] for p in f["pair_id"].tolist()])  # (n,) row of each frame line in `order`
        idx = [-1] * len(order)
        for r, rel, sha in zip(rows.tolist(), f["swap_file"].tolist(), f["swap_sha256"].tolist()):
            idx[r] = thumb((out_dir, rel), sha)
        swaps[m] = idx
        values[m] = {}
        for key in columns:
            if key in f.columns:
                columns[key]["per_pair"] = True
                col = np.full(len(order), np.nan)
                col[rows] = f[key].to_numpy(np.float64)
                values[m][key] = [_num(v) for v in col]
    s0 = next(iter(rs.values()))
    return {
        "name": protocol, "num_pairs": s0.num_pairs, "seed": s0.seed, "resolution": s0.resolution,
        "methods": methods, "browsable": with_frames, "references": [m for m in methods if m in REFERENCE_METHODS],
        "metrics": list(columns.values()),
        "pairs": {"id": order, "source": [inputs[p][2] for p in order], "target": [inputs[p][3] for p in order],
                  "src": src_idx, "tgt": tgt_idx},
        "swaps": swaps, "values": values, "missing_images": missing,
    }


# ---------------------------------------------------------------- static HTML sections


def _table_html(t: Table, protocol: str) -> str:
    cols = [c for c in t.columns if c.protocol == protocol]
    methods = [m for m in t.methods if any((m, protocol, c.key) in t.cells for c in cols)]
    if not methods:
        return ""
    head = ['<th data-col="0" data-kind="text" title="sort by method">Method</th>']
    for i, c in enumerate(cols, start=1):
        unit = f" ({c.unit})" if c.unit and c.unit != "cosine" else ""
        head.append(f'<th data-col="{i}" data-kind="num" data-hib="{int(c.higher_is_better)}" '
                    f'title="{ESC(c.key)}: {direction(c.higher_is_better)}; click to sort">{ESC(c.label)}{ESC(unit)} '
                    f'<span class="arrow">{c.arrow}</span></th>')
    rows = []
    for m in methods:
        ref = m in REFERENCE_METHODS
        cells = [f'<th scope="row" data-v="{ESC(t.label(m))}">{"<i>" if ref else ""}{ESC(t.label(m))}'
                 f'{"</i> <span class=ref>reference</span>" if ref else ""}</th>']
        for c in cols:
            e = t.cells.get((m, protocol, c.key))
            if e is None or not e.has_value:
                cells.append(f'<td data-v="">{NO_VALUE}</td>')
                continue
            d = c.digits
            v = e.shown
            text = e.value_text(c.scale)
            tip = [f"mean of {e.n} values"]
            ci = ""
            if e.has_ci:
                ci = f'<span class="ci">± {e.half_ci_text(c.scale)}</span>'
                tip.append(f"CI [{e.ci_low * c.scale:.{d}f}, {e.ci_high * c.scale:.{d}f}]")
            raw = e.value if e.raw_value is None else e.raw_value
            if v != e.value or raw != v:
                tip.append(f"raw value {raw:.6g} (below {v:g} by rounding; shown clamped)")
            if (m, protocol, c.key) in t.shared_rank:
                tip.append(f"rank {t.shared_rank[(m, protocol, c.key)]}")
            mark = t.rank.get((m, protocol, c.key))
            cls = ' class="best"' if mark == 1 else ' class="second"' if mark == 2 else ""
            warn = ('<span class="warn" title="fewer samples than feature dimensions: see the warning above">⚠</span>'
                    if (m, protocol, c.key) in t.warned else "")
            cells.append(f'<td data-v="{v!r}"{cls} title="{ESC("; ".join(tip))}">{text}{ci}{warn}</td>')
        rows.append(f'<tr class="{"reference" if ref else "method"}" data-method="{ESC(m)}">{"".join(cells)}</tr>')
    return (f'<table class="results sortable" data-protocol="{ESC(protocol)}"><thead><tr>{"".join(head)}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table>')


def _rule_text(t: Table) -> str:
    return next((line.removeprefix("Ranking: ").rstrip(".") for line in t.footer if line.startswith("Ranking: ")), "")


def _warnings_html(runs: list[RunSummary], protocol: str) -> str:
    found: dict[str, list[str]] = {}
    for s in runs:
        if s.protocol != protocol:
            continue
        for e in s.metrics.values():
            w = small_sample_warning(e, s.backend_of(e))
            if w:
                found.setdefault(w, []).append(s.method)
    return "".join(f'<div class="warning">⚠ {ESC(w)} <span class="muted">({ESC(", ".join(who))})</span></div>'
                   for w, who in found.items())


def _short(sha: str, n: int = 12) -> str:
    return f'<code title="{ESC(sha)}">{ESC(sha[:n])}</code>'


def _notes_html(rs: list[RunSummary]) -> str:
    """Notes grouped by their text with the method prefix and numbers taken out, counted."""
    groups: dict[str, list[tuple[str, str]]] = {}
    for s in rs:
        for note in s.notes:
            text = note[len(s.method) + 2:] if note.startswith(f"{s.method}: ") else note
            groups.setdefault(re.sub(r"\d+", "#", text), []).append((s.method, note))
    if not groups:
        return '<p class="muted">No notes.</p>'
    items = []
    for _template, found in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        unique = list(dict.fromkeys(n for _, n in found))
        who = sorted({m for m, _ in found})
        detail = "".join(f"<li>{ESC(n)}</li>" for n in unique)
        items.append(f'<li><details><summary><span class="count">{len(found)}×</span> {ESC(unique[0])}'
                     f' <span class="muted">({ESC(", ".join(who))})</span></summary><ul>{detail}</ul></details></li>')
    return f'<ul class="notes">{"".join(items)}</ul>'


def _provenance_html(runs: list[RunSummary], protocol: str, report_dir: Path) -> str:
    rs = [s for s in runs if s.protocol == protocol]
    s0 = rs[0]
    commits = sorted({s.git_commit for s in rs if s.environment})
    parts = [f'<p>{s0.num_pairs} pairs, seed {s0.seed}, {s0.resolution}px crops, manifest sha256 '
             f'{_short(s0.manifest_sha256)}, gallery sha256 {_short(s0.gallery_sha256)}; code version '
             f'{", ".join(_short(c) for c in commits) or "unknown"}; ± is half the width of the '
             f'{round(100 * s0.confidence)}% bootstrap CI ({s0.bootstrap_resamples} resamples).</p>']
    backends: dict[tuple, dict] = {}
    for s in rs:
        for metric, b in s.backends.items():
            entry = backends.setdefault((b.name, b.weights), {"backend": b, "metrics": set(), "methods": set()})
            entry["metrics"].add(metric)
            entry["methods"].add(s.method)
    rows = []
    for found in backends.values():
        b = found["backend"]
        status = ('<span class="std">standard</span>' if b.standard
                  else '<span class="nonstd">NON-STANDARD</span> <span class="muted">(not the papers\' model)</span>')
        weights = "<br>".join(f"{ESC(n)} {_short(h)}{_packaged(n)}" for n, h in b.weights) \
            or '<span class="muted">none</span>'
        rows.append(f"<tr><td><code>{ESC(b.name)}</code></td><td>{ESC(', '.join(sorted(found['metrics'])))}</td>"
                    f"<td>{status}</td><td>{ESC(b.description)}</td><td>{weights}</td></tr>")
    parts.append('<h4>Backends (each once)</h4><table class="plain"><thead><tr><th>Backend</th><th>Metrics</th>'
                 '<th>Status</th><th>Description</th><th>Weight files (sha256)</th></tr></thead>'
                 f'<tbody>{"".join(rows)}</tbody></table>')
    preset = next((s.convention for s in rs if s.convention), "") or "none (defaults and settings given)"
    conv = {m: c for s in rs for m, c in s.conventions.items()}
    subs = list(dict.fromkeys(x for s in rs for x in s.substitutions))
    parts.append(f"<h4>Convention: {ESC(preset)}</h4><ul>"
                 + "".join(f"<li>{ESC(m)}: {ESC(', '.join(f'{k}={v}' for k, v in c.items()))}</li>"
                           for m, c in conv.items())
                 + "".join(f"<li><strong>SUBSTITUTED</strong>: {ESC(x)}</li>" for x in subs) + "</ul>")
    parts.append(f"<h4>Notes</h4>{_notes_html(rs)}")
    rows = []
    for s in rs:
        run_dir = Path(s.run_dir)
        rel = Path(os.path.relpath(run_dir, report_dir)).as_posix()
        links = " ".join(f'<a href="{ESC(rel)}/{f}">{f}</a>' for f in ("summary.json", "pairs.csv", "pairs.parquet",
                                                                       "gallery.csv") if (run_dir / f).is_file())
        unscored = [f"{ESC(e.label)}: {s.num_pairs - e.n}" for e in s.metrics.values()
                    if e.ci_low is not None and e.n is not None and e.n < s.num_pairs]
        t, sw = s.timing_s, s.swaps
        settings = ESC(json.dumps(s.method_info, indent=1, default=str))
        rows.append(
            f'<tr><td>{ESC(s.method)}</td><td><code>{ESC(s.run_id)}</code></td>'
            f'<td><code>{ESC(s.method_key)}</code></td>'
            f'<td><details><summary>settings</summary><pre>{settings}</pre></details></td>'
            f'<td>{sw.get("computed", "–")} swapped, {sw.get("cached", "–")} cached</td>'
            f'<td>{"<br>".join(unscored) or "none"}</td>'
            f'<td>swap {t.get("swap", 0):.1f}s, score {t.get("score", 0):.1f}s</td>'
            f'<td>{ESC(s.device)}</td><td>{ESC(s.finished)}</td><td>{links}</td></tr>')
    parts.append('<h4>Runs</h4><table class="plain"><thead><tr><th>Method</th><th>Run id</th><th>Fingerprint</th>'
                 '<th>Settings</th><th>Images</th><th>Unscored pairs (no face / no solution)</th><th>Time</th>'
                 '<th>Device</th><th>Finished</th><th>Run folder</th></tr></thead>'
                 f'<tbody>{"".join(rows)}</tbody></table>')
    return "".join(parts)


def _two(x: float) -> str:
    return f"{x:.2f}" if math.isfinite(x) else '<span title="undefined: constant values">–</span>'


def _agreement_html(items: list[dict]) -> str:
    if not items:
        return ('<p class="muted">Only one backend scored each quantity in this run; score with two (e.g. '
                '<code>--metric identity --metric identity_facenet</code>) to see whether they agree.</p>')
    out = []
    for a in items:
        tau = _two(a["tau"])
        scope = " (reference rows included: fewer than 3 ranked methods)" if a["tau_includes_references"] else ""
        rows = "".join(f"<tr><td>{ESC(p['method'])}</td><td>{_two(p['rho'])}</td><td>{p['n']}</td></tr>"
                       for p in a["per_method"])
        out.append(f'<div class="agreement"><h4>{ESC(a["quantity"])}: <code>{ESC(a["backend_a"])}</code> vs '
                   f'<code>{ESC(a["backend_b"])}</code></h4>'
                   f'<p>Kendall τ of the methods\' means: <b class="tau">{tau}</b>'
                   f' over {len(a["tau_methods"])} methods{ESC(scope)}.</p>'
                   '<table class="plain"><thead><tr><th>Method</th>'
                   f'<th>Spearman ρ over pairs</th><th>pairs</th></tr></thead><tbody>{rows}</tbody></table></div>')
    return "".join(out)


def render_html(summaries: list[RunSummary], out_dir: Path, thumb_size: int = 112,
                frames: dict | None = None) -> tuple[str, ThumbnailStore]:
    """The page's HTML and the thumbnail store it filled (thumbnails under out_dir/report/thumbs)."""
    runs = select_runs(summaries)
    if not runs:
        raise ValueError("no runs to report")
    report_dir = out_dir / "report"
    frames = load_pair_frames(runs) if frames is None else frames
    table1 = build_table(summaries, "Table 1: face swapping", frames=frames)
    table3 = build_ablation_table(summaries, frames=frames)
    thumbs = ThumbnailStore(report_dir / "thumbs", thumb_size)
    protocols = [_protocol_data(p, runs, frames, out_dir, thumbs, table1.methods) for p in table1.protocols]
    thumbs.close()
    sections = []
    for p in table1.protocols:
        t3 = ""
        if table3 is not None and p in table3.protocols:
            t3 = f'<h3>{ESC(table3.title)}</h3>{_table_html(table3, p)}'
        sections.append(
            f'<div class="protocol-view" data-protocol="{ESC(p)}">'
            f'<section id="tables-{ESC(p)}"><h2>Results on {ESC(p)}</h2>{_warnings_html(runs, p)}'
            f'<h3>{ESC(table1.title)}</h3>{_table_html(table1, p)}{t3}'
            f'<p class="rule">Ranking: {ESC(_rule_text(table1))}. Click a column header to sort. Hover a cell for its '
            f'CI, n and rank. <i>source</i>/<i>target</i> are reference rows (identity upper bound / no swap), '
            f'not ranked.</p>'
            f'</section>'
            f'<section><h2>Distributions over pairs</h2><p class="muted">Every pair\'s value per method: box = '
            f'quartiles, line = median, ◆ = mean, dots = pairs (jittered). A mean driven by a few pairs shows here.</p>'
            f'<div class="dists" data-protocol="{ESC(p)}"></div></section>'
            f'<section><h2>Pair browser</h2><div class="browser" data-protocol="{ESC(p)}"></div></section>'
            f'<section><h2>Evaluator agreement</h2>{_agreement_html(_agreement(p, runs, frames))}</section>'
            f'<section><h2>Runs and provenance</h2>{_provenance_html(runs, p, report_dir)}</section></div>')
    page = {"protocols": protocols, "thumbs": thumbs.names}
    payload = json.dumps(page, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")
    css = (STATIC / "report.css").read_text()
    js = (STATIC / "report.js").read_text()
    picker = "".join(f'<option value="{ESC(p)}">{ESC(p)}</option>' for p in table1.protocols)
    when = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    doc = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src 'self' data: file:; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<title>Face-swap benchmark report</title><style>{css}</style></head>
<body><header><h1>Face-swap benchmark report</h1>
<label>Protocol <select id="protocol">{picker}</select></label>
<span class="muted">rendered {when}</span></header>
<main>{"".join(sections)}</main>
<script id="report-data" type="application/json">{payload}</script>
<script>{js}</script></body></html>
"""  # noqa: E501
    return doc, thumbs


def write_html_report(out_dir: Path, summaries: list[RunSummary] | None = None, thumb_size: int = 112) -> Path:
    """Write ``out_dir/report/index.html`` from the runs under ``out_dir`` (or ``summaries``)."""
    summaries = load_summaries(out_dir) if summaries is None else summaries
    doc, _ = render_html(summaries, out_dir, thumb_size)
    path = out_dir / "report" / "index.html"
    path.write_text(doc, encoding="utf-8")
    return path
