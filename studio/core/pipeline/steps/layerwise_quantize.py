"""GPTQ (``quantize.weight_method: gptq``): put the Linear layers the plan asks to hold int4,
int2 or weight-only int8 on their integer grids in torch, block by block from the calibration
split, just before export; the quantize step then writes those integers into the file as
``MatMulNBits`` nodes (onnxruntime rounds only what GPTQ did not reach)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Generator
from pathlib import Path
from typing import Any

import onnx
from torch import nn

from studio.core.jobs import Event, Log
from studio.core.methods.layerwise.apply import (
    LayerwiseResult,
    QuantTarget,
    quantize_layerwise,
)
from studio.core.methods.layerwise.blocks import is_linear
from studio.core.methods.pruning.masks import MaskSet
from studio.core.methods.quantization.nbits_onnx import (
    matching_nodes,
    write_into_file,
    write_matmul_nbits,
)
from studio.core.pipeline.context import RunContext
from studio.core.pipeline.step import Need, StageReport, Step
from studio.core.plan.ort_rules import QuantPlan
from studio.core.plan.recipe import Recipe
from studio.core.plan.spec import BITS_PER_ELEMENT
from studio.core.plan.stages import QuantizeSection

PREQUANTIZED = "gptq_weights"
"""Key in ``context.stages["gptq"]`` holding the integer weights for the quantize step."""


def _tied(model: nn.Module) -> set[int]:
    """Storage of parameters shared by several modules (an LM head tied to the embedding)."""
    counts = Counter(p.data_ptr() for _, p in model.named_parameters(remove_duplicate=False))
    return {pointer for pointer, count in counts.items() if count > 1}


def gptq_targets(context: RunContext) -> tuple[dict[str, QuantTarget], list[str]]:
    """Linear layers the plan wants on a block-wise integer grid, and those left to
    onnxruntime because their weight is tied to another layer."""
    section, workspace, model = (context.settings(QuantizeSection), context.workspace,
                                 context.model)
    tied = _tied(model)
    targets: dict[str, QuantTarget] = {}
    skipped: list[str] = []
    for node, spec in zip(workspace.tree.nodes, workspace.plan.resolve(workspace.tree),
                          strict=True):
        bits = spec.weight_bits
        wanted = bits in ("int4", "int2") or (bits == "int8" and section.weight_only
                                              and spec.act_bits != "int8")
        if spec.exclude or not wanted:
            continue
        try:
            module = model.get_submodule(node.name)
        except AttributeError:
            continue
        if not is_linear(module):
            continue
        if module.weight.data_ptr() in tied:
            skipped.append(node.name)
            continue
        targets[node.name] = QuantTarget(BITS_PER_ELEMENT[bits], spec.group_size)
    return targets, skipped


class LayerwiseQuantize(Step):
    name = "gptq"
    settings = QuantizeSection
    needs = frozenset({Need.TORCH})

    def asks_for(self, recipe: Recipe) -> list[str]:
        method = recipe.quantize.weight_method if recipe.quantize is not None else None
        return ["quantize.weight_method: gptq"] if method == "gptq" else []

    def applies(self, context: RunContext) -> bool:
        section = context.settings(QuantizeSection)
        rounded = self.name in context.stages  # before unmerged adapters trained over it
        return section.weight_method == "gptq" and not section.qat and not rounded

    def run(self, context: RunContext) -> Generator[Event, None, StageReport]:
        section = context.settings(QuantizeSection)
        targets, tied = gptq_targets(context)
        if not targets:
            return None
        tokens = context.task.calibration.tensors[0]
        yield Log(f"GPTQ: {len(targets)} Linear layers, block by block, on {len(tokens)} "
                  "calibration samples")
        result = round_targets(context, targets, "gptq")
        if tied:
            context.note(f"{', '.join(tied)}: weight tied to another layer (the embedding); "
                         "left to onnxruntime's rounding instead of GPTQ.")
        if result.rounded_only:
            context.note(f"{', '.join(result.rounded_only)}: outside the transformer's blocks, "
                         "where GPTQ has no calibrated inputs; rounded to nearest.")
        errors = result.errors
        return {"layers": len(targets), "samples": len(tokens), "symmetric": section.symmetric,
                "act_order": section.act_order,
                "rounded_only": result.rounded_only, "tied": tied,
                "output_error": {name: round(e, 5) for name, e in errors.items()},
                PREQUANTIZED: result.quantized}


def round_targets(context: RunContext, targets: dict[str, QuantTarget], method: str
                  ) -> LayerwiseResult:
    """Round ``targets`` in place on their int grid (``gptq`` from the calibration split, or
    ``rtn``), keeping the weights pruning zeroed at zero."""
    section, model = context.settings(QuantizeSection), context.model
    masks = None
    if context.sparse_layers:
        masks = MaskSet({name: model.get_submodule(name).weight.detach() != 0
                         for name in targets})
    return quantize_layerwise(model, context.task.calibration.tensors[0], targets, method,
                              section.symmetric, masks, check=context.token.check,
                              act_order=section.act_order)


def hold_prequantized(context: RunContext, float_path: Path, plan: QuantPlan) -> dict[str, str]:
    """Take the nodes GPTQ quantized out of onnxruntime's n-bit pass (they are written
    afterwards by :func:`write_prequantized`); node -> layer."""
    stage = context.stages.get(LayerwiseQuantize.name)
    if not stage:
        return {}
    held = matching_nodes(onnx.load(str(float_path)), stage[PREQUANTIZED])
    for node, layer in held.items():
        plan.matmul_nbits.pop(node, None)
        plan.group_sizes.pop(node, None)
        if node not in plan.exclude_nodes:  # nor may the main (int8) pass touch it
            plan.exclude_nodes = (*plan.exclude_nodes, node)
        plan.decisions[node] = f"int{stage[PREQUANTIZED][layer].bits} GPTQ (MatMulNBits)"
    return held


def write_prequantized(context: RunContext) -> dict[str, Any]:
    """Write GPTQ's integers into the quantized file as MatMulNBits nodes; the stage report
    keeps what was written instead of the tensors."""
    stage = context.stages[LayerwiseQuantize.name]
    written, missing = write_into_file(context.model_path, stage.pop(PREQUANTIZED),
                                       write_matmul_nbits)
    if missing:
        context.note(f"{', '.join(missing)}: GPTQ's weights were not found in the exported "
                     "file (the layer is exported in another form); kept as exported.")
    stage["written"] = written
    return stage
