"""Prune the torch model by the plan: channels (with torch-pruning's dependency graph), heads
and FFN width, unstructured (one-shot or gradual AGP during recovery) and N:M; then re-fit the
output projections of cut transformer blocks, and the layers after cut channels, against the
uncompressed model."""

from __future__ import annotations

import dataclasses
from collections.abc import Generator
from typing import Any

from torch import nn

from studio.core.errors import StudioError
from studio.core.graph.tree import LayerTree
from studio.core.jobs import Event, Log
from studio.core.methods.pruning import RETRACE_NOTE, apply_plan_pruning, partition_plan
from studio.core.methods.pruning.reconstruct import reconstruct_pruned
from studio.core.methods.pruning.reconstruct_channels import reconstruct_channels
from studio.core.methods.pruning.schedule import GradualPruner, RigLPruner
from studio.core.pipeline.context import RunContext
from studio.core.pipeline.step import Need, StageReport, Step
from studio.core.pipeline.steps.layerwise_prune import LAYERWISE_IMPORTANCE, layerwise_targets
from studio.core.plan.plan import ResolvedSpec
from studio.core.plan.recipe import Recipe
from studio.core.plan.stages import PruneSection, TrainSection


def _without_unstructured(tree: LayerTree, resolved: list[ResolvedSpec],
                          names: set[str]) -> list[ResolvedSpec]:
    """The plan minus the unstructured (or N:M) layers that another method prunes: an AGP
    schedule during training, or the layer-wise step."""
    return [dataclasses.replace(spec, sparsity=0.0, granularity="unstructured")
            if node.name in names else spec
            for node, spec in zip(tree.nodes, resolved, strict=True)]


def _without_missing(model: nn.Module, tree: LayerTree, resolved: list[ResolvedSpec]
                     ) -> list[ResolvedSpec]:
    """The plan with the layers of dropped blocks (no longer in the model) excluded."""
    def present(name: str) -> bool:
        try:
            model.get_submodule(name)
        except AttributeError:
            return False
        return True

    return [spec if not node.prunable or present(node.name)
            else dataclasses.replace(spec, exclude=True)
            for node, spec in zip(tree.nodes, resolved, strict=True)]


def _refit_log(layers: dict[str, dict[str, float]], what: str, on: str) -> Log:
    """How far a least-squares re-fit brought the cut layers' outputs to the original's."""
    errors = list(layers.values())
    before = sum(e["before"] for e in errors) / len(errors)
    after = sum(e["after"] for e in errors) / len(errors)
    return Log(f"Reconstruction: re-fitted {len(errors)} {what} on {on}; mean relative error "
               f"{before:.3f} -> {after:.3f}")


class Prune(Step):
    name = "prune"
    settings = PruneSection
    needs = frozenset({Need.TORCH})

    def asks_for(self, recipe: Recipe) -> list[str]:
        importance = recipe.prune.importance if recipe.prune is not None else None
        return [f"prune.importance: {importance} (needs gradients)"] \
            if importance in ("taylor", "obert") else []

    def run(self, context: RunContext) -> Generator[Event, None, StageReport]:
        section, train = context.settings(PruneSection), context.settings(TrainSection)
        workspace, data, model = context.workspace, context.task, context.model
        tree = workspace.tree
        resolved = _without_missing(model, tree, workspace.plan.resolve(tree))
        importance = section.importance
        if importance in LAYERWISE_IMPORTANCE:
            resolved = _without_unstructured(
                tree, resolved, set(layerwise_targets(model, tree, resolved)))
            importance = "magnitude"  # for channels and layers outside the blocks
        partition = partition_plan(tree, resolved)
        gradual = (section.schedule in ("agp", "rigl") and partition.unstructured
                   and train.epochs > 0)
        if gradual:
            resolved = _without_unstructured(tree, resolved, set(partition.unstructured))
        if partition.is_empty:
            return {"notes": []}
        if importance == "taylor" and not data.labelled:
            raise StudioError("prune.importance: taylor scores weights by the gradient of the "
                              "task loss, which needs labels; this data has none, so use "
                              "magnitude or obert")
        transformer = (f"{len(partition.heads)} attentions by heads, {len(partition.ffn)} FFNs "
                       "by width, " if partition.heads or partition.ffn else "")
        yield Log(f"Pruning: {transformer}{len(partition.channels)} layers by channels, "
                  f"{len(partition.unstructured)} unstructured"
                  f"{' (gradual, AGP)' if gradual else ''}, {len(partition.nm)} N:M")
        context.token.check()
        assert workspace.example is not None
        result = apply_plan_pruning(model, tree, resolved, workspace.example.make_tensor(),
                                    data.calibration if importance in ("taylor", "fisher",
                                                                       "obert")
                                    else None, importance, section.global_unstructured)
        report: dict[str, Any] = result.report
        if section.reconstruct and (partition.heads or partition.ffn):
            context.token.check()
            rebuilt = reconstruct_pruned(model, workspace.loaded.module, partition.heads,
                                         partition.ffn, data.calibration.tensors[0],
                                         getattr(model, "pad_token_id", None),
                                         check=context.token.check)
            if rebuilt is not None:
                report["reconstruct"] = rebuilt
                yield _refit_log(rebuilt["layers"], "output projections",
                                 f"{rebuilt['tokens']} calibration tokens")
        groups = (report.get("structured") or {}).get("groups")
        if section.reconstruct and groups:
            context.token.check()
            refitted = reconstruct_channels(model, workspace.loaded.module, groups,
                                            data.calibration.tensors[0],
                                            leave=[*partition.unstructured, *partition.nm],
                                            check=context.token.check)
            if refitted is not None:
                report["reconstruct_channels"] = refitted
            if refitted is not None and refitted["layers"]:
                yield _refit_log(refitted["layers"], "layers after the cut channels",
                                 f"{refitted['samples']} calibration samples")
        context.after_step = result.masks.hook(model) if result.masks.masks else None
        if gradual:
            steps = train.epochs * -(-len(data.train) // train.batch_size)
            every = max(1, steps // (4 * section.agp_steps))
            if section.schedule == "rigl":
                schedule: dict[str, Any] = {"kind": "rigl", "ramp_steps": steps // 2,
                                            "regrow_until": steps * 3 // 4}
                context.after_step = RigLPruner(
                    model, partition.unstructured, ramp_steps=max(1, steps // 2),
                    regrow_until=max(1, steps * 3 // 4), every=every, base=result.masks,
                    report=schedule)
            else:
                schedule = {"kind": "agp", "ramp_steps": steps * 3 // 4}
                context.after_step = GradualPruner(
                    model, partition.unstructured, ramp_steps=max(1, steps * 3 // 4),
                    every=every, base=result.masks)
            report["unstructured"]["schedule"] = schedule
        context.sparse_layers = len(partition.unstructured) + len(partition.nm)
        for note in report.get("notes", []):
            if note != RETRACE_NOTE:  # the run's trees are rebuilt; the GUI's is the user's
                context.note(note)
        return report
