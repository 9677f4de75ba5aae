"""A tiny CodeSwap trained on the bundled demo faces, for runs without a checkpoint.

``harness run --method codeswap`` without ``--method-option codeswap.checkpoint=PATH``
trains this once (stage 1, then stage 2 for each variant asked for, then stage 3 for the
full model) and caches the checkpoints under ``~/.cache/codeswap-harness/codeswap-demo``
(``$HARNESS_CACHE_DIR`` overrides the root), keyed by the recipe and the demo faces. It
shows the whole pipeline working on CPU in minutes; it is not a face swapper anyone
should judge the paper by (64x64 images, 28 faces, a few hundred steps).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from harness.errors import HarnessError


@dataclass(frozen=True)
class DemoRecipe:
    stage1_steps: int = 400
    stage2_steps: int = 80
    stage3_steps: int = 30
    stage3_supervised: int = 20
    batch_size: int = 8
    lr: float = 4e-4
    layers: int = 2
    heads: int = 4
    selector_hidden: int = 128
    identity_net: str = "facenet"
    identity_size: int = 96  # FaceNet at 96 px: a 64 px face gains nothing from 160, and it costs 2.8x less
    seed: int = 0


def cache_root() -> Path:
    base = os.environ.get("HARNESS_CACHE_DIR")
    return Path(base) if base else Path.home() / ".cache" / "codeswap-harness"


def _key(recipe: DemoRecipe) -> str:
    from harness.constants import DEMO_DIR

    h = hashlib.sha256(json.dumps(asdict(recipe), sort_keys=True).encode())
    h.update((DEMO_DIR / "faces.json").read_bytes())
    return h.hexdigest()[:16]


def demo_checkpoint(variant: str, recipe: DemoRecipe = DemoRecipe(), log=print) -> Path:
    """The checkpoint for ``variant`` (``wo_m`` shares the full model's), training what is missing."""
    from codeswap.model import VARIANTS
    from harness.constants import DEMO_DIR

    if variant not in VARIANTS:
        raise HarnessError(f"unknown CodeSwap variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    root = cache_root() / "codeswap-demo" / _key(recipe)
    common = dict(data=str(DEMO_DIR), batch_size=recipe.batch_size, lr=recipe.lr, device="cpu", num_workers=0,
                  holdout=4, cache_images=True, log_every=25, image_every=10**9, mlflow=False, progress=False,
                  seed=recipe.seed)

    # callers may sit inside torch.no_grad() / inference_mode() (a method's swap): training needs grad
    with torch.inference_mode(False), torch.enable_grad():
        return _train_missing(root, variant, recipe, common, log)


def _train_missing(root: Path, variant: str, recipe: DemoRecipe, common: dict, log) -> Path:
    from codeswap.config import TINY, LossConfig, TrainConfig
    from codeswap.train.dist import cleanup_distributed

    def done(stage_dir: Path) -> Path | None:
        p = stage_dir / "checkpoints" / "last.pt"
        return p if p.is_file() and (stage_dir / "DONE").is_file() else None

    def mark(stage_dir: Path) -> Path:
        (stage_dir / "DONE").write_text("ok\n")
        return stage_dir / "checkpoints" / "last.pt"

    try:
        s1_dir = root / "stage1"
        s1 = done(s1_dir)
        if s1 is None:
            from codeswap.train.stage1 import Stage1Trainer

            log(f"codeswap demo: training stage 1 ({recipe.stage1_steps} steps, 64x64) in {s1_dir}")
            cfg = TrainConfig(out=str(s1_dir), max_steps=recipe.stage1_steps, ckpt_every=recipe.stage1_steps, **common)
            Stage1Trainer(cfg, TINY, LossConfig(perceptual_net="none", disc_start=10**9)).run(resume=True)
            s1 = mark(s1_dir)

        from codeswap.train.stage2 import Stage2Trainer, SwapTrainConfig

        base = "full" if variant == "wo_m" else variant
        s2_dir = root / f"stage2-{base}"
        s2 = done(s2_dir)
        swap_kw = dict(layers=recipe.layers, heads=recipe.heads, selector_hidden=recipe.selector_hidden,
                       identity_net=recipe.identity_net, identity_size=recipe.identity_size, perceptual_net="none")
        if s2 is None:
            log(f"codeswap demo: training stage 2, variant {base} ({recipe.stage2_steps} steps) in {s2_dir}")
            cfg = TrainConfig(out=str(s2_dir), max_steps=recipe.stage2_steps, ckpt_every=recipe.stage2_steps, **common)
            Stage2Trainer(cfg, SwapTrainConfig(stage1=str(s1), variant=base, **swap_kw)).run(resume=True)
            s2 = mark(s2_dir)
        # every fusion variant gets its own mask (stage 3), so Table 3 compares like with like
        from codeswap.train.stage3 import MaskTrainConfig, Stage3Trainer

        s3_dir = root / f"stage3-{base}"
        s3 = done(s3_dir)
        if s3 is None:
            log(f"codeswap demo: training stage 3, variant {base} ({recipe.stage3_steps} steps) in {s3_dir}")
            cfg = TrainConfig(out=str(s3_dir), max_steps=recipe.stage3_steps, ckpt_every=recipe.stage3_steps, **common)
            Stage3Trainer(cfg, SwapTrainConfig(stage1=str(s2), variant=base, **swap_kw),
                          MaskTrainConfig(supervised_steps=recipe.stage3_supervised)).run(resume=True)
            s3 = mark(s3_dir)
        return s3
    finally:
        cleanup_distributed()
