"""Deep3DFaceRecon (Deng et al. 2019, ``Deep3DFaceRecon_pytorch``) coefficient regressor:
ResNet-50 trunk + seven 1x1-conv heads whose outputs concatenate to 257 BFM coefficients.

Facts of the official checkpoint (``checkpoints/<name>/epoch_20.pth``): a dict whose
``net_recon`` entry is the state dict, keys ``backbone.<torchvision ResNet-50 keys>``
(no ``fc``: ``use_last_fc=False``) and ``final_layers.{0..6}.{weight,bias}`` with output
sizes 80 (identity), 64 (expression), 80 (texture), 3 (angles), 27 (SH lighting),
2 (xy translation), 1 (z translation). Input 224x224 RGB in [0, 1], no normalisation.
Expression = coefficients 80:144.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from faceeval.errors import HarnessError
from faceeval.models.checkpoints import load_strict, read_torch

HEAD_SIZES = (80, 64, 80, 3, 27, 2, 1)  # id, exp, tex, angle, gamma, trans xy, trans z
NUM_COEFFS = sum(HEAD_SIZES)  # 257
EXP_SLICE = slice(80, 144)
INPUT_SIZE = 224
TRUNK_DIM = 2048


class Deep3DRegressor(nn.Module):
    """(B, 3, 224, 224) RGB in [0, 1] -> (B, 257) coefficients."""

    def __init__(self) -> None:
        super().__init__()
        import timm

        self.trunk = timm.create_model("resnet50", pretrained=False, num_classes=0)  # pooled (B, 2048)
        self.final_layers = nn.ModuleList([nn.Conv2d(TRUNK_DIM, n, 1, bias=True) for n in HEAD_SIZES])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.trunk(x)[:, :, None, None]  # (B, 2048, 1, 1), as the original's avgpool output
        return torch.cat([head(feat) for head in self.final_layers], dim=1).flatten(1)  # (B, 257)

    def expression(self, x: torch.Tensor) -> torch.Tensor:
        return self(x)[:, EXP_SLICE]  # (B, 64)


def load_deep3d(path: Path) -> Deep3DRegressor:
    """Load ``epoch_20.pth`` (``weights_only=True``): accepts the full checkpoint dict
    (``net_recon`` inside) or the bare state dict."""
    ckpt = read_torch(path)
    state = ckpt.get("net_recon", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise HarnessError(f"{path.name}: no 'net_recon' state dict inside")
    mapped = {}
    for k, v in state.items():
        k = str(k).removeprefix("module.")
        if k.startswith("backbone."):
            mapped["trunk." + k.removeprefix("backbone.")] = v
        else:
            mapped[k] = v
    model = Deep3DRegressor()
    load_strict(model, mapped, path, "a Deep3DFaceRecon ResNet-50 checkpoint")
    return model.eval()
