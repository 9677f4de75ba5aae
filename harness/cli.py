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
    from harness.checks import resolve_device

    return resolve_device(name)


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
    for kind, registry, names in (("method", METHODS, methods), ("metric", METRICS, metric_names)):
        for name in names:  # before any detection or swap: a run that will fail, fails now
            missing = registry.resolve(name).missing_weights()
            if missing:
                raise HarnessError(f"{kind} {name}: weights missing ({', '.join(missing)}); see `harness weights`")
    proto_entry = PROTOCOLS.resolve(protocol)
    from harness.checks import check_out_dir

    cfg = RunConfig(out_dir=check_out_dir(out), device=_device(device), batch_size=batch_size, save_images=save_images,
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

    from harness.images import atomic_write_text

    unreadable: list[Path] = []
    summaries = load_summaries(out_dir, unreadable)
    for bad in unreadable:
        _echo(f"  skipped unreadable run summary {bad} (re-run that method to rewrite it)")
    if not summaries:
        raise HarnessError(f"no runs under {out_dir / 'runs'}: run `harness run` first")
    table = build_table(summaries, "Table 1: face swapping")
    folder = out_dir / "report"
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": folder / "table1.md", "latex": folder / "table1.tex", "csv": folder / "table1.csv"}
    atomic_write_text(paths["markdown"], to_markdown(table))
    atomic_write_text(paths["latex"], to_latex(table))
    atomic_write_text(paths["csv"], to_csv(table))
    ablation = build_ablation_table(summaries)
    if ablation is not None:
        for kind, suffix, render in (("table3_markdown", "md", to_markdown), ("table3_latex", "tex", to_latex),
                                     ("table3_csv", "csv", to_csv)):
            paths[kind] = folder / f"table3.{suffix}"
            atomic_write_text(paths[kind], render(ablation))
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
    from harness.checks import check_out_dir

    paths = _render_report(check_out_dir(out), grid_rows)
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


train_app = typer.Typer(help="Train the CodeSwap networks (one command per stage; torchrun for several GPUs).",
                        no_args_is_help=True)
app.add_typer(train_app, name="train")


@train_app.command("stage1")
def train_stage1(
    data: Annotated[Path, typer.Option(help="Folder of face images (flat, nested, or FFHQ's layout).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder: checkpoints, images, metrics, MLflow.")] = Path("runs/stage1"),
    config: Annotated[str, typer.Option(help="Model size: paper, codeformer (reference) or tiny.")] = "paper",
    resolution: Annotated[Optional[int], typer.Option(help="Override the config's image size.")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per process (global = this x processes).")] = 16,
    max_steps: Annotated[int, typer.Option(min=1)] = 1_000_000,
    lr: Annotated[float, typer.Option(help="Adam learning rate (generator and discriminator).")] = 1e-4,
    disc_start: Annotated[int, typer.Option(help="Step from which the PatchGAN trains and counts.")] = 30_000,
    disc_weight: Annotated[float, typer.Option(help="Scale of the adaptive adversarial weight (0: no GAN).")] = 0.8,
    perceptual: Annotated[str, typer.Option(help="vgg16 (paper; local file), mobilenet_v2 (ships offline) or none.")] = "vgg16",
    perceptual_weight: Annotated[float, typer.Option()] = 1.0,
    ema_decay: Annotated[float, typer.Option(help="EMA of the generator (0: off).")] = 0.0,
    precision: Annotated[str, typer.Option(help="auto (bf16 on GPU, fp32 on CPU), bf16, fp16 or fp32.")] = "auto",
    compile: Annotated[bool, typer.Option(help="torch.compile the generator and discriminator.")] = False,
    channels_last: Annotated[bool, typer.Option()] = True,
    checkpoint_levels: Annotated[int, typer.Option(help="Recompute activations of the first N levels in backward.")] = 0,
    num_workers: Annotated[int, typer.Option(min=0)] = 4,
    holdout: Annotated[int, typer.Option(min=0, help="Keep the last N images out of training, for validation.")] = 0,
    cache_images: Annotated[bool, typer.Option(help="Keep decoded images in memory (small folders).")] = False,
    log_every: Annotated[int, typer.Option(min=1)] = 50,
    image_every: Annotated[int, typer.Option(min=1)] = 1000,
    ckpt_every: Annotated[int, typer.Option(min=1)] = 5000,
    keep_every: Annotated[int, typer.Option(min=0)] = 0,
    restart_dead_every: Annotated[int, typer.Option(min=0, help="Re-seed unused codes every N steps (0: off).")] = 0,
    seed: Annotated[int, typer.Option()] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda (under torchrun: each rank's GPU).")] = "auto",
    resume: Annotated[bool, typer.Option(help="Continue from <out>/checkpoints/last.pt if it exists.")] = False,
    mlflow: Annotated[bool, typer.Option(help="Log to MLflow (SQLite in --out unless --tracking-uri).")] = True,
    tracking_uri: Annotated[Optional[str], typer.Option()] = None,
    progress: Annotated[bool, typer.Option()] = True,
) -> None:
    """Stage 1 (paper section 3.1): encoder, 1,024-code codebook and decoder by reconstruction + PatchGAN."""
    from dataclasses import replace

    from codeswap.config import MODEL_CONFIGS, LossConfig, TrainConfig
    from codeswap.train.loop import cleanup_distributed
    from codeswap.train.stage1 import Stage1Trainer

    if config not in MODEL_CONFIGS:
        raise HarnessError(f"unknown --config {config!r}; choose {', '.join(MODEL_CONFIGS)}")
    if perceptual not in ("vgg16", "mobilenet_v2", "none"):
        raise HarnessError(f"unknown --perceptual {perceptual!r}; choose vgg16, mobilenet_v2 or none")
    if precision not in ("auto", "bf16", "fp16", "fp32"):
        raise HarnessError(f"unknown --precision {precision!r}; choose auto, bf16, fp16 or fp32")
    try:
        model_cfg = replace(MODEL_CONFIGS[config], checkpoint_levels=checkpoint_levels,
                            **({"resolution": resolution} if resolution else {}))
    except ValueError as exc:
        raise HarnessError(f"--config {config} --resolution {resolution}: {exc}") from None
    loss_cfg = LossConfig(perceptual_net=perceptual, perceptual_weight=perceptual_weight,  # type: ignore[arg-type]
                          disc_start=disc_start, disc_weight=disc_weight)
    train_cfg = TrainConfig(
        data=str(data), out=str(out), batch_size=batch_size, max_steps=max_steps, lr=lr, seed=seed, device=device,
        precision=precision, compile=compile, channels_last=channels_last, ema_decay=ema_decay,  # type: ignore[arg-type]
        num_workers=num_workers, holdout=holdout, cache_images=cache_images, log_every=log_every,
        image_every=image_every, ckpt_every=ckpt_every, keep_every=keep_every,
        restart_dead_every=restart_dead_every, mlflow=mlflow, tracking_uri=tracking_uri,
        progress=progress and sys.stderr.isatty(),
    )
    try:
        trainer = Stage1Trainer(train_cfg, model_cfg, loss_cfg)
        last = trainer.run(resume=resume)
    finally:
        cleanup_distributed()
    if trainer.dist.is_main:
        shown = ", ".join(f"{k}={v:.4g}" for k, v in sorted(last.items()) if k.startswith(("train/rec_l1", "val/")))
        typer.echo(f"stage1: step {trainer.step}, {shown}")
        typer.echo(f"checkpoint: {trainer.ckpt_dir / 'last.pt'}")
        if mlflow:
            typer.echo(f"mlflow: {trainer.tracker.uri}")

def _swap_train(stage: str, checkpoint: Path, swap: dict, train: dict, resume: bool, supervised_steps: int = 0,
                mask_source: str = "landmarks") -> None:
    """Shared body of `train stage2` and `train stage3`."""
    from codeswap.config import TrainConfig
    from codeswap.swap_losses import SwapLossWeights
    from codeswap.train.loop import cleanup_distributed
    from codeswap.train.stage2 import Stage2Trainer, SwapTrainConfig

    if not checkpoint.is_file():
        raise HarnessError(f"checkpoint not found: {checkpoint}")
    weights = SwapLossWeights(**{k: swap.pop(k) for k in ("identity", "perceptual", "expression", "cycle")})
    swap_cfg = SwapTrainConfig(stage1=str(checkpoint), weights=weights, **swap)
    train_cfg = TrainConfig(**{**train, "progress": train["progress"] and sys.stderr.isatty()})
    try:
        if stage == "stage2":
            trainer = Stage2Trainer(train_cfg, swap_cfg)
        else:
            from codeswap.train.stage3 import MaskTrainConfig, Stage3Trainer

            mask_cfg = MaskTrainConfig(supervised_steps=supervised_steps, mask_source=mask_source)
            trainer = Stage3Trainer(train_cfg, swap_cfg, mask_cfg)
        last = trainer.run(resume=resume)
    finally:
        cleanup_distributed()
    if trainer.dist.is_main:
        shown = ", ".join(f"{k}={v:.4g}" for k, v in sorted(last.items()) if k.startswith(("train/g_total", "val/")))
        typer.echo(f"{stage}: step {trainer.step}, {shown}")
        typer.echo(f"checkpoint: {trainer.ckpt_dir / 'last.pt'}")


_SWAP_HELP = {
    "variant": "full, or an ablation: wo_c, wo_s, wo_q1, wo_q2 (wo_m needs no training: it drops the mask).",
    "identity_net": "Differentiable identity network for L_id: facenet (offline port) or none.",
    "expression_net": "Expression network for L_exp: deep3d (with --expression-checkpoint) or none.",
}


@train_app.command("stage2")
def train_stage2(
    data: Annotated[Path, typer.Option(help="Folder of aligned face images (as for stage 1).")],
    stage1: Annotated[Path, typer.Option(help="Stage-1 checkpoint (harness train stage1 ... /checkpoints/last.pt).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder.")] = Path("runs/stage2"),
    variant: Annotated[str, typer.Option(help=_SWAP_HELP["variant"])] = "full",
    layers: Annotated[int, typer.Option(min=1, help="Fusion transformer layers (paper: 6).")] = 6,
    heads: Annotated[int, typer.Option(min=1)] = 8,
    selector_hidden: Annotated[int, typer.Option(min=1)] = 1024,
    same_rate: Annotated[float, typer.Option(help="Share of pairs made of one image twice (L_recon).")] = 0.2,
    identity_net: Annotated[str, typer.Option(help=_SWAP_HELP["identity_net"])] = "facenet",
    expression_net: Annotated[str, typer.Option(help=_SWAP_HELP["expression_net"])] = "none",
    expression_checkpoint: Annotated[Optional[Path], typer.Option()] = None,
    perceptual: Annotated[str, typer.Option(help="vgg16 (paper; local file), mobilenet_v2 (offline) or none.")] = "vgg16",
    w_id: Annotated[float, typer.Option(help="lambda_id (paper: 1.5).")] = 1.5,
    w_per: Annotated[float, typer.Option(help="lambda_per (paper: 2e-3).")] = 2e-3,
    w_exp: Annotated[float, typer.Option(help="lambda_exp (paper: 0.5).")] = 0.5,
    w_cycle: Annotated[float, typer.Option(help="Weight of the code-cycle loss (paper: 1).")] = 1.0,
    batch_size: Annotated[int, typer.Option(min=1)] = 16,
    max_steps: Annotated[int, typer.Option(min=1, help="Paper: 600K for stage 2.")] = 600_000,
    lr: Annotated[float, typer.Option()] = 1e-4,
    ema_decay: Annotated[float, typer.Option()] = 0.0,
    precision: Annotated[str, typer.Option()] = "auto",
    compile: Annotated[bool, typer.Option()] = False,
    num_workers: Annotated[int, typer.Option(min=0)] = 4,
    holdout: Annotated[int, typer.Option(min=0, help="Last N images kept out for validation pairs.")] = 8,
    cache_images: Annotated[bool, typer.Option()] = False,
    log_every: Annotated[int, typer.Option(min=1)] = 50,
    image_every: Annotated[int, typer.Option(min=1)] = 1000,
    ckpt_every: Annotated[int, typer.Option(min=1)] = 5000,
    seed: Annotated[int, typer.Option()] = 0,
    device: Annotated[str, typer.Option()] = "auto",
    resume: Annotated[bool, typer.Option(help="Continue from <out>/checkpoints/last.pt if it exists.")] = False,
    mlflow: Annotated[bool, typer.Option()] = True,
    tracking_uri: Annotated[Optional[str], typer.Option()] = None,
    progress: Annotated[bool, typer.Option()] = True,
) -> None:
    """Stage 2 (paper section 3.2): symmetric code swapping on a frozen stage-1 model."""
    _swap_train("stage2", stage1,
                dict(variant=variant, layers=layers, heads=heads, selector_hidden=selector_hidden, same_rate=same_rate,
                     identity_net=identity_net, expression_net=expression_net,
                     expression_checkpoint=str(expression_checkpoint) if expression_checkpoint else None,
                     perceptual_net=perceptual, identity=w_id, perceptual=w_per, expression=w_exp, cycle=w_cycle),
                dict(data=str(data), out=str(out), batch_size=batch_size, max_steps=max_steps, lr=lr,
                     ema_decay=ema_decay, precision=precision, compile=compile, num_workers=num_workers,
                     holdout=holdout, cache_images=cache_images, log_every=log_every, image_every=image_every,
                     ckpt_every=ckpt_every, seed=seed, device=device, mlflow=mlflow, tracking_uri=tracking_uri,
                     progress=progress),
                resume)


@train_app.command("stage3")
def train_stage3(
    data: Annotated[Path, typer.Option(help="Folder of aligned face images.")],
    stage2: Annotated[Path, typer.Option(help="Stage-2 checkpoint (harness train stage2 ... /checkpoints/last.pt).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder.")] = Path("runs/stage3"),
    supervised_steps: Annotated[int, typer.Option(min=0, help="Steps against face masks before the unsupervised phase.")] = 5000,
    mask_source: Annotated[str, typer.Option(
        help="Supervised mask targets: landmarks (dlib-68 hull, offline) or parsing (BiSeNet face parsing, as the "
             "paper; needs 79999_iter.pth in the weights folder, see `harness weights`).")] = "landmarks",
    identity_net: Annotated[str, typer.Option(help=_SWAP_HELP["identity_net"])] = "facenet",
    expression_net: Annotated[str, typer.Option(help=_SWAP_HELP["expression_net"])] = "none",
    expression_checkpoint: Annotated[Optional[Path], typer.Option()] = None,
    perceptual: Annotated[str, typer.Option(help="vgg16 (paper; local file), mobilenet_v2 (offline) or none.")] = "vgg16",
    w_id: Annotated[float, typer.Option()] = 1.5,
    w_per: Annotated[float, typer.Option()] = 2e-3,
    w_exp: Annotated[float, typer.Option()] = 0.5,
    w_cycle: Annotated[float, typer.Option()] = 1.0,
    batch_size: Annotated[int, typer.Option(min=1)] = 16,
    max_steps: Annotated[int, typer.Option(min=1, help="Paper: 10K for stage 3.")] = 10_000,
    lr: Annotated[float, typer.Option()] = 1e-4,
    precision: Annotated[str, typer.Option()] = "auto",
    num_workers: Annotated[int, typer.Option(min=0)] = 4,
    holdout: Annotated[int, typer.Option(min=0)] = 8,
    cache_images: Annotated[bool, typer.Option()] = False,
    log_every: Annotated[int, typer.Option(min=1)] = 50,
    image_every: Annotated[int, typer.Option(min=1)] = 1000,
    ckpt_every: Annotated[int, typer.Option(min=1)] = 2000,
    seed: Annotated[int, typer.Option()] = 0,
    device: Annotated[str, typer.Option()] = "auto",
    resume: Annotated[bool, typer.Option()] = False,
    mlflow: Annotated[bool, typer.Option()] = True,
    tracking_uri: Annotated[Optional[str], typer.Option()] = None,
    progress: Annotated[bool, typer.Option()] = True,
) -> None:
    """Stage 3 (paper section 3.3): the mask generator, supervised then with the stage-2 losses."""
    _swap_train("stage3", stage2,
                dict(identity_net=identity_net, expression_net=expression_net,
                     expression_checkpoint=str(expression_checkpoint) if expression_checkpoint else None,
                     perceptual_net=perceptual, identity=w_id, perceptual=w_per, expression=w_exp, cycle=w_cycle),
                dict(data=str(data), out=str(out), batch_size=batch_size, max_steps=max_steps, lr=lr,
                     precision=precision, num_workers=num_workers, holdout=holdout, cache_images=cache_images,
                     log_every=log_every, image_every=image_every, ckpt_every=ckpt_every, seed=seed, device=device,
                     mlflow=mlflow, tracking_uri=tracking_uri, progress=progress),
                resume, supervised_steps, mask_source)


figure_app = typer.Typer(help="CodeSwap figures beyond the tables (paper section 4.5).", no_args_is_help=True)
app.add_typer(figure_app, name="figure")


@figure_app.command("regions")
def figure_regions(
    source: Annotated[Path, typer.Option(help="Photo (or aligned crop, with --aligned) giving the identity.")],
    target: Annotated[Path, typer.Option(help="Photo (or aligned crop) giving pose, expression and background.")],
    checkpoint: Annotated[Optional[Path], typer.Option(
        help="Stage-2/3 checkpoint. Default: the tiny demo model (trained once and cached, as in `harness run`).")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for regions.png, regions.npz, regions.json.")] = Path("harness-out/figures"),
    regions: Annotated[str, typer.Option(help="Comma-separated regions, in column order: eyes, mouth, nose.")] = "eyes,mouth,nose",
    aligned: Annotated[bool, typer.Option(help="Inputs are FFHQ-aligned square crops already (no detection).")] = False,
    layer: Annotated[int, typer.Option(help="Fusion layer whose attention is shown (-1: the last).")] = -1,
    margin: Annotated[float, typer.Option(min=0.0, help="Padding of a region's landmark box, as a share of its side.")] = 0.25,
    device: Annotated[str, typer.Option()] = "auto",
) -> None:
    """Regional swap (Figure 8) and region attention maps (Figure 9) for one source/target pair.

    Regions come from the target's 68 landmarks mapped onto the latent grid; the swap changes
    only those codes. regions.npz holds each region's cells and its attention over both faces.
    """
    import json

    import numpy as np

    from codeswap.checkpoints import load_codeswap
    from codeswap.regions import REGION_POINTS, crop_with_landmarks, region_study
    from harness.faces.detect import DlibDetector
    from harness.images import file_sha256, load_rgb, save_png
    from reports.figures import region_figure

    names = tuple(r.strip() for r in regions.split(",") if r.strip())
    unknown = [r for r in names if r not in REGION_POINTS]
    if unknown or not names:
        raise HarnessError(f"--regions {regions!r}: choose from {', '.join(REGION_POINTS)}")
    for p in (source, target):
        if not p.is_file():
            raise HarnessError(f"image not found: {p}")
    ckpt = checkpoint
    if ckpt is None:
        from codeswap.demo import demo_checkpoint

        ckpt = demo_checkpoint("full", log=_echo)
    elif not ckpt.is_file():
        raise HarnessError(f"checkpoint not found: {ckpt}")
    model, meta = load_codeswap(ckpt)
    model = model.to(_device(device))
    side = model.cfg.autoencoder.resolution
    work = max(side, 256)  # crops are shown at >= 256 px; the model resizes to its own side
    detector = DlibDetector(upsample=1)
    src, _, _ = crop_with_landmarks(load_rgb(source), work, aligned, detector)
    tgt, tgt_lm, found = crop_with_landmarks(load_rgb(target), work, aligned, detector)
    n_layers = model.cfg.fusion.layers
    if not -n_layers <= layer < n_layers:
        raise HarnessError(f"--layer {layer} is out of range: the fusion has {n_layers} layers")
    study = region_study(model, src, tgt, tgt_lm, names, layer=layer, margin=margin)
    out.mkdir(parents=True, exist_ok=True)
    png = region_figure(study, src, tgt, out / "regions.png")
    np.savez_compressed(out / "regions.npz", **{f"cells_{k}": v for k, v in study.regions.items()},
                        **{f"attention_{k}": v for k, v in study.attention.items()})
    for k, img in study.swaps.items():
        save_png(out / f"swap_{k}.png", img)
    record = {"checkpoint": str(ckpt), "checkpoint_sha256": meta["sha256"], "stage": meta["stage"],
              "source": str(source), "source_sha256": file_sha256(source), "target": str(target),
              "target_sha256": file_sha256(target), "aligned": aligned, "layer": layer, "margin": margin,
              "target_face_found": found, "cells": {k: int(v.sum()) for k, v in study.regions.items()},
              "attention_share_on_source": study.other_share()}
    (out / "regions.json").write_text(json.dumps(record, indent=1) + "\n")
    typer.echo(f"figure: {png}")
    for k, v in record["attention_share_on_source"].items():
        typer.echo(f"{k}: {int(study.regions[k].sum())} cells, {v:.1%} of their attention on the source")
    if not found:
        typer.echo("note: no face detected in the target crop; its landmarks were predicted in the expected box")


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
