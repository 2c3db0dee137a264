"""int4 (or int8) token embeddings, and the LM head tied to them, stored once in the ONNX
file.

A causal LM's embedding table is often its largest tensor (SmolLM2-135M: 28.3M of 134.5M
weights), and a tied LM head reads the same table transposed. onnxruntime offers both halves:
``GatherBlockQuantized`` looks rows up in a block-quantized table, ``MatMulNBits`` multiplies by
one. Both read the table as [vocab, hidden] quantized in blocks along hidden with the same
packing (two 4-bit values per byte, low first; packed 4-bit zero points; default zero point 8),
so one ``MatMulNBits`` weight B [vocab, blocks, block / 2] serves both, reshaped to
[vocab, blocks x block / 2] for the lookup; a lookup of a padded last block is sliced back to
hidden. onnxruntime's own quantizer cannot do this: it quantizes a Gather's table and a
MatMul's constant separately, and a tied head's weight reaches its MatMul through a Transpose,
not as a constant, so it is written here.

The table is rounded to nearest in torch first (``quantize_embedding``), so the torch model
computes what the file will.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from torch import nn

from studio.core.methods.layerwise.quantize import QuantizedWeight, rtn_quantize
from studio.core.methods.quantization.nbits_onnx import (
    fingerprint,
    pack_matmul_nbits,
    replace_nodes,
)
from studio.core.plan.ort_rules import embedding_group_problem


@torch.no_grad()
def quantize_embedding(module: nn.Embedding, bits: int = 4, group_size: int = 32,
                       symmetric: bool = False) -> QuantizedWeight:
    """Round the table [vocab, hidden] to nearest (``bits`` 4 or 8) in groups along hidden
    and write it back in place (a head tied to it follows); returns the integers."""
    problem = embedding_group_problem(bits, group_size)
    if problem is not None:
        raise ValueError(problem)
    quantized = rtn_quantize(module.weight, bits, group_size, symmetric)
    module.weight.copy_(quantized.dequantized().to(module.weight.dtype))
    return quantized


def _const(graph: onnx.GraphProto, name: str, values: list[int]) -> str:
    graph.initializer.append(numpy_helper.from_array(np.array(values, dtype=np.int64), name))
    return name


def _lookup(graph: onnx.GraphProto, node: onnx.NodeProto, names: list[str],
            weight: QuantizedWeight) -> list[onnx.NodeProto]:
    """Reshape B to a table, GatherBlockQuantized, and a Slice when the last block is padded."""
    base, hidden = names[0], weight.q.shape[1]
    blocks = -(-hidden // weight.group_size)
    table = f"{base}_table"
    shape = _const(graph, f"{base}_table_shape", [weight.q.shape[0], -1])
    padded = blocks * weight.group_size != hidden
    looked_up = f"{node.output[0]}_padded" if padded else node.output[0]
    axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
    nodes = [helper.make_node("Reshape", [base, shape], [table], name=f"{node.name}_table"),
             helper.make_node("GatherBlockQuantized", [table, node.input[1], *names[1:]],
                              [looked_up], name=f"{node.name}_Q{weight.bits}",
                              domain="com.microsoft", gather_axis=axis, quantize_axis=1,
                              block_size=weight.group_size, bits=weight.bits)]
    if padded:
        starts = _const(graph, f"{base}_slice_starts", [0])
        ends = _const(graph, f"{base}_slice_ends", [hidden])
        axes = _const(graph, f"{base}_slice_axes", [-1])
        nodes.append(helper.make_node("Slice", [looked_up, starts, ends, axes],
                                      list(node.output), name=f"{node.name}_unpad"))
    return nodes


def write_embedding_nbits(model: onnx.ModelProto, weights: Mapping[str, QuantizedWeight]
                          ) -> dict[str, list[str]]:
    """Replace, in place, each Gather whose constant table equals an embedding's dequantized
    weight with a ``GatherBlockQuantized`` lookup, and each MatMul reading that table
    transposed (a tied LM head: ``Transpose`` then ``MatMul``) with a ``MatMulNBits`` over the
    same integers. Returns embedding -> the nodes written."""
    graph = model.graph
    by_print = {fingerprint(w.dequantized().cpu().numpy()): name for name, w in weights.items()}
    initializers = {t.name: t for t in graph.initializer}
    tables: dict[str, str] = {}  # initializer -> embedding
    for node in graph.node:
        tensor = initializers.get(node.input[0]) if node.op_type == "Gather" else None
        if tensor is not None and len(tensor.dims) == 2 and tensor.name not in tables:
            found = by_print.get(fingerprint(numpy_helper.to_array(tensor)))
            if found is not None:
                tables[tensor.name] = found
    transposed = {node.output[0]: node.input[0] for node in graph.node
                  if node.op_type == "Transpose" and node.input[0] in tables
                  and [a.ints for a in node.attribute if a.name == "perm"] in ([], [[1, 0]])}
    stored: dict[str, list[str]] = {}  # initializer -> [B, scales, (zero points)]
    written: dict[str, list[str]] = {}
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        table = node.input[0] if node.op_type == "Gather" and node.input[0] in tables else None
        head = transposed.get(node.input[1]) if node.op_type == "MatMul" else None
        source = table or head
        if source is None:
            nodes.append(node)
            continue
        weight = weights[tables[source]]
        if source not in stored:
            packed, scales, zero_points = pack_matmul_nbits(weight)
            base = f"{source}_q{weight.bits}"
            arrays = [(packed, base), (scales, f"{base}_scales")]
            arrays += [(zero_points, f"{base}_zeros")] if zero_points is not None else []
            graph.initializer.extend(numpy_helper.from_array(a, n) for a, n in arrays)
            stored[source] = [n for _, n in arrays]
        if table is not None:
            new = _lookup(graph, node, stored[source], weight)
        else:
            vocab, hidden = weight.q.shape
            new = [helper.make_node(
                "MatMulNBits", [node.input[0], *stored[source]], list(node.output),
                name=f"{node.name}_Q{weight.bits}", domain="com.microsoft", K=hidden, N=vocab,
                bits=weight.bits, block_size=weight.group_size)]
        nodes += new
        written.setdefault(tables[source], []).extend(n.name for n in new)
    used = {name for node in nodes for name in node.input}
    nodes = [n for n in nodes if not (n.op_type == "Transpose" and n.output[0] in transposed
                                      and n.output[0] not in used)]
    replace_nodes(model, nodes, bool(written))
    return written
