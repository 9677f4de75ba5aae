"""CodeSwap behind ``swap(source, target)``: a stage-2/3 checkpoint, or the tiny demo model.

    harness run -p demo -m codeswap                                   # tiny demo model (trained once, cached)
    harness run -p celebahq --root D -m codeswap --method-option codeswap.checkpoint=stage3/last.pt

Registered variants (paper Table 3 and §4.4): ``codeswap_wo_c``, ``codeswap_wo_s``,
``codeswap_wo_q1``, ``codeswap_wo_q2`` need their own stage-2(/3) checkpoints, trained with
``harness train stage2 --variant wo_c`` etc.; ``codeswap_wo_m`` runs the full model's
checkpoint with the mask generator switched off.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from faceeval.api import SwapMethod
from faceeval.errors import HarnessError

if TYPE_CHECKING:
    from codeswap.demo import DemoRecipe


class CodeSwapMethod(SwapMethod):
    name = "codeswap"

    def __init__(self, device: str = "cpu", checkpoint: str | None = None, variant: str = "full",
                 demo_recipe: DemoRecipe | None = None) -> None:
        super().__init__(device)
        self.variant = variant
        self.demo_recipe = demo_recipe
        self.checkpoint = Path(checkpoint).expanduser() if checkpoint else None
        if self.checkpoint is not None and not self.checkpoint.is_file():
            raise HarnessError(f"codeswap checkpoint not found: {self.checkpoint}")
        if variant != "full":
            self.name = f"codeswap_{variant}"

    @cached_property
    def _checkpoint_path(self) -> Path:
        if self.checkpoint is not None:
            return self.checkpoint
        from codeswap.demo import DemoRecipe, demo_checkpoint

        return demo_checkpoint(self.variant, self.demo_recipe or DemoRecipe(), log=lambda m: print(m, flush=True))

    @cached_property
    def _loaded(self):
        from codeswap.checkpoints import load_codeswap

        model, meta = load_codeswap(self._checkpoint_path)
        if self.variant == "wo_m":
            model.mask = None  # w/o M: the raw decoder output is the result
        return model.to(self.device).eval(), meta

    def prepare(self, pairset) -> list[str]:
        """Notes every CodeSwap result carries: what the demo model trained on, and the
        identity ceiling of its stage-1 prior (no swap keeps more identity than the prior)."""
        if self.checkpoint is not None:
            return []
        from codeswap.demo import DemoRecipe, demo_info

        info = demo_info(self.demo_recipe or DemoRecipe())
        if info is None:
            return [f"demo model trained on the {self.variant} recipe at first use on the bundled demo faces: "
                    "demo numbers are training-set numbers"]
        t, c = info["training"], info["ceiling"]
        notes = [f"demo model (shipped, {t['resolution']}x{t['resolution']}) trained on all {t['faces']} bundled "
                 f"demo faces: on the demo protocol these are TRAINING-SET numbers, not generalisation"]
        if c:
            notes.append(f"identity ceiling of its stage-1 prior: reconstructions of the training faces retrieve "
                         f"themselves {100 * c['dlib_top1']:.0f} % (dlib) / {100 * c['facenet_top1']:.0f} % "
                         f"(FaceNet), PSNR {c['psnr']:.1f} dB")
        return notes

    @property
    def identity_model(self) -> str | None:  # type: ignore[override]
        """Backend name of the identity network the checkpoint trained with (L_id), so a run
        scored by that same model is flagged in its report."""
        trained = {"facenet": "facenet_casia_torch"}  # codeswap.train.nets names -> Backend.name
        return trained.get(self._loaded[1].get("identity_net"))

    @property
    def resolution(self) -> int:  # type: ignore[override]
        return self._loaded[0].cfg.autoencoder.resolution

    def fingerprint(self) -> dict[str, Any]:
        """Variant and checkpoint sha256: enough to key the swap cache without loading the model."""
        from faceeval.weights import sha256_of

        return {"name": self.name, "variant": self.variant, "checkpoint_sha256": sha256_of(self._checkpoint_path)}

    def describe(self) -> dict[str, Any]:
        meta = self._loaded[1]
        return {**self.fingerprint(), "checkpoint": str(self._checkpoint_path), "demo_model": self.checkpoint is None,
                "stage": meta["stage"], "step": meta["step"], "stage1_sha256": meta["stage1_sha256"]}

    @torch.no_grad()
    def swap_both_ways(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B,3,R,R) in [0,1] x2 -> (I_ab, I_ba) in [0,1], both from one symmetric pass."""
        model = self._loaded[0]
        out = model(a * 2 - 1, b * 2 - 1)
        return (out.ab.float().clamp(-1, 1) + 1) * 0.5, (out.ba.float().clamp(-1, 1) + 1) * 0.5

    def swap(self, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.swap_both_ways(source, target)[0]
