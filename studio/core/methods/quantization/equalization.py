"""Cross-layer equalization of a float ONNX graph before int8 quantization.

For two weighted layers joined by a positively homogeneous op (ReLU, MaxPool, or nothing),
scaling output channel ``c`` of the first by ``1/s_c`` and input channel ``c`` of the second by
``s_c`` leaves the function unchanged. With ``s_c = sqrt(r1_c / r2_c)`` (``r`` the channel's
largest |weight|) both layers end with the same range per channel, so per-tensor and per-channel
int8 grids waste fewer levels on a few wide channels (Nagel et al., 2019). Written by hand:
onnxruntime has no equalization, and the torch model may not exist (ONNX-only runs).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

import numpy as np
import onnx
from onnx import numpy_helper

WEIGHTED = frozenset({"Conv", "Gemm"})
HOMOGENEOUS = frozenset({"Relu", "MaxPool"})
"""Ops with f(s x) = s f(x) per channel for s > 0."""
ROUNDS = 4
"""Passes over the chain; each pair's scales settle in a few (the paper iterates too)."""


def _attr(node: onnx.NodeProto, name: str, default: int) -> int:
    return next((a.i for a in node.attribute if a.name == name), default)


def _out_axis(node: onnx.NodeProto) -> int:
    """The weight axis holding output channels."""
    return 0 if node.op_type == "Conv" or _attr(node, "transB", 0) else 1


def _in_axis(node: onnx.NodeProto) -> int:
    """The weight axis holding input channels (depthwise Conv: its output axis)."""
    if node.op_type == "Conv":
        return 0 if _attr(node, "group", 1) > 1 else 1
    return 1 if _attr(node, "transB", 0) else 0


def _depthwise_or_plain(node: onnx.NodeProto, weight: np.ndarray) -> bool:
    group = _attr(node, "group", 1)
    return group == 1 or (node.op_type == "Conv" and weight.shape[1] == 1
                          and group == weight.shape[0])


def _pairs(graph: onnx.GraphProto, inits: Mapping[str, onnx.TensorProto]
           ) -> list[tuple[onnx.NodeProto, onnx.NodeProto]]:
    """(first, second) weighted layers joined only through homogeneous ops, each tensor on
    the way read by one node and no graph output; weights and biases used once."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    uses = Counter(name for node in graph.node for name in node.input)
    outputs = {o.name for o in graph.output}

    def own_weights(node: onnx.NodeProto) -> bool:
        if node.op_type not in WEIGHTED or len(node.input) < 2 or node.input[1] not in inits:
            return False
        if node.op_type == "Gemm" and _attr(node, "transA", 0):
            return False
        params = [n for n in node.input[1:] if n]
        return all(n in inits and uses[n] == 1 for n in params) and _depthwise_or_plain(
            node, numpy_helper.to_array(inits[node.input[1]]))

    found = []
    for first in graph.node:
        if not own_weights(first):
            continue
        tensor = first.output[0]
        while tensor not in outputs and len(consumers.get(tensor, [])) == 1:
            nxt = consumers[tensor][0]
            if nxt.op_type in HOMOGENEOUS and nxt.input[0] == tensor:
                tensor = nxt.output[0]
                continue
            if own_weights(nxt) and nxt.input[0] == tensor:
                found.append((first, nxt))
            break
    return found


def equalize(model: onnx.ModelProto) -> int:
    """Equalize every pair found in ``model``'s main graph, in place; returns how many."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    pairs = _pairs(graph, inits)
    arrays = {name: numpy_helper.to_array(inits[name]).astype(np.float64)
              for first, second in pairs for name in [*first.input[1:], second.input[1]] if name}
    equalized = 0
    for _ in range(ROUNDS):
        for first, second in pairs:
            w1, w2 = arrays[first.input[1]], arrays[second.input[1]]
            out1, in2 = _out_axis(first), _in_axis(second)
            if w1.shape[out1] != w2.shape[in2]:
                continue
            r1 = np.abs(np.moveaxis(w1, out1, 0)).reshape(w1.shape[out1], -1).max(axis=1)
            r2 = np.abs(np.moveaxis(w2, in2, 0)).reshape(w2.shape[in2], -1).max(axis=1)
            scale = np.where((r1 > 0) & (r2 > 0), np.sqrt(r1 / np.maximum(r2, 1e-30)), 1.0)
            shape1 = [1] * w1.ndim
            shape1[out1] = -1
            shape2 = [1] * w2.ndim
            shape2[in2] = -1
            arrays[first.input[1]] = w1 / scale.reshape(shape1)
            arrays[second.input[1]] = w2 * scale.reshape(shape2)
            if len(first.input) > 2 and first.input[2]:
                arrays[first.input[2]] = arrays[first.input[2]] / scale
            equalized += 1
    for name, values in arrays.items():
        tensor = inits[name]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)
        tensor.CopyFrom(numpy_helper.from_array(values.astype(dtype), name))
    return len(pairs) if equalized else 0
