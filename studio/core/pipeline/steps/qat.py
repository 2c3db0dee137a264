"""Quantization-aware training: put fake quantizers at the plan's bits on the torch model, so
recovery learns weights that survive rounding (the quantize step exports them as static QDQ)."""

from __future__ import annotations

from collections.abc import Generator

from studio.core.jobs import Event, Log
from studio.core.methods.quantization.qat import prepare_qat, qat_bits_from_plan
from studio.core.pipeline.context import RunContext
from studio.core.pipeline.step import Need, StageReport, Step
from studio.core.plan.recipe import Recipe
from studio.core.plan.stages import QuantizeSection


class PrepareQat(Step):
    name = "qat"
    settings = QuantizeSection
    needs = frozenset({Need.TORCH})

    def asks_for(self, recipe: Recipe) -> list[str]:
        qat = recipe.quantize is not None and recipe.quantize.qat
        return ["quantize.qat (quantization-aware training)"] if qat else []

    def applies(self, context: RunContext) -> bool:
        return context.settings(QuantizeSection).qat

    def run(self, context: RunContext) -> Generator[Event, None, StageReport]:
        workspace = context.workspace
        resolved = {node.name: spec for node, spec in
                    zip(workspace.tree.nodes, workspace.plan.resolve(workspace.tree),
                        strict=True)}
        bits, acts, notes = qat_bits_from_plan(context.model, resolved)
        if bits:
            prepare_qat(context.model, bits, acts)
            yield Log(f"QAT: fake-quantizing {len(bits)} layers during recovery")
        for note in notes:
            context.note(note)
        return None
