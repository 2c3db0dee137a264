"""Build a :class:`LayerTree` from an ONNX graph, grouping nodes into name scopes.

Scopes come from the exporter's metadata (``pkg.torch.onnx.name_scopes``, written by the dynamo
exporter) or from ``/``-separated node names (the legacy exporter and most other tools), the way
Netron groups them. Scopes exported from torch get the torch module's dotted name, so a plan can
use the same layer names for the torch model and its ONNX export.

Weights held in ``Constant`` nodes (paddle2onnx, exports without constant folding) count like
initializers: as parameters of the layer that reads them, the Constant node itself not shown.
The tree of such a file and of its repaired form (:mod:`studio.core.models.onnx_repair`) match.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import numpy_helper

from studio.core.graph.onnx_metadata import scope_metadata
from studio.core.graph.tree import LayerNode, LayerTree
from studio.core.models.onnx_repair import constant_value, node_names

_WEIGHTED_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul", "ConvInteger", "MatMulInteger",
                 "QLinearConv", "QLinearMatMul", "MatMulNBits"}


def _scope_path(node: onnx.NodeProto) -> list[tuple[str, str, str]]:
    """(name, label, type) of each enclosing scope, outermost first."""
    recorded = scope_metadata(node)
    if recorded is not None:
        scopes, classes = recorded
        classes = [c.rsplit(".", 1)[-1] for c in classes] + ["Scope"] * len(scopes)
        return [(s, s.rsplit(".", 1)[-1], c) for s, c in zip(scopes, classes, strict=False)]
    # "/res/conv1/conv1.0/Conv": each part is a module name relative to its parent, where a
    # Sequential's child repeats the parent's name ("conv1.0" inside "conv1").
    path: list[tuple[str, str, str]] = []
    previous = ""
    for part in (p for p in node.name.split("/")[:-1] if p):
        label = part.removeprefix(previous + ".") if previous else part
        name = f"{path[-1][0]}.{label}" if path else label
        path.append((name, label, "Scope"))
        previous = part
    return path


def _shapes(model: onnx.ModelProto) -> dict[str, tuple[int | str, ...]]:
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # inference is best effort: models over 2 GB or with custom ops
        inferred = model
    shapes = {}
    graph = inferred.graph
    for value in [*graph.input, *graph.value_info, *graph.output]:
        dims = value.type.tensor_type.shape.dim
        shapes[value.name] = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                                   for d in dims)
    return shapes


def _numel(shape: tuple[int | str, ...] | None) -> int:
    if not shape or not all(isinstance(d, int) for d in shape):
        return 0
    return math.prod(shape)  # type: ignore[arg-type]


def _per_sample(shape: tuple[int | str, ...] | None) -> tuple[int | str, ...] | None:
    """A free first (batch) dim counted as 1: MACs are given per sample, as for torch."""
    return (1, *shape[1:]) if shape and not isinstance(shape[0], int) else shape


def _node_macs(node: onnx.NodeProto, shapes: dict, weights: dict[str, np.ndarray]) -> int:
    out = _numel(_per_sample(shapes.get(node.output[0]))) if node.output else 0
    if not out:
        return 0
    weight_name = node.input[1] if len(node.input) > 1 else ""
    weight_shape = weights[weight_name].shape if weight_name in weights else \
        shapes.get(weight_name)
    if node.op_type in ("Conv", "ConvInteger") and weight_shape:
        return out * _numel(tuple(weight_shape[1:]))
    if node.op_type in ("Gemm", "MatMul", "MatMulInteger"):
        a = shapes.get(node.input[0])
        k = a[-1] if a else None
        if node.op_type == "Gemm":
            trans_a = next((attr.i for attr in node.attribute if attr.name == "transA"), 0)
            k = a[0] if a and trans_a else k
        return out * k if isinstance(k, int) else 0
    return 0


def _stored_tensors(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """Initializers, and the tensors of Constant nodes (where paddle2onnx and exports without
    constant folding keep weights), by the name their consumers read them under. Scalar
    constants (an axis, a divisor) are left out: they are not parameters."""
    weights = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            value = constant_value(node)
            if value is not None and value.size > 1:
                weights[node.output[0]] = value
    return weights


def _charge_weight(tree_node: LayerNode, node: onnx.NodeProto, weight: np.ndarray) -> None:
    if node.op_type in _WEIGHTED_OPS and weight.ndim >= 2 and not tree_node.weight_params:
        tree_node.weight_params = int(weight.size)
        tree_node.weight_bits = weight.dtype.itemsize * 8
        transposed = node.op_type == "Gemm" and not any(
            attr.name == "transB" and attr.i for attr in node.attribute)
        axis = -1 if node.op_type == "MatMul" or transposed else 0
        tree_node.out_channels = int(weight.shape[axis])


def build_onnx_tree(model: onnx.ModelProto, model_name: str) -> LayerTree:
    tree = LayerTree(model_name, "onnx")
    root = tree.add("", model_name, "Model", None)
    weights = _stored_tensors(model.graph)
    # A weight fed through DequantizeLinear/Cast is still the weight of the op that consumes it.
    producers = {out: node for node in model.graph.node for out in node.output}
    shapes = _shapes(model)
    owned: set[str] = set()
    names = node_names(model.graph)
    for index, node in enumerate(model.graph.node):
        if node.op_type == "Constant" and node.output[0] in weights:
            continue  # shown through the layer that reads it, as an initializer would be
        parent = root
        for name, label, op_type in _scope_path(node):
            parent = tree.get(name) if name in tree else tree.add(name, label, op_type, parent.id)
        node_name = names[index]
        if node_name in tree:  # the name of a scope
            node_name = f"{node_name}_{index}"
        leaf = tree.add(node_name, node_name.rsplit("/", 1)[-1], node.op_type, parent.id)
        output = node.output[0] if node.output else None
        leaf.output_shape = shapes.get(output) if output else None
        leaf.macs = _node_macs(node, shapes, weights)
        tensors = [(name, weights[name]) for name in node.input if name in weights]
        for name, array in tensors:
            if name in owned:
                continue
            owned.add(name)
            leaf.params += int(array.size)
            leaf.nbytes += int(array.nbytes)
            leaf.zeros += int(array.size - np.count_nonzero(array))
        for name in node.input[1:2]:
            source = weights.get(name)
            producer = producers.get(name)
            if source is None and producer is not None and producer.input:
                source = weights.get(producer.input[0])
            if source is not None:
                _charge_weight(leaf, node, source)
    for scope in reversed(tree.nodes):  # a scope's output is its last node's output
        if scope.output_shape is None and scope.children:
            scope.output_shape = tree.nodes[scope.children[-1]].output_shape
    return tree.finalize()
