"""Carry out a recipe on an ONNX-only model (no torch module): repair the file, prune its weight
initializers (unstructured, by magnitude), quantize it with onnxruntime, and measure it against
the original, writing the same ``model.onnx``, ``baseline.onnx`` and ``report.json`` as the
torch path.

Nothing can be trained without the torch module: recipes asking for fine-tuning, distillation,
QAT or Taylor importance are refused before any work, naming the sections. Channel and N:M
pruning are skipped with a note. ``baseline.onnx`` is the repaired original; unlabelled data
is scored against the original file's own outputs in onnxruntime.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import TensorDataset

from studio.core.data.task import TaskData, first_rows, model_inputs
from studio.core.engine.data_fit import feeder_for_data
from studio.core.engine.notes import drop_advice, honesty_notes
from studio.core.engine.run import BASELINE_FILE, MODEL_FILE, finish_report
from studio.core.errors import InputError, StudioError
from studio.core.export.measure import (
    Feed,
    inputs_for_batches,
    latency_ms,
    output_figures,
    run_onnx_outputs,
    zip_bytes,
)
from studio.core.export.onnx_export import onnx_file_bytes, remove_onnx, save_onnx
from studio.core.graph.onnx_tree import build_onnx_tree
from studio.core.graph.tree import LayerTree
from studio.core.jobs import CancelToken, Event, Log, Metric
from studio.core.methods.pruning import partition_plan
from studio.core.methods.pruning.onnx_initializers import prune_initializers
from studio.core.methods.quantization.ort_plan import (
    QuantPlan,
    apply_quant_plan,
    plan_to_ort,
    resolved_by_name,
)
from studio.core.models.onnx_feeds import Feeder
from studio.core.models.onnx_file import fixed_batch_size
from studio.core.models.onnx_repair import PER_CHANNEL_OPSET, repair_onnx
from studio.core.plan.recipe import Recipe
from studio.core.plan.stages import ExportSection, PruneSection, QuantizeSection
from studio.core.run_outputs import RunOutputs
from studio.core.workspace import Workspace

DEVICE = "cpu (onnxruntime)"
INTEGER_BITS = ("int8", "int4", "int2")
TORCH_HINT = ("Open the PyTorch model instead (a .pt/.pth state dict or .safetensors file with "
              "its architecture, or a .pt2 archive)")


def training_sections(recipe: Recipe) -> list[str]:
    """The recipe's sections that need the torch module (empty when ONNX alone will do)."""
    needs = []
    if recipe.train is not None and recipe.train.epochs > 0:
        needs.append(f"train.epochs: {recipe.train.epochs} (fine-tuning)")
    if recipe.distill is not None:
        needs.append("distill (distillation trains the model)")
    if recipe.quantize is not None and recipe.quantize.qat:
        needs.append("quantize.qat (quantization-aware training)")
    if recipe.prune is not None and recipe.prune.importance == "taylor":
        needs.append("prune.importance: taylor (needs gradients)")
    return needs


def check_onnx_recipe(recipe: Recipe, path: Path, source: str = "recipe") -> None:
    """Refuse, before any work, a recipe that an ONNX-only model cannot carry out."""
    needs = training_sections(recipe)
    if needs:
        raise StudioError(
            f"{source}: {path.name} is an ONNX file and {'; '.join(needs)} need(s) its torch "
            f"model: ONNX weights cannot be trained here. {TORCH_HINT}, or remove these "
            "settings (train: {epochs: 0}) to prune and quantize the ONNX file as it is")


def _whole_batches(dataset: TensorDataset, batch: int | None, what: str) -> TensorDataset:
    """A file with a fixed batch size is fed whole batches only (the rest is left out)."""
    if not batch or len(dataset) % batch == 0:
        return dataset
    usable = len(dataset) - len(dataset) % batch
    if usable == 0:
        raise InputError(f"the model's batch size is fixed at {batch}, and the {what} split "
                         f"has only {len(dataset)} sample(s)")
    return first_rows(dataset, usable)


Outputs = dict[str, np.ndarray]


def _outputs(path: Path, inputs: Feed, batch: int | None, feeder: Feeder) -> Outputs:
    """Every output of the file by name, per-token ones on real tokens only."""
    try:
        outputs = run_onnx_outputs(path, inputs, batch or 256, feed=feeder)
    except Exception as error:  # onnxruntime raises its own types for every fault
        first = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        raise StudioError(f"onnxruntime cannot run {path.name}: {first}") from error
    main = np.asarray(feeder.main_rows(inputs))
    return {name: feeder.real_tokens(values.astype(np.float32), main)
            for name, values in outputs.items()}


def _figures(path: Path, tree: LayerTree, outputs: Outputs, metric: str,
             labels: torch.Tensor | None, reference: Outputs, made_from: Outputs
             ) -> dict[str, Any]:
    root = tree.root
    return output_figures(outputs, reference, made_from, metric, labels) | {
        "params": root.total_params,
        "nonzero_params": root.total_params - root.total_zeros,
        "macs": root.total_macs,
        "onnx_bytes": onnx_file_bytes(path),
        "zip_bytes": zip_bytes(path),
    }


def _plan_quantizes_to_integers(workspace: Workspace) -> bool:
    return any(spec.weight_bits in INTEGER_BITS and not spec.exclude
               for spec in workspace.plan.resolve(workspace.tree))


def _layers(names: list[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:4])
    return shown + (f" and {len(names) - 4} more" if len(names) > 4 else "")


def _drop_advice(plan: QuantPlan, tree: LayerTree) -> str:
    """Advice an ONNX-only run can follow: no fine-tuning; static int8 for dynamic convs."""
    convs = plan.mode == "dynamic" and any(tree.get(n).op_type.startswith("Conv")
                                           for n in plan.quantize_nodes)
    quantized = [n for n, said in plan.decisions.items() if not said.startswith("float")]
    return drop_advice(can_train=False, dynamic_convs=convs, quantized_layers=quantized)


def run_onnx_workspace(workspace: Workspace, recipe: Recipe, outputs: RunOutputs,
                       token: CancelToken,
                       load_data: Callable[[], TaskData], source: str = "recipe"
                       ) -> Iterator[Event]:
    """The whole job on an open ONNX file and its plan; the last event is a :class:`Result`
    holding the report. ``load_data`` gives the task's data (called after the recipe and the
    file are checked). The loaded model is never changed; the files are written into
    ``outputs``."""
    started = time.perf_counter()
    loaded = workspace.loaded
    if loaded.onnx_model is None:
        raise StudioError(f"{source}: {loaded.path} is not an ONNX model")
    check_onnx_recipe(recipe, loaded.path, source)
    quantize = recipe.quantize or QuantizeSection()
    export_section = recipe.export or ExportSection()
    prune_section = recipe.prune or PruneSection()
    per_channel = quantize.per_channel and _plan_quantizes_to_integers(workspace)
    data_dir = loaded.path.parent  # external weights stay there, read when needed
    repaired = repair_onnx(loaded.onnx_model, PER_CHANNEL_OPSET if per_channel else None,
                           data_dir)
    model = repaired.model
    data = load_data()
    feeder = feeder_for_data(model, loaded.path, data)
    batch = fixed_batch_size(model)
    test = _whole_batches(data.test, batch, "test")
    calibration = _whole_batches(data.calibration, batch, "calibration")
    if data.metric == "accuracy" and len(test.tensors) < 2:
        raise StudioError("accuracy needs labels; this data has none (use an agreement metric)")
    yield Log(f"Data: {data.name}; {'labelled' if data.labelled else 'unlabelled'}, metric "
              f"{data.metric}; {len(test)} to test, {len(calibration)} to calibrate")
    if feeder.describe():
        yield Log(f"Inputs: {feeder.describe()}")
    token.check()

    out_dir = outputs.staging
    for step in repaired.steps:
        yield Log(f"Repair: {step}")
    yield Log(f"Baseline: measuring {workspace.tree.model_name} in onnxruntime")
    baseline_path = save_onnx(model, out_dir / BASELINE_FILE, data_dir)
    inputs = model_inputs(test)
    baseline_outputs = _outputs(baseline_path, inputs, batch, feeder)
    notes: list[str] = []
    reference = baseline_outputs  # the same graph, unless the repair changed it
    if repaired.steps:
        try:
            reference = _outputs(loaded.path, inputs, batch, feeder)  # the user's file as it is
        except StudioError as error:
            notes.append(f"{error}; the repaired baseline is the reference instead.")
    labels = test.tensors[1] if data.metric == "accuracy" else None
    tree = build_onnx_tree(model, workspace.tree.model_name, workspace.example, data_dir)
    baseline = _figures(baseline_path, tree, baseline_outputs, data.metric, labels, reference,
                        reference)
    yield Metric("baseline", data.metric, baseline["metric"]["value"], 0)
    token.check()

    resolved = resolved_by_name(tree, workspace.plan)
    partition = partition_plan(tree, list(resolved.values()))
    structured = [*partition.channels, *partition.nm]
    if structured:
        notes.append(f"{_layers(structured)}: channel and N:M pruning need the torch model "
                     f"(to keep coupled layers consistent); skipped. {TORCH_HINT}.")
    pruning: dict[str, Any] = {"layers": {}, "notes": []}
    if partition.unstructured:
        yield Log(f"Pruning: {len(partition.unstructured)} weight initializers, unstructured "
                  "by magnitude")
        pruning = prune_initializers(model, partition.unstructured,
                                     prune_section.global_unstructured, data_dir=data_dir)
    pruning["structured_skipped"] = structured
    token.check()

    plan = plan_to_ort(tree, resolved, quantize.weight_only)
    model_path = out_dir / MODEL_FILE
    float_path = save_onnx(model, out_dir / "compressed-float.onnx", data_dir)
    prepared: list[str] = []
    float_outputs = None
    try:
        if not plan.is_empty:
            yield Log(f"Quantizing with onnxruntime: {plan.mode or 'weight-only'}")
            float_outputs = (_outputs(float_path, inputs, batch, feeder) if pruning["layers"]
                             else baseline_outputs)  # nothing pruned: the baseline's graph
            apply_quant_plan(float_path, model_path, plan, calibration, quantize.per_channel,
                             quantize.calibration, prepared=prepared, feed=feeder)
        else:
            save_onnx(model, model_path, data_dir)
    finally:
        remove_onnx(float_path)
    compressed_outputs = _outputs(model_path, inputs, batch, feeder)
    compressed = _figures(model_path, build_onnx_tree(model, "compressed", workspace.example,
                                                      data_dir), compressed_outputs,
                          data.metric, labels, reference,
                          compressed_outputs if float_outputs is None else float_outputs)
    yield Metric("compressed", data.metric, compressed["metric"]["value"], 0)
    token.check()

    yield Log("Timing both models side by side in onnxruntime")
    batches = (batch,) if batch else (1, export_section.latency_batch)
    timings = latency_ms({"baseline": baseline_path, "compressed": model_path},
                         {size: feeder(array) for size, array in
                          inputs_for_batches(test, batches).items()},
                         export_section.latency_repeats, check=token.check)
    baseline["latency_ms"] = {f"batch_{b}": timings["baseline"][b] for b in batches}
    compressed["latency_ms"] = {f"batch_{b}": timings["compressed"][b] for b in batches}
    if batch:
        notes.append(f"The file fixes its batch size at {batch}; timed and measured at that "
                     "batch only.")
    report = {
        "recipe": source,
        "model": workspace.tree.model_name,
        "source_format": "onnx",
        "data": data.summary(),
        "device": DEVICE,
        "baseline": baseline,
        "compressed": compressed,
        "stages": {
            "repair": {"steps": repaired.steps},
            "prune": pruning,
            "quantize": {"mode": plan.mode, "excluded_nodes": list(plan.exclude_nodes),
                         "matmul_nbits": plan.matmul_nbits, "decisions": plan.decisions,
                         "prepared": prepared},
        },
        "notes": [*pruning["notes"], *notes, *plan.notes,
                  *honesty_notes(baseline, compressed, len(pruning["layers"]),
                                 not plan.is_empty, _drop_advice(plan, tree))],
        "elapsed_s": round(time.perf_counter() - started, 2),
    }
    yield from finish_report(report, data, outputs, model_path, baseline_path)
