"""Post-training quantization of a float ONNX file by the plan, shared by the torch and ONNX
quantize steps: the plan becomes an onnxruntime quantization plan, which is applied (or the
float file is kept as it is when the plan quantizes nothing)."""

from __future__ import annotations

from collections.abc import Callable, Generator, Mapping
from pathlib import Path
from typing import Any

from torch.utils.data import TensorDataset

from studio.core.engine.notes import drop_advice
from studio.core.export.onnx_export import remove_onnx
from studio.core.graph.tree import LayerTree
from studio.core.jobs import Event, Log
from studio.core.methods.quantization.ort_plan import apply_quant_plan
from studio.core.pipeline.context import RunContext
from studio.core.plan.ort_rules import QuantPlan, plan_to_ort
from studio.core.plan.plan import ResolvedSpec
from studio.core.plan.stages import QuantizeSection

FLOAT_FILE = "compressed-float.onnx"


def quant_plan(context: RunContext, tree: LayerTree,
               resolved: Mapping[str, ResolvedSpec]) -> QuantPlan:
    """The ORT plan for the float file whose tree is ``tree``, kept in the context for
    :func:`drop_advice_for`."""
    plan = plan_to_ort(tree, resolved, context.settings(QuantizeSection).weight_only)
    context.quant_plan, context.quant_tree = plan, tree
    return plan


def drop_advice_for(context: RunContext) -> str:
    """What the user can do about a metric drop with this model and the plan carried out,
    phrased by what its backend can do (fine-tuning and QAT need a model that can train)."""
    can_train = context.workspace.loaded.capabilities.can_train
    plan, tree = context.quant_plan, context.quant_tree
    if plan is None or tree is None:
        return drop_advice(can_train)
    convs = plan.mode == "dynamic" and any(tree.get(n).op_type.startswith("Conv")
                                           for n in plan.quantize_nodes)
    quantized = [plan.layers.get(n, n) for n, said in plan.decisions.items()
                 if not said.startswith("float")]
    return drop_advice(can_train, dynamic_convs=convs, quantized_layers=quantized)


def quantize_file(context: RunContext, float_path: Path, plan: QuantPlan,
                  calibration: TensorDataset, keep_float: Callable[[], None], **feeding: Any
                  ) -> Generator[Event, None, dict[str, Any]]:
    """Write ``context.model_path`` from ``float_path`` (removed afterwards, with its data
    file); ``keep_float`` writes it there as it is when the plan quantizes nothing. Returns
    the stage report. ``feeding``: ``prepared`` and ``feed`` for :func:`apply_quant_plan`."""
    section = context.settings(QuantizeSection)
    try:
        if plan.is_empty:
            keep_float()
        else:
            yield Log(f"Quantizing with onnxruntime: {plan.mode or 'weight-only'}")
            apply_quant_plan(float_path, context.model_path, plan, calibration,
                             section.per_channel, section.calibration, **feeding)
    finally:
        remove_onnx(float_path)
    for note in plan.notes:
        context.note(note)
    return {"mode": plan.mode, "calibration": section.calibration,
            "per_channel": section.per_channel, "excluded_nodes": list(plan.exclude_nodes),
            "matmul_nbits": plan.matmul_nbits, "decisions": plan.decisions}
