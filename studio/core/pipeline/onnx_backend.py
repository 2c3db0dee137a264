"""The ONNX backend: an ONNX file without its torch module, run in onnxruntime alone. Nothing
can be trained; the baseline is the repaired file, and unlabelled data is scored against the
user's file's own outputs.

A file with a fixed batch size is fed whole batches only, and calibrated, scored and timed at
that batch. Transformer exports with ``attention_mask`` and friends are fed from token ids
alone (:func:`feeder_for`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
from torch.utils.data import TensorDataset

from studio.core.data.sources import load_task
from studio.core.data.split import metric_for_output
from studio.core.data.task import first_rows, model_inputs
from studio.core.engine.data_fit import feeder_for_data
from studio.core.errors import InputError, StudioError
from studio.core.export.measure import (
    Feed,
    inputs_for_batches,
    output_figures,
    run_onnx_outputs,
    zip_bytes,
)
from studio.core.export.onnx_export import onnx_file_bytes, save_onnx
from studio.core.graph.onnx_tree import build_onnx_tree
from studio.core.graph.tree import LayerTree
from studio.core.jobs import Event, Log
from studio.core.models.onnx_feeds import Feeder, graph_outputs
from studio.core.models.onnx_file import fixed_batch_size
from studio.core.pipeline.context import RunContext
from studio.core.pipeline.step import Need
from studio.core.plan.recipe import Recipe
from studio.core.plan.stages import DataSection, ExportSection
from studio.core.reports.run_report import Figures, MetricValue

DEVICE = "cpu (onnxruntime)"
TORCH_HINT = ("Open the PyTorch model instead (a .pt/.pth state dict or .safetensors file with "
              "its architecture, or a .pt2 archive)")


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
"""Every output of a file by name."""


class OnnxBackend:
    name = "onnx"
    provides = frozenset({Need.ONNX, Need.LABELS})
    device = DEVICE
    seed: int | None = None

    def __init__(self, recipe: Recipe, base_dir: Path | None, trust: bool) -> None:
        self._base_dir, self._trust = base_dir, trust
        self.feeder: Feeder | None = None
        self.batch: int | None = None
        self.test = TensorDataset()
        self.calibration = TensorDataset()
        self.baseline_outputs: Outputs | None = None
        self.reference: Outputs | None = None
        """The user's file's outputs on the test split: what agreement is measured against."""
        self.tree: LayerTree | None = None
        """The prepared (repaired) graph's layer tree: what the plan is mapped onto."""
        self.made_from: Outputs | None = None
        """Outputs of the float graph the compressed file was quantized from (parity); None
        when it was not quantized."""

    @staticmethod
    def data_dir(context: RunContext) -> Path:
        """Where the file's external weights stay on disk, read when needed."""
        return context.workspace.loaded.path.parent

    @property
    def inputs(self) -> Feed:
        return model_inputs(self.test)

    def open(self, context: RunContext) -> Iterator[Event]:
        loaded = context.workspace.loaded
        if loaded.onnx_model is None:
            raise StudioError(f"{context.source}: {loaded.path} is not an ONNX model")
        model = onnx.ModelProto()
        model.CopyFrom(loaded.onnx_model)
        context.model = model
        data = load_task(context.settings(DataSection), self._base_dir, self._trust)
        self.feeder = feeder_for_data(model, loaded.path, data)
        self.batch = fixed_batch_size(model)
        self.test = _whole_batches(data.test, self.batch, "test")
        self.calibration = _whole_batches(data.calibration, self.batch, "calibration")
        if data.metric == "accuracy" and len(self.test.tensors) < 2:
            raise StudioError("accuracy needs labels; this data has none (use an agreement "
                              "metric)")
        name, shape = self._first_output(model, loaded.path)
        data = metric_for_output(context.settings(DataSection), data, name, shape,
                                 context.source)
        context.data = data
        yield Log(f"Data: {data.name}; {'labelled' if data.labelled else 'unlabelled'}, metric "
                  f"{data.metric} ({data.metric_reason}); {len(self.test)} to test, "
                  f"{len(self.calibration)} to calibrate")
        if self.feeder.describe():
            yield Log(f"Inputs: {self.feeder.describe()}")
        if self.batch:
            context.note(f"The file fixes its batch size at {self.batch}; timed and measured "
                         "at that batch only.")

    def _first_output(self, model: onnx.ModelProto, path: Path
                      ) -> tuple[str, tuple[int | str, ...]]:
        """The first output's name and shape: as the file declares it when every dim after the
        batch is known, else as the file gives it on the first test batch."""
        declared = graph_outputs(model)[0]
        if declared.dims is not None and all(isinstance(d, int) for d in declared.dims[1:]):
            return declared.name, declared.dims
        assert self.feeder is not None
        rows = model_inputs(first_rows(self.test, self.batch or 1))
        try:
            outputs = run_onnx_outputs(path, rows, self.batch or 1, feed=self.feeder)
        except Exception:  # onnxruntime's own types; the baseline says why it cannot run
            return declared.name, declared.dims or ("N", "unknown")
        return declared.name, np.shape(outputs[declared.name])

    def outputs(self, path: Path) -> Outputs:
        """Every output of the file on the test inputs, by name (per-token ones on real tokens
        only)."""
        assert self.feeder is not None
        inputs = self.inputs
        try:
            outputs = run_onnx_outputs(path, inputs, self.batch or 256, feed=self.feeder)
        except Exception as error:  # onnxruntime raises its own types for every fault
            first = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
            raise StudioError(f"onnxruntime cannot run {path.name}: {first}") from error
        main = np.asarray(self.feeder.main_rows(inputs))
        return {name: self.feeder.real_tokens(values.astype(np.float32), main)
                for name, values in outputs.items()}

    def write_baseline(self, context: RunContext, path: Path) -> Figures:
        save_onnx(context.model, path, self.data_dir(context))
        self.baseline_outputs = self.outputs(path)
        self.reference = self.baseline_outputs  # the same graph, unless a repair changed it
        if context.stages.get("repair", {}).get("steps"):  # the repair changed the graph
            try:
                self.reference = self.outputs(context.workspace.loaded.path)  # the user's file
            except StudioError as error:
                context.note(f"{error}; the repaired baseline is the reference instead.")
        self.tree = build_onnx_tree(context.model, context.workspace.tree.model_name,
                                    context.workspace.example, self.data_dir(context))
        return self._figures(context, path, self.baseline_outputs, self.reference, self.tree)

    def quantizing_from(self, float_path: Path, changed: bool) -> None:
        """Remember the float graph's outputs for parity (``changed``: it differs from the
        baseline's, whose outputs are known)."""
        self.made_from = self.outputs(float_path) if changed else self.baseline_outputs

    def measure(self, context: RunContext, path: Path) -> Figures:
        outputs = self.outputs(path)
        return self._figures(context, path, outputs,
                             outputs if self.made_from is None else self.made_from,
                             build_onnx_tree(context.model, "compressed",
                                             context.workspace.example,
                                             self.data_dir(context)))

    def _figures(self, context: RunContext, path: Path, outputs: Outputs, made_from: Outputs,
                 tree: LayerTree) -> Figures:
        """Metric, agreement and parity on the first output (per-output agreement too when
        the file has several), sizes from the tree."""
        assert self.reference is not None
        metric = context.task.metric
        labels = self.test.tensors[1] if metric == "accuracy" else None
        measured = output_figures(outputs, self.reference, made_from, metric, labels)
        root = tree.root
        return Figures(
            metric=MetricValue.from_json(measured["metric"]), agreement=measured["agreement"],
            outputs=measured.get("outputs"), params=root.total_params,
            nonzero_params=root.total_params - root.total_zeros, macs=root.total_macs,
            onnx_bytes=onnx_file_bytes(path), zip_bytes=zip_bytes(path),
            parity=measured["parity"])

    def write_weights(self, context: RunContext) -> list[Path]:
        """The ONNX file is the model itself: nothing else to write."""
        return []

    def latency_feeds(self, context: RunContext) -> dict[int, Feed]:
        assert self.feeder is not None
        batches = (self.batch,) if self.batch else (1, context.settings(ExportSection)
                                                    .latency_batch)
        return {size: self.feeder(array)
                for size, array in inputs_for_batches(self.test, batches).items()}
