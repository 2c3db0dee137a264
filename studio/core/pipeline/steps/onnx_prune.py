"""Prune an ONNX graph's weight initializers (unstructured, by magnitude, per layer or global).
Channel and N:M pruning need the torch model's dependency graph: skipped with a note."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from studio.core.jobs import Event, Log
from studio.core.methods.pruning import partition_plan
from studio.core.methods.pruning.onnx_initializers import prune_initializers
from studio.core.pipeline.context import RunContext
from studio.core.pipeline.onnx_backend import TORCH_HINT, OnnxBackend
from studio.core.pipeline.step import Need, StageReport, Step
from studio.core.plan.ort_rules import resolved_by_name
from studio.core.plan.stages import PruneSection


def _layers(names: list[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:4])
    return shown + (f" and {len(names) - 4} more" if len(names) > 4 else "")


class OnnxPrune(Step):
    name = "prune"
    settings = PruneSection
    needs = frozenset({Need.ONNX})

    def run(self, context: RunContext) -> Generator[Event, None, StageReport]:
        backend = context.backend
        assert isinstance(backend, OnnxBackend) and backend.tree is not None
        resolved = resolved_by_name(backend.tree, context.workspace.plan)
        partition = partition_plan(backend.tree, list(resolved.values()))
        report: dict[str, Any] = {"layers": {}, "notes": []}
        if partition.unstructured:
            yield Log(f"Pruning: {len(partition.unstructured)} weight initializers, "
                      "unstructured by magnitude")
            report = prune_initializers(context.model, partition.unstructured,
                                        context.settings(PruneSection).global_unstructured,
                                        data_dir=backend.data_dir(context))
        structured = [*partition.channels, *partition.nm]
        report["structured_skipped"] = structured
        for note in report["notes"]:
            context.note(note)
        if structured:
            context.note(f"{_layers(structured)}: channel and N:M pruning need the torch model "
                         f"(to keep coupled layers consistent); skipped. {TORCH_HINT}.")
        context.sparse_layers = len(report["layers"])
        return report
