"""Repair an ONNX file into the form the quantizers need (weights out of ``Constant`` nodes,
an opset per-channel int8 can use, node names the layer tree shows), before the baseline is
measured; each change is logged and reported."""

from __future__ import annotations

from collections.abc import Generator

from studio.core.jobs import Event, Log
from studio.core.models.onnx_repair import PER_CHANNEL_OPSET, repair_onnx
from studio.core.pipeline.context import RunContext
from studio.core.pipeline.onnx_backend import OnnxBackend
from studio.core.pipeline.step import Need, Phase, StageReport, Step
from studio.core.plan.stages import QuantizeSection

INTEGER_BITS = ("int8", "int4", "int2")


class Repair(Step):
    name = "repair"
    needs = frozenset({Need.ONNX})
    phase = Phase.PREPARE

    def run(self, context: RunContext) -> Generator[Event, None, StageReport]:
        workspace = context.workspace
        per_channel = context.settings(QuantizeSection).per_channel and any(
            spec.weight_bits in INTEGER_BITS and not spec.exclude
            for spec in workspace.plan.resolve(workspace.tree))
        repaired = repair_onnx(context.model, PER_CHANNEL_OPSET if per_channel else None,
                               OnnxBackend.data_dir(context))
        context.model = repaired.model
        for step in repaired.steps:
            yield Log(f"Repair: {step}")
        return {"steps": repaired.steps}
