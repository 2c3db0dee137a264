"""Build a :class:`LayerTree` from an ONNX graph, grouping nodes into name scopes.

Scopes come from the exporter's metadata (``pkg.torch.onnx.name_scopes``, written by the dynamo
exporter) or from ``/``-separated node names (the legacy exporter and most other tools), the way
Netron groups them. Scopes exported from torch get the torch module's dotted name, so a plan can
use the same layer names for the torch model and its ONNX export.

Weights held in ``Constant`` nodes (paddle2onnx, exports without constant folding) count like
initializers: as parameters of the layer that reads them, the Constant node itself not shown.
The tree of such a file and of its repaired form (:mod:`studio.core.models.onnx_repair`) match.

The bodies of ``If``/``Loop``/``Scan`` nodes show as children of that node, one scope per body,
and a weight read inside a body (its own, or one of the outer graph) counts on the body's node
that reads it. Shapes come from onnx's shape inference; with an example input the file's free
dims are fixed to it first. Weights stay on disk when the file keeps them there: sizes come
from the shapes, zeros are counted chunk by chunk (:mod:`studio.core.models.onnx_weights`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from studio.core.errors import InputError
from studio.core.graph.onnx_metadata import scope_metadata
from studio.core.graph.onnx_walk import CONTROL_FLOW_OPS, all_graphs, walk_nodes
from studio.core.graph.tree import LayerNode, LayerTree
from studio.core.models.inputs import InputSpec
from studio.core.models.onnx_feeds import graph_inputs
from studio.core.models.onnx_repair import constant_value
from studio.core.models.onnx_weights import count_zeros, tensor_bits, tensor_shape

_WEIGHTED_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul", "ConvInteger", "MatMulInteger",
                 "QLinearConv", "QLinearMatMul", "MatMulNBits"}
_COUNTED_OPS = {"Conv", "ConvInteger", "ConvTranspose", "Gemm", "MatMul", "MatMulInteger"}
"""Ops whose MACs are counted: those that hold nearly all of a network's arithmetic."""
BODY_SCOPE = "Body"
"""Op type of the tree node grouping the nodes of one If/Loop/Scan body."""
_INLINE_ELEMENTS = 1 << 16
"""Initializers up to this size keep their values for shape inference (Reshape targets and
the like); bigger ones are given to it as typed inputs, so no weight is copied."""


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


Shape = tuple[int | str, ...]


def _free(dim: onnx.TensorShapeProto.Dimension) -> bool:
    """A dim the file leaves open: symbolic, unset, or stored as -1/0 by some exporters."""
    return not dim.HasField("dim_value") or dim.dim_value <= 0


def _fix_input(value: onnx.ValueInfoProto, example: InputSpec | None) -> None:
    """Set the input's free dims to ``example``'s, in place; a dim stored as -1 or 0 becomes
    symbolic. A batch dim the file leaves free stays free (MACs are counted per sample)."""
    dims = value.type.tensor_type.shape.dim
    if example is not None:
        stored = [d.dim_value if not _free(d) else (d.dim_param or "?") for d in dims]
        if len(example.shape) != len(dims) or any(
                isinstance(s, int) and s != e for s, e in zip(stored, example.shape, strict=True)):
            raise InputError(
                f"the example input of shape {list(example.shape)} does not fit the model's "
                f"input {value.name!r} of shape {stored}; give {len(dims)} dims, batch first, "
                "keeping the fixed ones")
    for index, dim in enumerate(dims):
        if not _free(dim):
            continue
        if example is not None and index > 0:
            dim.dim_value = example.shape[index]
        elif dim.HasField("dim_value"):
            dim.dim_param = f"unknown_{index}"


def _skeleton(model: onnx.ModelProto, example: InputSpec | None) -> onnx.ModelProto:
    """The model for shape inference: big or external weights become typed inputs (no copy of
    their values), the first fed input takes the example's dims, cached shapes are dropped
    (they may hold -1s or another input's sizes)."""
    skeleton = onnx.ModelProto(ir_version=model.ir_version)
    skeleton.opset_import.extend(model.opset_import)
    skeleton.functions.extend(model.functions)
    graph, source = skeleton.graph, model.graph
    graph.node.extend(source.node)
    graph.input.extend(source.input)
    graph.output.extend(source.output)
    listed = {value.name for value in source.input}
    for tensor in source.initializer:
        if math.prod(tensor.dims) <= _INLINE_ELEMENTS and tensor.data_location != \
                onnx.TensorProto.EXTERNAL:
            graph.initializer.append(tensor)
        elif tensor.name not in listed:
            graph.input.append(onnx.helper.make_tensor_value_info(
                tensor.name, tensor.data_type, list(tensor.dims)))
    fed = {value.name for value in graph_inputs(model)}
    first = True
    for value in graph.input:
        if value.name in fed and value.type.tensor_type.HasField("shape"):
            _fix_input(value, example if first else None)
            first = False
    return skeleton


def _shapes(model: onnx.ModelProto, example: InputSpec | None) -> dict[str, Shape]:
    skeleton = _skeleton(model, example)
    try:
        inferred = onnx.shape_inference.infer_shapes(skeleton, data_prop=True)
    except Exception:  # inference is best effort: custom ops, inconsistent files
        inferred = skeleton
    shapes = {}
    for graph in all_graphs(inferred.graph):
        for value in [*graph.input, *graph.value_info, *graph.output]:
            dims = value.type.tensor_type.shape.dim
            shapes[value.name] = tuple(d.dim_value if not _free(d) else (d.dim_param or "?")
                                       for d in dims)
    return shapes


def _numel(shape: Shape | None) -> int:
    if not shape or not all(isinstance(d, int) and d > 0 for d in shape):
        return 0
    return math.prod(shape)  # type: ignore[arg-type]


def _per_sample(shape: Shape | None) -> Shape | None:
    """A free first (batch) dim counted as 1: MACs are given per sample, as for torch."""
    return (1, *shape[1:]) if shape and not isinstance(shape[0], int) else shape


@dataclass(frozen=True)
class _Stored:
    """A weight as the tree sees it: an initializer (values left where they are) or the
    array of a Constant node."""

    shape: tuple[int, ...]
    bits: int
    tensor: onnx.TensorProto | None = None
    array: np.ndarray | None = None

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return math.ceil(self.size * self.bits / 8)

    def zeros(self, data_dir: Path | None) -> int:
        if self.array is not None:
            return int(self.array.size - np.count_nonzero(self.array))
        assert self.tensor is not None
        return count_zeros(self.tensor, data_dir)


def _stored_tensors(model: onnx.ModelProto) -> dict[str, _Stored]:
    """Initializers of every graph, and the tensors of Constant nodes (where paddle2onnx and
    exports without constant folding keep weights), by the name their readers use (names are
    unique across a model's graphs in ONNX). Scalar constants (an axis, a divisor) are left
    out: they are not parameters."""
    stored: dict[str, _Stored] = {}
    for graph in all_graphs(model.graph):
        for tensor in graph.initializer:
            stored[tensor.name] = _Stored(tensor_shape(tensor), tensor_bits(tensor), tensor)
        for node in graph.node:
            if node.op_type == "Constant":
                value = constant_value(node)
                if value is not None and value.size > 1:
                    stored[node.output[0]] = _Stored(value.shape, value.dtype.itemsize * 8,
                                                     array=value)
    return stored


def _node_macs(node: onnx.NodeProto, shapes: dict[str, Shape], weights: dict[str, _Stored]
               ) -> int | None:
    """MACs per sample of a Conv/MatMul/Gemm node; None when its shapes are unknown; 0 for
    other ops."""
    if node.op_type not in _COUNTED_OPS:
        return 0
    weight_name = node.input[1] if len(node.input) > 1 else ""
    weight_shape = weights[weight_name].shape if weight_name in weights else \
        shapes.get(weight_name)
    if node.op_type == "ConvTranspose":  # each input element meets one slice of the kernel
        inputs = _numel(_per_sample(shapes.get(node.input[0])))
        return inputs * _numel(tuple(weight_shape[1:])) if inputs and weight_shape else None
    out = _numel(_per_sample(shapes.get(node.output[0]))) if node.output else 0
    if not out:
        return None
    if node.op_type in ("Conv", "ConvInteger"):
        return out * _numel(tuple(weight_shape[1:])) if weight_shape else None
    a = shapes.get(node.input[0])
    trans_a = node.op_type == "Gemm" and any(
        attr.name == "transA" and attr.i for attr in node.attribute)
    k = (a[0] if trans_a else a[-1]) if a else None
    if not (isinstance(k, int) and k > 0) and weight_shape and len(weight_shape) >= 2:
        trans_b = node.op_type == "Gemm" and any(
            attr.name == "transB" and attr.i for attr in node.attribute)
        k = weight_shape[-1] if trans_b else weight_shape[-2]
    return out * k if isinstance(k, int) and k > 0 else None


def _charge_weight(tree_node: LayerNode, node: onnx.NodeProto, weight: _Stored) -> None:
    if node.op_type in _WEIGHTED_OPS and len(weight.shape) >= 2 and not tree_node.weight_params:
        tree_node.weight_params = weight.size
        tree_node.weight_bits = weight.bits
        transposed = node.op_type == "Gemm" and not any(
            attr.name == "transB" and attr.i for attr in node.attribute)
        axis = -1 if node.op_type == "MatMul" or transposed else 0
        tree_node.out_channels = int(weight.shape[axis])


def _unknown_shapes_note(unknown: list[str], model: onnx.ModelProto) -> str:
    free = [f"{value.name} {list(value.dims)}" for value in graph_inputs(model)
            if value.dims is None or any(not isinstance(d, int) or d <= 0 for d in value.dims[1:])]
    where = f" (free dims in {', '.join(free)})" if free else ""
    return (f"MACs of {len(unknown)} Conv/MatMul/Gemm node(s) are unknown: their shapes could "
            f"not be inferred{where}, so they count 0. Give the example input (inspect "
            "--input-shape, or Model ▸ Set Example Input…) to count them.")


def build_onnx_tree(model: onnx.ModelProto, model_name: str,
                    example: InputSpec | None = None, data_dir: Path | None = None
                    ) -> LayerTree:
    """The layer tree of ``model``. ``example`` fixes the first input's free dims for shape
    inference (MACs stay per sample when the batch dim is free); ``data_dir`` is where its
    external data lives (only read to count zeros, chunk by chunk)."""
    tree = LayerTree(model_name, "onnx")
    tree.example_input = example.shape if example is not None else None
    root = tree.add("", model_name, "Model", None)
    weights = _stored_tensors(model)
    # A weight fed through DequantizeLinear/Cast is still the weight of the op that consumes it.
    producers = {out: node for graph in all_graphs(model.graph) for node in graph.node
                 for out in node.output}
    shapes = _shapes(model, example)
    owned: set[str] = set()
    unknown: list[str] = []
    for walked in walk_nodes(model.graph):
        node = walked.node
        if node.op_type == "Constant" and node.output[0] in weights:
            continue  # shown through the layer that reads it, as an initializer would be
        if walked.body is None:
            parent = root
            for name, label, op_type in _scope_path(node):
                parent = tree.get(name) if name in tree else tree.add(name, label, op_type,
                                                                      parent.id)
        else:
            holder, _, attribute = walked.body.rpartition("/")
            parent = tree.get(walked.body) if walked.body in tree else tree.add(
                walked.body, attribute, BODY_SCOPE, tree.get(holder).id)
        node_name = walked.name
        if node_name in tree:  # the name of a scope
            node_name = f"{node_name}_{len(tree)}"
        leaf = tree.add(node_name, node_name.rsplit("/", 1)[-1], node.op_type, parent.id)
        output = node.output[0] if node.output else None
        leaf.output_shape = shapes.get(output) if output else None
        macs = _node_macs(node, shapes, weights)
        if macs is None:
            unknown.append(node_name)
        leaf.macs = macs or 0
        for name in node.input:
            if name not in weights or name in owned:
                continue
            owned.add(name)
            stored = weights[name]
            leaf.params += stored.size
            leaf.nbytes += stored.nbytes
            leaf.zeros += stored.zeros(data_dir)
        for name in node.input[1:2]:
            source = weights.get(name)
            producer = producers.get(name)
            if source is None and producer is not None and producer.input:
                source = weights.get(producer.input[0])
            if source is not None:
                _charge_weight(leaf, node, source)
    if unknown:
        tree.notes.append(_unknown_shapes_note(unknown, model))
    for scope in reversed(tree.nodes):  # a scope's output is its last node's output
        if scope.output_shape is None and scope.children and scope.op_type not in \
                CONTROL_FLOW_OPS:
            scope.output_shape = tree.nodes[scope.children[-1]].output_shape
    return tree.finalize()
