"""Hopenet (Ruiz et al. 2018): ResNet-50 trunk (timm) + three 66-bin heads for yaw, pitch
and roll, loading the official ``hopenet_robust_alpha1.pkl`` without running pickle code.

Facts of the official checkpoint: a ``torch.save``'d state dict of torchvision-style
ResNet-50 keys (``conv1``, ``bn1``, ``layer1..4``), ``fc_yaw`` / ``fc_pitch`` / ``fc_roll``
(2048 -> 66) and ``fc_finetune`` (2051 -> 3, unused at inference). timm's ResNet-50 uses
the same trunk key names. Angles: degrees = sum(softmax(logits) * bin index) * 3 - 99;
input 224x224 RGB with ImageNet normalisation.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from faceeval.errors import HarnessError
from faceeval.models.checkpoints import load_strict, read_torch

NUM_BINS = 66
BIN_WIDTH_DEG = 3.0
ANGLE_OFFSET_DEG = 99.0
INPUT_SIZE = 224
TRUNK_DIM = 2048
HEADS = ("fc_yaw", "fc_pitch", "fc_roll")
IGNORED_KEYS = ("fc_finetune.weight", "fc_finetune.bias")


class Hopenet(nn.Module):
    """(B, 3, 224, 224) ImageNet-normalised RGB -> (B, 3) (yaw, pitch, roll) in degrees."""

    def __init__(self) -> None:
        super().__init__()
        import timm

        self.trunk = timm.create_model("resnet50", pretrained=False, num_classes=0)  # global-pooled (B, 2048)
        self.fc_yaw = nn.Linear(TRUNK_DIM, NUM_BINS)
        self.fc_pitch = nn.Linear(TRUNK_DIM, NUM_BINS)
        self.fc_roll = nn.Linear(TRUNK_DIM, NUM_BINS)
        self.register_buffer("bin_idx", torch.arange(NUM_BINS, dtype=torch.float32), persistent=False)

    def logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        feat = self.trunk(x)  # (B, 2048)
        return self.fc_yaw(feat), self.fc_pitch(feat), self.fc_roll(feat)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        degrees = [(torch.softmax(lg, dim=1) * self.bin_idx).sum(1) * BIN_WIDTH_DEG - ANGLE_OFFSET_DEG
                   for lg in self.logits(x)]
        return torch.stack(degrees, dim=1)  # (B, 3)


def load_hopenet(path: Path) -> Hopenet:
    """Load the official state dict (``torch.load(weights_only=True)``) into :class:`Hopenet`."""
    state = read_torch(path)
    if not isinstance(state, dict):
        raise HarnessError(f"{path.name}: expected a state dict, got {type(state).__name__}")
    state = {str(k).removeprefix("module."): v for k, v in state.items()
             if str(k).removeprefix("module.") not in IGNORED_KEYS}
    mapped = {(k if k.startswith(HEADS) else f"trunk.{k}"): v for k, v in state.items()}
    model = Hopenet()
    load_strict(model, mapped, path, "a Hopenet ResNet-50 state dict")
    return model.eval()
