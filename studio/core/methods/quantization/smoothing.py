"""SmoothQuant (Xiao et al., 2023) on an ONNX graph: migrate activation outliers into weights.

Transformer activations have a few channels hundreds of times wider than the rest, so one
uint8 range per tensor leaves the others a handful of levels: static int8 MiniLM keeps cosine
0.8. Dividing channel ``j`` of a MatMul's input by ``s_j = max|x_j|^a / max|W_j|^(1-a)`` and
multiplying row ``j`` of its weight by ``s_j`` keeps the product; the division is folded into
the LayerNormalization that makes the input (its scale and bias) when nothing else reads it,
else into one ``Mul`` before the group (BERT's post-LN residual reads the norm's output too).
onnxruntime offers SmoothQuant only through Intel Neural Compressor (not installed here, and it
pulls its own torch), so it is written here on the ONNX weights.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from studio.core.methods.quantization.layer_inputs import channel_means

LIMITS = (1e-5, 1e5)


def _groups(graph: onnx.GraphProto, inits: Mapping[str, onnx.TensorProto]
            ) -> dict[str, list[onnx.NodeProto]]:
    """Activation tensor -> the MatMuls reading it with a constant 2-D weight of their own."""
    uses = Counter(name for node in graph.node for name in node.input)
    groups: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        if (node.op_type == "MatMul" and node.input[0] not in inits
                and node.input[1] in inits and uses[node.input[1]] == 1
                and len(inits[node.input[1]].dims) == 2):
            groups.setdefault(node.input[0], []).append(node)
    return groups


def _foldable_norm(graph: onnx.GraphProto, inits: Mapping[str, onnx.TensorProto],
                   tensor: str, users: list[onnx.NodeProto]) -> onnx.NodeProto | None:
    """The LayerNormalization making ``tensor`` when its scale and bias can take the division:
    its own parameters, and no reader but ``users`` (a post-LN residual reads it too)."""
    uses = Counter(name for node in graph.node for name in node.input)
    norm = next((n for n in graph.node if tensor in n.output), None)
    if norm is None or norm.op_type != "LayerNormalization" or len(norm.input) < 3:
        return None
    if uses[tensor] != len(users) or tensor in {o.name for o in graph.output}:
        return None
    return norm if all(p in inits and uses[p] == 1 for p in norm.input[1:3]) else None


@dataclass
class Smoothed:
    matmuls: int = 0
    """MatMuls whose weights took the activation's scale."""
    folded: int = 0
    """Groups whose division went into a LayerNormalization."""
    added: list[str] = field(default_factory=list)
    """New ``Mul`` nodes doing the division; static int8 must leave them float (quantizing
    their input would quantize the unsmoothed activation)."""

    def to_json(self) -> dict[str, int]:
        return {"matmuls": self.matmuls, "into_layer_norms": self.folded,
                "mul_nodes_added": len(self.added)}


def smooth(model: onnx.ModelProto, path: Path, alpha: float,
           batches: Iterable[Mapping[str, np.ndarray]]) -> Smoothed:
    """Smooth every group of MatMuls reading one activation in ``model`` (in place), with
    the activation ranges measured by running ``path`` (the same model, saved) on
    ``batches``. The division goes into the LayerNormalization making the activation when it
    can, else into a new ``Mul`` before the group."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    groups = _groups(graph, inits)
    result = Smoothed()
    if not groups:
        return result
    ranges = channel_means(path, {name: -1 for name in groups}, batches, absmax=True)
    for number, (tensor, users) in enumerate(groups.items()):
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
        result.matmuls += len(users)
        norm = _foldable_norm(graph, inits, tensor, users)
        if norm is not None:
            for name in norm.input[1:3]:
                values = numpy_helper.to_array(inits[name])
                inits[name].CopyFrom(numpy_helper.from_array(
                    (values / scale).astype(values.dtype), name))
            result.folded += 1
            continue
        divisor = f"smooth_{number}_inverse_scale"
        graph.initializer.append(numpy_helper.from_array((1 / scale).astype(np.float32),
                                                         divisor))
        mul = helper.make_node("Mul", [tensor, divisor], [f"{tensor}_smoothed"],
                               name=f"/smooth_{number}/Mul")
        for user in users:
            user.input[0] = mul.output[0]
        position = min(list(graph.node).index(u) for u in users)
        graph.node.insert(position, mul)
        result.added.append(mul.name)
    return result
