"""The layer tree's columns: what each shows for a node, and the value it sorts by."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from studio.core.graph.tree import LayerNode
from studio.core.plan import ResolvedSpec
from studio.core.plan.spec import NO_MATCH, SAME_LAYER, parse_nm
from studio.core.units import format_bytes, format_count, format_percent, format_shape


@dataclass(frozen=True)
class Column:
    title: str
    text: Callable[[LayerNode, ResolvedSpec], str]
    sort_key: Callable[[LayerNode, ResolvedSpec], object]
    tooltip: str
    numeric: bool = False
    plan_fields: tuple[str, ...] = ()
    """Plan fields this column shows; empty for the model's own figures."""


def _bits_text(node: LayerNode, _spec: ResolvedSpec) -> str:
    if node.weight_bits is None:
        return ""
    return {32: "fp32", 16: "16-bit", 8: "int8"}.get(node.weight_bits, f"{node.weight_bits}-bit")


def plan_sparsity_text(node: LayerNode, spec: ResolvedSpec) -> str:
    if spec.exclude:
        return "excluded"
    if parse_nm(spec.granularity):
        return spec.granularity
    if spec.sparsity == 0:
        return "–"
    suffix = ""
    if spec.granularity == "channels":
        heads = node.role == "attention" or node.head_of is not None  # query/key/value too
        suffix = " heads" if heads else " units" if node.role == "FFN" else " ch"
    return f"{spec.sparsity * 100:.0f}%{suffix}"


def plan_bits_text(node: LayerNode, spec: ResolvedSpec) -> str:
    if spec.exclude:
        return "excluded"
    weights = spec.weight_bits or "as stored"
    return f"{weights} · act {spec.act_bits}" if spec.act_bits else weights


def plan_distill_text(node: LayerNode, spec: ResolvedSpec) -> str:
    if spec.exclude or spec.distill_from is None:
        return "–"
    if spec.distill_from == NO_MATCH:
        return "off"
    weight = f" ×{spec.distill_weight:g}" if spec.distill_weight != 1.0 else ""
    target = "same layer" if spec.distill_from == SAME_LAYER else spec.distill_from
    return f"← {target}{weight}"


COLUMNS: tuple[Column, ...] = (
    Column("Layer", lambda n, s: n.label, lambda n, s: n.label.lower(),
           "Module name (ONNX: name scope or node)"),
    Column("Type", lambda n, s: n.type_label, lambda n, s: n.type_label.lower(),
           "Module class or op, and its role in a transformer (attention, FFN, …)"),
    Column("Output", lambda n, s: format_shape(n.output_shape),
           lambda n, s: str(n.output_shape or ""), "Output shape on the example input"),
    Column("Params", lambda n, s: format_count(n.total_params), lambda n, s: n.total_params,
           "Parameters in this subtree", numeric=True),
    Column("MACs", lambda n, s: format_count(n.total_macs), lambda n, s: n.total_macs,
           "Multiply-accumulates for one example input", numeric=True),
    Column("Bytes", lambda n, s: format_bytes(n.total_nbytes), lambda n, s: n.total_nbytes,
           "Bytes of parameters and buffers as stored", numeric=True),
    Column("Sparsity", lambda n, s: format_percent(n.sparsity) if n.total_params else "",
           lambda n, s: n.sparsity, "Fraction of parameters that are exactly zero now",
           numeric=True),
    Column("Bits", _bits_text, lambda n, s: n.weight_bits or 0, "Bits per weight as stored",
           numeric=True),
    Column("Plan: sparsity", plan_sparsity_text,
           lambda n, s: -1.0 if s.exclude else s.effective_sparsity,
           "Planned sparsity and granularity (grey italics: inherited)",
           plan_fields=("sparsity", "granularity", "exclude")),
    Column("Plan: bits", plan_bits_text, lambda n, s: s.weight_bits or "",
           "Planned weight and activation bits (grey italics: inherited)",
           plan_fields=("weight_bits", "act_bits", "exclude")),
    Column("Plan: distill", plan_distill_text, lambda n, s: s.distill_from or "",
           "Teacher layer this layer's output is matched to while distilling, and the "
           "match's weight (grey italics: inherited)",
           plan_fields=("distill_from", "distill_weight")),
)
SENSITIVITY_COLUMN = len(COLUMNS)
"""Filled from a sensitivity report by the model (see ``LayerTreeModel.set_sensitivity``)."""
COLUMNS = (*COLUMNS, Column("Sensitivity", lambda n, s: "", lambda n, s: 0.0,
                            "Metric drop when this layer alone is pruned to 50% "
                            "(accuracy: in points)",
                            numeric=True))
SQNR_COLUMN = len(COLUMNS)
"""Filled from the layer view's per-layer quantization error (``LayerTreeModel.set_sqnr``)."""
COLUMNS = (*COLUMNS, Column("SQNR", lambda n, s: "", lambda n, s: 0.0,
                            "Signal to quantization noise of the weight at its planned bits, "
                            "in dB (higher is better; below ~15 dB expect a drop)",
                            numeric=True))
PLAN_COLUMNS = tuple(i for i, column in enumerate(COLUMNS) if column.plan_fields)
