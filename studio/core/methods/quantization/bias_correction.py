"""Bias correction of a static (QDQ) int8 ONNX file.

Rounding a layer's weights shifts its output on average by ``(Wq - W) E[x]`` per output
channel (Nagel et al., "Data-Free Quantization Through Weight Equalization and Bias
Correction", 2019; here ``E[x]`` is measured on the calibration split instead of derived from
batch norms). Subtracting that from the layer's bias removes the shift at no cost at run time.
Written by hand: onnxruntime's quantizers have no bias correction.

The correction is folded into the int32 bias that static QDQ files dequantize for each Conv and
Gemm (its scale, input scale x weight scale, stays; only the integers change). Layers whose
float weights in the source file do not match their dequantized weights (a Conv + BatchNorm
fused by pre-processing) are skipped, as are layers without a bias.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from studio.core.export.onnx_export import save_onnx
from studio.core.methods.quantization.layer_inputs import channel_means

CORRECTED_OPS = frozenset({"Conv", "Gemm"})
_MISMATCH = 0.25
"""Relative difference of dequantized and float weights above which they are not the same
layer's weights (int8 rounding leaves about 1 %)."""


@dataclass
class BiasCorrection:
    corrected: list[str] = field(default_factory=list)
    """Layers (node names) whose bias now cancels their expected output shift."""
    skipped: dict[str, str] = field(default_factory=dict)
    """Node -> why it was left as it was."""
    mean_shift: float = 0.0
    """Mean over corrected layers of the mean |expected output shift| removed per channel."""

    def to_json(self) -> dict[str, object]:
        return {"corrected": len(self.corrected), "skipped": self.skipped,
                "mean_shift_removed": self.mean_shift}


def _attr(node: onnx.NodeProto, name: str, default: int) -> int:
    return next((a.i for a in node.attribute if a.name == name), default)


def _dequantize_nodes(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {n.output[0]: n for n in graph.node if n.op_type == "DequantizeLinear"}


def _dequantized(node: onnx.NodeProto, inits: Mapping[str, onnx.TensorProto]
                 ) -> np.ndarray | None:
    """The float values a DequantizeLinear of constants gives, or None."""
    if not all(name in inits for name in node.input if name):
        return None
    values = numpy_helper.to_array(inits[node.input[0]]).astype(np.float64)
    scale = numpy_helper.to_array(inits[node.input[1]]).astype(np.float64)
    zero = (numpy_helper.to_array(inits[node.input[2]]).astype(np.float64)
            if len(node.input) > 2 and node.input[2] else np.zeros_like(scale))
    if scale.ndim == 1 and values.ndim > 1:
        shape = [1] * values.ndim
        shape[_attr(node, "axis", 1) % values.ndim] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return (values - zero) * scale


def _shift(op: str, node: onnx.NodeProto, error: np.ndarray, mean: np.ndarray
           ) -> np.ndarray | None:
    """Expected output shift per output channel of weight error ``error`` given input
    channel means ``mean``; None when the shapes do not fit."""
    if op == "Conv":
        groups = _attr(node, "group", 1)
        out_channels, per_group = error.shape[0], error.shape[1]
        if mean.shape[0] != per_group * groups or out_channels % groups:
            return None
        summed = error.reshape(out_channels, per_group, -1).sum(axis=2)
        group_means = mean.reshape(groups, per_group)
        return np.einsum("gop,gp->go", summed.reshape(groups, -1, per_group),
                         group_means).reshape(-1)
    weight = error.T if _attr(node, "transB", 0) else error  # (in, out)
    if _attr(node, "transA", 0) or weight.shape[0] != mean.shape[0]:
        return None
    return mean @ weight


def correct_bias(quantized: Path, float_path: Path,
                 batches: Iterable[Mapping[str, np.ndarray]]) -> BiasCorrection:
    """Fold each static int8 Conv/Gemm's expected output shift into its bias, in
    ``quantized`` (rewritten); ``float_path`` is the float file it was quantized from (node
    names match), ``batches`` the calibration feeds of that file."""
    model = onnx.load(str(quantized))
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    dq = _dequantize_nodes(graph)
    float_model = onnx.load(str(float_path))
    float_nodes = {n.name: n for n in float_model.graph.node}
    float_inits = {t.name: t for t in float_model.graph.initializer}
    result = BiasCorrection()
    layers: dict[str, tuple[onnx.NodeProto, np.ndarray, onnx.NodeProto, str]] = {}
    for node in graph.node:
        if node.op_type not in CORRECTED_OPS:
            continue
        weight_dq, bias_dq = dq.get(node.input[1]), dq.get(node.input[2]) \
            if len(node.input) > 2 else None
        source = float_nodes.get(node.name)
        if weight_dq is None:
            continue  # not quantized
        if bias_dq is None or bias_dq.input[0] not in inits:
            result.skipped[node.name] = "no int32 bias"
            continue
        if source is None or source.input[1] not in float_inits:
            result.skipped[node.name] = "not found in the float file"
            continue
        weight_q = _dequantized(weight_dq, inits)
        weight = numpy_helper.to_array(float_inits[source.input[1]]).astype(np.float64)
        if weight_q is None or weight_q.shape != weight.shape or \
                np.linalg.norm(weight_q - weight) > _MISMATCH * np.linalg.norm(weight):
            result.skipped[node.name] = "its weights differ from the float file's"
            continue
        layers[node.name] = (node, weight_q - weight, bias_dq, source.input[0])
    if not layers:
        return result
    axes = {name: (1 if node.op_type == "Conv" else -1) for node, _, _, name in layers.values()}
    means = channel_means(float_path, axes, batches)
    shifts: list[float] = []
    for name, (node, error, bias_dq, input_name) in layers.items():
        shift = _shift(node.op_type, node, error, means[input_name]) \
            if input_name in means else None
        if shift is None:
            result.skipped[name] = "its input's channels do not fit its weights"
            continue
        bias_tensor = inits[bias_dq.input[0]]
        scale = numpy_helper.to_array(inits[bias_dq.input[1]]).astype(np.float64)
        bias = numpy_helper.to_array(bias_tensor).astype(np.float64) * scale
        fixed = np.clip(np.round((bias - shift) / scale), -2**31, 2**31 - 1).astype(np.int32)
        bias_tensor.CopyFrom(numpy_helper.from_array(fixed, bias_tensor.name))
        shifts.append(float(np.abs(shift).mean()))
        result.corrected.append(name)
    result.mean_shift = float(np.mean(shifts)) if shifts else 0.0
    save_onnx(model, quantized)
    return result
