"""Stage 3 (paper §3.3): train the mask generator; stages 1 and 2 stay frozen.

Two phases, as in the paper:
  1. supervised, for ``supervised_steps``: L1 between each generated mask and the face
     region of its target (Eq. 15). The paper takes that region from a face-parsing model:
     ``MaskTrainConfig(mask_source="parsing")`` runs BiSeNet (face-parsing.PyTorch's
     ``79999_iter.pth``, a file the user provides) and keeps its face classes. The offline
     default, ``"landmarks"``, is the convex hull of dlib's 68 landmarks, found inside the
     aligned crop's face box, extended upwards to cover the forehead;
  2. unsupervised: the stage-2 losses on the blended outputs, so the mask learns which
     pixels the identity needs.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from codeswap.checkpoints import load_codeswap
from codeswap.config import MaskTrainConfig, SwapTrainConfig, TrainConfig
from codeswap.model import CodeSwap
from codeswap.swap_losses import mask_loss
from codeswap.train.dist import DistInfo
from codeswap.train.stage2 import Stage2Trainer
from faceeval.errors import HarnessError
from faceeval.models.bisenet import parsing_masks


def landmark_masks(images: Tensor, forehead: float = 0.35) -> Tensor:
    """(B, 3, R, R) in [-1, 1] aligned crops -> (B, 1, R, R) float face-region masks."""
    import cv2

    from faceeval.constants import FFHQ_FACE_BOX
    from faceeval.faces.detect import DlibDetector

    det = _DETECTOR.setdefault("dlib", DlibDetector())
    imgs = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    imgs = imgs.permute(0, 2, 3, 1).cpu().numpy()  # (B, R, R, 3)
    r = imgs.shape[1]
    box = tuple(v * r for v in FFHQ_FACE_BOX)
    out = np.zeros((len(imgs), 1, r, r), np.float32)
    for i, img in enumerate(imgs):
        lm = det.landmarks(img, box)  # (68, 2)
        brows = lm[17:27].copy()
        height = lm[8, 1] - brows[:, 1].min()
        brows[:, 1] -= forehead * height
        hull = cv2.convexHull(np.concatenate([lm[:17], brows]).astype(np.float32)).astype(np.int32)
        cv2.fillConvexPoly(out[i, 0], hull, 1.0)
    return torch.from_numpy(out).to(images.device)


_DETECTOR: dict[str, Any] = {}

#: why phase 2 without L_per and L_exp is a bad idea (measured: docs/codeswap-cpu-study.md)
UNGUARDED_PHASE_2 = (
    "stage 3's unsupervised phase runs with L_per and L_exp off: only L_id acts on the mask, and it grows "
    "over the whole image (100 such steps took the demo mask from 14 % to 62 % outside the face and the "
    "expression error above the source's); give a --perceptual or --expression-net network, or train the mask "
    "supervised only (--supervised-steps >= --max-steps)")


class Stage3Trainer(Stage2Trainer):
    """Mask generator training on a stage-2 checkpoint (``swap_cfg.stage1`` holds its path)."""

    stage = "stage3"
    blend_mask = True

    def __init__(self, cfg: TrainConfig, swap_cfg: SwapTrainConfig, mask_cfg: MaskTrainConfig = MaskTrainConfig(),
                 dist_info: DistInfo | None = None, nets: dict[str, nn.Module | None] | None = None,
                 mask_fn: Callable[[Tensor], Tensor] | None = None) -> None:
        """``mask_fn``: (B, 3, R, R) in [-1, 1] -> (B, 1, R, R) targets, to replace the source
        ``mask_cfg.mask_source`` names (tests); None uses that source."""
        super().__init__(cfg, swap_cfg, dist_info, nets)
        self.mask_cfg = mask_cfg
        self.mask_fn = mask_fn
        self.parser_sha256: str | None = None
        if mask_fn is not None:
            self.mask_source = f"custom ({getattr(mask_fn, '__name__', type(mask_fn).__name__)})"
        elif mask_cfg.mask_source == "parsing":
            from faceeval.models.bisenet import WEIGHTS
            from faceeval.weights import verified

            self._parser_path, self.parser_sha256 = verified(WEIGHTS)  # fails here, before any model is built
            self.mask_source = f"BiSeNet face parsing ({WEIGHTS}, sha256 {self.parser_sha256})"
        else:
            self.mask_source = "dlib-68 landmark hull"

    def build(self) -> None:
        super().build()
        # phase 2 with no term pulling the blend towards the target's attributes: only L_id acts on the mask
        if self.cfg.max_steps > self.mask_cfg.supervised_steps and not (
                self.loss.runs("perceptual") or self.loss.runs("expression")):
            warnings.warn(UNGUARDED_PHASE_2, stacklevel=2)
        if self.mask_fn is None and self.mask_cfg.mask_source == "parsing":
            from faceeval.models.bisenet import load_bisenet

            self.parser = load_bisenet(self._parser_path).requires_grad_(False).to(self.device)
            classes = tuple(self.mask_cfg.face_classes)
            self.mask_fn = lambda images: parsing_masks(images, self.parser, classes)
        elif self.mask_fn is None:
            forehead = self.mask_cfg.forehead
            self.mask_fn = lambda images: landmark_masks(images, forehead)

    def build_model(self) -> CodeSwap:
        if self.swap_cfg.init:
            raise HarnessError("--init is a stage-2 warm start; stage 3 starts from its --stage1 (stage-2) checkpoint")
        model, meta = load_codeswap(self.swap_cfg.stage1)
        if model.mask is None:
            raise HarnessError(f"{self.swap_cfg.stage1} is a w/o M model: it has no mask generator to train")
        self.stage1_sha256 = meta["stage1_sha256"]
        self.stage2_sha256 = meta["sha256"]
        return model

    def trainable(self) -> nn.Module:
        return self.model.mask

    def run_params(self) -> dict[str, Any]:
        return {**super().run_params(), "stage2_sha256": self.stage2_sha256,
                "mask.supervised_steps": self.mask_cfg.supervised_steps, "mask.source": self.mask_source,
                **({"mask.face_classes": ",".join(map(str, self.mask_cfg.face_classes))}
                   if self.parser_sha256 is not None else {})}

    def extra_loss(self, a: Tensor, b: Tensor, out, loss: Tensor, logs: dict[str, Tensor],
                   step: int) -> tuple[Tensor, dict[str, Tensor]]:
        if step >= self.mask_cfg.supervised_steps:
            return loss, logs  # phase 2: the stage-2 losses alone
        target = self.mask_fn(torch.cat([b, a]))  # (2B, 1, R, R): I_ab's target is b
        lm, _ = mask_loss(torch.cat([out.mask_ab, out.mask_ba]).float(), target)
        logs["train/mask_l1"] = lm.detach()
        # phase 1 trains the mask against the parsing target only
        return self.mask_cfg.mask_weight * lm, {**logs, "train/g_total": lm.detach()}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "stage2_sha256": self.stage2_sha256}
