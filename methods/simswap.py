"""SimSwap (Chen et al., ACM MM 2020) from its official PyTorch checkpoints.

The generator below is written for this project; its module names follow the official
release so that ``latest_net_G.pth`` loads key by key (``strict=True``):

    first_layer.{1,2}  [down0.{0,1}]  down1..down3.{0,1}  [down4.{0,1}]
    BottleNeck.<i>.{conv1.1, style1.linear, conv2.1, style2.linear}
    [up4.{1,2}]  up3..up1.{1,2}  [up0.{1,2}]  last_layer.1

``down0``/``up0`` (a 32-channel first level) exist in the 512 px release, ``down4``/``up4``
when it was trained ``deep``; both are read off the checkpoint, never guessed.

Inference follows the official test scripts: the target is an RGB [0, 1] crop (no
normalisation); the source crop is ImageNet-normalised, downsampled by 0.5 (nearest,
``F.interpolate``'s default) to 112 px, embedded by SimSwap's ArcFace and L2-normalised;
the output ``(tanh + 1) / 2`` is pasted back. Crops: the 224 release's own template at
224 px (SimSwap's ``face_align_ffhqandnewarc``: the frontal one of its five pose templates,
which is ``arcface_112_v1``; SimSwap picks the best-fitting of the five, the harness always
the frontal one since its crops are already frontalised), FFHQ at 512 px for the 512 release. The SimSwap logo watermark
(``--no_simswaplogo`` off by default upstream) is never added here.

Identity network: SimSwap's ``arcface_checkpoint.tar`` is a pickled whole model
(``{'model': DataParallel(ResNet)}``), which ``torch.load(weights_only=True)`` refuses.
It is read here with ``weights_only=True`` all the same: the class names the pickle refers
to (``models.arcface_models.ResNet``/``IRBlock``/``SEBlock``, torch.nn layers,
``DataParallel``) are allow-listed and bound to this file's own classes, so only tensors
and those known module types are ever rebuilt - no code from the file runs. A plain
state dict of the same network (keys ``conv1.weight``, ``layer1.0.bn0.weight``, ...,
optionally prefixed ``module.``) is accepted too.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import cached_property
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from harness.api import SwapMethod
from harness.errors import HarnessError
from harness.images import to_uint8

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ---------------------------------------------------------------------------------------
# Generator
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SimSwapConfig:
    """Shape of a SimSwap generator (read off a checkpoint by :meth:`from_state_dict`)."""

    base: int = 64  # channels of first_layer (32 in the 512 release, which adds down0/up0)
    n_blocks: int = 9  # AdaIN residual blocks
    deep: bool = False  # extra 512-channel level (down4 / up4)
    latent: int = 512  # identity vector size
    width: int = 512  # bottleneck channels

    @property
    def extra_level(self) -> bool:
        return self.base != 64

    @classmethod
    def from_state_dict(cls, sd: dict[str, torch.Tensor]) -> "SimSwapConfig":
        if "first_layer.1.weight" not in sd:
            raise HarnessError("not a SimSwap generator state dict: no 'first_layer.1.weight'")
        blocks = {int(k.split(".")[1]) for k in sd if k.startswith("BottleNeck.")}
        return cls(base=int(sd["first_layer.1.weight"].shape[0]), n_blocks=len(blocks),
                   deep="down4.0.weight" in sd, latent=int(sd["BottleNeck.0.style1.linear.weight"].shape[1]))


class InstanceNorm(nn.Module):
    """Parameter-free instance norm with SimSwap's epsilon (1e-8, biased variance)."""

    def __init__(self, eps: float = 1e-8) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x - x.mean(dim=(2, 3), keepdim=True)
        return x * torch.rsqrt(x.pow(2).mean(dim=(2, 3), keepdim=True) + self.eps)


class ApplyStyle(nn.Module):
    """AdaIN from the identity vector: x * (1 + scale) + shift, per channel."""

    def __init__(self, latent: int, channels: int) -> None:
        super().__init__()
        self.linear = nn.Linear(latent, channels * 2)

    def forward(self, x: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        style = self.linear(latent).view(-1, 2, x.shape[1], 1, 1)  # (B, 2, C, 1, 1)
        return x * (style[:, 0] + 1.0) + style[:, 1]


class AdaINBlock(nn.Module):
    """Residual block: (pad, conv, IN, AdaIN, ReLU, pad, conv, IN, AdaIN) + skip."""

    def __init__(self, dim: int, latent: int) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3), InstanceNorm())
        self.style1 = ApplyStyle(latent, dim)
        self.act1 = nn.ReLU(True)
        self.conv2 = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3), InstanceNorm())
        self.style2 = ApplyStyle(latent, dim)

    def forward(self, x: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        y = self.act1(self.style1(self.conv1(x), latent))
        return x + self.style2(self.conv2(y), latent)


def _down(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.BatchNorm2d(cout), nn.ReLU(True))


def _up(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear"), nn.Conv2d(cin, cout, 3, padding=1),
                         nn.BatchNorm2d(cout), nn.ReLU(True))


class SimSwapGenerator(nn.Module):
    """Encoder - AdaIN bottleneck - decoder; (B,3,S,S) in [0,1] + (B,512) -> (B,3,S,S) in [0,1]."""

    def __init__(self, cfg: SimSwapConfig = SimSwapConfig()) -> None:
        super().__init__()
        self.cfg = cfg
        b = cfg.base
        self.first_layer = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(3, b, 7), nn.BatchNorm2d(b), nn.ReLU(True))
        if cfg.extra_level:
            self.down0 = _down(b, 64)
        self.down1 = _down(64, 128)
        self.down2 = _down(128, 256)
        self.down3 = _down(256, cfg.width)
        if cfg.deep:
            self.down4 = _down(cfg.width, cfg.width)
        self.BottleNeck = nn.ModuleList([AdaINBlock(cfg.width, cfg.latent) for _ in range(cfg.n_blocks)])
        if cfg.deep:
            self.up4 = _up(cfg.width, cfg.width)
        self.up3 = _up(cfg.width, 256)
        self.up2 = _up(256, 128)
        self.up1 = _up(128, 64)
        if cfg.extra_level:
            self.up0 = _up(64, b)
        self.last_layer = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(b, 3, 7), nn.Tanh())

    def forward(self, target: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
        x = self.first_layer(target)  # (B, base, S, S)
        if self.cfg.extra_level:
            x = self.down0(x)
        x = self.down3(self.down2(self.down1(x)))  # (B, 512, S/8, S/8) (or S/16 with down0)
        if self.cfg.deep:
            x = self.down4(x)
        for block in self.BottleNeck:
            x = block(x, identity)
        if self.cfg.deep:
            x = self.up4(x)
        x = self.up1(self.up2(self.up3(x)))
        if self.cfg.extra_level:
            x = self.up0(x)
        return (self.last_layer(x) + 1.0) / 2.0  # (B, 3, S, S) in [0, 1]


# ---------------------------------------------------------------------------------------
# SimSwap's ArcFace (ResNet-50, IR blocks with squeeze-excitation)
# ---------------------------------------------------------------------------------------


class SEBlock(nn.Module):
    def __init__(self, channel: int, reduction: int = 16) -> None:
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(nn.Linear(channel, channel // reduction), nn.PReLU(),
                                nn.Linear(channel // reduction, channel), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        w = self.fc(self.avg_pool(x).view(b, c)).view(b, c, 1, 1)  # (B, C) -> (B, C, 1, 1)
        return x * w


class IRBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 use_se: bool = True) -> None:
        super().__init__()
        self.bn0 = nn.BatchNorm2d(inplanes)
        self.conv1 = nn.Conv2d(inplanes, inplanes, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.prelu = nn.PReLU()
        self.conv2 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride
        self.use_se = use_se
        if use_se:
            self.se = SEBlock(planes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.prelu(self.bn1(self.conv1(self.bn0(x))))
        out = self.bn2(self.conv2(out))
        if self.use_se:
            out = self.se(out)
        residual = x if self.downsample is None else self.downsample(x)
        return self.prelu(out + residual)


class ResNet(nn.Module):
    """SimSwap's ArcFace: 112x112 ImageNet-normalised RGB -> 512-d (un-normalised)."""

    def __init__(self, layers: tuple[int, ...] = (3, 4, 6, 3), use_se: bool = True) -> None:
        super().__init__()
        self.inplanes = 64
        self.use_se = use_se
        self.conv1 = nn.Conv2d(3, 64, 3, stride=1, bias=False)  # no padding: 112 -> 110
        self.bn1 = nn.BatchNorm2d(64)
        self.prelu = nn.PReLU()
        self.maxpool = nn.MaxPool2d(2, 2)
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1], stride=2)
        self.layer3 = self._make_layer(256, layers[2], stride=2)
        self.layer4 = self._make_layer(512, layers[3], stride=2)
        self.bn2 = nn.BatchNorm2d(512)
        self.dropout = nn.Dropout()
        self.fc = nn.Linear(512 * 7 * 7, 512)
        self.bn3 = nn.BatchNorm1d(512)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes, 1, stride=stride, bias=False),
                                       nn.BatchNorm2d(planes))
        layers = [IRBlock(self.inplanes, planes, stride, downsample, use_se=self.use_se)]
        self.inplanes = planes
        layers += [IRBlock(planes, planes, use_se=self.use_se) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.prelu(self.bn1(self.conv1(x))))  # (B, 64, 55, 55)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (B, 512, 7, 7)
        x = self.dropout(self.bn2(x))
        x = x.reshape(x.shape[0], -1)  # (B, 512*7*7)
        return self.bn3(self.fc(x))  # (B, 512)


class ArcMarginModel(nn.Module):
    """Stand-in for the training head a full ArcFace training checkpoint may pickle
    (``metric_fc``): its tensors are read and ignored."""


def _arcface_safe_globals() -> list:
    """Classes a pickled SimSwap ArcFace refers to, bound to their safe stand-ins."""
    from torch.nn.parallel import DataParallel

    own = [(cls, f"{module}.{cls.__name__}") for module in ("models.arcface_models", "models")
           for cls in (ResNet, IRBlock, SEBlock, ArcMarginModel)]
    layers = [nn.Conv2d, nn.BatchNorm2d, nn.BatchNorm1d, nn.PReLU, nn.MaxPool2d, nn.AdaptiveAvgPool2d, nn.Linear,
              nn.Sigmoid, nn.Dropout, nn.Sequential, DataParallel, torch.device]
    return own + layers


def load_arcface(path) -> ResNet:
    """SimSwap's ArcFace from ``arcface_checkpoint.tar`` (pickled model) or a state dict,
    always through ``torch.load(weights_only=True)`` (see the module docstring)."""
    with torch.serialization.safe_globals(_arcface_safe_globals()):
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unpickling refusal becomes one clear line
            raise HarnessError(f"{path}: cannot read as SimSwap's ArcFace with weights_only=True "
                               f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], nn.Module):
        obj = obj["model"]
    if isinstance(obj, nn.Module):
        obj = getattr(obj, "module", obj)  # DataParallel wrapper
        sd = obj.state_dict()
    elif isinstance(obj, dict):
        sd = obj.get("state_dict", obj)
    else:
        raise HarnessError(f"{path}: expected SimSwap's ArcFace checkpoint, found {type(obj).__name__}")
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    use_se = any(".se." in k for k in sd)
    blocks = tuple(len({k.split(".")[1] for k in sd if k.startswith(f"layer{i}.")}) for i in range(1, 5))
    model = ResNet(blocks, use_se=use_se)
    _load_strict(model, sd, path)
    return model.eval().requires_grad_(False)


def _load_strict(model: nn.Module, sd: dict[str, torch.Tensor], path) -> None:
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shapes = [k for k in own if k in sd and tuple(own[k].shape) != tuple(sd[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {missing[:3]}{'...' if len(missing) > 3 else ''}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}")
        if shapes:
            parts.append(f"shape mismatch {shapes[:3]}")
        raise HarnessError(f"{path}: keys do not match the official layout ({'; '.join(parts)})")
    model.load_state_dict(sd, strict=True)


def load_generator(path) -> SimSwapGenerator:
    """The official ``latest_net_G.pth`` (a plain state dict) into :class:`SimSwapGenerator`."""
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise HarnessError(f"{path}: cannot read with weights_only=True ({type(exc).__name__})") from None
    if not isinstance(sd, dict):
        raise HarnessError(f"{path}: expected a state dict, found {type(sd).__name__}")
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    model = SimSwapGenerator(SimSwapConfig.from_state_dict(sd))
    _load_strict(model, sd, path)
    return model.eval().requires_grad_(False)  # frozen: usable in and out of inference_mode


# ---------------------------------------------------------------------------------------
# The method
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SimSwapRelease:
    generator_file: str
    crop: int  # side of the aligned crops it was trained on
    template: str


RELEASES = {
    "simswap": SimSwapRelease("simswap_224_latest_net_G.pth", 224, "arcface_112_v1"),
    "simswap_512": SimSwapRelease("simswap_512_latest_net_G.pth", 512, "ffhq_512"),
}
ARCFACE_FILE = "arcface_checkpoint.tar"
ARCFACE_INPUT = 112


class SimSwapMethod(SwapMethod):
    """SimSwap from the official generator + ArcFace checkpoints (watermark never added)."""

    resolution = None

    def __init__(self, device: str = "cpu", release: str = "simswap", detect: bool | str = True) -> None:
        super().__init__(device)
        if release not in RELEASES:
            raise HarnessError(f"unknown SimSwap release {release!r} (known: {', '.join(RELEASES)})")
        self.release = RELEASES[release]
        self.name = release
        self.detect = detect if isinstance(detect, bool) else str(detect).lower() in ("1", "true", "yes")

    @cached_property
    def _weights(self) -> dict[str, tuple[str, str]]:
        from harness.weights import verified

        return {n: tuple(map(str, verified(n))) for n in (self.release.generator_file, ARCFACE_FILE)}

    @cached_property
    def generator(self) -> SimSwapGenerator:
        return load_generator(self._weights[self.release.generator_file][0]).to(self.device)

    @cached_property
    def arcface(self) -> ResNet:
        return load_arcface(self._weights[ARCFACE_FILE][0]).to(self.device)

    @cached_property
    def _detector(self):
        from harness.faces.detect import DlibDetector

        return DlibDetector(upsample=1)

    def _crop(self, image: np.ndarray):
        from harness.faces.align import five_points
        from harness.faces.templates import crop_landmarks, warp_to_template

        p5 = five_points(crop_landmarks(image, self._detector, detect=self.detect))
        return warp_to_template(image, p5, self.release.template, self.release.crop)

    def identity(self, source_crops: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) RGB [0, 1] aligned source crops -> (B, 512) unit identity vectors."""
        mean = torch.tensor(IMAGENET_MEAN, device=source_crops.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=source_crops.device).view(1, 3, 1, 1)
        x = (source_crops - mean) / std
        # the official scripts downsample with F.interpolate's default (nearest) to 112 px
        x = F.interpolate(x, size=(ARCFACE_INPUT, ARCFACE_INPUT))  # (B, 3, 112, 112)
        return F.normalize(self.arcface(x), p=2, dim=1)

    def swap(self, source, target):
        from harness.faces.paste import paste_back

        src, tgt = to_uint8(source), to_uint8(target)  # (B, H, W, 3)
        src_crops = np.stack([self._crop(s)[0] for s in src])  # (B, S, S, 3)
        tgt_cut = [self._crop(t) for t in tgt]
        tgt_crops = np.stack([c for c, _ in tgt_cut])
        to_t = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2).float().div(255.0).to(self.device)  # noqa: E731
        with torch.inference_mode():
            ident = self.identity(to_t(src_crops))  # (B, 512)
            fake = self.generator(to_t(tgt_crops), ident)  # (B, 3, S, S) in [0, 1]
        fake_u8 = to_uint8(fake)  # (B, S, S, 3)
        out = np.stack([paste_back(t, f, m) for t, f, (_, m) in zip(tgt, fake_u8, tgt_cut)])  # (B, H, W, 3)
        return torch.from_numpy(out).permute(0, 3, 1, 2).float().div_(255.0).to(source.device)

    def fingerprint(self) -> dict[str, Any]:
        return {"name": self.name, "version": 1, "release": asdict(self.release), "detect": self.detect,
                "weights": {k: sha for k, (_, sha) in self._weights.items()}, "watermark": False}
