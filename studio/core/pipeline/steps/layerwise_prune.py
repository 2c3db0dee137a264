"""Prune the Linear layers of a transformer's blocks with SparseGPT or Wanda, block by block
from the calibration split (``prune.importance``); the prune step has cut channels first
and left these layers' unstructured and N:M sparsity to this one."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from torch import nn

from studio.core.graph.tree import LayerTree
from studio.core.jobs import Event, Log
from studio.core.methods.layerwise.apply import PruneTarget, prune_layerwise
from studio.core.methods.layerwise.blocks import linear_names
from studio.core.methods.pruning import partition_plan
from studio.core.pipeline.context import RunContext
from studio.core.pipeline.step import Need, StageReport, Step
from studio.core.plan.plan import ResolvedSpec
from studio.core.plan.recipe import Recipe
from studio.core.plan.stages import PruneSection

LAYERWISE_IMPORTANCE = ("wanda", "sparsegpt")


def layerwise_targets(model: nn.Module, tree: LayerTree, resolved: list[ResolvedSpec]
                      ) -> dict[str, PruneTarget]:
    """The plan's unstructured and N:M layers that are Linear layers of the model's blocks."""
    partition = partition_plan(tree, resolved)
    inside = set(linear_names(model))
    targets = {name: PruneTarget(sparsity) for name, sparsity in partition.unstructured.items()
               if name in inside}
    targets.update({name: PruneTarget(1.0 - n / m, (n, m))
                    for name, (n, m) in partition.nm.items() if name in inside})
    return targets


class LayerwisePrune(Step):
    name = "layerwise_prune"
    settings = PruneSection
    needs = frozenset({Need.TORCH})

    def asks_for(self, recipe: Recipe) -> list[str]:
        importance = recipe.prune.importance if recipe.prune is not None else None
        return [f"prune.importance: {importance}"] if importance in LAYERWISE_IMPORTANCE else []

    def applies(self, context: RunContext) -> bool:
        return context.settings(PruneSection).importance in LAYERWISE_IMPORTANCE

    def run(self, context: RunContext) -> Generator[Event, None, StageReport]:
        method = context.settings(PruneSection).importance
        workspace, model = context.workspace, context.model
        targets = layerwise_targets(model, workspace.tree, workspace.plan.resolve(workspace.tree))
        if not targets:
            return None
        tokens = context.task.calibration.tensors[0]
        yield Log(f"Pruning {len(targets)} Linear layers with {method}, block by block, on "
                  f"{len(tokens)} calibration samples")
        result = prune_layerwise(model, tokens, targets, method,  # type: ignore[arg-type]
                                 check=context.token.check)
        previous = context.after_step

        def after_step(step: int) -> None:  # keep both steps' zeros while fine-tuning
            if previous is not None:
                previous(step)
            result.masks.apply(model)

        context.after_step = after_step
        context.sparse_layers += len(targets)
        report: dict[str, Any] = {
            "method": method, "samples": len(tokens),
            "sparsity": {name: round(value, 4) for name, value in result.masks.sparsity().items()},
            "nm": {name: f"{t.nm[0]}:{t.nm[1]}" for name, t in targets.items() if t.nm}}
        if result.errors:
            errors = list(result.errors.values())
            report["output_error"] = {name: round(e, 5) for name, e in result.errors.items()}
            context.note(f"SparseGPT pruned {len(errors)} layers; their outputs on the "
                         f"calibration split moved by {sum(errors) / len(errors):.3f} of their "
                         "size on average (relative error after the weight update).")
        return report
