"""SimSwap's networks (Chen et al., ACM MM 2020), written for this project: the generator
and the ArcFace it takes identity from, named as in the official release so that its
checkpoints load key by key (``strict=True``):

    first_layer.{1,2}  [down0.{0,1}]  down1..down3.{0,1}  [down4.{0,1}]
    BottleNeck.<i>.{conv1.1, style1.linear, conv2.1, style2.linear}
    [up4.{1,2}]  up3..up1.{1,2}  [up0.{1,2}]  last_layer.1

``down0``/``up0`` (a 32-channel first level) exist in the 512 px release, ``down4``/``up4``
when it was trained ``deep``; both are read off the checkpoint, never guessed.

SimSwap's ``arcface_checkpoint.tar`` is a pickled whole model (``{'model':
DataParallel(ResNet)}``), which ``torch.load(weights_only=True)`` refuses. It is read with
``weights_only=True`` all the same: the class names the pickle refers to
(``models.arcface_models.ResNet``/``IRBlock``/``SEBlock``, torch.nn layers,
``DataParallel``) are allow-listed and bound to this file's own classes
(:func:`faceeval.models.checkpoints.load_pickled_modules`), so only tensors and those known
module types are ever rebuilt. A plain state dict of the same network (keys
``conv1.weight``, ``layer1.0.bn0.weight``, ..., optionally prefixed ``module.``) is
accepted too. The adapter is ``methods.simswap``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from faceeval.errors import HarnessError
from faceeval.models.checkpoints import load_pickled_modules, load_strict, read_state_dict

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
    def from_state_dict(cls, sd: dict[str, torch.Tensor]) -> SimSwapConfig:
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
    obj = load_pickled_modules(path, _arcface_safe_globals(), "SimSwap's ArcFace")
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
    load_strict(model, sd, path, "the official layout")
    return model.eval().requires_grad_(False)


def load_generator(path) -> SimSwapGenerator:
    """The official ``latest_net_G.pth`` (a plain state dict) into :class:`SimSwapGenerator`."""
    sd = read_state_dict(path, "SimSwap generator")
    model = SimSwapGenerator(SimSwapConfig.from_state_dict(sd))
    load_strict(model, sd, path, "the official layout")
    return model.eval().requires_grad_(False)  # frozen: usable in and out of inference_mode
