"""BiSeNet face parsing (zllrunning/face-parsing.PyTorch), loading its released
``79999_iter.pth`` by key name.

Facts of the release (from the repo's ``model.py``, ``resnet.py``, ``train.py``, ``test.py``):
a ``torch.save``'d state dict of ``BiSeNet(n_classes=19)``, trained on CelebAMask-HQ;
input 512x512 RGB in [0, 1] normalised with the ImageNet mean / std; ``forward`` returns
three logit maps at the input size (main head, then the 1/8 and 1/16 auxiliary heads) and
the parse is ``argmax`` of the first. Structure:

* ``cp.resnet``: ResNet-18 without its classifier (``conv1`` 7x7/2 + ``bn1`` + max-pool
  3/2, ``layer1..4`` of two basic blocks; ``downsample`` = 1x1 conv + BN where the shape
  changes). ``resnet.py`` copies the ImageNet weights into it skipping ``fc.*`` and has no
  ``fc`` module, and ``train.py`` saves ``net.module.state_dict()``, so the release has
  neither ``cp.resnet.fc.*`` keys nor a ``module.`` prefix. The loader still drops both,
  since re-saved copies built on torchvision's ResNet or saved from DataParallel carry them.
* ``cp.arm16`` / ``cp.arm32`` (attention refinement: 3x3 ConvBNReLU to 128, then
  ``conv_atten`` 1x1 + ``bn_atten`` + sigmoid on the global average), ``cp.conv_avg``
  (1x1 512 -> 128), ``cp.conv_head32`` / ``cp.conv_head16`` (3x3 128 -> 128); upsampling in
  the context path is nearest.
* ``ffm`` (feature fusion of the 1/8 ResNet feature, which replaces the spatial path, and
  the 1/8 context feature: 1x1 ConvBNReLU 256 -> 256 as ``convblk``, then ``conv1`` 256 -> 64
  and ``conv2`` 64 -> 256, bias-free, as channel attention, plus a residual).
* heads ``conv_out`` (256 -> 256 -> 19), ``conv_out16`` and ``conv_out32`` (128 -> 64 -> 19):
  3x3 ConvBNReLU then a bias-free 1x1 ``conv_out``; outputs upsampled bilinearly with
  ``align_corners=True``.

Every ConvBNReLU is ``.conv`` (bias-free) + ``.bn``.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from faceeval.constants import FACE_CLASSES, IMAGENET_MEAN, IMAGENET_STD
from faceeval.models.checkpoints import load_strict, read_state_dict

WEIGHTS = "79999_iter.pth"
NUM_CLASSES = 19
INPUT_SIZE = 512
#: CelebAMask-HQ labels in the release's class order (index = class id)
CLASS_NAMES = ("background", "skin", "l_brow", "r_brow", "l_eye", "r_eye", "eye_g", "l_ear", "r_ear", "ear_r",
               "nose", "mouth", "u_lip", "l_lip", "neck", "neck_l", "cloth", "hair", "hat")


class ConvBNReLU(nn.Module):
    def __init__(self, cin: int, cout: int, ks: int = 3, stride: int = 1, padding: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, ks, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 convolutions (the first may stride) and a shortcut."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if cin != cout or stride != 1:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


def _stage(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1))


class ResNet18Trunk(nn.Module):
    """(B, 3, H, W) -> features at 1/8 (128 ch), 1/16 (256 ch) and 1/32 (512 ch); no classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = _stage(64, 64, 1)
        self.layer2 = _stage(64, 128, 2)
        self.layer3 = _stage(128, 256, 2)
        self.layer4 = _stage(256, 512, 2)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x = self.layer1(self.maxpool(F.relu(self.bn1(self.conv1(x)))))  # (B, 64, H/4, W/4)
        f8 = self.layer2(x)  # (B, 128, H/8, W/8)
        f16 = self.layer3(f8)  # (B, 256, H/16, W/16)
        return f8, f16, self.layer4(f16)  # last: (B, 512, H/32, W/32)


class AttentionRefinement(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = ConvBNReLU(cin, cout, 3, 1, 1)
        self.conv_atten = nn.Conv2d(cout, cout, 1, bias=False)
        self.bn_atten = nn.BatchNorm2d(cout)

    def forward(self, x: Tensor) -> Tensor:
        feat = self.conv(x)
        return feat * torch.sigmoid(self.bn_atten(self.conv_atten(F.adaptive_avg_pool2d(feat, 1))))


class ContextPath(nn.Module):
    """(B, 3, H, W) -> (ResNet 1/8 feature (128 ch), context at 1/8 (128 ch), context at 1/16 (128 ch))."""

    def __init__(self) -> None:
        super().__init__()
        self.resnet = ResNet18Trunk()
        self.arm16 = AttentionRefinement(256, 128)
        self.arm32 = AttentionRefinement(512, 128)
        self.conv_head32 = ConvBNReLU(128, 128, 3, 1, 1)
        self.conv_head16 = ConvBNReLU(128, 128, 3, 1, 1)
        self.conv_avg = ConvBNReLU(512, 128, 1, 1, 0)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        f8, f16, f32 = self.resnet(x)
        glob = self.conv_avg(F.adaptive_avg_pool2d(f32, 1))  # (B, 128, 1, 1)
        up32 = F.interpolate(self.arm32(f32) + glob, size=f16.shape[2:], mode="nearest")
        up32 = self.conv_head32(up32)  # (B, 128, H/16, W/16)
        up16 = F.interpolate(self.arm16(f16) + up32, size=f8.shape[2:], mode="nearest")
        return f8, self.conv_head16(up16), up32


class FeatureFusion(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.convblk = ConvBNReLU(cin, cout, 1, 1, 0)
        self.conv1 = nn.Conv2d(cout, cout // 4, 1, bias=False)
        self.conv2 = nn.Conv2d(cout // 4, cout, 1, bias=False)

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        feat = self.convblk(torch.cat([a, b], dim=1))
        atten = torch.sigmoid(self.conv2(F.relu(self.conv1(F.adaptive_avg_pool2d(feat, 1)))))
        return feat * atten + feat


class Head(nn.Module):
    def __init__(self, cin: int, mid: int, n_classes: int) -> None:
        super().__init__()
        self.conv = ConvBNReLU(cin, mid, 3, 1, 1)
        self.conv_out = nn.Conv2d(mid, n_classes, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv_out(self.conv(x))


class BiSeNet(nn.Module):
    """(B, 3, H, W) ImageNet-normalised RGB -> three (B, n_classes, H, W) logit maps
    (main, 1/8 auxiliary, 1/16 auxiliary), as the release's ``forward``."""

    def __init__(self, n_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.cp = ContextPath()
        self.ffm = FeatureFusion(256, 256)
        self.conv_out = Head(256, 256, n_classes)
        self.conv_out16 = Head(128, 64, n_classes)
        self.conv_out32 = Head(128, 64, n_classes)

    def _up(self, x: Tensor, size) -> Tensor:
        return F.interpolate(x, size=size, mode="bilinear", align_corners=True)

    def logits(self, x: Tensor) -> Tensor:
        """The main head only (what a parse needs): (B, n_classes, H, W)."""
        f8, cp8, _ = self.cp(x)
        return self._up(self.conv_out(self.ffm(f8, cp8)), x.shape[2:])

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        f8, cp8, cp16 = self.cp(x)  # the 1/8 ResNet feature stands in for the spatial path
        size = x.shape[2:]
        return (self._up(self.conv_out(self.ffm(f8, cp8)), size), self._up(self.conv_out16(cp8), size),
                self._up(self.conv_out32(cp16), size))


def load_bisenet(path: Path | str) -> BiSeNet:
    """Load a ``79999_iter.pth``-style state dict (``torch.load(weights_only=True)``) strictly
    into :class:`BiSeNet`, in eval mode; a mismatch is a one-line error naming the keys."""
    path = Path(path)
    state = read_state_dict(path, "BiSeNet")
    state = {k: v for k, v in state.items() if not k.startswith("cp.resnet.fc.")}  # an unused classifier
    model = BiSeNet(NUM_CLASSES)
    for k, v in model.state_dict().items():
        if k.endswith("num_batches_tracked"):
            state.setdefault(k, torch.zeros_like(v))  # files from before PyTorch 0.4.1 lack the counter
    load_strict(model, state, path, "a BiSeNet (face-parsing.PyTorch, 19 classes) state dict", listed=4)
    return model.eval()


@torch.no_grad()
def parsing_masks(images: Tensor, parser: nn.Module, face_classes: tuple[int, ...] = FACE_CLASSES) -> Tensor:
    """(B, 3, H, W) in [-1, 1] aligned crops -> (B, 1, H, W) float masks of the BiSeNet face
    classes, on the images' device. The crops go in as the release was run (``test.py``):
    resized to 512 bilinearly, ImageNet-normalised, argmax of the main head; the label map
    comes back to (H, W) by nearest neighbour. ``parser``: BiSeNet (``load_bisenet``)."""
    dev = images.device
    parser = parser.to(dev).eval()
    h, w = images.shape[-2:]
    x = (images.detach().float().clamp(-1, 1) + 1) * 0.5  # (B, 3, H, W) in [0, 1]
    x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor(IMAGENET_MEAN, device=dev).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=dev).view(1, 3, 1, 1)
    x = (x - mean) / std
    # float32 whatever the trainer's autocast: the target is an argmax, keep it the release's
    with torch.autocast(dev.type, enabled=False) if dev.type in ("cpu", "cuda") else contextlib.nullcontext():
        logits = parser.logits(x) if hasattr(parser, "logits") else parser(x)[0]  # (B, 19, 512, 512)
    labels = logits.argmax(1)  # (B, 512, 512)
    face = torch.isin(labels, torch.tensor(face_classes, device=dev)).float()[:, None]  # (B, 1, 512, 512)
    return F.interpolate(face, size=(h, w), mode="nearest-exact")
