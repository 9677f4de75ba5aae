"""IResNet (ArcFace / CosFace "iresnet", insightface ``arcface_torch``) with the official
state-dict key names, so ``backbone.pth`` checkpoints (r50, r100; MS1MV3 ArcFace,
Glint360K CosFace) load with ``load_state_dict(strict=True)``.

Facts of the format (Duta et al., "Improved Residual Networks", and the arcface_torch
checkpoints): stem ``conv1`` 3x3/64 + ``bn1`` + ``prelu``; four stages ``layer1..4`` of
``IBasicBlock`` (``bn1 -> conv1 3x3 -> bn2 -> prelu -> conv2 3x3 (stride) -> bn3`` plus a
``downsample`` 1x1 conv + BN on the first block of each stage); ``bn2`` after the last
stage, flatten (512 x 7 x 7), ``fc`` to 512 and ``features`` (BatchNorm1d). BN eps 1e-5.
Input: RGB 112x112, (x / 255 - 0.5) / 0.5.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from faceeval.errors import HarnessError
from faceeval.models.checkpoints import load_strict, read_state_dict

BN_EPS = 1e-5
STAGE_WIDTHS = (64, 128, 256, 512)
FINAL_SPATIAL = 7  # a 112 input halves four times: 112 -> 7
EMBED_DIM = 512


@dataclass(frozen=True)
class IResNetConfig:
    name: str
    layers: tuple[int, int, int, int]


IRESNETS = {
    "r18": IResNetConfig("r18", (2, 2, 2, 2)),
    "r34": IResNetConfig("r34", (3, 4, 6, 3)),
    "r50": IResNetConfig("r50", (3, 4, 14, 3)),
    "r100": IResNetConfig("r100", (3, 13, 30, 3)),
}


class IBasicBlock(nn.Module):
    """Pre-activation-style residual block of IResNet."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin, eps=BN_EPS)
        self.conv1 = nn.Conv2d(cin, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.prelu = nn.PReLU(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                            nn.BatchNorm2d(cout, eps=BN_EPS))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + identity


class IResNet(nn.Module):
    """(B, 3, 112, 112) normalised RGB -> (B, 512) embedding (not L2-normalised)."""

    def __init__(self, cfg: IResNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.conv1 = nn.Conv2d(3, STAGE_WIDTHS[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(STAGE_WIDTHS[0], eps=BN_EPS)
        self.prelu = nn.PReLU(STAGE_WIDTHS[0])
        cin = STAGE_WIDTHS[0]
        for i, (width, blocks) in enumerate(zip(STAGE_WIDTHS, cfg.layers)):
            stage = [IBasicBlock(cin, width, 2)] + [IBasicBlock(width, width, 1) for _ in range(blocks - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*stage))
            cin = width
        self.bn2 = nn.BatchNorm2d(cin, eps=BN_EPS)
        self.dropout = nn.Dropout(p=0.0)
        self.fc = nn.Linear(cin * FINAL_SPATIAL * FINAL_SPATIAL, EMBED_DIM)
        self.features = nn.BatchNorm1d(EMBED_DIM, eps=BN_EPS)
        nn.init.constant_(self.features.weight, 1.0)
        self.features.weight.requires_grad = False  # fixed in the original training

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.bn2(x)
        x = torch.flatten(x, 1)  # (B, 512*7*7)
        return self.features(self.fc(self.dropout(x)))


def load_iresnet(path: Path, arch: str) -> IResNet:
    """Build ``arch`` and load an arcface_torch ``backbone.pth`` (weights only, strict keys)."""
    if arch not in IRESNETS:
        raise HarnessError(f"unknown iresnet {arch!r} (known: {', '.join(IRESNETS)})")
    model = IResNet(IRESNETS[arch])
    load_strict(model, read_state_dict(path, f"iresnet-{arch[1:]}"), path, f"an iresnet-{arch[1:]} checkpoint")
    return model.eval()
