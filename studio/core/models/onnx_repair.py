"""Put an ONNX file as real exporters write it into the form onnxruntime's quantizers need.

Each step is reported in words (the report and the GUI show them):

- weights held in ``Constant`` nodes (paddle2onnx, some TF converters, exports without
  constant folding) become initializers; the quantizers only look for weights there and
  otherwise leave the layer float without saying so;
- an opset below 13 is upgraded with onnx's version converter: per-channel QDQ writes an
  ``axis`` on DequantizeLinear, which opset 11 does not know, and onnxruntime then refuses the
  quantized file.

The third fault of files in the wild, dynamic shapes that ORT's symbolic shape inference cannot
follow, is handled where it bites: quantization pre-processing retries without it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper, version_converter

from studio.core.errors import StudioError
from studio.core.graph.onnx_walk import subgraphs, walk_nodes
from studio.core.models.onnx_weights import read_array

PER_CHANNEL_OPSET = 13
"""The first opset whose QuantizeLinear/DequantizeLinear take an ``axis`` (per-channel)."""
_SCALAR_ATTRIBUTES = {"value_float": np.float32, "value_int": np.int64}
_LIST_ATTRIBUTES = {"value_floats": np.float32, "value_ints": np.int64}


@dataclass
class Repaired:
    """A repaired copy of a model and what was done to it, in words."""

    model: onnx.ModelProto
    steps: list[str] = field(default_factory=list)


def _node_label(node: onnx.NodeProto) -> str:
    return repr(node.name) if node.name else f"producing {node.output[0]!r}"


def constant_value(node: onnx.NodeProto) -> np.ndarray | None:
    """The tensor a ``Constant`` node holds; None for kinds best left as nodes (sparse tensors,
    strings). A damaged tensor raises :class:`StudioError` naming the node."""
    for attribute in node.attribute:
        try:
            if attribute.name == "value" and attribute.type == onnx.AttributeProto.TENSOR:
                return numpy_helper.to_array(attribute.t)
            if attribute.name in _SCALAR_ATTRIBUTES:
                value = attribute.f if attribute.name == "value_float" else attribute.i
                return np.array(value, dtype=_SCALAR_ATTRIBUTES[attribute.name])
            if attribute.name in _LIST_ATTRIBUTES:
                values = attribute.floats if attribute.name == "value_floats" else attribute.ints
                return np.array(list(values), dtype=_LIST_ATTRIBUTES[attribute.name])
        except Exception as error:  # onnx/numpy raise several types on inconsistent tensors
            raise StudioError(
                f"Constant node {_node_label(node)} holds a damaged tensor "
                f"({type(error).__name__}: {error}); the file is corrupt, export it again"
            ) from error
    return None


def _graph_constants_to_initializers(graph: onnx.GraphProto, as_inputs: bool,
                                     data_dir: Path | None) -> int:
    outputs = {value.name for value in graph.output}
    initializers = {t.name: t for t in graph.initializer}
    values: dict[str, np.ndarray] = {}  # constants made here; initializers are read when cast
    feedable = {value.name for value in graph.input}  # IR < 4: an input may override its value
    moved = 0
    kept = []
    for node in graph.node:
        value = None
        if node.op_type == "Constant" and node.output[0] not in outputs:
            value = constant_value(node)
        elif (node.op_type == "Cast" and node.input[0] in values.keys() | initializers.keys()
              and node.input[0] not in feedable and node.output[0] not in outputs):
            to = next(a.i for a in node.attribute if a.name == "to")
            source = values.get(node.input[0])
            if source is None:
                source = read_array(initializers[node.input[0]], data_dir)
            value = source.astype(onnx.helper.tensor_dtype_to_np_dtype(to))
        if value is None:
            kept.append(node)
            continue
        name = node.output[0]
        values[name] = value
        tensor = numpy_helper.from_array(np.asarray(value), name)
        graph.initializer.append(tensor)
        if as_inputs:
            graph.input.append(onnx.helper.make_tensor_value_info(
                name, tensor.data_type, list(tensor.dims)))
        moved += 1
    del graph.node[:]
    graph.node.extend(kept)
    return moved + sum(_graph_constants_to_initializers(sub, False, data_dir)
                       for sub in subgraphs(graph))


def constants_to_initializers(model: onnx.ModelProto, data_dir: Path | None = None) -> int:
    """Turn ``Constant`` nodes, and ``Cast`` nodes of constants, into initializers, in place,
    in the main graph and its subgraphs (each into its own graph). Returns how many.

    The graph computes the same: a constant read from an initializer is the same tensor.
    Constants that are graph outputs stay nodes (an initializer cannot be produced by the
    graph). Before IR version 4 an initializer must also be a graph input, so one is added.
    ``data_dir`` is where external data lives (a cast of an external weight reads it).
    """
    return _graph_constants_to_initializers(model.graph, model.ir_version < 4, data_dir)


def name_nodes(graph: onnx.GraphProto) -> int:
    """Give every node of ``graph`` and of its bodies the name the layer tree shows for it
    (:func:`node_names`), in place; returns how many were renamed. Plans and the quantizers'
    node lists address nodes by name, so unnamed or repeated names would be ambiguous."""
    renamed = 0
    for walked in list(walk_nodes(graph)):
        if walked.node.name != walked.name:
            walked.node.name = walked.name
            renamed += 1
    return renamed


def default_opset(model: onnx.ModelProto) -> int:
    """The model's version of the standard ``ai.onnx`` operator set."""
    return next((entry.version for entry in model.opset_import
                 if entry.domain in ("", "ai.onnx")), 1)


def _undefined_op(model: onnx.ModelProto, opset: int) -> str | None:
    """The first standard op that ONNX does not define at ``opset`` (misspelt, from a private
    build, or newer than the opset the file claims); the converter would pass it through."""
    for node in model.graph.node:
        if node.domain in ("", "ai.onnx"):
            try:
                onnx.defs.get_schema(node.op_type, opset, "")
            except onnx.defs.SchemaError:
                return node.op_type
    return None


def upgrade_opset(model: onnx.ModelProto, target: int = PER_CHANNEL_OPSET) -> onnx.ModelProto:
    """``model`` converted to opset ``target`` by onnx's version converter (a new model)."""
    opset = default_opset(model)
    why = f"cannot upgrade the model from opset {opset} to {target}"
    undefined = _undefined_op(model, opset)
    if undefined is not None:
        raise StudioError(f"{why}: op {undefined!r} is not defined at opset {opset}. Re-export "
                          f"the model at opset {target} or newer")
    try:
        return version_converter.convert_version(model, target)
    except Exception as error:  # the converter raises RuntimeError/ValueError with C++ text
        first = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        raise StudioError(f"{why} with onnx's version converter ({first}). Re-export the model "
                          f"at opset {target} or newer, or quantize per tensor "
                          "(quantize.per_channel: false)") from error


def repair_onnx(model: onnx.ModelProto, min_opset: int | None = PER_CHANNEL_OPSET,
                data_dir: Path | None = None) -> Repaired:
    """A copy of ``model`` in the form the quantizers need (``model`` itself is untouched).

    ``min_opset``: upgrade to this opset when the model's is lower (None: keep the opset).
    ``data_dir``: the folder of the model's external data, which stays on disk.
    """
    repaired = onnx.ModelProto()
    repaired.CopyFrom(model)
    steps: list[str] = []
    renamed = name_nodes(repaired.graph)  # before nodes move: names follow the file's order
    if renamed:
        steps.append(f"Named {renamed} unnamed or repeated node(s) as the layer tree shows "
                     "them (plans and quantizers address nodes by name).")
    opset = default_opset(repaired)
    if min_opset is not None and opset < min_opset:
        repaired = upgrade_opset(repaired, min_opset)
        steps.append(f"Upgraded opset {opset} → {min_opset} with onnx's version converter "
                     "(per-channel int8 needs opset 13).")
    moved = constants_to_initializers(repaired, data_dir)
    if moved:
        steps.append(f"Moved {moved} constant tensor(s) (Constant nodes, casts of constants) "
                     "into initializers, where the quantizers and pruning look for weights.")
    return Repaired(repaired, steps)
