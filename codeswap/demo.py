"""The demo CodeSwap: a small model trained on the 28 bundled demo faces, shipped with the code.

``harness run --method codeswap`` without ``--method-option codeswap.checkpoint=PATH`` uses
it. The default recipe's weights ship in ``codeswap/demo_model/codeswap-demo.pt`` (one
stage-1 autoencoder, and each fusion variant's stage-2 fusion and stage-3 mask), written by
``scripts/build_demo_model.py``; the first use unpacks the variant asked for into ordinary
stage-3 checkpoints under ``~/.cache/codeswap-harness/codeswap-demo/<recipe key>``
(``$HARNESS_CACHE_DIR`` overrides the root). Any other recipe (tests use tiny ones) is
trained on first use instead, stage by stage, and cached the same way.

It is trained on every demo face and judged on the same faces, so its demo numbers are
training-set numbers (the report says so): it shows that the recipe swaps identity on
faces it has seen, at 64x64. It is not a face swapper to judge the paper by.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch

from codeswap.variants import DEMO_LISTING
from faceeval.constants import DEMO_DIR
from faceeval.errors import HarnessError

BUNDLE = DEMO_LISTING.with_suffix(".pt")
BUNDLE_FORMAT = "codeswap-demo-bundle/1"
DEMO_FACES = DEMO_DIR  # the bundled demo faces (protocols/demo_faces)


@dataclass(frozen=True)
class DemoRecipe:
    """Everything that determines the demo model (its hash keys the cache and the bundle).

    Stage 1 is a 64 px prior with a 16x16 latent: at 8x8 (the previous demo) the
    reconstructions of the training faces lost who they were (dlib retrieval 8 %), and no
    swap can carry more identity than its prior keeps; this one keeps all of it (100 %).
    Stage 2 uses the paper's loss weights (without L_per and L_exp, whose networks are not
    available offline), the relative position bias and the code teacher (NOT in the paper:
    ``SwapLossWeights.teacher``); with the paper's losses alone it returned the target.
    Stage 3 trains the mask against its supervised targets only (see ``stage3_steps``). The
    study and the figures: docs/codeswap-cpu-study.md ("Does CodeSwap learn to swap?").
    """

    resolution: int = 64
    channels: tuple[int, ...] = (32, 64, 128)  # 64 -> 32 -> 16 latent
    blocks: tuple[int, ...] = (1, 1, 2)
    norm_groups: int = 16
    num_codes: int = 512
    code_dim: int = 64
    stage1_steps: int = 2500
    restart_dead_every: int = 100
    stage2_steps: int = 600
    stage2_batch_size: int = 16  # pairs a step (stages 1 and 3 use batch_size)
    stage2_lr: float = 1e-3
    # Stage 3 supervised only (400 steps against the landmark-hull masks). NOTE: the paper
    # follows the supervised phase with the stage-2 losses; offline, without L_per and L_exp,
    # only L_id acts there and the mask grows over the whole image (100 such steps: 62 % of
    # the outside of the face, expression error above the source's). At 80 steps the mask
    # was half-trained and kept half of the swap's identity out (dlib top-1 48 % vs 77 % for
    # the raw swap blended by the hull itself). docs/codeswap-cpu-study.md.
    stage3_steps: int = 400
    stage3_supervised: int = 400
    batch_size: int = 8
    lr: float = 4e-4
    layers: int = 4
    heads: int = 4
    selector_hidden: int = 256
    position: str = "relative"
    pos_std: float = 0.02
    mask_level: int | None = 1  # the 32x32 level, the middle of this 3-level prior (paper: 64x64 of 512)
    # recon, identity, perceptual, expression, cycle, teacher (codeswap.swap_losses.SwapLossWeights):
    # the paper's weights without L_per and L_exp (no offline networks), plus the code teacher
    loss_weights: tuple[float, ...] = (1.0, 1.5, 0.0, 0.0, 1.0, 1.0)
    same_rate: float = 0.2
    identity_net: str = "facenet"
    identity_augment: float = 0.0
    paste_rate: float = 0.0
    position_lr_mult: float = 1.0
    identity_size: int = 96  # FaceNet at 96 px: a 64 px face gains nothing from 160, and it costs 2.8x less
    # L_exp's network (codeswap.train.nets.EXPRESSION_NETS; its weight is loss_weights[3]): none in
    # the shipped recipe; blendshapes+whenet are the default suite's networks (issue 27's study)
    expression_net: str = "none"
    # A second stage-2 phase (issue 27's study; none in the shipped recipe): finetune_steps more
    # steps from the first phase's model with finetune_weights (the paper's L_swap with L_exp
    # through expression_net, the teacher's weight fallen to 0), a fresh optimiser. NOTE: not
    # in the paper; the first phase is the teacher warm-up.
    finetune_steps: int = 0
    finetune_weights: tuple[float, ...] = (1.0, 1.5, 0.0, 0.5, 1.0, 0.0)
    # steps over which the second phase's teacher weight (finetune_weights[5]) falls linearly to 0
    finetune_teacher_decay: int = 0
    # the second phase's L_id network ("": identity_net's); sface is a study setting (the judge)
    finetune_identity_net: str = ""
    # Issue 27's study, NOT in the paper (docs/codeswap-cpu-study.md, "which answer"): stage 1
    # on another image folder (e.g. the faces plus every pair's warped answer, so the prior can
    # express them), stage 2's code teacher on given answers per pair (a teacher-answers file
    # from benchmarks/codeswap_teacher_oracle.py) and random mirroring off (the answers are of
    # unmirrored pairs; stages 2 and 3). "" / True: the shipped recipe.
    prior_data: str = ""
    teacher_answers: str = ""
    hflip: bool = True
    holdout: int = 0  # train on every demo face
    seed: int = 0
    # the variants the shipped bundle holds (w/o M runs the full model without its mask); the
    # others train on first use with this recipe when run by name
    variants: tuple[str, ...] = ("full",)

    def autoencoder(self):
        from codeswap.config import AutoencoderConfig, QuantizerConfig

        return AutoencoderConfig(resolution=self.resolution, channels=self.channels, enc_blocks=self.blocks,
                                 dec_blocks=self.blocks, norm_groups=self.norm_groups,
                                 quant=QuantizerConfig(num_codes=self.num_codes, code_dim=self.code_dim))


def cache_root() -> Path:
    """Where demo models are unpacked or trained: ``$HARNESS_CACHE_DIR``, else the harness's cache folder."""
    from faceeval.constants import cache_root as default_root

    base = os.environ.get("HARNESS_CACHE_DIR")
    return Path(base) if base else default_root()


#: recipe fields added after the shipped bundle was built: they enter the key only when set
#: away from their default, so the bundle of a recipe that leaves them alone keeps its key
LATER_FIELDS = ("expression_net", "finetune_steps", "finetune_weights", "finetune_teacher_decay",
                "finetune_identity_net", "prior_data", "teacher_answers", "hflip")
#: later fields naming files or folders: the key holds their content's hash, not the path
CONTENT_FIELDS = ("prior_data", "teacher_answers")
#: the fields that only shape stage 3 (and which variants a bundle holds)
STAGE3_FIELDS = ("stage3_steps", "stage3_supervised", "variants")


def recipe_key(recipe: DemoRecipe) -> str:
    fields = asdict(recipe)
    for name in LATER_FIELDS:
        if fields[name] == getattr(DemoRecipe, name):
            del fields[name]
        elif name in CONTENT_FIELDS:
            fields[name] = _content_sha256(Path(fields[name]))
    h = hashlib.sha256(json.dumps(fields, sort_keys=True).encode())
    h.update((DEMO_FACES / "faces.json").read_bytes())
    return h.hexdigest()[:16]


def _content_sha256(path: Path) -> str:
    """sha256 of a file, or of a folder's files (relative paths and contents, sorted)."""
    from faceeval.images import file_sha256

    if path.is_file():
        return file_sha256(path)
    if not path.is_dir():
        raise HarnessError(f"recipe file or folder not found: {path}")
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f"{f.relative_to(path).as_posix()}\0{file_sha256(f)}\n".encode())
    return h.hexdigest()


def _base(variant: str) -> str:
    from codeswap.model import VARIANTS

    if variant not in VARIANTS:
        raise HarnessError(f"unknown CodeSwap variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    return "full" if variant == "wo_m" else variant  # w/o M runs the full model without its mask


def demo_checkpoint(variant: str, recipe: DemoRecipe = DemoRecipe(), log=print) -> Path:
    """The stage-3 checkpoint for ``variant``: unpacked from the shipped bundle when it holds
    this recipe, else trained (what is missing) and cached."""
    base = _base(variant)
    root = cache_root() / "codeswap-demo" / recipe_key(recipe)
    ckpt = root / f"stage3-{base}" / "checkpoints" / "last.pt"
    if ckpt.is_file() and (ckpt.parents[1] / "DONE").is_file():
        return ckpt
    bundle = load_bundle()
    if bundle is not None and bundle["recipe_key"] == recipe_key(recipe) and base in bundle["variants"]:
        unpack(bundle, base, ckpt, BUNDLE)
        return ckpt
    return train_recipe(root, variant, recipe, log)


def demo_info(recipe: DemoRecipe = DemoRecipe()) -> dict[str, Any] | None:
    """What the report states about the shipped demo model (training data, identity ceiling of
    its prior), from its torch-free listing; None when the recipe is not the shipped one."""
    listing = BUNDLE.with_suffix(".json")
    if not listing.is_file():
        return None
    info = json.loads(listing.read_text())
    if info.get("recipe_key") != recipe_key(recipe):
        return None
    return {"training": info["training"], "ceiling": info.get("ceiling", {})}


# --- the shipped bundle ---------------------------------------------------------------------
def load_bundle(path: Path | None = None) -> dict[str, Any] | None:
    """The shipped bundle (or the file ``path``); None when there is none."""
    path = path or BUNDLE
    if not path.is_file():
        return None
    try:
        bundle = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file
        raise HarnessError(f"cannot load the demo model {path}: {exc}") from None
    if not isinstance(bundle, dict) or bundle.get("format") != BUNDLE_FORMAT:
        raise HarnessError(f"{path} is not a {BUNDLE_FORMAT} file")
    return bundle


def unpack(bundle: dict[str, Any], base: str, ckpt: Path, source: Path) -> None:
    """Write ``base``'s stage-3 checkpoint (the layout ``load_codeswap`` reads), atomically."""
    from codeswap.train.state import atomic_torch_save
    from faceeval.images import file_sha256

    v = bundle["variants"][base]
    state = {**{f"autoencoder.{k}": t.float() for k, t in bundle["autoencoder"].items()},
             **{f"fusion.{k}": t.float() for k, t in v["fusion"].items()},
             **{f"mask.{k}": t.float() for k, t in v["mask"].items()}}
    atomic_torch_save({"stage": "stage3", "step": v["step"], "codeswap": state, "ema": None,
                       "codeswap_config": v["codeswap_config"], "swap_config": v["swap_config"],
                       "stage1_sha256": bundle["stage1_sha256"], "demo_bundle_sha256": file_sha256(source)},
                      ckpt)
    (ckpt.parents[1] / "DONE").write_text("unpacked from the shipped demo model\n")


def _part(weights: dict[str, Any], prefix: str) -> dict[str, Any]:
    """The entries of a state dict under ``prefix``, the prefix removed."""
    return {k[len(prefix):]: t for k, t in weights.items() if k.startswith(prefix)}


def pack(recipe: DemoRecipe, root: Path, out: Path, training: dict[str, Any], ceiling: dict[str, Any]) -> Path:
    """Build the bundle from a trained cache folder ``root`` (every variant of the recipe)."""
    from codeswap.train.state import atomic_torch_save
    from faceeval.images import file_sha256

    variants, autoencoder = {}, None
    for base in recipe.variants:
        path = root / f"stage3-{base}" / "checkpoints" / "last.pt"
        state = torch.load(path, map_location="cpu", weights_only=True)
        weights = state["ema"] if state.get("ema") is not None else state["codeswap"]
        ae = _part(weights, "autoencoder.")
        if autoencoder is None:
            autoencoder = ae
        elif any(not torch.equal(autoencoder[k], ae[k]) for k in ae):
            raise HarnessError(f"variant {base} was trained on another stage-1 model")
        variants[base] = {"step": state["step"], "fusion": _part(weights, "fusion."), "mask": _part(weights, "mask."),
                          "codeswap_config": state["codeswap_config"],
                          "swap_config": {"identity_net": recipe.identity_net, "variant": base}}
    s1 = root / "stage1" / "checkpoints" / "last.pt"
    bundle = {"format": BUNDLE_FORMAT, "recipe": asdict(recipe), "recipe_key": recipe_key(recipe),
              "stage1_sha256": file_sha256(s1), "autoencoder": autoencoder, "variants": variants,
              "training": training, "ceiling": ceiling}
    atomic_torch_save(bundle, out)
    # a torch-free listing beside it: what the registry and the report read
    listing = {"file": out.name, "sha256": file_sha256(out), "recipe_key": bundle["recipe_key"],
               "variants": list(variants), "stage1_sha256": bundle["stage1_sha256"], "training": training,
               "ceiling": ceiling, "recipe": _jsonable(asdict(recipe))}
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(listing, indent=1) + "\n")
    tmp.replace(out.with_suffix(".json"))
    return out


#: the DemoRecipe fields that determine its stage-1 prior
STAGE1_FIELDS = ("resolution", "channels", "blocks", "norm_groups", "num_codes", "code_dim", "stage1_steps",
                 "restart_dead_every", "batch_size", "lr", "holdout", "seed")


def stage1_from_bundle(recipe: DemoRecipe, stage1_dir: Path) -> Path | None:
    """Write the shipped bundle's prior as ``stage1_dir``'s finished checkpoint when ``recipe``
    trains the same prior (every :data:`STAGE1_FIELDS` equal, same faces), so that a recipe
    differing only after stage 1 does not spend half an hour retraining it; None otherwise."""
    from codeswap.checkpoints import plain
    from codeswap.train.state import atomic_torch_save
    from faceeval.images import file_sha256

    bundle = load_bundle()
    if bundle is None or not _shipped_trains_alike(bundle, recipe, STAGE1_FIELDS):
        return None
    ckpt = stage1_dir / "checkpoints" / "last.pt"
    atomic_torch_save({"stage": "stage1", "step": recipe.stage1_steps, "model_config": plain(recipe.autoencoder()),
                       "model": {k: t.float() for k, t in bundle["autoencoder"].items()}, "ema": None,
                       "unpacked_from": {"bundle_sha256": file_sha256(BUNDLE),
                                         "stage1_sha256": bundle["stage1_sha256"]}},
                      ckpt)
    (stage1_dir / "DONE").write_text("the shipped demo model's prior (codeswap.demo.stage1_from_bundle)\n")
    return ckpt


def shipped_stage2(recipe: DemoRecipe, base: str, folder: Path) -> Path | None:
    """The shipped bundle's ``base`` model unpacked under ``folder`` when ``recipe``'s first
    stage-2 phase is the shipped recipe's (every field equal but :data:`LATER_FIELDS` and
    :data:`STAGE3_FIELDS`, same faces): a second phase then starts from it instead of
    retraining the first (its fusion weights only: see ``codeswap.train.stage2.warm_start``).
    None otherwise."""
    bundle = load_bundle()
    first_phase = [f.name for f in fields(recipe) if f.name not in (*LATER_FIELDS, *STAGE3_FIELDS)]
    if bundle is None or base not in bundle["variants"] or not _shipped_trains_alike(bundle, recipe, first_phase):
        return None
    ckpt = folder / "checkpoints" / "last.pt"
    if not ckpt.is_file():
        unpack(bundle, base, ckpt, BUNDLE)
    return ckpt


def _shipped_trains_alike(bundle: dict[str, Any], recipe: DemoRecipe, names) -> bool:
    """Whether the shipped ``bundle`` was trained on the same faces with ``recipe``'s values of
    the recipe fields ``names``."""
    shipped = {k: tuple(v) if isinstance(v, list) else v for k, v in bundle["recipe"].items()}
    same_faces = bundle.get("training", {}).get("faces_json_sha256") == _faces_sha256()
    return same_faces and all(shipped.get(k) == getattr(recipe, k) for k in names)


def _faces_sha256() -> str:
    from faceeval.images import file_sha256

    return file_sha256(DEMO_FACES / "faces.json")


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


# --- training ----------------------------------------------------------------------------------
def train_recipe(root: Path, variant: str, recipe: DemoRecipe, log=print, device: str = "cpu",
                 data: Path = DEMO_FACES) -> Path:
    """Train what is missing of ``recipe`` for ``variant`` on the faces in ``data`` under
    ``root`` (stage1/, stage2-<v>/, stage3-<v>/; each resumes from its last checkpoint) and
    return the stage-3 checkpoint."""
    base = _base(variant)
    # callers may sit inside torch.no_grad() / inference_mode() (a method's swap): training needs grad
    with torch.inference_mode(False), torch.enable_grad():
        return _train_missing(Path(root), base, recipe, log, device, Path(data))


def _train_missing(root: Path, base: str, recipe: DemoRecipe, log, device: str, data: Path) -> Path:
    """Train the stages of ``recipe`` for ``base`` not finished under ``root`` (stage 1, stage 2
    and its second phase, stage 3, in that order) and return the stage-3 checkpoint."""
    from codeswap.train.dist import cleanup_distributed

    common = dict(data=str(data), batch_size=recipe.batch_size, lr=recipe.lr, device=device, num_workers=0,
                  holdout=recipe.holdout, cache_images=True, log_every=25, image_every=10**9, mlflow=False,
                  progress=sys.stderr.isatty(), seed=recipe.seed)
    try:
        s1 = _demo_stage1(root / "stage1", recipe, log, data, common)
        swap_kw = _swap_settings(recipe)
        common = {**common, "hflip": recipe.hflip}  # stages 2 and 3 (the prior mirrors at will)
        s2 = _demo_stage2(root, base, recipe, log, data, common, s1, swap_kw)
        return _demo_stage3(root / f"stage3-{base}", base, recipe, log, common, s2, swap_kw)
    finally:
        cleanup_distributed()


def _stage_done(stage_dir: Path) -> Path | None:
    """The last checkpoint of a finished stage (``DONE`` written next to it), else None."""
    p = stage_dir / "checkpoints" / "last.pt"
    return p if p.is_file() and (stage_dir / "DONE").is_file() else None


def _mark_done(stage_dir: Path) -> Path:
    """Mark a stage finished and return its last checkpoint."""
    (stage_dir / "DONE").write_text("ok\n")
    return stage_dir / "checkpoints" / "last.pt"


def _ckpt_every(steps: int) -> int:
    """Checkpoint interval of a stage of ``steps`` steps."""
    return max(1, min(steps, 250))  # checkpoint often: a killed training resumes


def _swap_settings(recipe: DemoRecipe) -> dict[str, Any]:
    """The ``SwapTrainConfig`` fields of ``recipe`` that stage 2 and stage 3 share."""
    from codeswap.swap_losses import SwapLossWeights

    return dict(layers=recipe.layers, heads=recipe.heads, selector_hidden=recipe.selector_hidden,
                position=recipe.position, pos_std=recipe.pos_std, mask_level=recipe.mask_level,
                weights=SwapLossWeights(*recipe.loss_weights),
                same_rate=recipe.same_rate, identity_net=recipe.identity_net,
                identity_size=recipe.identity_size, identity_augment=recipe.identity_augment,
                paste_rate=recipe.paste_rate, position_lr_mult=recipe.position_lr_mult,
                expression_net=recipe.expression_net, perceptual_net="none")


def _shipped_prior(recipe: DemoRecipe, data: Path) -> bool:
    """Whether the recipe's prior is trained on the demo faces alone, as the shipped bundle's
    is (so the bundle's stage 1, and its stage 2 under a second phase, can stand in)."""
    return data == DEMO_FACES and not recipe.prior_data


def _demo_stage1(s1_dir: Path, recipe: DemoRecipe, log, data: Path, common: dict[str, Any]) -> Path:
    """Stage 1 in ``s1_dir``: finished already, unpacked from the shipped bundle (demo faces
    only), or trained; return its checkpoint."""
    from codeswap.config import LossConfig, TrainConfig

    if recipe.prior_data and recipe.holdout:
        raise HarnessError("a recipe with prior_data cannot hold faces out: the prior's folder is not split "
                           "(its images may show the held-out faces)")
    s1 = _stage_done(s1_dir) or (stage1_from_bundle(recipe, s1_dir) if _shipped_prior(recipe, data) else None)
    if s1 is None:
        from codeswap.train.stage1 import Stage1Trainer

        prior_data = recipe.prior_data or str(data)
        log(f"codeswap demo: training stage 1 ({recipe.stage1_steps} steps, {recipe.resolution}x"
            f"{recipe.resolution}) on {prior_data} in {s1_dir}")
        cfg = TrainConfig(out=str(s1_dir), max_steps=recipe.stage1_steps, ckpt_every=_ckpt_every(recipe.stage1_steps),
                          restart_dead_every=recipe.restart_dead_every, **{**common, "data": prior_data})
        Stage1Trainer(cfg, recipe.autoencoder(),
                      LossConfig(perceptual_net="none", disc_start=10**9)).run(resume=True)
        s1 = _mark_done(s1_dir)
    return s1


def _demo_stage2(root: Path, base: str, recipe: DemoRecipe, log, data: Path, common: dict[str, Any], s1: Path,
                 swap_kw: dict[str, Any]) -> Path:
    """Stage 2 of ``base`` on the prior ``s1`` (finished already, the shipped first phase, or
    trained), then its second phase where ``recipe`` has one; return the checkpoint stage 3
    starts from."""
    from codeswap.config import TrainConfig
    from codeswap.train.stage2 import Stage2Trainer, SwapTrainConfig

    s2_dir = root / f"stage2-{base}"
    s2 = _stage_done(s2_dir)
    if s2 is None and recipe.finetune_steps and _shipped_prior(recipe, data):
        s2 = shipped_stage2(recipe, base, root / f"shipped-{base}")  # the first phase, already trained
    if s2 is None:
        log(f"codeswap demo: training stage 2, variant {base} ({recipe.stage2_steps} steps) in {s2_dir}")
        cfg = TrainConfig(out=str(s2_dir), max_steps=recipe.stage2_steps, ckpt_every=_ckpt_every(recipe.stage2_steps),
                          **{**common, "batch_size": recipe.stage2_batch_size, "lr": recipe.stage2_lr})
        sc = SwapTrainConfig(stage1=str(s1), variant=base, teacher_answers=recipe.teacher_answers or None, **swap_kw)
        Stage2Trainer(cfg, sc).run(resume=True)
        s2 = _mark_done(s2_dir)
    if recipe.finetune_steps:
        s2 = _demo_stage2_second_phase(root / f"stage2b-{base}", base, recipe, log, common, s1, s2, swap_kw)
    return s2


def _demo_stage2_second_phase(s2b_dir: Path, base: str, recipe: DemoRecipe, log, common: dict[str, Any], s1: Path,
                              s2: Path, swap_kw: dict[str, Any]) -> Path:
    """Stage 2's second phase in ``s2b_dir`` (``recipe.finetune_steps`` from ``s2``, with the
    fine-tuning loss weights and the teacher's decay): finished already, or trained."""
    from codeswap.config import TrainConfig
    from codeswap.train.stage2 import Stage2Trainer, SwapTrainConfig

    s2b = _stage_done(s2b_dir)
    if s2b is None:
        log(f"codeswap demo: stage 2, second phase ({recipe.finetune_steps} steps from {s2}) in {s2b_dir}")
        cfg = TrainConfig(out=str(s2b_dir), max_steps=recipe.finetune_steps,
                          ckpt_every=_ckpt_every(recipe.finetune_steps),
                          **{**common, "batch_size": recipe.stage2_batch_size, "lr": recipe.stage2_lr})
        sc = SwapTrainConfig(stage1=str(s1), init=str(s2), variant=base,
                             teacher_decay_steps=recipe.finetune_teacher_decay,
                             **_second_phase_settings(recipe, swap_kw))
        Stage2Trainer(cfg, sc).run(resume=True)
        s2b = _mark_done(s2b_dir)
    return s2b


def _second_phase_settings(recipe: DemoRecipe, swap_kw: dict[str, Any]) -> dict[str, Any]:
    """The ``SwapTrainConfig`` fields of stage 2's second phase: stage 2's, with the
    fine-tuning loss weights and its L_id network."""
    from codeswap.swap_losses import SwapLossWeights

    return {**swap_kw, "weights": SwapLossWeights(*recipe.finetune_weights),
            "identity_net": recipe.finetune_identity_net or recipe.identity_net}


def _stage3_settings(recipe: DemoRecipe, swap_kw: dict[str, Any]) -> dict[str, Any]:
    """Stage 3's ``SwapTrainConfig`` fields: stage 2's; with a second stage-2 phase, its
    weights (the paper's L_swap with L_exp) act in the mask's unsupervised phase, the teacher
    (codes only, the fusion is frozen here) off. The supervised phase uses none of them."""
    from dataclasses import replace

    if not recipe.finetune_steps:
        return swap_kw
    phase = _second_phase_settings(recipe, swap_kw)  # its L_id network is what the checkpoint names
    return {**phase, "weights": replace(phase["weights"], teacher=0.0)}


def _demo_stage3(s3_dir: Path, base: str, recipe: DemoRecipe, log, common: dict[str, Any], s2: Path,
                 swap_kw: dict[str, Any]) -> Path:
    """Stage 3 (the mask) of ``base`` on the stage-2 checkpoint ``s2``, in ``s3_dir``: finished
    already, or trained; return its checkpoint."""
    # every fusion variant gets its own mask (stage 3), so Table 3 compares like with like
    from codeswap.config import TrainConfig
    from codeswap.train.stage2 import SwapTrainConfig
    from codeswap.train.stage3 import MaskTrainConfig, Stage3Trainer

    s3 = _stage_done(s3_dir)
    if s3 is None:
        log(f"codeswap demo: training stage 3, variant {base} ({recipe.stage3_steps} steps) in {s3_dir}")
        cfg = TrainConfig(out=str(s3_dir), max_steps=recipe.stage3_steps, ckpt_every=_ckpt_every(recipe.stage3_steps),
                          **common)
        Stage3Trainer(cfg, SwapTrainConfig(stage1=str(s2), variant=base, **_stage3_settings(recipe, swap_kw)),
                      MaskTrainConfig(supervised_steps=recipe.stage3_supervised)).run(resume=True)
        s3 = _mark_done(s3_dir)
    return s3
