"""Recovery with adapters: attach LoRA/DoRA before the recovery step (which then trains only
them, over the frozen compressed base) and merge them into the weights after it, before export.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import torch

from studio.core.errors import StudioError
from studio.core.graph.tree import LayerTree
from studio.core.jobs import Event, Log
from studio.core.methods.adapters.peft_adapters import (
    AttachedAdapters,
    adapter_targets,
    attach_adapters,
    merge_adapters,
    quantize_base,
    save_adapter,
)
from studio.core.methods.pruning.schedule import GradualPruner
from studio.core.methods.quantization.qat import qat_bits_from_plan
from studio.core.pipeline.context import RunContext
from studio.core.pipeline.step import Need, StageReport, Step
from studio.core.pipeline.steps.layerwise_quantize import (
    PREQUANTIZED,
    LayerwiseQuantize,
    gptq_targets,
    round_targets,
)
from studio.core.plan.ort_rules import resolved_by_name
from studio.core.plan.recipe import Recipe
from studio.core.plan.stages import AdapterSection, QuantizeSection, TrainSection
from studio.core.train.loop import evaluate
from studio.core.util import first_tensor

PARITY_SAMPLES = 64


class AttachAdapters(Step):
    name = "adapters"
    settings = AdapterSection
    needs = frozenset({Need.TORCH})

    def asks_for(self, recipe: Recipe) -> list[str]:
        return ["adapters (adapters are trained)"] if recipe.adapters is not None else []

    def applies(self, context: RunContext) -> bool:
        return (context.recipe.adapters is not None
                and context.settings(TrainSection).epochs > 0)

    def run(self, context: RunContext) -> Generator[Event, None, StageReport]:
        section = context.settings(AdapterSection)
        if context.settings(QuantizeSection).qat:
            raise StudioError("adapters and quantize.qat both train for quantization; use "
                              "adapters (with quantized_base) or QAT, not both")
        if isinstance(context.after_step, GradualPruner):
            raise StudioError("adapters keep the base weights frozen, so gradual (AGP) pruning "
                              "cannot prune them while they train; use prune.schedule: oneshot")
        model = context.model
        resolved = resolved_by_name(context.workspace.tree, context.workspace.plan)
        targets, notes = adapter_targets(model, resolved)
        for note in notes:
            context.note(note)
        if not targets:
            raise StudioError("adapters: no Linear or Conv layer has an adapter (the plan sets "
                              "adapter: none everywhere); remove the adapters section or set "
                              "adapter: lora on some layers")
        bits: dict[str, int] = {}
        if section.quantized_base:
            blockwise = [] if section.merge else (yield from round_blockwise(context))
            bits = {name: width for name, width in qat_bits_from_plan(model, resolved)[0].items()
                    if name not in blockwise}
            quantize_base(model, bits)
            bits |= {name: context.stages[LayerwiseQuantize.name][PREQUANTIZED][name].bits
                     for name in blockwise}
        attached = attach_adapters(model, targets, context.settings(TrainSection).seed)
        context.adapters = (attached, context.after_step)
        context.after_step = None  # the base is frozen: its masks cannot change while training
        kind = "DoRA" if targets[0].kind == "dora" else "LoRA"
        ranks = sorted({t.rank for t in targets})
        share = attached.trainable / attached.base
        yield Log(f"Adapters: {kind} r={'/'.join(map(str, ranks))} on {len(targets)} layers; "
                  f"{attached.trainable:,} trainable parameters ({share:.1%} of the "
                  f"{attached.base:,} frozen)"
                  + (f"; base rounded to the plan's int bits on {len(bits)} layers" if bits
                     else ""))
        return {"kind": targets[0].kind, "layers": {t.name: {"rank": t.rank, "alpha": t.alpha}
                                                   for t in targets},
                "dropout": targets[0].dropout, "trainable_params": attached.trainable,
                "base_params": attached.base, "trainable_fraction": round(share, 5),
                "quantized_base": bits}


class MergeAdapters(Step):
    """Saves the adapter alone (PEFT format) and folds it into the weights; pruning masks are
    re-applied after the merge, since a dense low-rank update fills a sparse layer's zeros."""

    name = "merge_adapters"
    settings = AdapterSection
    needs = frozenset({Need.TORCH})

    def applies(self, context: RunContext) -> bool:
        return context.adapters is not None

    def run(self, context: RunContext) -> Generator[Event, None, StageReport]:
        attached: AttachedAdapters
        attached, masks = context.adapters
        section, data = context.settings(AdapterSection), context.task
        report = context.stages["adapters"]
        if section.save_adapter:
            files = save_adapter(attached, context.out_dir)
            report["files"] = [path.name for path in files]
        report["merged"] = section.merge
        if not section.merge:  # the frozen base keeps its zeros: no masks to re-apply
            context.adapters, context.after_step = None, masks
            device = next(attached.model.parameters()).device
            value = evaluate(attached.model, data.test, context.token, str(device),
                             metric=data.metric, reference=context.backend.reference)
            report["unmerged_metric"] = {"name": data.metric, "value": value}
            yield Log(f"Adapters kept beside the base weights ({data.metric} {value:.4f})")
            return None
        probe = data.test.tensors[0][:PARITY_SAMPLES]
        device = next(attached.model.parameters()).device
        with torch.no_grad():
            attached.model.eval()
            before = attached.model(probe.to(device))
        model = context.model = merge_adapters(attached)
        context.adapters = None
        with torch.no_grad():
            after = model(probe.to(device))
        report["merge_max_abs_diff"] = _max_diff(before, after)
        if masks is not None:
            masks(0)
            context.after_step = masks
            context.note("Adapters were merged into pruned layers and the pruning masks "
                         "re-applied: the part of the update on pruned weights is lost; the "
                         "metric after merging is in the adapters report")
        value = evaluate(model, data.test, context.token, str(device), metric=data.metric,
                         reference=context.backend.reference)
        report["merged_metric"] = {"name": data.metric, "value": value}
        yield Log(f"Adapters merged into the weights ({data.metric} {value:.4f}"
                  f"{', masks re-applied' if masks is not None else ''})")
        return None


def round_blockwise(context: RunContext) -> Generator[Event, None, list[str]]:
    """Round the Linear layers the plan stores block-wise (int4/int2 MatMulNBits) on that grid
    before the adapters train over them (GPTQ from the calibration split when
    ``quantize.weight_method`` is gptq, else to nearest); the quantize step writes these
    integers into the file (as after the GPTQ step, which then has nothing left to do)."""
    section = context.settings(QuantizeSection)
    targets, _tied = gptq_targets(context)
    if not targets:
        return []
    method = "gptq" if section.weight_method == "gptq" else "rtn"
    tokens = context.task.calibration.tensors[0]
    yield Log(f"Rounding {len(targets)} layers to their int grid ({method}) before the "
              "adapters train over them")
    result = round_targets(context, targets, method)
    context.stages[LayerwiseQuantize.name] = {
        "layers": len(targets), "method": method, "before_adapters": True,
        "samples": len(tokens) if method == "gptq" else 0,
        "output_error": {name: round(e, 5) for name, e in result.errors.items()},
        PREQUANTIZED: result.quantized}
    return list(result.quantized)


def adapter_nodes(tree: LayerTree) -> list[str]:
    """The ONNX nodes computing adapters (under a ``lora_A``/``lora_B`` scope of peft)."""
    return [node.name for node in tree.nodes if node.is_leaf and node.parent is not None
            and any(f".{part}." in tree.nodes[node.parent].name + "."
                    for part in ("lora_A", "lora_B", "lora_magnitude_vector"))]


def _max_diff(before: Any, after: Any) -> float:
    a, b = first_tensor(before), first_tensor(after)
    assert a is not None and b is not None
    return float((a.float() - b.float()).abs().max())
