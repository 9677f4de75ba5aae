"""Stage 3 (paper §3.3): train the mask generator; stages 1 and 2 stay frozen.

Two phases, as in the paper:
  1. supervised, for ``supervised_steps``: L1 between each generated mask and the face
     region of its target (Eq. 15). The paper takes that region from a face-parsing model;
     the offline default here is the convex hull of dlib's 68 landmarks, found inside the
     aligned crop's face box, extended upwards to cover the forehead;
  2. unsupervised: the stage-2 losses on the blended outputs, so the mask learns which
     pixels the identity needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from codeswap.checkpoints import load_codeswap
from codeswap.model import CodeSwap
from codeswap.swap_losses import mask_loss
from codeswap.train.stage2 import Stage2Trainer
from harness.errors import HarnessError


@dataclass(frozen=True)
class MaskTrainConfig:
    supervised_steps: int = 5000
    mask_weight: float = 1.0
    forehead: float = 0.35  # upward extension of the hull, as a share of the brow-to-chin height


def landmark_masks(images: Tensor, forehead: float = 0.35) -> Tensor:
    """(B, 3, R, R) in [-1, 1] aligned crops -> (B, 1, R, R) float face-region masks."""
    import cv2

    from harness.faces.detect import DlibDetector
    from harness.metrics.identity import FFHQ_FACE_BOX

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


class Stage3Trainer(Stage2Trainer):
    """Mask generator training on a stage-2 checkpoint (``swap_cfg.stage1`` holds its path)."""

    stage = "stage3"
    blend_mask = True

    def __init__(self, cfg, swap_cfg, mask_cfg: MaskTrainConfig = MaskTrainConfig(), dist_info=None,
                 nets: dict[str, nn.Module | None] | None = None, mask_fn=landmark_masks) -> None:
        self.mask_cfg = mask_cfg
        self.mask_fn = mask_fn
        super().__init__(cfg, swap_cfg, dist_info, nets)

    def build_model(self) -> CodeSwap:
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
                "mask.supervised_steps": self.mask_cfg.supervised_steps, "mask.source": "dlib-68 landmark hull"}

    def extra_loss(self, a: Tensor, b: Tensor, out, loss: Tensor, logs: dict[str, Tensor],
                   step: int) -> tuple[Tensor, dict[str, Tensor]]:
        if step >= self.mask_cfg.supervised_steps:
            return loss, logs  # phase 2: the stage-2 losses alone
        target = self.mask_fn(torch.cat([b, a]), self.mask_cfg.forehead)  # (2B, 1, R, R): I_ab's target is b
        lm, _ = mask_loss(torch.cat([out.mask_ab, out.mask_ba]).float(), target)
        logs["train/mask_l1"] = lm.detach()
        # phase 1 trains the mask against the parsing target only
        return self.mask_cfg.mask_weight * lm, {**logs, "train/g_total": lm.detach()}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "stage2_sha256": self.stage2_sha256}
