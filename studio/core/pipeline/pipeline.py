"""The one pipeline: open (backend) → prepare steps → baseline → compress steps → measure →
time both files side by side → report. Torch and ONNX-only runs differ only in their backend
and the steps it can run.

Every output is written in one place, the staging folder of :class:`RunOutputs`
(``context.out_dir``): ``baseline.onnx``, ``model.onnx`` (by the quantize step, at
``context.model_path``), the backend's own weights (``weights.safetensors`` from torch),
``splits.json`` and, last, ``report.json``; they are moved into the
output folder together at the end, so a cancelled, failed or killed run leaves the output folder
as it was.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

from studio.core.atomic import write_text_atomic
from studio.core.data.task import SPLITS_FILE
from studio.core.engine.notes import honesty_notes
from studio.core.errors import StudioError
from studio.core.export.measure import latency_ms
from studio.core.export.torch_weights import ADAPTERS_FILE, WEIGHTS_FILE
from studio.core.jobs import Artifact, CancelToken, Event, Log, Metric, Result
from studio.core.methods.adapters.peft_adapters import ADAPTER_FILES
from studio.core.pipeline.backend import Backend
from studio.core.pipeline.context import RunContext
from studio.core.pipeline.onnx_backend import TORCH_HINT, OnnxBackend
from studio.core.pipeline.registry import STEPS, steps_for, unmet
from studio.core.pipeline.step import Phase, Step
from studio.core.pipeline.steps.kv_cache import KV_FILE
from studio.core.pipeline.steps.ptq import drop_advice_for
from studio.core.pipeline.torch_backend import TorchBackend
from studio.core.plan.recipe import Recipe
from studio.core.plan.stages import ExportSection
from studio.core.reports.run_report import Figures, RunReport
from studio.core.run_outputs import RunOutputs
from studio.core.workspace import Workspace

MODEL_FILE = "model.onnx"
BASELINE_FILE = "baseline.onnx"
REPORT_FILE = "report.json"
RUN_FILES = (MODEL_FILE, BASELINE_FILE, REPORT_FILE, SPLITS_FILE, WEIGHTS_FILE, ADAPTERS_FILE,
             KV_FILE, *ADAPTER_FILES)
"""Every file a run leaves in its output folder."""


def refusals(recipe: Recipe, backend: type[Backend] | Backend) -> list[str]:
    """The recipe's settings that call for steps this backend cannot run."""
    return [reason for step in unmet(backend.provides) for reason in step.asks_for(recipe)]


BACKENDS: dict[str, type[TorchBackend] | type[OnnxBackend]] = {
    "torch": TorchBackend, "onnx": OnnxBackend}
"""Run backends by the name a loaded model's capabilities give."""


def backend_class(workspace: Workspace) -> type[TorchBackend] | type[OnnxBackend]:
    return BACKENDS[workspace.loaded.capabilities.backend]


def check_recipe_fits(workspace: Workspace, recipe: Recipe, source: str = "recipe") -> None:
    """Refuse, before any work, a recipe asking for what the model's backend cannot do."""
    needs = refusals(recipe, backend_class(workspace))
    refused = [reason for step in STEPS for reason in step.refuses(workspace, recipe)]
    if refused:
        raise StudioError(f"{source}: {'; '.join(refused)}")
    if needs:
        raise StudioError(
            f"{source}: {workspace.loaded.path.name} is an ONNX file and {'; '.join(needs)} "
            f"need(s) its torch model: ONNX weights cannot be trained here. {TORCH_HINT}, or "
            "remove these settings (train: {epochs: 0}) to prune and quantize the ONNX file "
            "as it is")


def _run_steps(context: RunContext, steps: list[Step]) -> Iterator[Event]:
    for step in steps:
        if not step.applies(context):
            continue
        context.token.check()
        report = yield from step.run(context)
        if report is not None:
            context.stages[step.name] = report


def run_pipeline(workspace: Workspace, recipe: Recipe, out_dir: Path, token: CancelToken,
                 source: str = "recipe", base_dir: Path | None = None,
                 trust: bool = False, trust_models: bool = False) -> Iterator[Event]:
    """The whole job on an open model and its plan (the recipe gives the settings); the
    model itself is never changed. The last event is a :class:`Result` holding the report.
    The outputs appear in ``out_dir`` together at the end, or not at all."""
    check_recipe_fits(workspace, recipe, source)
    with RunOutputs(out_dir, RUN_FILES, [workspace.loaded.path], REPORT_FILE) as outputs:
        backend = backend_class(workspace)(recipe, base_dir, trust)
        staging = outputs.staging
        context = RunContext(workspace, recipe, backend, staging, staging / MODEL_FILE, token,
                             source, base_dir=base_dir, trust_models=trust_models)
        yield from _run(context, outputs)


def _run(context: RunContext, outputs: RunOutputs) -> Iterator[Event]:
    started = time.perf_counter()
    workspace, backend, token, source = (context.workspace, context.backend, context.token,
                                         context.source)
    out_dir = context.out_dir
    steps = steps_for(backend.provides)
    yield from backend.open(context)
    data = context.task
    token.check()
    yield from _run_steps(context, [s for s in steps if s.phase is Phase.PREPARE])

    yield Log(f"Baseline: measuring {workspace.tree.model_name}")
    baseline_path = out_dir / BASELINE_FILE
    baseline = backend.write_baseline(context, baseline_path)
    yield Metric("baseline", data.metric, baseline.metric.value, 0)
    yield from _run_steps(context, [s for s in steps if s.phase is Phase.COMPRESS])
    if not context.model_path.is_file():
        raise StudioError(f"{source}: no step wrote the compressed model")
    compressed = backend.measure(context, context.model_path)
    yield Metric("compressed", data.metric, compressed.metric.value, 0)
    token.check()

    yield Log("Timing both models side by side in onnxruntime")
    _time(context, baseline_path, baseline, compressed)
    report = RunReport(
        recipe=source, model=workspace.tree.model_name, source_format=backend.name,
        data=data.summary(), device=backend.device, seed=backend.seed,
        baseline=baseline, compressed=compressed, stages=context.stages,
        notes=[*context.notes, *honesty_notes(baseline.to_json(), compressed.to_json(),
                                              context.sparse_layers, context.quantized,
                                              drop_advice_for(context))],
        elapsed_s=round(time.perf_counter() - started, 2))
    yield from _finish(report, context, outputs, baseline_path)


def _time(context: RunContext, baseline_path: Path, baseline: Figures, compressed: Figures
          ) -> None:
    feeds = context.backend.latency_feeds(context)
    timings = latency_ms({"baseline": baseline_path,
                          "compressed": context.model_path}, feeds,
                         context.settings(ExportSection).latency_repeats,
                         check=context.token.check)
    baseline.latency_ms = {f"batch_{b}": timings["baseline"][b] for b in feeds}
    compressed.latency_ms = {f"batch_{b}": timings["compressed"][b] for b in feeds}


def _finish(report: RunReport, context: RunContext, outputs: RunOutputs, baseline_path: Path
            ) -> Iterator[Event]:
    """Write the splits and, last, the report (so a report never names missing files), then
    move the run's files into the output folder."""
    staging = context.out_dir
    report.paths = {"model": str(outputs.final(context.model_path)),
                    "baseline": str(outputs.final(baseline_path)),
                    "splits": str(outputs.out_dir / SPLITS_FILE),
                    "report": str(outputs.out_dir / REPORT_FILE)}
    for written in context.backend.write_weights(context):
        report.paths[written.stem] = str(outputs.final(written))
    if (staging / KV_FILE).is_file():
        report.paths["kv_cache"] = str(outputs.out_dir / KV_FILE)
    if (staging / ADAPTER_FILES[0]).is_file():  # PEFT format: the folder holding its files
        report.paths["adapter"] = str(outputs.out_dir)
    splits = context.task.splits
    if splits is not None:
        write_text_atomic(staging / SPLITS_FILE, json.dumps(splits.to_json()) + "\n")
    data = report.to_json()
    write_text_atomic(staging / REPORT_FILE, json.dumps(data, indent=2) + "\n")
    outputs.commit()
    yield Artifact("onnx", report.paths["model"])
    yield Artifact("report", report.paths["report"])
    yield Result(data)
