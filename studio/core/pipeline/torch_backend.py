"""The torch backend: the model is an ``nn.Module``; it is trained and traced in torch, exported
to ONNX and measured as the exported file in onnxruntime."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from studio.core.data.metrics import agreement
from studio.core.data.sources import load_task
from studio.core.data.split import metric_for_output
from studio.core.engine.data_fit import check_torch_data
from studio.core.errors import StudioError
from studio.core.export.measure import (
    Feed,
    compare_outputs,
    inputs_for_batches,
    run_onnx,
    score_outputs,
    torch_outputs,
    zip_bytes,
)
from studio.core.export.onnx_export import export_onnx, onnx_file_bytes
from studio.core.export.torch_weights import write_compressed_weights
from studio.core.jobs import Event, Log
from studio.core.methods.pruning.measure import measure
from studio.core.models.checks import describe_non_finite, find_non_finite
from studio.core.models.generate import greedy_text
from studio.core.models.hf import load_tokenizer
from studio.core.pipeline.context import RunContext
from studio.core.pipeline.step import Need
from studio.core.plan.recipe import Recipe
from studio.core.plan.stages import DataSection, ExportSection, TrainSection
from studio.core.reports.run_report import Figures, MetricValue
from studio.core.train.loop import resolve_device

PARITY_SAMPLES = 256


class TorchBackend:
    name = "torch"
    provides = frozenset({Need.TORCH, Need.LABELS} | ({Need.GPU} if torch.cuda.is_available()
                                                      else set()))

    def __init__(self, recipe: Recipe, base_dir: Path | None, trust: bool) -> None:
        section = recipe.section(TrainSection)
        self.device = section.device
        self.seed: int | None = section.seed
        self._base_dir, self._trust = base_dir, trust
        self.reference: Tensor | None = None
        """The uncompressed model's outputs on the test split (computed once)."""
        self.tokenizer: Any = None
        """A causal LM's tokenizer (text data), for the greedy sample in the report."""

    def open(self, context: RunContext) -> Iterator[Event]:
        workspace = context.workspace
        original = workspace.loaded.module
        assert original is not None
        broken = find_non_finite(original)
        if broken:
            raise StudioError(f"{context.source}: {workspace.loaded.path} holds NaN or Inf "
                              f"weights in {describe_non_finite(broken)}; compressing it would "
                              "spread them. Fix or re-export the model (inspect still opens it)")
        if workspace.example is None:
            raise StudioError(f"{context.source}: no example input is known for this model; "
                              "add example_input: {shape: [...]} to the recipe")
        resolve_device(self.device)  # a missing GPU fails before any work
        torch.manual_seed(self.seed)
        data = load_task(context.settings(DataSection), self._base_dir, self._trust,
                         workspace.loaded.path)
        check_torch_data(original, data, workspace.example)
        self.reference = torch_outputs(original, data.test.tensors[0])
        data = metric_for_output(context.settings(DataSection), data, "output",
                                 ("N", *self.reference.shape[1:]), context.source)
        context.data = data
        section = context.settings(DataSection)
        if data.metric == "perplexity" and section.generate_tokens:
            self.tokenizer = load_tokenizer(workspace.loaded.path)
        yield Log(f"Data: {data.name}; {'labelled' if data.labelled else 'unlabelled'}, metric "
                  f"{data.metric} ({data.metric_reason}); {len(data.train)} to fine-tune on, "
                  f"{len(data.test)} to test")

    def write_baseline(self, context: RunContext, path: Path) -> Figures:
        original = context.workspace.loaded.module
        assert original is not None and context.workspace.example is not None
        export_onnx(original, context.workspace.example.make_tensor(), path,
                    opset=context.settings(ExportSection).opset)
        figures = self._figures(context, original, path)
        context.model = copy.deepcopy(original).cpu().eval()  # the steps' working copy
        return figures

    def measure(self, context: RunContext, path: Path) -> Figures:
        return self._figures(context, context.model, path)

    def _figures(self, context: RunContext, model: torch.nn.Module, path: Path) -> Figures:
        """The file's metric in onnxruntime, agreement with the uncompressed model, the
        module's size, and parity of the file with the module it was exported from."""
        assert context.workspace.example is not None
        test, metric = context.task.test, context.task.metric
        size = measure(model, context.workspace.example.make_tensor())
        inputs = test.tensors[0]
        outputs = run_onnx(path, inputs)
        checked = inputs[:PARITY_SAMPLES]
        return Figures(
            metric=MetricValue.of(metric, score_outputs(outputs, test, metric, self.reference)),
            agreement=None if self.reference is None else agreement(self.reference, outputs),
            params=size.params, nonzero_params=size.nonzero_params, macs=size.macs,
            onnx_bytes=onnx_file_bytes(path), zip_bytes=zip_bytes(path),
            parity=compare_outputs(torch_outputs(model, checked).numpy(),
                                   outputs[:len(checked)].astype(np.float32)),
            generation=self._generation(context, model))

    def _generation(self, context: RunContext, model: torch.nn.Module) -> dict[str, str] | None:
        """The model's greedy continuation of the data section's prompt (text data only)."""
        if self.tokenizer is None:
            return None
        section = context.settings(DataSection)
        return {"prompt": section.prompt, "text": greedy_text(
            model, self.tokenizer, section.prompt, section.generate_tokens)}

    def write_weights(self, context: RunContext) -> list[Path]:
        workspace = context.workspace
        assert workspace.loaded.module is not None
        return write_compressed_weights(context.model, workspace.loaded.module,
                                        context.out_dir, workspace.architecture,
                                        workspace.example)

    def latency_feeds(self, context: RunContext) -> dict[int, Feed]:
        batches = (1, context.settings(ExportSection).latency_batch)
        return dict(inputs_for_batches(context.task.test, batches))
