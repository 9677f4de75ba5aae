"""CosFace ``sphere20`` as ReliableSwap evaluates identity with it
(``net_sphere20_data_vggface2_acc_9955.pth``, trained on VGGFace2), with the official
state-dict key names, so that file loads with ``load_state_dict(strict=True)``.

Facts of the format, read from ygtxr1997/ReliableSwap@a9fdce66 (the network is MuggleWang's
CosFace_pytorch ``sphere``, copied into ``modules/third_party/cosface/net.py``):

* ``net.py`` lines 18-37: four stages ``layer1..4`` with 1, 2, 4, 1 residual units
  (``type=20``), widths 64, 128, 256, 512, 3 input channels; ``fc`` Linear(512 * 7 * 7, 512)
  "for (112,112) input" (line 37; line 36, commented out, is CosFace_pytorch's 112x96 head,
  Linear(512 * 7 * 6, 512)). There is no BatchNorm anywhere.
* ``net.py`` lines 49-56: a stage is ``nn.Sequential`` of [Conv2d(cin, cout, 3, stride 2,
  padding 1) *with* bias, PReLU(cout), unit, unit, ...], so its keys are ``layerN.0.weight``,
  ``layerN.0.bias``, ``layerN.1.weight`` (PReLU), ``layerN.{2..}.conv1.weight`` ...
* ``net.py`` lines 6-15: a unit is ``x + prelu2(conv2(prelu1(conv1(x))))``, both convs
  3x3, stride 1, padding 1, no bias; PReLU with one slope per channel.
* ``net.py`` lines 58-67: the output is ``fc`` of the flattened (C, H, W) map: 512-d, not
  L2-normalised (eval.py compares by cosine, line 358).
* ``lfw_eval.py`` lines 117-123: ``net.sphere()`` loads this very file and is run on a
  (12, 3, 112, 112) tensor: the checkpoint is the 112x112 variant.

Input, as ReliableSwap feeds it (``inference/ffplus/eval.py`` ``_record_id_batch``, lines
208-219): the FFHQ-aligned 256 px crops of target, source and result (``dataloader.py``
lines 147 and 195-200: PIL ``convert("RGB")``, ``ToTensor()`` and ``Normalize(0.5, 0.5)``,
i.e. **RGB**, ``(x / 255 - 0.5) / 0.5`` in [-1, 1], lines 168-172), concatenated and
``F.interpolate(size=112, mode="bilinear", align_corners=True)`` (line 212): the whole
aligned crop squeezed to 112x112, no 5-point alignment, no mask, no flip. :func:`sphere20_input`
does the same for (B, H, W, 3) uint8 RGB crops of any size.

Example:
    >>> net = Sphere20()
    >>> tuple(net.state_dict()["fc.weight"].shape)
    (512, 25088)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from faceeval.errors import HarnessError
from faceeval.models.checkpoints import load_strict, read_state_dict

WEIGHTS = "net_sphere20_data_vggface2_acc_9955.pth"  # faceeval.weights name (ReliableSwap's own file name)


@dataclass(frozen=True)
class SphereConfig:
    name: str
    units: tuple[int, int, int, int]  # residual units per stage
    widths: tuple[int, int, int, int] = (64, 128, 256, 512)
    input_hw: tuple[int, int] = (112, 112)  # ReliableSwap's net.py line 37 (not CosFace_pytorch's 112x96)
    embed_dim: int = 512

    @property
    def final_hw(self) -> tuple[int, int]:
        """Feature map after four stride-2 stages: 112 -> 56 -> 28 -> 14 -> 7."""
        h, w = self.input_hw
        for _ in range(4):
            h, w = (h + 1) // 2, (w + 1) // 2  # 3x3, stride 2, padding 1
        return h, w


SPHERE20 = SphereConfig("sphere20", (1, 2, 4, 1))
#: fc input width of CosFace_pytorch's 112x96 sphere20 (net.py line 36): a checkpoint of that
#: variant is named as such in the error, not just "shape mismatch"
FC_IN_112X96 = 512 * 7 * 6


class SphereUnit(nn.Module):
    """Residual unit: x + PReLU(conv3x3(PReLU(conv3x3(x)))), width kept, no bias, no BN."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.prelu1 = nn.PReLU(width)
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.prelu2 = nn.PReLU(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, C, H, W)
        return x + self.prelu2(self.conv2(self.prelu1(self.conv1(x))))


def sphere_stage(cin: int, cout: int, units: int) -> nn.Sequential:
    """Index 0: the stride-2 3x3 conv with bias (halves H and W), 1: its PReLU, 2..: units."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, 2, 1, bias=True), nn.PReLU(cout),
                         *(SphereUnit(cout) for _ in range(units)))


class Sphere20(nn.Module):
    """(B, 3, 112, 112) RGB in [-1, 1] -> (B, 512) embedding (not L2-normalised)."""

    def __init__(self, cfg: SphereConfig = SPHERE20) -> None:
        super().__init__()
        self.cfg = cfg
        cin = 3
        for i, (width, units) in enumerate(zip(cfg.widths, cfg.units)):
            setattr(self, f"layer{i + 1}", sphere_stage(cin, width, units))
            cin = width
        fh, fw = cfg.final_hw
        self.fc = nn.Linear(cin * fh * fw, cfg.embed_dim)  # (512 * 7 * 7) -> 512

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.cfg.input_hw:
            raise HarnessError(f"{self.cfg.name} takes {self.cfg.input_hw[0]}x{self.cfg.input_hw[1]} input, "
                               f"got {tuple(x.shape[-2:])} (use sphere20_input)")
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (B, 512, 7, 7)
        return self.fc(torch.flatten(x, 1))  # (B, 512 * 7 * 7) -> (B, 512)


def sphere20_input(images: torch.Tensor, cfg: SphereConfig = SPHERE20) -> torch.Tensor:
    """(B, H, W, 3) uint8 RGB -> (B, 3, 112, 112) float in [-1, 1], as ReliableSwap's eval.py
    feeds its recogniser: ``(x / 255 - 0.5) / 0.5`` (ToTensor + Normalize(0.5, 0.5), dataloader.py
    lines 168-172), then, unless already 112x112, ``F.interpolate(size=112, mode="bilinear",
    align_corners=True)`` of the whole image (eval.py line 212)."""
    import torch.nn.functional as F

    if images.ndim != 4 or images.shape[-1] != 3:
        raise HarnessError(f"sphere20_input expects (B, H, W, 3) RGB images, got {tuple(images.shape)}")
    x = (images.permute(0, 3, 1, 2).float() / 255.0 - 0.5) / 0.5  # (B, 3, H, W) in [-1, 1], bit for bit torchvision's
    if tuple(x.shape[-2:]) != cfg.input_hw:
        x = F.interpolate(x, size=cfg.input_hw, mode="bilinear", align_corners=True)  # (B, 3, 112, 112)
    return x


def load_sphere20(path: Path) -> Sphere20:
    """Build sphere20 and load ReliableSwap's ``net_sphere20_data_vggface2_acc_9955.pth``
    (``torch.load(weights_only=True)``, DataParallel ``module.`` prefixes stripped, keys and
    shapes checked); a file of another layout is a one-line error naming it."""
    path = Path(path)
    state = read_state_dict(path, "sphere20")
    fc = state.get("fc.weight")
    if fc is not None and fc.ndim == 2 and fc.shape[1] == FC_IN_112X96:
        raise HarnessError(f"{path.name}: a 112x96 sphere20 (fc.weight {tuple(fc.shape)}, CosFace_pytorch's "
                           "original head); ReliableSwap's evaluator uses the 112x112 one (fc.weight (512, 25088))")
    model = Sphere20()
    load_strict(model, state, path, "a sphere20 checkpoint (ReliableSwap's CosFace, 112x112)")
    return model.eval()
