"""Tiny ONNX graphs in the official formats of the swappers' files (names, shapes, layout).

Shared by the adapter tests; each builder writes a file and returns its path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 13  # ReduceMean/ReduceSum take axes as an attribute / input as onnxruntime expects
IR_VERSION = 8


def _save(graph, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _uses_source(nodes, inits, out_from: str, source: str) -> str:
    """Append nodes that add 0 * sum(source) to ``out_from``: the graph consumes its source input."""
    inits.append(numpy_helper.from_array(np.zeros((), np.float32), "zero"))
    nodes += [
        helper.make_node("ReduceSum", [source], ["src_sum"], keepdims=0),
        helper.make_node("Mul", ["src_sum", "zero"], ["src_zero"]),
        helper.make_node("Add", [out_from, "src_zero"], ["output"]),
    ]
    return "output"


def returns_target_swapper(path: Path, size: int, source_shape: tuple[int, ...], output_scale=None,
                           output_shift=None, names=("source", "target")) -> Path:
    """facefusion-style swapper graph: inputs ``source`` (embedding or image) and ``target``
    (1, 3, size, size), one output (1, 3, size, size) = target * scale + shift (identity
    by default): a swapper that returns its target, in the model's output convention."""
    src_name, tgt_name = names
    nodes, inits = [], []
    cur = tgt_name
    if output_scale is not None:
        inits.append(numpy_helper.from_array(np.asarray(output_scale, np.float32).reshape(1, 3, 1, 1), "scale"))
        inits.append(numpy_helper.from_array(np.asarray(output_shift, np.float32).reshape(1, 3, 1, 1), "shift"))
        nodes += [helper.make_node("Mul", [cur, "scale"], ["scaled"]),
                  helper.make_node("Add", ["scaled", "shift"], ["shifted"])]
        cur = "shifted"
    out = _uses_source(nodes, inits, cur, src_name)
    graph = helper.make_graph(
        nodes, "swapper",
        [helper.make_tensor_value_info(src_name, TensorProto.FLOAT, list(source_shape)),
         helper.make_tensor_value_info(tgt_name, TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, [1, 3, size, size])],
        initializer=inits,
    )
    return _save(graph, path)


def inswapper(path: Path, emap: np.ndarray) -> Path:
    """inswapper_128 layout: inputs ``target`` (1, 3, 128, 128) then ``source`` (1, 512),
    one output, and the 512x512 ``emap`` as the graph's LAST initializer (insightface reads it
    from there). Returns its target (output in [0, 1], like the real model)."""
    nodes, inits = [], []
    out = _uses_source(nodes, inits, "target", "source")
    inits.append(numpy_helper.from_array(emap.astype(np.float32), "emap"))
    graph = helper.make_graph(
        nodes, "inswapper",
        [helper.make_tensor_value_info("target", TensorProto.FLOAT, [1, 3, 128, 128]),
         helper.make_tensor_value_info("source", TensorProto.FLOAT, [1, 512])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, [1, 3, 128, 128])],
        initializer=inits,
    )
    return _save(graph, path)


def arcface(path: Path, weight: np.ndarray) -> Path:
    """ArcFace recognition layout (w600k_r50): input ``input.1`` (1, 3, 112, 112), output
    (1, 512) = channel means @ weight (3, 512): a linear stand-in whose output is predictable."""
    nodes = [
        helper.make_node("ReduceMean", ["input.1"], ["pooled"], axes=[2, 3], keepdims=0),  # (1, 3)
        helper.make_node("MatMul", ["pooled", "w"], ["683"]),  # (1, 512)
    ]
    graph = helper.make_graph(
        nodes, "arcface",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, 112, 112])],
        [helper.make_tensor_value_info("683", TensorProto.FLOAT, [1, 512])],
        initializer=[numpy_helper.from_array(weight.astype(np.float32), "w")],
    )
    return _save(graph, path)


def converter(path: Path, matrix: np.ndarray) -> Path:
    """facefusion embedding converter layout (crossface_*): ``input`` (1, 512) -> (1, 512)."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "m"], ["output"])], "converter",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 512])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 512])],
        initializer=[numpy_helper.from_array(matrix.astype(np.float32), "m")],
    )
    return _save(graph, path)


def cpu_session(path: Path):
    """An onnxruntime session of ``path`` on one CPU thread, warnings off (the shipped int8
    graphs list their initialisers as inputs, which onnxruntime warns about): the reference
    runtime of the port tests."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
