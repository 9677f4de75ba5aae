"""Stage 3 (paper §3.3): a mask generator from middle-layer encoder and decoder features.

The target's encoder features and the swap's decoder features at one middle level are
resized to a common grid, concatenated, refined by 1x1 convolutions with activations,
upsampled to the image size and squashed to a soft mask M in [0, 1] (B, 1, H, W). The
final image keeps the target outside the face:  I = I_swap * M + I_target * (1 - M).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass(frozen=True)
class MaskConfig:
    enc_channels: int  # width of the encoder level used
    dec_channels: int  # width of the decoder level used
    hidden: int = 64
    feature_size: int = 64  # common grid the two feature maps are resized to


class MaskGenerator(nn.Module):
    def __init__(self, cfg: MaskConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.refine = nn.Sequential(
            nn.Conv2d(cfg.enc_channels + cfg.dec_channels, cfg.hidden, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(cfg.hidden, cfg.hidden // 2, 1), nn.LeakyReLU(0.2),
        )
        self.head = nn.Conv2d(cfg.hidden // 2, 1, 1)

    def forward(self, enc_feat: torch.Tensor, dec_feat: torch.Tensor, size: int) -> torch.Tensor:
        """enc_feat (B, Ce, h, w), dec_feat (B, Cd, h', w') -> mask (B, 1, size, size)."""
        s = self.cfg.feature_size
        e = F.interpolate(enc_feat, size=(s, s), mode="bilinear", align_corners=False)  # (B, Ce, s, s)
        d = F.interpolate(dec_feat, size=(s, s), mode="bilinear", align_corners=False)  # (B, Cd, s, s)
        h = self.refine(torch.cat([e, d], dim=1))  # (B, hidden/2, s, s)
        h = F.interpolate(h, size=(size, size), mode="bilinear", align_corners=False)  # (B, hidden/2, H, W)
        return torch.sigmoid(self.head(h))  # (B, 1, H, W)


def blend(swapped: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Eq. 14: swapped inside the mask, target outside. (B,3,H,W), (B,3,H,W), (B,1,H,W)."""
    return swapped * mask + target * (1.0 - mask)
