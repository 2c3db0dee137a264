"""Export a QAT model through onnxruntime's static quantizer, keeping the grids QAT trained on.

:func:`~studio.core.methods.quantization.qat.convert_qat_to_qdq_onnx` writes exactly the
fake-quant graph: Q/DQ only where training put them (weights and layer inputs). onnxruntime
fuses an integer convolution only when its output also goes through a QuantizeLinear, so a
convolution feeding a residual add or the classifier stays float, and on the demo that file
runs about as fast as fp32. This path exports the model with its weights already on their grid
and lets ORT's static QDQ quantizer place Q/DQ everywhere (calibrated on data, as PTQ does),
with the QAT weight scales and input ranges forced through ``TensorQuantOverrides``: the int8
weights are exactly QAT's grid values and the model runs with ORT's full set of integer
kernels.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from studio.core.errors import StudioError
from studio.core.export.onnx_export import export_onnx
from studio.core.graph.onnx_tree import build_onnx_tree
from studio.core.methods.quantization.ort import quantize_onnx
from studio.core.methods.quantization.qat import QAT_CLASSES, FakeQuantMixin, qat_layers

_WEIGHTED = ("Conv", "Gemm", "MatMul")
_PLAIN = {qat: plain for plain, qat in QAT_CLASSES.items()}


def _plain_copy(model: nn.Module) -> tuple[nn.Module, dict[str, FakeQuantMixin]]:
    """A float copy whose QAT layers hold their grid weights; plus the original QAT layers."""
    layers = qat_layers(model)
    plain = copy.deepcopy(model)
    for layer in qat_layers(plain).values():
        grid = layer.quantized_weight().detach()
        layer.weight.data.copy_(grid)
        layer.__class__ = _PLAIN[type(layer)]
    return plain, layers


def _weight_axis(node: onnx.NodeProto) -> int:
    if node.op_type == "MatMul":
        return 1  # MatMul weights are stored [in, out]
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    return 0


def qat_overrides(onnx_model: onnx.ModelProto, layers: dict[str, FakeQuantMixin]
                  ) -> tuple[dict[str, list[dict[str, Any]]], list[str]]:
    """ORT TensorQuantOverrides that pin each QAT layer's weight scales and input range.

    Returns the overrides and the weighted nodes that belong to no QAT layer (to exclude).
    """
    tree = build_onnx_tree(onnx_model, "qat")
    nodes = {n.name: n for n in onnx_model.graph.node}
    initializers = {t.name for t in onnx_model.graph.initializer}
    overrides: dict[str, list[dict[str, Any]]] = {}
    covered: set[str] = set()
    ranges: dict[str, tuple[float, float]] = {}
    for name, layer in layers.items():
        if name not in tree:
            raise StudioError(f"layer {name!r} has no scope in the exported ONNX file")
        for leaf in tree.subtree(tree.get(name)):
            node = nodes.get(leaf.name)
            if node is None or node.op_type not in _WEIGHTED or node.input[1] not in initializers:
                continue
            covered.add(node.name)
            scales = layer.weight_scale().cpu().numpy().astype(np.float32)
            axis = _weight_axis(node)
            overrides[node.input[1]] = [
                {"axis": axis, "scale": np.float32(s), "zero_point": np.int8(0)} if i == 0 else
                {"scale": np.float32(s), "zero_point": np.int8(0)} for i, s in enumerate(scales)]
            if layer.act_bits is not None and bool(layer.act_seen):
                low, high = min(float(layer.act_min), 0.0), max(float(layer.act_max), 0.0)
                old = ranges.get(node.input[0], (low, high))
                ranges[node.input[0]] = (min(old[0], low), max(old[1], high))
    for tensor, (low, high) in ranges.items():
        overrides[tensor] = [{"rmin": np.float32(low), "rmax": np.float32(high)}]
    others = [n.name for n in onnx_model.graph.node
              if n.op_type in _WEIGHTED and n.name not in covered]
    return overrides, others


def convert_qat_to_ort_static(model: nn.Module, example: Tensor | Sequence[Tensor],
                              path: str | Path, calibration: TensorDataset,
                              calibrate_method: str = "minmax", opset: int = 17) -> Path:
    """Export a fake-quant model as ORT static QDQ with its QAT weight grids and input ranges.

    Ranges QAT did not learn (layer outputs, the residual add) are calibrated on
    ``calibration``; layers that were not fake-quantized stay float. 2-7 bit weights are
    stored as int8 values on their grid; 2-7 bit inputs run at 8 bits. A QAT layer trained
    with float inputs gets calibrated 8-bit inputs here too, because ORT's integer kernels
    need both sides quantized; :func:`convert_qat_to_qdq_onnx` keeps such inputs float.
    """
    path = Path(path)
    if not qat_layers(model):
        raise StudioError("the model has no fake-quant layers; call prepare_qat first")
    plain, layers = _plain_copy(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{path.name}.", dir=path.parent) as scratch:
        float_path = export_onnx(plain, example, Path(scratch) / "float.onnx", opset=opset)
        overrides, others = qat_overrides(onnx.load(str(float_path)), layers)
        quantize_onnx(float_path, path, "static", calibration=calibration, per_channel=True,
                      calibrate_method=calibrate_method, exclude_nodes=others,
                      preprocess=False,  # keep the tensor names the overrides refer to
                      extra_options={"TensorQuantOverrides": overrides,
                                     "QDQDisableWeightAdjustForInt32Bias": True})
    return path
