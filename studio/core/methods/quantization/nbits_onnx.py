"""Write integer weights computed in torch (GPTQ, or any grid of ``layerwise.quantize``) into
an exported ONNX file as onnxruntime ``MatMulNBits`` nodes, so the file really stores
``bits`` per weight. onnxruntime's own quantizer can only round the float weights itself;
re-rounding GPTQ's weights would refit the group scales and lose what GPTQ gained.

Storage (com.microsoft MatMulNBits, K inputs, N outputs, block = group size): B is uint8
[N, blocks, block x bits / 8] (values packed low bits first), scales float32 [N, blocks], and,
for asymmetric grids only, packed uint8 zero points [N, ceil(blocks / (8 / bits))].
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from studio.core.export.onnx_export import save_onnx
from studio.core.methods.layerwise.quantize import QuantizedWeight
from studio.core.methods.quantization.ort import drop_unused_initializers, gemm_to_matmul

ONNX_BITS = (2, 4, 8)
"""What MatMulNBits stores on onnxruntime's CPU kernels."""


def _pack(values: np.ndarray, bits: int) -> np.ndarray:
    """Pack the last axis of uint8 ``values`` (< 2^bits), ``8 / bits`` per byte, low first."""
    per_byte = 8 // bits
    pad = -values.shape[-1] % per_byte
    values = np.pad(values, [(0, 0)] * (values.ndim - 1) + [(0, pad)]).astype(np.uint8)
    grouped = values.reshape(*values.shape[:-1], -1, per_byte)
    shifts = (np.arange(per_byte, dtype=np.uint8) * bits).astype(np.uint8)
    return np.bitwise_or.reduce(grouped << shifts, axis=-1).astype(np.uint8)


def pack_matmul_nbits(weight: QuantizedWeight) -> tuple[np.ndarray, np.ndarray,
                                                        np.ndarray | None]:
    """(B, scales, zero points or None) in MatMulNBits layout for an [out, in] weight."""
    if weight.bits not in ONNX_BITS:
        raise ValueError(f"MatMulNBits stores {', '.join(map(str, ONNX_BITS))} bits, not "
                         f"{weight.bits}")
    q = weight.q.cpu().numpy()
    outputs, inputs = q.shape
    group = weight.group_size
    blocks = -(-inputs // group)
    zeros = weight.zeros.cpu().numpy()
    padded = np.empty((outputs, blocks * group), dtype=np.uint8)
    padded[:, :inputs] = q
    padded[:, inputs:] = zeros[:, -1:]  # padding dequantizes to 0
    packed = _pack(padded.reshape(outputs, blocks, group), weight.bits)
    scales = weight.scales.cpu().numpy().astype(np.float32)
    zero_points = None if weight.symmetric else _pack(zeros, weight.bits)
    return packed, scales, zero_points


def fingerprint(matrix: np.ndarray) -> str:
    """Identity of a float32 [K, N] MatMul weight, to find a layer's node by its values."""
    data = np.ascontiguousarray(matrix, dtype=np.float32)
    return f"{data.shape}:{hashlib.sha1(data.tobytes()).hexdigest()}"


def _by_print(weights: Mapping[str, QuantizedWeight]) -> dict[str, str]:
    return {fingerprint(w.dequantized().t().cpu().numpy()): name
            for name, w in weights.items() if w.bits in ONNX_BITS}


def matching_nodes(model: onnx.ModelProto, weights: Mapping[str, QuantizedWeight]
                   ) -> dict[str, str]:
    """Node name -> layer, for the MatMul and Gemm nodes of the main graph whose constant
    weight is one of ``weights`` (what :func:`write_matmul_nbits` will replace)."""
    by_print = _by_print(weights)
    initializers = {t.name: t for t in model.graph.initializer}
    found: dict[str, str] = {}
    for node in model.graph.node:
        tensor = initializers.get(node.input[1]) if node.op_type in ("MatMul", "Gemm") \
            and len(node.input) > 1 else None
        if tensor is None or len(tensor.dims) != 2:
            continue
        matrix = numpy_helper.to_array(tensor)
        if node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute):
            matrix = matrix.T
        layer = by_print.get(fingerprint(matrix))
        if layer is not None:
            found[node.name] = layer
    return found


def replace_nodes(model: onnx.ModelProto, nodes: list[onnx.NodeProto], contrib: bool) -> None:
    """The main graph's nodes become ``nodes``; initializers nothing reads any more go, and
    onnxruntime's contrib domain is declared when ``contrib`` nodes were written."""
    graph = model.graph
    del graph.node[:]
    graph.node.extend(nodes)
    drop_unused_initializers(graph)
    if contrib and not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))


def write_matmul_nbits(model: onnx.ModelProto, weights: Mapping[str, QuantizedWeight]
                       ) -> dict[str, str]:
    """Replace, in place, each MatMul whose constant weight equals a layer's dequantized
    weight (transposed to [in, out]) with a MatMulNBits node holding its integers. Returns
    layer name -> node name; layers whose node was not found are left out of it."""
    gemm_to_matmul(model)
    graph = model.graph
    by_print = _by_print(weights)
    initializers = {t.name: t for t in graph.initializer}
    written: dict[str, str] = {}
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        tensor = initializers.get(node.input[1]) if node.op_type == "MatMul" else None
        layer = None
        if tensor is not None and len(tensor.dims) == 2:
            layer = by_print.get(fingerprint(numpy_helper.to_array(tensor)))
        if layer is None or layer in written:
            nodes.append(node)
            continue
        weight = weights[layer]
        packed, scales, zero_points = pack_matmul_nbits(weight)
        base = f"{tensor.name}_q{weight.bits}"
        graph.initializer.extend([numpy_helper.from_array(packed, base),
                                  numpy_helper.from_array(scales, f"{base}_scales")])
        inputs = [node.input[0], base, f"{base}_scales"]
        if zero_points is not None:
            graph.initializer.append(numpy_helper.from_array(zero_points, f"{base}_zeros"))
            inputs.append(f"{base}_zeros")
        outputs, columns = weight.q.shape
        nodes.append(helper.make_node(
            "MatMulNBits", inputs, list(node.output), name=f"{node.name}_Q{weight.bits}",
            domain="com.microsoft", K=columns, N=outputs, bits=weight.bits,
            block_size=weight.group_size))
        written[layer] = nodes[-1].name
    replace_nodes(model, nodes, bool(written))
    return written


def write_into_file(path: Path, weights: Mapping[str, QuantizedWeight],
                    writer: Callable[[onnx.ModelProto, Mapping[str, QuantizedWeight]], Any]
                    ) -> tuple[Any, list[str]]:
    """Integers made in torch written into the ONNX file at ``path`` by ``writer``; what it
    wrote, and the layers it found no place for."""
    model = onnx.load(str(path))
    written = writer(model, weights)
    save_onnx(model, path)
    return written, sorted(set(weights) - set(written))
