"""Read a frozen TensorFlow GraphDef (``.pb``) without TensorFlow.

Only what a weight port needs: every node's name, op, inputs and attributes, with
``Const`` tensors decoded to numpy. The protobuf wire format is decoded by hand from the
field numbers of TensorFlow's public ``graph.proto`` / ``node_def.proto`` /
``attr_value.proto`` / ``tensor.proto`` / ``tensor_shape.proto`` (facts of the format),
so neither TensorFlow nor generated protobuf classes are needed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from faceeval.errors import HarnessError

# TensorFlow DataType enum -> numpy dtype (types.proto)
_DTYPES = {1: np.float32, 2: np.float64, 3: np.int32, 4: np.uint8, 6: np.int8, 9: np.int64, 10: np.bool_,
           19: np.float16}


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _fields(buf: memoryview):
    """Yield (field number, wire type, value) for one message; value is int or memoryview."""
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        num, wire = key >> 3, key & 7
        if wire == 0:
            val, pos = _varint(buf, pos)
        elif wire == 1:
            val, pos = buf[pos : pos + 8], pos + 8
        elif wire == 2:
            n, pos = _varint(buf, pos)
            val, pos = buf[pos : pos + n], pos + n
        elif wire == 5:
            val, pos = buf[pos : pos + 4], pos + 4
        else:
            raise HarnessError(f"unsupported protobuf wire type {wire} (is this a GraphDef .pb?)")
        yield num, wire, val


def _shape(buf: memoryview) -> list[int]:
    dims = []
    for num, _, val in _fields(buf):
        if num == 2:  # Dim
            size = 0
            for n2, _, v2 in _fields(val):
                if n2 == 1:
                    size = v2 if v2 < (1 << 63) else v2 - (1 << 64)
            dims.append(size)
    return dims


def _tensor(buf: memoryview) -> np.ndarray:
    dtype, shape, content = 1, [], None
    floats: list[float] = []
    ints: list[int] = []
    for num, wire, val in _fields(buf):
        if num == 1:
            dtype = val
        elif num == 2:
            shape = _shape(val)
        elif num == 4:
            content = bytes(val)
        elif num == 5:  # float_val, packed or not
            floats.extend(np.frombuffer(bytes(val), "<f4").tolist())
        elif num in (7, 10):  # int_val / int64_val
            if wire == 2:
                p, mv = 0, val
                while p < len(mv):
                    v, p = _varint(mv, p)
                    ints.append(v if v < (1 << 63) else v - (1 << 64))
            else:
                ints.append(val if val < (1 << 63) else val - (1 << 64))
    np_dtype = _DTYPES.get(dtype)
    if np_dtype is None:
        return np.zeros(0)  # strings etc.: not weights
    count = int(np.prod(shape)) if shape else 1
    if content is not None:
        return np.frombuffer(content, dtype=np.dtype(np_dtype).newbyteorder("<")).reshape(shape).copy()
    vals = floats if floats else ints
    if not vals:
        return np.zeros(shape, np_dtype)
    arr = np.asarray(vals, dtype=np_dtype)
    return np.broadcast_to(arr, (count,)).reshape(shape).copy() if arr.size == 1 else arr.reshape(shape)


@dataclass
class TFNode:
    name: str
    op: str
    inputs: list[str] = field(default_factory=list)
    attrs: dict[str, object] = field(default_factory=dict)

    @property
    def value(self) -> np.ndarray:
        """The constant tensor of a ``Const`` node."""
        return self.attrs["value"]  # type: ignore[return-value]


def _attr(buf: memoryview):
    for num, _, val in _fields(buf):
        if num == 2:
            return bytes(val).decode("utf-8", "replace")
        if num == 3:
            return val
        if num == 4:
            return float(np.frombuffer(bytes(val), "<f4")[0])
        if num == 5:
            return bool(val)
        if num == 6:
            return ("dtype", val)
        if num == 7:
            return _shape(val)
        if num == 8:
            return _tensor(val)
        if num == 1:  # ListValue: keep ints and strings
            items: list[object] = []
            for n2, w2, v2 in _fields(val):
                if n2 == 2:
                    items.append(bytes(v2).decode("utf-8", "replace"))
                elif n2 == 3:
                    if w2 == 2:
                        p = 0
                        while p < len(v2):
                            x, p = _varint(v2, p)
                            items.append(x)
                    else:
                        items.append(v2)
            return items
    return None


def read_graph(path: Path) -> dict[str, TFNode]:
    """Parse a frozen GraphDef; returns nodes by name, in file order."""
    data = memoryview(Path(path).read_bytes())
    nodes: dict[str, TFNode] = {}
    for num, _, val in _fields(data):
        if num != 1:  # GraphDef.node; versions/library are not needed
            continue
        node = TFNode("", "")
        for n2, _, v2 in _fields(val):
            if n2 == 1:
                node.name = bytes(v2).decode()
            elif n2 == 2:
                node.op = bytes(v2).decode()
            elif n2 == 3:
                node.inputs.append(bytes(v2).decode())
            elif n2 == 5:  # map<string, AttrValue> entry: key=1, value=2
                key, value = "", None
                for n3, _, v3 in _fields(v2):
                    if n3 == 1:
                        key = bytes(v3).decode()
                    elif n3 == 2:
                        value = _attr(v3)
                node.attrs[key] = value
        nodes[node.name] = node
    if not nodes:
        raise HarnessError(f"{path}: no GraphDef nodes found (not a frozen TensorFlow graph?)")
    return nodes
