"""ArcFace IR-SE-50 (TreB1eN InsightFace_Pytorch, as vendored by pSp and REFace) with the
official state-dict key names, so ``model_ir_se50.pth`` loads with ``load_state_dict(strict=True)``.

Facts of the format, read from pSp (eladrich/pixel2style2pixel@5cfff38) ``models/encoders/
model_irse.py`` and ``helpers.py`` (REFace's ``src/Face_models/encoders/`` copies are the same):

* ``Backbone(112, 50, mode='ir_se')``: ``input_layer`` = Conv 3x3/64 (no bias), BatchNorm2d,
  PReLU(64) (model_irse.py lines 20-22);
* ``body.0`` .. ``body.23``: four stages of (in, depth, units) = (64, 64, 3), (64, 128, 4),
  (128, 256, 14), (256, 512, 3), the first unit of each with stride 2 (helpers.py lines 25-35);
* each unit ``bottleneck_IR_SE`` (helpers.py lines 97-119): ``shortcut_layer`` =
  ``MaxPool2d(1, stride)`` (no parameters; a stride-2 subsampling) when in == depth, else
  Conv 1x1 (stride) + BatchNorm2d; ``res_layer`` = BatchNorm2d(in), Conv 3x3 in->depth,
  PReLU(depth), Conv 3x3 depth->depth (stride), BatchNorm2d(depth), ``SEModule(depth, 16)``
  (global average pool, ``fc1`` Conv 1x1 depth->depth/16, ReLU, ``fc2`` Conv 1x1 back,
  sigmoid, times the input; helpers.py lines 56-72); output = res + shortcut;
* ``output_layer`` = BatchNorm2d(512), Dropout, Flatten (512 x 7 x 7), Linear(25088, 512),
  BatchNorm1d(512, affine=True) (model_irse.py lines 23-28: pSp's and REFace's callers leave
  ``affine`` at its default True); ``forward`` returns the L2-normalised embedding (line 48).
  Every BatchNorm eps 1e-5; every conv ``bias=False``.

Input, exactly as the two codebases feed it:

* pSp ``criteria/id_loss.py`` lines 11-14 and 16-20: the 256 px generator output (RGB in
  [-1, 1]: ``configs/transforms_config.py`` line 27, ``Normalize([0.5]*3, [0.5]*3)``),
  ``x[:, :, 35:223, 32:220]``, ``AdaptiveAvgPool2d((112, 112))``, the network;
* REFace@64615dc8 ``eval_tool/ID_retrieval/ID_retrieval.py``: ``cv2.imread`` then
  ``COLOR_BGR2RGB`` (lines 194-196: RGB), ``A.Resize(112, 112)`` (lines 176-177, 224),
  ``ToTensor`` + ``Normalize((0.5,)*3, (0.5,)*3)`` (lines 142-150, 226: RGB in [-1, 1]), times
  the face-parsing mask in that normalised space (line 227: masked pixels become 0, i.e.
  mid-grey), then ``IDLoss.extract_feats`` (lines 124-135): ``AdaptiveAvgPool2d((256, 256))``
  (line 129), ``x[:, :, 35:223, 32:220]`` (line 130), ``AdaptiveAvgPool2d((112, 112))``
  (line 131), ``Backbone`` loaded from ``model_ir_se50.pth`` (lines 111-113); ``forward``
  (lines 137-139) keeps the last of the multi-scale list, the L2-normalised final embedding
  (``src/Face_models/encoders/model_irse.py`` lines 44-69).

So :class:`IRSEBackbone` takes (B, 3, 112, 112) RGB in [-1, 1], ``(x / 255 - 0.5) / 0.5`` (the
normalisation :class:`faceeval.metrics.id_backends.IRSEEmbedder` applies, arcface_torch's too); the
crop in front of it is the identity metric's ``crop`` setting (``psp`` is the region above;
:func:`faceeval.metrics.identity.convention_crops` resizes the aligned crop to 256 with cv2
rather than going through REFace's 112 px round trip and average pools, and its ``mask=parsing``
blackens, 0 in uint8 = -1 after normalisation, where REFace's mask leaves 0 = mid-grey).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from faceeval.models.checkpoints import load_strict, read_state_dict

BN_EPS = 1e-5
SE_REDUCTION = 16
STEM_WIDTH = 64
INPUT_SIZE = 112
FINAL_SPATIAL = 7  # 112 halved four times
EMBED_DIM = 512
WEIGHTS = "model_ir_se50.pth"  # faceeval.weights


@dataclass(frozen=True)
class IRSEStage:
    cin: int  # channels in
    depth: int  # channels out
    units: int  # bottlenecks; the first has stride 2


@dataclass(frozen=True)
class IRSEConfig:
    name: str
    stages: tuple[IRSEStage, ...]


#: helpers.py get_blocks(50): 3 + 4 + 14 + 3 = 24 units
IRSE50 = IRSEConfig("ir_se50", (IRSEStage(64, 64, 3), IRSEStage(64, 128, 4), IRSEStage(128, 256, 14),
                                IRSEStage(256, 512, 3)))


class SqueezeExcite(nn.Module):
    """(B, C, H, W) -> the same, each channel scaled by sigmoid(fc2(relu(fc1(mean over H, W))))."""

    def __init__(self, channels: int, reduction: int = SE_REDUCTION) -> None:
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1, padding=0, bias=False)
        self.relu = nn.ReLU()
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1, padding=0, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.sigmoid(self.fc2(self.relu(self.fc1(self.avg_pool(x)))))  # (B, C, H, W)


class BottleneckIRSE(nn.Module):
    """(B, cin, H, W) -> (B, depth, H / stride, W / stride): residual unit with SE."""

    def __init__(self, cin: int, depth: int, stride: int) -> None:
        super().__init__()
        if cin == depth:
            self.shortcut_layer: nn.Module = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(nn.Conv2d(cin, depth, 1, stride, bias=False),
                                                nn.BatchNorm2d(depth, eps=BN_EPS))
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(cin, eps=BN_EPS),
            nn.Conv2d(cin, depth, 3, 1, 1, bias=False),
            nn.PReLU(depth),
            nn.Conv2d(depth, depth, 3, stride, 1, bias=False),
            nn.BatchNorm2d(depth, eps=BN_EPS),
            SqueezeExcite(depth),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


class IRSEBackbone(nn.Module):
    """(B, 3, 112, 112) RGB in [-1, 1] -> (B, 512) L2-normalised embedding."""

    def __init__(self, cfg: IRSEConfig = IRSE50) -> None:
        super().__init__()
        self.cfg = cfg
        self.input_layer = nn.Sequential(nn.Conv2d(3, STEM_WIDTH, 3, 1, 1, bias=False),
                                         nn.BatchNorm2d(STEM_WIDTH, eps=BN_EPS), nn.PReLU(STEM_WIDTH))
        units = []
        for s in cfg.stages:
            units += [BottleneckIRSE(s.cin, s.depth, 2)] + [BottleneckIRSE(s.depth, s.depth, 1)
                                                            for _ in range(s.units - 1)]
        self.body = nn.Sequential(*units)
        width = cfg.stages[-1].depth
        self.output_layer = nn.Sequential(
            nn.BatchNorm2d(width, eps=BN_EPS),
            nn.Dropout(0.0),  # pSp/REFace build it with 0.4-0.6; inactive in eval
            nn.Flatten(),  # (B, 512 * 7 * 7), channel-major as Tensor.view
            nn.Linear(width * FINAL_SPATIAL * FINAL_SPATIAL, EMBED_DIM),
            nn.BatchNorm1d(EMBED_DIM, eps=BN_EPS),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.body(self.input_layer(x))  # (B, 512, 7, 7)
        x = self.output_layer(x)  # (B, 512)
        return x / torch.linalg.vector_norm(x, dim=1, keepdim=True)


def load_irse50(path: Path | str) -> IRSEBackbone:
    """``model_ir_se50.pth`` (a ``Backbone(112, 50, mode='ir_se')`` state dict, read with
    ``weights_only=True``) strictly into :class:`IRSEBackbone`, in eval mode; a file of another
    layout is a one-line error naming the keys that differ."""
    path = Path(path)
    model = IRSEBackbone(IRSE50)
    state = read_state_dict(path, "pSp IR-SE-50")
    for k, v in model.state_dict().items():
        if k.endswith("num_batches_tracked"):
            state.setdefault(k, torch.zeros_like(v))  # files from before PyTorch 0.4.1 lack the counter
    load_strict(model, state, path, "an IR-SE-50 checkpoint (pSp's model_ir_se50.pth: Backbone(112, 50, mode='ir_se'))")
    return model.eval()
