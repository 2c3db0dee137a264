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
from studio.core.methods.quantization.bias_correction import correct_bias
from studio.core.methods.quantization.ort import calibration_batches
from studio.core.methods.quantization.ort_plan import apply_quant_plan, keep_float
from studio.core.methods.quantization.path_check import PathCheck, check_path
from studio.core.pipeline.context import RunContext
from studio.core.pipeline.steps.ptq_aware import accuracy_aware
from studio.core.pipeline.steps.ptq_prepare import check_feeds, prepare_float
from studio.core.plan.ort_rules import QuantPlan, plan_to_ort
from studio.core.plan.plan import ResolvedSpec
from studio.core.plan.stages import QuantizeSection

FLOAT_FILE = "compressed-float.onnx"


def quant_plan(context: RunContext, tree: LayerTree,
               resolved: Mapping[str, ResolvedSpec]) -> QuantPlan:
    """The ORT plan for the float file whose tree is ``tree``, kept in the context for
    :func:`drop_advice_for`."""
    section = context.settings(QuantizeSection)
    plan = plan_to_ort(tree, resolved, section.weight_only, section.int8_path)
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
                  calibration: TensorDataset, keep_float_file: Callable[[], None],
                  **feeding: Any) -> Generator[Event, None, dict[str, Any]]:
    """Write ``context.model_path`` from ``float_path`` (removed afterwards, with its data
    file); ``keep_float_file`` writes it there as it is when the plan quantizes nothing.
    Returns the stage report. ``feeding``: ``prepared`` and ``feed`` for
    :func:`apply_quant_plan`.

    Around onnxruntime's pass: equalization / smoothing of the float file before, bias
    correction after (QuantizeSection), a check of what the file costs against the float one,
    and the accuracy-aware search when ``max_drop`` is set."""
    section = context.settings(QuantizeSection)
    prepared: list[str] = feeding.setdefault("prepared", [])
    report: dict[str, Any] = {}
    source = float_path
    try:
        if plan.is_empty:
            keep_float_file()
        else:
            source, stay_float = prepare_float(float_path, section, calibration,
                                               feeding.get("feed"), report)
            yield Log(f"Quantizing with onnxruntime: {plan.mode or 'weight-only'}")

            def quantize(chosen: QuantPlan, target: Path) -> None:
                chosen = keep_float(chosen, (), "", stay_float)
                apply_quant_plan(source, target, chosen, calibration, section.per_channel,
                                 section.calibration, symmetric=section.symmetric,
                                 algorithm="hqq" if section.weight_method == "hqq" else "rtn",
                                 **feeding)
                if section.bias_correction and chosen.mode == "static":
                    corrected = correct_bias(target, source, calibration_batches(
                        source, calibration, feeding.get("feed")))
                    report["bias_correction"] = corrected.to_json()

            quantize(plan, context.model_path)
            feeds = check_feeds(source, calibration, feeding.get("feed"))
            check = check_path(float_path, context.model_path, feeds)
            report["check"] = check.to_json()
            _note_cost(context, plan, check)
            if section.max_drop is not None:
                plan = yield from accuracy_aware(context, float_path, plan, quantize, feeds,
                                                 report)
    finally:
        remove_onnx(float_path)
        if source != float_path:
            remove_onnx(source)
    context.quant_plan = plan
    for note in plan.notes:
        context.note(note)
    return {"mode": plan.mode, "calibration": section.calibration,
            "per_channel": section.per_channel, "int8_path": section.int8_path,
            "excluded_nodes": list(plan.exclude_nodes), "matmul_nbits": plan.matmul_nbits,
            "decisions": plan.decisions, "prepared": list(dict.fromkeys(prepared)), **report}


def _note_cost(context: RunContext, plan: QuantPlan, check: PathCheck) -> None:
    """Say plainly when the int8 path taken is slower than fp32 or wrecks the outputs."""
    if not (check.slower or check.wrecked):
        return
    section = context.settings(QuantizeSection)
    forced = ""
    if plan.mode == "dynamic":
        forced = (" (forced by quantize.int8_path: dynamic)" if section.int8_path == "dynamic"
                  else " (asked for by act_bits: fp32, or no convolutions to make it static)")
    what = f"int8 {plan.mode}" if plan.mode in ("static", "dynamic") else \
        plan.mode or "weight-only"
    recorded = check.to_json()  # the note quotes the figures the report holds
    context.note(f"{what}{forced}: {recorded['latency_ratio']:.2f}x the float file's "
                 f"latency and output cosine {recorded['cosine']:.3f} against it, on a "
                 "calibration batch.")
