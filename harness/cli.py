"""The ``harness`` command line (Typer). Commands stay thin: the work is in the modules.

Errors are one line on stderr with exit code 1; ``HARNESS_DEBUG=1`` shows tracebacks.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from harness.errors import HarnessError
from harness.registry import METHODS, METRICS, PROTOCOLS

app = typer.Typer(
    name="harness",
    help="Face-swap benchmark harness: build pair sets, run methods, score them, report, log to MLflow.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

DEFAULT_OUT = Path("harness-out")
# The offline default suite: runs anywhere, every column named for its backend. The
# papers' models (identity_arcface/_cosface, pose_hopenet, expression_deep3d, fid) are
# chosen with --metric once their weight files are in place (`harness weights`).
DEFAULT_METRICS = ("identity", "identity_facenet", "pose", "expression", "fid_facenet")

OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Output folder: cache, runs, report, MLflow store.")]
WeightsDirOpt = Annotated[Optional[Path], typer.Option(
    "--weights-dir", help="Folder of weight files (overrides $HARNESS_WEIGHTS_DIR).")]


def _set_weights_dir(folder: Optional[Path]) -> None:
    if folder is not None:
        os.environ["HARNESS_WEIGHTS_DIR"] = str(folder.expanduser().resolve())


def _echo(msg: str) -> None:
    typer.echo(msg, err=True)


def _device(name: str) -> str:
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _parse_options(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise HarnessError(f"--option expects key=value, got {item!r}")
        out[key.replace("-", "_")] = value
    return out


def _method_options(items: list[str], entry) -> dict[str, str]:
    """``METHOD.key=value`` items for this entry (by name or alias) plus unscoped ``key=value``."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise HarnessError(f"--method-option expects METHOD.key=value or key=value, got {item!r}")
        scope, dot, name = key.rpartition(".")
        if dot and scope not in (entry.name, *entry.aliases):
            METHODS.resolve(scope)  # an unknown method name is an error, not a silently unused option
            continue
        out[name.replace("-", "_")] = value
    return out


def _expand_methods(names: list[str]) -> list[str]:
    if not names:
        raise HarnessError("give at least one --method (or --method all); see `harness list methods`")
    if "all" not in names:
        return list(dict.fromkeys(METHODS.resolve(n).name for n in names))
    chosen, skipped = [], []
    for e in METHODS.entries():
        if e.explicit_only:
            continue  # needs options (e.g. precomputed's folder): run it by name
        (skipped if e.missing_weights() else chosen).append(e.name)
    if skipped:
        _echo(f"skipping {len(skipped)} methods whose weights are missing ({', '.join(skipped)}); "
              f"see `harness list methods` and `harness weights`")
    return chosen


@app.command()
def run(
    protocol: Annotated[str, typer.Option("--protocol", "-p", help="Pair-set protocol (see `harness list protocols`).")],
    method: Annotated[list[str], typer.Option("--method", "-m", help="Method name; repeat, or 'all'.")] = [],  # noqa: B006
    metric: Annotated[list[str], typer.Option("--metric", help="Metric name, optionally with settings (pose:unit=rad, identity_arcface:detector=scrfd); repeat. Default: the offline suite.")] = [],  # noqa: B006
    root: Annotated[Optional[Path], typer.Option(help="Dataset root (folder, celebahq, ffpp).")] = None,
    seed: Annotated[int, typer.Option(help="Seed for the pair set and the bootstrap.")] = 0,
    num_pairs: Annotated[Optional[int], typer.Option(help="Number of pairs (default: the protocol's).")] = None,
    option: Annotated[list[str], typer.Option("--option", help="Extra protocol setting key=value; repeat.")] = [],  # noqa: B006
    method_option: Annotated[list[str], typer.Option(
        "--method-option", help="Method constructor option METHOD.key=value (or key=value for every method); repeat."
    )] = [],  # noqa: B006
    out: OutOpt = DEFAULT_OUT,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N or auto.")] = "auto",
    batch_size: Annotated[int, typer.Option(min=1)] = 16,
    save_images: Annotated[bool, typer.Option(help="Also write swapped crops to the run folder.")] = False,
    tracking_uri: Annotated[Optional[str], typer.Option(help="MLflow tracking URI (default: SQLite in --out).")] = None,
    mlflow: Annotated[bool, typer.Option(help="Log to MLflow.")] = True,
    report: Annotated[bool, typer.Option(help="Render the report after the run.")] = True,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
    weights_dir: WeightsDirOpt = None,
) -> None:
    """Build the protocol's pairs, run each method, score, write runs, report and MLflow."""
    _set_weights_dir(weights_dir)
    from harness.cache import FeatureStore
    from harness.runner import RunConfig, run_method
    from harness.tracking import Tracker

    t0 = time.perf_counter()
    methods = _expand_methods(method)
    metric_specs = {}  # "pose:unit=rad,detector=scrfd" -> name + settings
    for spec in metric or DEFAULT_METRICS:
        name, _, opts = spec.partition(":")
        metric_specs[METRICS.resolve(name).name] = _parse_options([o for o in opts.split(",") if o])
    metric_names = list(metric_specs)
    proto_entry = PROTOCOLS.resolve(protocol)
    cfg = RunConfig(out_dir=out.resolve(), device=_device(device), batch_size=batch_size, save_images=save_images,
                    progress=progress and sys.stderr.isatty())
    proto = proto_entry.create(root=root, seed=seed, num_pairs=num_pairs, cache_dir=cfg.out_dir / "cache",
                               **_parse_options(option))
    pairset = proto.build()
    _echo(f"{pairset.protocol}: {len(pairset.pairs)} pairs, {len(pairset.gallery)} gallery faces, "
          f"manifest sha256 {pairset.manifest_sha256[:12]}")
    for note in pairset.notes:
        _echo(f"  note: {note}")
    metrics = [METRICS.create(m, device=cfg.device, **metric_specs[m]) for m in metric_names]
    features = FeatureStore(cfg.out_dir / "cache" / "features.sqlite")
    tracker = Tracker(cfg.out_dir, tracking_uri, enabled=mlflow)
    summaries = []
    with tracker.parent(f"{pairset.protocol}: {', '.join(methods)}",
                        {"protocol": pairset.protocol, "methods": ",".join(methods), "metrics": ",".join(metric_names),
                         "seed": seed, "manifest_sha256": pairset.manifest_sha256}):
        for name in methods:
            entry = METHODS.resolve(name)
            missing = entry.missing_weights()
            if missing:
                raise HarnessError(f"method {name}: weights missing ({', '.join(missing)}); see `harness weights`")
            summary = run_method(entry.create(device=cfg.device, **_method_options(method_option, entry)),
                                 pairset, metrics, cfg, features)
            for note in summary["notes"][len(pairset.notes):]:
                _echo(f"  note: {note}")
            summaries.append(summary)
            tracker.log_method(summary)
            cells = ", ".join(f"{k}={e['value'] * e['scale']:.3g}" for k, e in summary["metrics"].items())
            t = summary["timing_s"]
            _echo(f"  {name}: {cells}  ({summary['swaps']['computed']} swapped, {summary['swaps']['cached']} cached; "
                  f"swap {t['swap']:.1f}s, score {t['score']:.1f}s)")
        if report:
            paths = _render_report(cfg.out_dir)
            tracker.log_artifacts(cfg.out_dir / "report", "report")
    features.close()
    _echo(f"done in {time.perf_counter() - t0:.1f}s")
    if report:
        typer.echo(f"report: {paths['markdown']}")
    for s in summaries:
        typer.echo(f"run:    {s['run_dir']}")
    if mlflow:
        typer.echo(f"mlflow: {tracker.uri}  (open with: mlflow ui --backend-store-uri {tracker.uri})")


@app.command()
def prepare(
    protocol: Annotated[str, typer.Argument(help="Protocol whose dataset to check and prepare (celebahq, ffpp, ...).")],
    root: Annotated[Optional[Path], typer.Option(help="Dataset root in the protocol's official layout.")] = None,
    seed: Annotated[int, typer.Option(help="Seed for the pair set (random frames depend on it).")] = 0,
    num_pairs: Annotated[Optional[int], typer.Option(help="Number of pairs (default: the protocol's).")] = None,
    option: Annotated[list[str], typer.Option("--option", help="Extra protocol setting key=value; repeat.")] = [],  # noqa: B006
    out: OutOpt = DEFAULT_OUT,
) -> None:
    """Check the dataset layout (listing everything missing or malformed), then prepare the
    aligned crops into --out's cache (resumable) and write the manifest."""
    proto = PROTOCOLS.resolve(protocol).create(root=root, seed=seed, num_pairs=num_pairs,
                                               cache_dir=out.resolve() / "cache", **_parse_options(option))
    validate = getattr(proto, "validate", None)
    if validate is not None:
        try:
            validate()
        except HarnessError as exc:
            for problem in getattr(exc, "problems", []):
                _echo(f"  - {problem}")
            raise
        _echo(f"{protocol}: layout ok")
    pairset = proto.build()
    folder = out.resolve() / "manifests" / f"{pairset.protocol}-{pairset.manifest_sha256[:12]}"
    pairset.write(folder)
    for note in pairset.notes:
        _echo(f"  note: {note}")
    typer.echo(f"{pairset.protocol}: {len(pairset.pairs)} pairs, {len(pairset.gallery)} gallery faces, "
               f"manifest sha256 {pairset.manifest_sha256}")
    typer.echo(f"crops:    {pairset.root}")
    typer.echo(f"manifest: {folder}")


def _render_report(out_dir: Path, grid_rows: int = 6) -> dict[str, Path]:
    from harness.runner import load_summaries
    from reports.figures import swap_grid
    from reports.tables import build_ablation_table, build_table, to_csv, to_latex, to_markdown

    summaries = load_summaries(out_dir)
    if not summaries:
        raise HarnessError(f"no runs under {out_dir / 'runs'}: run `harness run` first")
    table = build_table(summaries, "Table 1: face swapping")
    folder = out_dir / "report"
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": folder / "table1.md", "latex": folder / "table1.tex", "csv": folder / "table1.csv"}
    paths["markdown"].write_text(to_markdown(table))
    paths["latex"].write_text(to_latex(table))
    paths["csv"].write_text(to_csv(table))
    ablation = build_ablation_table(summaries)
    if ablation is not None:
        for kind, suffix, render in (("table3_markdown", "md", to_markdown), ("table3_latex", "tex", to_latex),
                                     ("table3_csv", "csv", to_csv)):
            paths[kind] = folder / f"table3.{suffix}"
            paths[kind].write_text(render(ablation))
    for p in table.protocols:
        grid = swap_grid(summaries, out_dir, p, folder / f"grid_{p}.png", rows=grid_rows)
        if grid:
            paths[f"grid_{p}"] = grid
    return paths


@app.command("export-pairs")
def export_pairs_cmd(
    protocol: Annotated[str, typer.Option("--protocol", "-p", help="Pair-set protocol (see `harness list protocols`).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write (source/, target/, pairs.csv, ...).")],
    root: Annotated[Optional[Path], typer.Option(help="Dataset root (folder, celebahq, ffpp).")] = None,
    seed: Annotated[int, typer.Option(help="Seed for the pair set.")] = 0,
    num_pairs: Annotated[Optional[int], typer.Option(help="Number of pairs (default: the protocol's).")] = None,
    option: Annotated[list[str], typer.Option("--option", help="Extra protocol setting key=value; repeat.")] = [],  # noqa: B006
    cache: Annotated[Path, typer.Option(help="Harness output folder whose cache holds prepared crops.")] = DEFAULT_OUT,
) -> None:
    """Write a protocol's pairs and aligned inputs for running another repository's code;
    score its outputs afterwards with `--method precomputed`."""
    from harness.export import export_pairs

    proto = PROTOCOLS.resolve(protocol).create(root=root, seed=seed, num_pairs=num_pairs,
                                               cache_dir=cache.resolve() / "cache", **_parse_options(option))
    pairset = proto.build()
    folder = export_pairs(pairset, out)
    typer.echo(f"{len(pairset.pairs)} pairs of {pairset.protocol} written to {folder}")
    typer.echo(f"put outputs in {folder / 'outputs'} as <pair_id>.png, then: harness run --protocol {protocol} "
               f"--method precomputed --method-option precomputed.dir={folder / 'outputs'}")


@app.command("report")
def report_cmd(
    out: OutOpt = DEFAULT_OUT,
    grid_rows: Annotated[int, typer.Option(min=1, help="Pairs shown in each qualitative grid.")] = 6,
) -> None:
    """Render Table 1, Table 3 when ablations ran (Markdown, LaTeX, CSV) and qualitative grids from --out."""
    paths = _render_report(out.resolve(), grid_rows)
    typer.echo(paths["markdown"].read_text())
    if "table3_markdown" in paths:
        typer.echo(paths["table3_markdown"].read_text())
    for kind, p in paths.items():
        typer.echo(f"{kind}: {p}")


@app.command("list")
def list_cmd(
    what: Annotated[str, typer.Argument(help="methods, protocols or metrics")],
) -> None:
    """List registered methods, protocols or metrics (no model is loaded)."""
    registries = {"methods": METHODS, "protocols": PROTOCOLS, "metrics": METRICS}
    if what not in registries:
        import difflib

        close = difflib.get_close_matches(what, list(registries), n=1)
        raise HarnessError(f"cannot list {what!r}" + (f"; did you mean {close[0]!r}?" if close else "")
                           + " (choose methods, protocols or metrics)")
    for e in registries[what].entries():
        missing = e.missing_weights()
        status = "ready" if not missing else f"weights missing: {', '.join(missing)}"
        aliases = f" (aliases: {', '.join(e.aliases)})" if e.aliases else ""
        origin = "" if e.origin == "builtin" else f" [plugin: {e.origin}]"
        typer.echo(f"{e.name:<24} {status:<10} {e.description}{aliases}{origin}")


@app.command("weights")
def weights_cmd(weights_dir: WeightsDirOpt = None) -> None:
    """Known weight files: present, missing, or wrong checksum, and where to get them."""
    _set_weights_dir(weights_dir)
    from harness.weights import KNOWN, locate, sha256_of, weights_dir

    typer.echo(f"weights folder: {weights_dir()}  (set HARNESS_WEIGHTS_DIR to change)")
    for name, w in KNOWN.items():
        try:
            path = locate(name)
        except HarnessError:
            typer.echo(f"missing   {name:<44} {w.purpose}; get it from: {w.source}")
            continue
        sha = sha256_of(path)
        ok = (not w.sha256 or sha == w.sha256) and (not w.sha256_prefix or sha.startswith(w.sha256_prefix))
        state = ("present" if w.sha256 or w.sha256_prefix else "present (no pinned sha256)") if ok else "WRONG-SHA"
        typer.echo(f"{state:<9} {name:<44} {path} sha256 {sha[:12]}")


from codeswap.cli import figure_app, train_app  # noqa: E402 - the CodeSwap commands, mounted below

app.add_typer(train_app, name="train")
app.add_typer(figure_app, name="figure")


def main() -> None:
    """Console entry point: domain errors become one line and exit code 1."""
    try:
        app()
    except HarnessError as exc:
        if os.environ.get("HARNESS_DEBUG"):
            raise
        typer.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        typer.echo("interrupted: finished work is cached; the same command resumes", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
