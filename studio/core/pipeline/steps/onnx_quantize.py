"""Quantize the (pruned) ONNX graph by the plan in onnxruntime, calibrating on whole batches
and feeding a transformer's companion inputs from its token ids."""

from __future__ import annotations

from collections.abc import Generator

from studio.core.export.onnx_export import save_onnx
from studio.core.jobs import Event
from studio.core.pipeline.context import RunContext
from studio.core.pipeline.onnx_backend import OnnxBackend
from studio.core.pipeline.step import Need, StageReport, Step
from studio.core.pipeline.steps.ptq import FLOAT_FILE, quant_plan, quantize_file
from studio.core.plan.ort_rules import resolved_by_name
from studio.core.plan.stages import QuantizeSection


class OnnxQuantize(Step):
    name = "quantize"
    settings = QuantizeSection
    needs = frozenset({Need.ONNX})

    def run(self, context: RunContext) -> Generator[Event, None, StageReport]:
        backend = context.backend
        assert isinstance(backend, OnnxBackend)
        tree = backend.tree
        assert tree is not None
        plan = quant_plan(context, tree, resolved_by_name(tree, context.workspace.plan))
        data_dir = backend.data_dir(context)
        float_path = save_onnx(context.model, context.out_dir / FLOAT_FILE, data_dir)
        if not plan.is_empty:
            backend.quantizing_from(float_path, changed=context.sparse_layers > 0)
        report = yield from quantize_file(
            context, float_path, plan, backend.calibration,
            lambda: save_onnx(context.model, context.model_path, data_dir),
            feed=backend.feeder)
        context.quantized = not plan.is_empty
        return report
