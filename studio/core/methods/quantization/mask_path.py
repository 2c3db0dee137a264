"""Find the additive attention-mask path of a transformer graph, which static int8 leaves float.

Hugging Face attention turns the padding mask into a bias of the most negative float
(``torch.finfo(float32).min``, about -3.4e38, or -inf), selects or adds it into the attention
scores and takes the softmax. Calibrated static quantization gives each tensor one scale over
its observed range, and on these tensors the range spans 1e38 (percentile and entropy
calibration refuse such a range outright). Measured on all-MiniLM-L6-v2 exported with three
inputs (``python -m benchmarks.transformer_onnx``), static int8 with minmax calibration gave a
sentence-embedding cosine of 0.40 with the path quantized and 0.81 with it float. Dynamic int8
(0.993) stays the choice for transformers on CPU.

The path: every node fed by a small constant of magnitude at least :data:`HUGE` (or inf), and
every node downstream of one, up to and including the softmax that consumes it; nodes of such a
run that never reach a softmax (a clip to the float maximum, say) are left alone.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

HUGE = 1e30
"""Far beyond any real activation, far below the -3.4e38 that masks use."""
SMALL = 16
"""Mask fill values are scalars or tiny tensors; weights are never read (no copies of them)."""
STOP_AT = {"Softmax"}


def _huge(value: np.ndarray) -> bool:
    return value.size > 0 and value.dtype.kind == "f" and bool(np.any(np.abs(value) >= HUGE))


def _size(dims: list[int] | tuple[int, ...]) -> int:
    return int(np.prod(dims)) if len(dims) else 1


def _constant_is_huge(node: onnx.NodeProto) -> bool:
    for attribute in node.attribute:
        if attribute.name == "value":
            return _size(attribute.t.dims) <= SMALL and _huge(numpy_helper.to_array(attribute.t))
        if attribute.name == "value_float":
            return abs(attribute.f) >= HUGE
    return False


def _huge_constants(graph: onnx.GraphProto) -> set[str]:
    names = {t.name for t in graph.initializer
             if t.data_location != onnx.TensorProto.EXTERNAL and _size(t.dims) <= SMALL
             and _huge(numpy_helper.to_array(t))}
    names.update(node.output[0] for node in graph.node
                 if node.op_type == "Constant" and _constant_is_huge(node))
    return names


def mask_path_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the main graph's nodes on the additive mask path (see the module docstring)."""
    graph = model.graph
    tainted = _huge_constants(graph)
    downstream: list[onnx.NodeProto] = []
    for node in graph.node:  # nodes are stored in topological order
        if node.op_type == "Constant" or not tainted.intersection(node.input):
            continue
        downstream.append(node)
        if node.op_type not in STOP_AT:
            tainted.update(node.output)
    # keep what leads into a softmax: walk back from each one through the tainted nodes
    made_by = {output: node for node in downstream for output in node.output}
    keep: set[str] = set()
    stack = [node for node in downstream if node.op_type in STOP_AT]
    while stack:
        node = stack.pop()
        if node.name not in keep:
            keep.add(node.name)
            stack.extend(made_by[name] for name in node.input if name in made_by)
    return [node.name for node in downstream if node.name in keep]
