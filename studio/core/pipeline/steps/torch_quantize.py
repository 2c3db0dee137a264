"""Export the compressed torch model to ONNX and quantize it by the plan in onnxruntime; a model
trained with fake quantizers (QAT) is converted to static QDQ with the ranges it learned."""

from __future__ import annotations

from collections.abc import Generator

import onnx

from studio.core.export.onnx_export import export_onnx
from studio.core.graph.onnx_tree import build_onnx_tree
from studio.core.jobs import Event, Log
from studio.core.methods.quantization.ort_plan import keep_float
from studio.core.methods.quantization.qat import qat_layers
from studio.core.methods.quantization.qat_ort import convert_qat_to_ort_static
from studio.core.pipeline.context import RunContext
from studio.core.pipeline.step import Need, StageReport, Step
from studio.core.pipeline.steps.adapters import adapter_nodes
from studio.core.pipeline.steps.embedding_quantize import EmbeddingQuantize, write_embeddings
from studio.core.pipeline.steps.layerwise_quantize import (
    hold_prequantized,
    write_prequantized,
)
from studio.core.pipeline.steps.ptq import FLOAT_FILE, quant_plan, quantize_file
from studio.core.plan.stages import ExportSection, QuantizeSection


class TorchQuantize(Step):
    name = "quantize"
    settings = QuantizeSection
    needs = frozenset({Need.TORCH})

    def run(self, context: RunContext) -> Generator[Event, None, StageReport]:
        section = context.settings(QuantizeSection)
        opset = context.settings(ExportSection).opset
        model = context.model = context.model.cpu().eval()
        context.token.check()
        yield Log("Exporting the compressed model")
        assert context.workspace.example is not None
        example = context.workspace.example.make_tensor()
        context.quantized = section.qat
        if section.qat and qat_layers(model):
            convert_qat_to_ort_static(model, example, context.model_path,
                                      context.task.calibration, section.calibration, opset)
            return {"mode": "qat-static", "calibration": section.calibration,
                    "per_channel": True}
        float_path = context.out_dir / FLOAT_FILE
        export_onnx(model, example, float_path, opset=opset)
        workspace = context.workspace
        resolved = {node.name: spec for node, spec in
                    zip(workspace.tree.nodes, workspace.plan.resolve(workspace.tree),
                        strict=True)}
        tree = build_onnx_tree(onnx.load(str(float_path), load_external_data=False),
                               "compressed", data_dir=float_path.parent)
        plan = quant_plan(context, tree, resolved)
        adapters = adapter_nodes(tree)
        if adapters:  # kept unmerged: small float matmuls beside their quantized base
            plan = keep_float(plan, adapters, "adapter kept beside its base")
            for node in adapters:
                plan.matmul_nbits.pop(node, None)
                plan.group_sizes.pop(node, None)
        held = hold_prequantized(context, float_path, plan)
        report = yield from quantize_file(context, float_path, plan, context.task.calibration,
                                          lambda: float_path.replace(context.model_path))
        if held:
            report["gptq"] = write_prequantized(context)["written"]
        embeddings = context.stages.get(EmbeddingQuantize.name)
        if embeddings:
            report["embeddings"] = write_embeddings(context)
        context.quantized = section.qat or bool(plan.mode) or bool(held) or bool(embeddings)
        return report
