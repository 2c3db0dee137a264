"""SmoothQuant (Xiao et al., 2023) on an ONNX graph: migrate activation outliers into weights.

Transformer activations have a few channels hundreds of times wider than the rest, so one
uint8 range per tensor leaves the others a handful of levels: static int8 MiniLM keeps cosine
0.8. Dividing channel ``j`` of a MatMul's input by ``s_j = max|x_j|^a / max|W_j|^(1-a)`` and
multiplying row ``j`` of its weight by ``s_j`` keeps the product; the division is folded into
the LayerNormalization that makes the input (its scale and bias), so nothing is added at run
time. onnxruntime offers SmoothQuant only through Intel Neural Compressor (not installed here,
and it pulls its own torch), so it is written here on the ONNX weights.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from studio.core.methods.quantization.layer_inputs import channel_means

LIMITS = (1e-5, 1e5)


def _smoothable(graph: onnx.GraphProto, inits: Mapping[str, onnx.TensorProto]
                ) -> dict[str, tuple[onnx.NodeProto, list[onnx.NodeProto]]]:
    """LayerNormalization output -> (that node, the MatMuls reading it), where every reader
    is a MatMul with a constant 2-D weight and the norm's scale and bias are its own."""
    uses = Counter(name for node in graph.node for name in node.input)
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    found = {}
    for norm in graph.node:
        if norm.op_type != "LayerNormalization" or len(norm.input) < 3:
            continue
        tensor = norm.output[0]
        users = readers.get(tensor, [])
        params = norm.input[1:3]
        if tensor in outputs or not users or not all(
                p in inits and uses[p] == 1 for p in params):
            continue
        if all(u.op_type == "MatMul" and u.input[0] == tensor and u.input[1] in inits
               and uses[u.input[1]] == 1 and len(inits[u.input[1]].dims) == 2 for u in users):
            found[tensor] = (norm, users)
    return found


def smooth(model: onnx.ModelProto, path: Path, alpha: float,
           batches: Iterable[Mapping[str, np.ndarray]]) -> int:
    """Smooth every LayerNormalization -> MatMul group of ``model`` (in place), with the
    activation ranges measured by running ``path`` (the same model, saved) on ``batches``.
    Returns how many MatMuls were smoothed."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    groups = _smoothable(graph, inits)
    if not groups:
        return 0
    ranges = channel_means(path, {name: -1 for name in groups}, batches, absmax=True)
    smoothed = 0
    for tensor, (norm, users) in groups.items():
        if tensor not in ranges:
            continue
        weights = {u.input[1]: numpy_helper.to_array(inits[u.input[1]]) for u in users}
        w_range = np.max([np.abs(w).max(axis=1) for w in weights.values()], axis=0)
        x_range = ranges[tensor].astype(np.float64)
        if x_range.shape != w_range.shape:
            continue
        scale = np.where((x_range > 0) & (w_range > 0),
                         x_range ** alpha / np.maximum(w_range, 1e-30) ** (1 - alpha), 1.0)
        scale = np.clip(scale, *LIMITS)
        for name, weight in weights.items():
            inits[name].CopyFrom(numpy_helper.from_array(
                (weight * scale[:, None]).astype(weight.dtype), name))
        for name in norm.input[1:3]:
            values = numpy_helper.to_array(inits[name])
            inits[name].CopyFrom(numpy_helper.from_array((values / scale).astype(values.dtype),
                                                         name))
        smoothed += len(users)
    return smoothed
