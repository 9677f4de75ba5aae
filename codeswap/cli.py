"""The CodeSwap commands: ``harness train stage1|stage2|stage3`` and ``harness figure regions``.

``harness/cli.py`` mounts :data:`train_app` and :data:`figure_app` with ``add_typer``.

A training option is not declared here: it is a field of a frozen config in
:mod:`codeswap.config` whose default is a :func:`faceeval.options.setting`. A command names
the fields it offers (:class:`Offer`) and :func:`with_settings` turns them into Typer
options (name, type, default, help, lower bound from the field) and hands the command the
built configs, so the CLI and the dataclasses cannot disagree on a default.
"""

from __future__ import annotations

import functools
import inspect
import sys
import typing
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from codeswap.config import (
    STAGE_TRAIN,
    AutoencoderConfig,
    LossConfig,
    MaskTrainConfig,
    SwapLossWeights,
    SwapTrainConfig,
    TrainConfig,
)
from faceeval.errors import HarnessError

if typing.TYPE_CHECKING:
    import numpy as np

    from codeswap.regions import RegionStudy

train_app = typer.Typer(help="Train the CodeSwap networks (one command per stage; torchrun for several GPUs).",
                        no_args_is_help=True)
figure_app = typer.Typer(help="CodeSwap figures beyond the tables (paper section 4.5).", no_args_is_help=True)


# --- options from config fields ------------------------------------------------------------
@dataclass(frozen=True)
class Offer:
    """The fields of one config that a command offers as options. ``defaults``: an instance
    (its values are the defaults, e.g. a stage's :data:`STAGE_TRAIN` entry) or the class
    itself (the fields' own defaults; built only when the command runs). ``flags``: option
    names for a field where this command names it otherwise."""

    defaults: Any
    names: tuple[str, ...]
    flags: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def cls(self) -> type:
        return self.defaults if isinstance(self.defaults, type) else type(self.defaults)

    def default(self, f) -> Any:
        if not isinstance(self.defaults, type):
            return getattr(self.defaults, f.name)
        return f.default if f.default is not MISSING else f.default_factory()

    def build(self, values: dict[str, Any]) -> Any:
        if isinstance(self.defaults, type):
            return self.defaults(**values)
        return replace(self.defaults, **values)


@dataclass(frozen=True)
class _Bound:
    group: str
    name: str  # field name
    flag: str  # the option's first name, for messages
    choices: tuple[Any, ...]  # a Literal field's values (checked when the command runs)
    path: bool


def _cli_type(hint: Any, path: bool) -> tuple[Any, tuple[Any, ...]]:
    """A field's type as Typer takes it, and the choices of a Literal."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) is Literal:
        return type(args[0]), args
    # a tuple of X (alone or in a union): the option is repeated, one X each time
    repeated = [hint] if typing.get_origin(hint) is tuple else [a for a in args if typing.get_origin(a) is tuple]
    if repeated:
        item = typing.get_args(repeated[0])[0]
        return list[Path if path else item], ()  # type: ignore[valid-type]
    if type(None) in args:  # X | None
        (inner,) = [a for a in args if a is not type(None)]
        return (Path if path else inner) | None, ()
    return (Path if path else hint), ()


def _options(offer: Offer) -> list[tuple[inspect.Parameter, _Bound]]:
    hints = typing.get_type_hints(offer.cls)
    by_name = {f.name: f for f in fields(offer.cls)}
    out = []
    for name in offer.names:
        f = by_name[name]
        meta = f.metadata
        if "help" not in meta:
            raise TypeError(f"{offer.cls.__name__}.{name} is offered as an option but is not a setting(...)")
        named = tuple(offer.flags.get(name) or meta["flags"])
        flags = named or ("--" + name.replace("_", "-"),)
        typ, choices = _cli_type(hints[name], meta["path"])
        default = inspect.Parameter.empty if meta["required"] else offer.default(f)
        if meta["path"] and isinstance(default, str):
            default = Path(default)
        if isinstance(default, tuple):  # a repeated option: Typer takes a list
            default = list(default)
        # no names given: Typer derives them from the parameter (--x, or --x/--no-x for a bool)
        info = typer.Option(*named, help=meta["help"], min=meta["min"])
        param = inspect.Parameter(flags[0].lstrip("-").replace("-", "_"), inspect.Parameter.KEYWORD_ONLY,
                                  default=default, annotation=Annotated[typ, info])
        out.append((param, _Bound("", name, flags[0], choices, meta["path"])))
    return out


def with_settings(**offers: Offer) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Decorate a command whose parameters named like ``offers`` take configs: the command
    line gets one option per offered field, and the command gets each config built from
    its defaults and the values given (a Literal field's value checked against its choices)."""

    def wrap(command: Callable[..., None]) -> Callable[..., None]:
        own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
               for p in inspect.signature(command, eval_str=True).parameters.values() if p.name not in offers]
        bound: dict[str, _Bound] = {}
        params = []
        for group, offer in offers.items():
            for param, b in _options(offer):
                if param.name in bound or any(p.name == param.name for p in own):
                    raise TypeError(f"two options of {command.__name__} are named {param.name}")
                bound[param.name] = replace(b, group=group)
                params.append(param)

        @functools.wraps(command)
        def run(**values: Any) -> None:
            changes: dict[str, dict[str, Any]] = {group: {} for group in offers}
            for pname, b in bound.items():
                v = values[pname]
                if b.choices and v not in b.choices:
                    raise HarnessError(f"unknown {b.flag} {v!r}; choose {', '.join(map(str, b.choices[:-1]))} "
                                       f"or {b.choices[-1]}")
                if isinstance(v, list):  # a repeated option: the field holds a tuple
                    v = tuple(str(x) if b.path else x for x in v)
                elif b.path and v is not None:
                    v = str(v)
                changes[b.group][b.name] = v
            configs = {}
            for group, offer in offers.items():
                try:
                    configs[group] = offer.build(changes[group])
                except ValueError as exc:
                    raise HarnessError(str(exc)) from None
            command(**{k: v for k, v in values.items() if k not in bound}, **configs)

        run.__signature__ = inspect.Signature(params + own)  # type: ignore[attr-defined]
        run.__annotations__ = {p.name: p.annotation for p in params + own}
        return run

    return wrap


def _stage_loop_options(stage: str, extra: tuple[str, ...] = ()) -> Offer:
    common = ("data", "out", "batch_size", "max_steps", "lr", "precision", "num_workers", "holdout", "cache_images",
              "log_every", "image_every", "ckpt_every", "seed", "device", "mlflow", "tracking_uri", "progress")
    return Offer(STAGE_TRAIN[stage], common + extra)


SWAP_NETS = ("identity_net", "expression_net", "expression_checkpoint", "perceptual_net")
LOSS_WEIGHTS = Offer(SwapLossWeights(), ("identity", "perceptual", "expression", "cycle", "teacher"))
ResumeOpt = Annotated[bool, typer.Option(help="Continue from <out>/checkpoints/last.pt if it exists.")]


def _echo(msg: str) -> None:
    typer.echo(msg, err=True)


def _train(make: Callable[[], Any], resume: bool, shown: tuple[str, ...]) -> None:
    """Build a trainer, run it (always leaving the process group), print where it ended."""
    from codeswap.train.dist import cleanup_distributed

    try:
        trainer = make()
        last = trainer.run(resume=resume)
    finally:
        cleanup_distributed()
    if trainer.dist.is_main:
        figures = ", ".join(f"{k}={v:.4g}" for k, v in sorted(last.items()) if k.startswith(shown))
        typer.echo(f"{trainer.stage}: step {trainer.step}, {figures}")
        typer.echo(f"checkpoint: {trainer.ckpt_dir / 'last.pt'}")
        if trainer.cfg.mlflow:
            typer.echo(f"mlflow: {trainer.tracker.uri}")


def _on_terminal(train: TrainConfig) -> TrainConfig:
    return replace(train, progress=train.progress and sys.stderr.isatty())


# --- train ------------------------------------------------------------------------------------
@train_app.command("stage1")
@with_settings(train=_stage_loop_options("stage1", ("ema_decay", "compile", "channels_last", "fused_adam",
                                                    "fused_attention", "keep_every", "restart_dead_every")),
               loss=Offer(LossConfig(), ("disc_start", "disc_weight", "perceptual_net", "perceptual_weight")),
               model=Offer(AutoencoderConfig, ("checkpoint_levels",)))
def train_stage1(
    train: TrainConfig,
    loss: LossConfig,
    model: AutoencoderConfig,
    config: Annotated[str, typer.Option(help="Model: paper (the paper's VQGAN), fast (narrow schedule), "
                                              "codeformer (CodeFormer's VQGAN, 256-d codes) or tiny.")] = "paper",
    resolution: Annotated[int | None, typer.Option(help="Override the config's image size.")] = None,
    resume: ResumeOpt = False,
) -> None:
    """Stage 1 (paper section 3.1): encoder, 1,024-code codebook and decoder by reconstruction + PatchGAN."""
    from codeswap.config import MODEL_CONFIGS
    from codeswap.train.stage1 import Stage1Trainer

    if config not in MODEL_CONFIGS:
        raise HarnessError(f"unknown --config {config!r}; choose {', '.join(MODEL_CONFIGS)}")
    try:
        model_cfg = replace(MODEL_CONFIGS[config], checkpoint_levels=model.checkpoint_levels,
                            **({"resolution": resolution} if resolution else {}))
    except ValueError as exc:
        raise HarnessError(f"--config {config} --resolution {resolution}: {exc}") from None
    _train(lambda: Stage1Trainer(_on_terminal(train), model_cfg, loss), resume, ("train/rec_l1", "val/"))


@train_app.command("stage2")
@with_settings(train=_stage_loop_options("stage2", ("ema_decay", "compile", "hflip")),
               swap=Offer(SwapTrainConfig(), ("stage1", "init", "variant", "layers", "heads", "selector_hidden",
                                              "position", "pos_std", "mask_level", "same_rate", *SWAP_NETS,
                                              "identity_augment", "teacher_decay_steps", "teacher_answers")),
               weights=LOSS_WEIGHTS)
def train_stage2(train: TrainConfig, swap: SwapTrainConfig, weights: SwapLossWeights,
                 resume: ResumeOpt = False) -> None:
    """Stage 2 (paper section 3.2): symmetric code swapping on a frozen stage-1 model."""
    from codeswap.train.stage2 import Stage2Trainer

    swap = replace(swap, weights=weights)
    _train(lambda: Stage2Trainer(_on_terminal(train), swap), resume, ("train/g_total", "val/"))


@train_app.command("stage3")
@with_settings(train=_stage_loop_options("stage3"),
               swap=Offer(SwapTrainConfig(), ("stage1", *SWAP_NETS), flags={"stage1": ("--stage2",)}),
               weights=LOSS_WEIGHTS,
               mask=Offer(MaskTrainConfig, ("supervised_steps", "mask_source")))
def train_stage3(train: TrainConfig, swap: SwapTrainConfig, weights: SwapLossWeights, mask: MaskTrainConfig,
                 resume: ResumeOpt = False) -> None:
    """Stage 3 (paper section 3.3): the mask generator, supervised then with the stage-2 losses.

    --stage2 is the stage-2 checkpoint the mask generator is added to."""
    from codeswap.train.stage3 import Stage3Trainer

    swap = replace(swap, weights=weights)
    _train(lambda: Stage3Trainer(_on_terminal(train), swap, mask), resume, ("train/g_total", "val/"))


# --- figure -----------------------------------------------------------------------------------
@figure_app.command("regions")
def figure_regions(
    source: Annotated[Path, typer.Option(help="Photo (or aligned crop, with --aligned) giving the identity.")],
    target: Annotated[Path, typer.Option(help="Photo (or aligned crop) giving pose, expression and background.")],
    checkpoint: Annotated[Path | None, typer.Option(
        help="Stage-2/3 checkpoint. Default: the tiny demo model (trained once and cached, "
        "as in `harness run`).")] = None,
    out: Annotated[Path, typer.Option(
        "--out", "-o", help="Folder for regions.png, regions.npz, regions.json.")] = Path("harness-out/figures"),
    regions: Annotated[str, typer.Option(
        help="Comma-separated regions, in column order: eyes, mouth, nose.")] = "eyes,mouth,nose",
    aligned: Annotated[bool, typer.Option(help="Inputs are FFHQ-aligned square crops already (no detection).")] = False,
    layer: Annotated[int, typer.Option(help="Fusion layer whose attention is shown (-1: the last).")] = -1,
    margin: Annotated[float, typer.Option(
        min=0.0, help="Padding of a region's landmark box, as a share of its side.")] = 0.25,
    device: Annotated[str, typer.Option()] = "auto",
) -> None:
    """Regional swap (Figure 8) and region attention maps (Figure 9) for one source/target pair.

    Regions come from the target's 68 landmarks mapped onto the latent grid; the swap changes
    only those codes. regions.npz holds each region's cells and its attention over both faces.
    """
    import json

    from codeswap.checkpoints import load_codeswap
    from codeswap.regions import crop_with_landmarks, region_study
    from codeswap.train.dist import resolve_device
    from faceeval.faces.detect import DlibDetector
    from faceeval.images import file_sha256, load_rgb

    names = _region_names(regions)
    for p in (source, target):
        if not p.is_file():
            raise HarnessError(f"image not found: {p}")
    ckpt = _regions_checkpoint(checkpoint)
    model, meta = load_codeswap(ckpt)
    model = model.to(resolve_device(device))
    side = model.cfg.autoencoder.resolution
    work = max(side, 256)  # crops are shown at >= 256 px; the model resizes to its own side
    detector = DlibDetector(upsample=1)
    src, _, _ = crop_with_landmarks(load_rgb(source), work, aligned, detector)
    tgt, tgt_lm, found = crop_with_landmarks(load_rgb(target), work, aligned, detector)
    n_layers = model.cfg.fusion.layers
    if not -n_layers <= layer < n_layers:
        raise HarnessError(f"--layer {layer} is out of range: the fusion has {n_layers} layers")
    study = region_study(model, src, tgt, tgt_lm, names, layer=layer, margin=margin)
    png = _save_region_study(out, study, src, tgt)
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


def _region_names(regions: str) -> tuple[str, ...]:
    """The region names of ``--regions`` (comma-separated), each one of ``REGION_POINTS``."""
    from codeswap.regions import REGION_POINTS

    names = tuple(r.strip() for r in regions.split(",") if r.strip())
    unknown = [r for r in names if r not in REGION_POINTS]
    if unknown or not names:
        raise HarnessError(f"--regions {regions!r}: choose from {', '.join(REGION_POINTS)}")
    return names


def _regions_checkpoint(checkpoint: Path | None) -> Path:
    """``--checkpoint``, checked, or the demo model's (trained on first use)."""
    if checkpoint is None:
        from codeswap.demo import demo_checkpoint

        return demo_checkpoint("full", log=_echo)
    if not checkpoint.is_file():
        raise HarnessError(f"checkpoint not found: {checkpoint}")
    return checkpoint


def _save_region_study(out: Path, study: RegionStudy, src: np.ndarray, tgt: np.ndarray) -> Path:
    """Write the figure (regions.png), regions.npz and each region's swap (swap_<region>.png) into
    ``out``; return the figure's path. ``src``, ``tgt``: the (S, S, 3) uint8 crops studied."""
    import numpy as np

    from codeswap.regions import region_figure
    from faceeval.images import save_png

    out.mkdir(parents=True, exist_ok=True)
    png = region_figure(study, src, tgt, out / "regions.png")
    np.savez_compressed(out / "regions.npz", **{f"cells_{k}": v for k, v in study.regions.items()},
                        **{f"attention_{k}": v for k, v in study.attention.items()})
    for k, img in study.swaps.items():
        save_png(out / f"swap_{k}.png", img)
    return png
