"""Carry out a recipe: baseline → prune → recover (fine-tune, KD, QAT) → export → quantize →
measure, as a job that yields events and stops within one batch when cancelled.

The job works on a copy of the model, so the original (and the user's file) is never touched;
outputs are written into a staging folder and moved into the output folder together at the end,
the report last (:mod:`studio.core.run_outputs`), so a cancelled, failed or killed run leaves the
output folder as it was.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from studio.core.atomic import write_text_atomic
from studio.core.data.sources import load_task
from studio.core.data.task import SPLITS_FILE, TaskData
from studio.core.engine.data_fit import check_torch_data
from studio.core.engine.figures import model_figures
from studio.core.engine.notes import honesty_notes
from studio.core.errors import StudioError
from studio.core.export.measure import inputs_for_batches, latency_ms, torch_outputs
from studio.core.export.onnx_export import export_onnx
from studio.core.graph.onnx_tree import build_onnx_tree
from studio.core.graph.roles import BLOCK, is_hf_block
from studio.core.jobs import Artifact, CancelToken, Event, Log, Metric, Result
from studio.core.methods.distill import (
    FeaturePair,
    KDConfig,
    OutputMatchingLoss,
    default_teacher,
    make_kd_loss,
    matching_kind,
)
from studio.core.methods.distill.distiller import training_parameters
from studio.core.methods.pruning import RETRACE_NOTE, apply_plan_pruning, partition_plan
from studio.core.methods.pruning.reconstruct import reconstruct_pruned
from studio.core.methods.pruning.schedule import GradualPruner
from studio.core.methods.quantization.ort_plan import apply_quant_plan, plan_to_ort
from studio.core.methods.quantization.qat import prepare_qat, qat_bits_from_plan, qat_layers
from studio.core.methods.quantization.qat_ort import convert_qat_to_ort_static
from studio.core.models.checks import describe_non_finite, find_non_finite
from studio.core.plan.plan import ResolvedSpec
from studio.core.plan.recipe import Recipe, read_recipe
from studio.core.plan.stages import (
    DataSection,
    ExportSection,
    PruneSection,
    QuantizeSection,
    TrainSection,
)
from studio.core.run_outputs import RunOutputs
from studio.core.train.loop import TrainConfig, cross_entropy, evaluate, resolve_device, train
from studio.core.workspace import Workspace, open_recipe_workspace

MODEL_FILE = "model.onnx"
BASELINE_FILE = "baseline.onnx"
REPORT_FILE = "report.json"
RUN_FILES = (MODEL_FILE, BASELINE_FILE, REPORT_FILE, SPLITS_FILE)
"""Every file a run leaves in its output folder."""


def _without_unstructured(tree: Any, resolved: list[ResolvedSpec],
                          names: set[str]) -> list[ResolvedSpec]:
    """The plan minus the unstructured layers an AGP schedule will prune during training."""
    return [dataclasses.replace(spec, sparsity=0.0) if node.name in names else spec
            for node, spec in zip(tree.nodes, resolved, strict=True)]


def run_recipe_file(path: Path, out_dir: Path, token: CancelToken, trust: bool = False,
                    device: str | None = None) -> Iterator[Event]:
    path = Path(path)
    recipe = read_recipe(path)
    yield from run_recipe(recipe, path.parent, Path(out_dir), token, trust, device, str(path))


def run_recipe(recipe: Recipe, base_dir: Path | None, out_dir: Path, token: CancelToken,
               trust: bool = False, device: str | None = None,
               source: str = "recipe") -> Iterator[Event]:
    """Open the model the recipe names, then :func:`run_workspace`."""
    if recipe.model is None:
        raise StudioError(f"{source}: the recipe names no model (add model: {{path: ...}})")
    workspace = open_recipe_workspace(recipe, base_dir, trust, source)
    yield from run_workspace(workspace, recipe, out_dir, token, device, source, base_dir, trust)


def run_workspace(workspace: Workspace, recipe: Recipe, out_dir: Path, token: CancelToken,
                  device: str | None = None, source: str = "recipe",
                  base_dir: Path | None = None, trust: bool = False) -> Iterator[Event]:
    """The whole job on an open model and its plan (the recipe gives the job sections); the
    model itself is never changed. The last event is a :class:`Result` holding the report.
    ``base_dir`` is where the recipe's data paths start; ``trust`` lets a ``function`` data
    source run. The outputs appear in ``out_dir`` together at the end, or not at all (see
    :mod:`studio.core.run_outputs`)."""
    with RunOutputs(out_dir, RUN_FILES, [workspace.loaded.path], REPORT_FILE) as outputs:
        if workspace.loaded.module is None:  # an ONNX file: no training, onnxruntime only
            from studio.core.engine.run_onnx import run_onnx_workspace  # it imports this module

            yield from run_onnx_workspace(
                workspace, recipe, outputs, token,
                lambda: load_task(recipe.data or DataSection(), base_dir, trust), source)
        else:
            yield from _run_torch(workspace, recipe, outputs, token, device, source, base_dir,
                                  trust)


def _run_torch(workspace: Workspace, recipe: Recipe, outputs: RunOutputs, token: CancelToken,
               device: str | None, source: str, base_dir: Path | None, trust: bool
               ) -> Iterator[Event]:
    started = time.perf_counter()
    broken = find_non_finite(workspace.loaded.module)
    if broken:
        raise StudioError(f"{source}: {workspace.loaded.path} holds NaN or Inf weights in "
                          f"{describe_non_finite(broken)}; compressing it would spread them. "
                          "Fix or re-export the model (inspect still opens it)")
    if workspace.example is None:
        raise StudioError(f"{source}: no example input is known for this model; add "
                          "example_input: {shape: [...]} to the recipe")
    train_section = recipe.train or TrainSection()
    if device:
        train_section = train_section.model_copy(update={"device": device})
    resolve_device(train_section.device)  # a missing GPU fails before any work
    torch.manual_seed(train_section.seed)
    data = load_task(recipe.data or DataSection(), base_dir, trust)
    original = workspace.loaded.module
    check_torch_data(original, data, workspace.example)
    out_dir = outputs.staging
    yield Log(f"Data: {data.name}; {'labelled' if data.labelled else 'unlabelled'}, metric "
              f"{data.metric}; {len(data.train)} to fine-tune on, {len(data.test)} to test")
    reference = torch_outputs(original, data.test.tensors[0])
    token.check()

    yield Log(f"Baseline: exporting {workspace.tree.model_name} and measuring it")
    example = workspace.example.make_tensor()
    export_section = recipe.export or ExportSection()
    baseline_path = export_onnx(original, example, out_dir / BASELINE_FILE,
                                opset=export_section.opset)
    baseline = model_figures(original, baseline_path, workspace.example, data.test,
                             metric=data.metric, reference=reference)
    yield Metric("baseline", data.metric, baseline["metric"]["value"], 0)
    token.check()

    model = copy.deepcopy(original).cpu().eval()
    stages: dict[str, Any] = {}
    masks_hook, pruning_report, sparse_layers = yield from _prune(
        workspace, model, example, data, recipe.prune or PruneSection(), train_section, token)
    stages["prune"] = pruning_report

    quantize = recipe.quantize or QuantizeSection()
    resolved = {node.name: spec for node, spec in
                zip(workspace.tree.nodes, workspace.plan.resolve(workspace.tree), strict=True)}
    qat_notes: list[str] = []
    if quantize.qat:
        bits, acts, qat_notes = qat_bits_from_plan(model, resolved)
        if bits:
            prepare_qat(model, bits, acts)
            yield Log(f"QAT: fake-quantizing {len(bits)} layers during recovery")
    yield from _recover(workspace, original, model, data, recipe, train_section, masks_hook,
                        token, stages, reference)
    model = model.cpu().eval()
    token.check()

    yield Log("Exporting the compressed model")
    model_path = out_dir / MODEL_FILE
    quant_notes = yield from _export_compressed(model, example, data, resolved, quantize,
                                                export_section, out_dir, model_path, stages)
    compressed = model_figures(model, model_path, workspace.example, data.test,
                               metric=data.metric, reference=reference)
    yield Metric("compressed", data.metric, compressed["metric"]["value"], 0)
    token.check()

    yield Log("Timing both models side by side in onnxruntime")
    batches = (1, export_section.latency_batch)
    timings = latency_ms({"baseline": baseline_path, "compressed": model_path},
                         inputs_for_batches(data.test, batches), export_section.latency_repeats,
                         check=token.check)
    baseline["latency_ms"] = {f"batch_{b}": timings["baseline"][b] for b in batches}
    compressed["latency_ms"] = {f"batch_{b}": timings["compressed"][b] for b in batches}
    quantized = bool(stages.get("quantize", {}).get("mode")) or quantize.qat
    report = {
        "recipe": source,
        "model": workspace.tree.model_name,
        "data": data.summary(),
        "device": train_section.device,
        "seed": train_section.seed,
        "baseline": baseline,
        "compressed": compressed,
        "stages": stages,
        "notes": [*(n for n in pruning_report.get("notes", []) if n != RETRACE_NOTE),
                  *qat_notes, *quant_notes,
                  *honesty_notes(baseline, compressed, sparse_layers, quantized)],
        "elapsed_s": round(time.perf_counter() - started, 2),
    }
    yield from finish_report(report, data, outputs, model_path, baseline_path)


def finish_report(report: dict[str, Any], data: TaskData, outputs: RunOutputs, model_path: Path,
                  baseline_path: Path) -> Iterator[Event]:
    """Write the splits and, last, the report (so a report never names missing files), then
    move the run's files into the output folder; the final events of every run, torch or
    ONNX-only."""
    staging = outputs.staging
    report["paths"] = {"model": str(outputs.final(model_path)),
                       "baseline": str(outputs.final(baseline_path)),
                       "splits": str(outputs.out_dir / SPLITS_FILE),
                       "report": str(outputs.out_dir / REPORT_FILE)}
    if data.splits is not None:
        write_text_atomic(staging / SPLITS_FILE, json.dumps(data.splits.to_json()) + "\n")
    write_text_atomic(staging / REPORT_FILE, json.dumps(report, indent=2) + "\n")
    outputs.commit()
    yield Artifact("onnx", report["paths"]["model"])
    yield Artifact("report", report["paths"]["report"])
    yield Result(report)


def _prune(workspace: Workspace, model: nn.Module, example: torch.Tensor, data: TaskData,
           section: PruneSection, train_section: TrainSection, token: CancelToken
           ) -> Iterator[Event]:
    """Returns (after_step hook, report, count of layers holding dense zeros)."""
    tree = workspace.tree
    resolved = workspace.plan.resolve(tree)
    partition = partition_plan(tree, resolved)
    gradual = section.schedule == "agp" and partition.unstructured and train_section.epochs > 0
    if gradual:
        resolved = _without_unstructured(tree, resolved, set(partition.unstructured))
    if partition.is_empty:
        return None, {"notes": []}, 0
    if section.importance == "taylor" and not data.labelled:
        raise StudioError("prune.importance: taylor scores weights by the gradient of the "
                          "task loss, which needs labels; this data has none, so use magnitude")
    transformer = (f"{len(partition.heads)} attentions by heads, {len(partition.ffn)} FFNs by "
                   "width, " if partition.heads or partition.ffn else "")
    yield Log(f"Pruning: {transformer}{len(partition.channels)} layers by channels, "
              f"{len(partition.unstructured)} unstructured"
              f"{' (gradual, AGP)' if gradual else ''}, {len(partition.nm)} N:M")
    token.check()
    result = apply_plan_pruning(model, tree, resolved, example,
                                data.calibration if section.importance == "taylor" else None,
                                section.importance, section.global_unstructured)
    if section.reconstruct and (partition.heads or partition.ffn):
        token.check()
        rebuilt = reconstruct_pruned(model, workspace.loaded.module, partition.heads,
                                     partition.ffn, data.calibration.tensors[0],
                                     getattr(model, "pad_token_id", None), check=token.check)
        if rebuilt is not None:
            result.report["reconstruct"] = rebuilt
            errors = rebuilt["layers"].values()
            yield Log(f"Reconstruction: re-fitted {len(errors)} output projections on "
                      f"{rebuilt['tokens']} calibration tokens; mean relative error "
                      f"{sum(e['before'] for e in errors) / len(errors):.3f} -> "
                      f"{sum(e['after'] for e in errors) / len(errors):.3f}")
    hook = result.masks.hook(model) if result.masks.masks else None
    if gradual:
        steps = train_section.epochs * -(-len(data.train) // train_section.batch_size)
        pruner = GradualPruner(model, partition.unstructured, ramp_steps=max(1, steps * 3 // 4),
                               every=max(1, steps // (4 * section.agp_steps)),
                               base=result.masks)
        hook = pruner
        result.report["unstructured"]["schedule"] = {"kind": "agp", "ramp_steps": steps * 3 // 4}
    sparse = len(partition.unstructured) + len(partition.nm)
    return hook, result.report, sparse


def _recover(workspace: Workspace, original: nn.Module, model: nn.Module, data: TaskData,
             recipe: Recipe, section: TrainSection, after_step: Any, token: CancelToken,
             stages: dict[str, Any], reference: torch.Tensor) -> Iterator[Event]:
    if section.epochs == 0:
        return
    device = resolve_device(section.device)
    model.to(device)
    config = TrainConfig(epochs=section.epochs, lr=section.lr, batch_size=section.batch_size,
                         weight_decay=section.weight_decay, seed=section.seed,
                         device=str(device))
    loss_fn: Any = cross_entropy
    parameters, close = None, None
    stage = "fine-tune"
    if not data.labelled and recipe.distill is None:
        kind = matching_kind(data.metric)
        modules = dict(original.named_modules())
        blocks = [node.name for node in workspace.tree.nodes  # HF layouts: tensors out, always
                  if node.role == BLOCK and is_hf_block(modules.get(node.name, nn.Module()))]
        matching = OutputMatchingLoss(default_teacher(original).to(device), kind,
                                      blocks=blocks,
                                      pad_token_id=getattr(original, "pad_token_id", None))
        loss_fn, close, stage = matching, matching.close, "match"
        hidden = f", and the hidden states of {len(blocks)} encoder blocks" if blocks else ""
        yield Log("No labels: recovering by matching the uncompressed model's outputs ("
                  f"{'KL of softened scores' if kind == 'logits' else '1 - cosine + MSE'}"
                  f"{hidden}; dropout off)")
    elif recipe.distill is not None:
        kd = KDConfig(temperature=recipe.distill.temperature, alpha=recipe.distill.alpha,
                      feature_pairs=tuple(FeaturePair(p.student, p.teacher, p.weight)
                                          for p in recipe.distill.features),
                      relation_weight=recipe.distill.relation_weight)
        teacher = default_teacher(original)
        example = workspace.example.make_tensor().to(device)
        setup = make_kd_loss(model, teacher, kd, example)
        loss_fn, close = setup.loss_fn, setup.close
        parameters = training_parameters(model, setup.extra_parameters)
        stage = "distill"
        if not data.labelled:
            yield Log("No labels: distilling without the cross-entropy term")
    yield Log(f"Recovering {data.metric}: {section.epochs} epoch(s) of {stage} on {device}")
    try:
        yield from train(model, data.train, config, token, loss_fn, stage, after_step,
                         parameters, dropout=stage != "match")
    finally:
        if close is not None:
            close()
    value = evaluate(model, data.test, token, str(device), metric=data.metric,
                     reference=reference)
    stages["recover"] = {"kind": stage, "epochs": section.epochs,
                         "torch_metric": {"name": data.metric, "value": value}}
    if stage == "distill" and recipe.distill is not None:
        stages["recover"]["distill"] = recipe.distill.model_dump(mode="json")
    yield Metric(stage, data.metric, value, section.epochs)


def _export_compressed(model: nn.Module, example: torch.Tensor, data: TaskData,
                       resolved: dict[str, ResolvedSpec], quantize: QuantizeSection,
                       export_section: ExportSection, out_dir: Path, model_path: Path,
                       stages: dict[str, Any]) -> Iterator[Event]:
    """Write ``model_path``; returns the quantization notes."""
    if quantize.qat and qat_layers(model):
        convert_qat_to_ort_static(model, example, model_path, data.calibration,
                                  quantize.calibration, export_section.opset)
        stages["quantize"] = {"mode": "qat-static", "calibration": quantize.calibration,
                              "per_channel": True}
        return []
    float_path = out_dir / "compressed-float.onnx"
    export_onnx(model, example, float_path, opset=export_section.opset)
    plan = plan_to_ort(build_onnx_tree(onnx.load(str(float_path), load_external_data=False),
                                       "compressed", data_dir=float_path.parent), resolved,
                       quantize.weight_only)
    if plan.is_empty:
        float_path.replace(model_path)
        stages["quantize"] = {"mode": None}
        return plan.notes
    yield Log(f"Quantizing with onnxruntime: {plan.mode or 'weight-only'}")
    apply_quant_plan(float_path, model_path, plan, data.calibration, quantize.per_channel,
                     quantize.calibration)
    float_path.unlink(missing_ok=True)
    stages["quantize"] = {"mode": plan.mode, "calibration": quantize.calibration,
                          "per_channel": quantize.per_channel,
                          "excluded_nodes": list(plan.exclude_nodes),
                          "matmul_nbits": plan.matmul_nbits, "decisions": plan.decisions}
    return plan.notes

