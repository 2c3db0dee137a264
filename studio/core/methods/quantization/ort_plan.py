"""Carry out a :class:`~studio.core.plan.ort_rules.QuantPlan` (the backend's decisions per node)
as onnxruntime quantization passes over an exported ONNX file, and adjust one from the graph
(activations next to nodes kept float)."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import onnx
from torch.utils.data import TensorDataset

from studio.core.export.onnx_export import save_onnx
from studio.core.methods.quantization.ort import quantize_onnx
from studio.core.models.onnx_feeds import Feeder
from studio.core.plan.ort_rules import QuantPlan

ACTIVATIONS = frozenset({"Relu", "Clip", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid",
                         "HardSwish", "Gelu", "Elu", "Selu", "Softplus"})


def neighbour_activations(graph: onnx.GraphProto, names: Sequence[str]) -> list[str]:
    """The activation nodes right before and after the named nodes. Static QDQ folds a ReLU
    into the quantizer of the layer before it; left quantized, such a neighbour keeps a
    "float" layer's input or output on the int8 grid, and keeping the layer float gains
    nothing."""
    producers = {out: node for node in graph.node for out in node.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    wanted = set(names)
    found: list[str] = []
    for node in graph.node:
        if node.name not in wanted:
            continue
        before = producers.get(node.input[0]) if node.input else None
        found += [before.name] if before is not None and before.op_type in ACTIVATIONS else []
        found += [n.name for n in readers.get(node.output[0], []) if n.op_type in ACTIVATIONS]
    return [name for name in dict.fromkeys(found) if name and name not in wanted]


def keep_float(plan: QuantPlan, nodes: Sequence[str], why: str,
               neighbours: Sequence[str] = ()) -> QuantPlan:
    """``plan`` with ``nodes`` left float (their decision says ``why``), and ``neighbours``
    (see :func:`neighbour_activations`) with them."""
    kept = set(nodes)
    return replace(plan, exclude_nodes=tuple(dict.fromkeys(
                       (*plan.exclude_nodes, *nodes, *neighbours))),
                   quantize_nodes=tuple(n for n in plan.quantize_nodes if n not in kept),
                   decisions={**plan.decisions, **{n: f"float ({why})" for n in nodes}})


def apply_quant_plan(src: str | Path, dst: str | Path, plan: QuantPlan,
                     calibration: TensorDataset | None = None, per_channel: bool = True,
                     calibrate_method: str = "minmax", block_size: int = 32,
                     prepared: list[str] | None = None, feed: Feeder | None = None,
                     symmetric: bool = False, algorithm: str = "rtn") -> Path:
    """Run the plan's passes on ``src`` (main pass, then one n-bit pass per bit width and
    group size: ``plan.group_sizes``, else ``block_size``; ``symmetric`` grids and the
    ``algorithm``, ``rtn`` or ``hqq``, see :func:`quantize_onnx`);
    ``prepared``, when given, receives how each pass prepared the file, in words; ``feed``
    makes the calibration feeds (see :func:`quantize_onnx`)."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{dst.name}.", dir=dst.parent) as scratch:
        current = Path(src)
        steps: list[dict] = []
        if plan.mode is not None:
            steps.append({"mode": plan.mode, "exclude_nodes": plan.exclude_nodes,
                          **({"nodes": plan.quantize_nodes} if plan.weighted_only else {})})
        kinds = {node: (bits, plan.group_sizes.get(node, block_size))
                 for node, bits in plan.matmul_nbits.items()}
        for bits, group in sorted(set(kinds.values()), reverse=True):
            nodes = [n for n, kind in kinds.items() if kind == (bits, group)]
            steps.append({"mode": "nbits", "nodes": nodes, "bits": bits, "block_size": group,
                          "symmetric": symmetric, "algorithm": algorithm})
        if not steps:  # nothing to quantize: the file is copied as it is
            return save_onnx(onnx.load(str(current), load_external_data=False), dst,
                             current.parent)
        for number, step in enumerate(steps):
            target = dst if number == len(steps) - 1 else Path(scratch) / f"step{number}.onnx"
            quantize_onnx(current, target, calibration=calibration, per_channel=per_channel,
                          calibrate_method=calibrate_method, prepared=prepared, feed=feed,
                          **{"block_size": block_size, **step})
            current = target
    return dst
