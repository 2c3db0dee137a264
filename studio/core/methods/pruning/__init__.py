"""Pruning: turn a plan's per-layer sparsity into a smaller model.

:func:`apply_plan_pruning` is the one entry point the engine calls. It splits the plan by
granularity — ``channels`` (structured, shapes shrink), ``unstructured`` and ``N:M`` (masks,
shapes stay) — and applies structured pruning first, because it changes the shapes the masks
are drawn on. In transformers (layer roles, ``studio.core.graph.roles``) ``channels`` on an
attention removes heads and on an FFN its hidden units; the residual width is never cut.
Layer names never change, but shapes do: **rebuild the layer tree** (``build_torch_tree``)
after calling it. It works in place; callers pass a copy of the model.

Keep the returned masks applied while fine-tuning (``after_step=result.masks.hook(model)``),
or the optimizer moves the pruned weights off zero.

Modules: ``unstructured`` and ``nm`` (masks), ``schedule`` (gradual AGP pruning), ``structured``
(dependency-aware channel pruning), ``transformer`` (heads, FFN width, block dropping),
``importance`` (magnitude and Taylor scores), ``masks`` (:class:`MaskSet`), ``reconstruct``
(least-squares re-fit of a cut transformer block's output projection; the engine runs it).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from operator import attrgetter
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from studio.core.graph.tree import LayerTree
from studio.core.methods.pruning.fisher import (
    FISHER_SAMPLES,
    MaskSite,
    choose_removed,
    ffn_site,
    head_site,
    keep_scores,
    mask_fisher,
)
from studio.core.methods.pruning.importance import check_importance, weight_scores
from studio.core.methods.pruning.masks import MaskSet, layer_weight
from studio.core.methods.pruning.measure import measure
from studio.core.methods.pruning.nm import dense_tail, nm_masks
from studio.core.methods.pruning.obert import block_fisher, output_fisher_loss
from studio.core.methods.pruning.structured import (
    StructuredReport,
    dependency_groups,
    prune_channels,
)
from studio.core.methods.pruning.transformer import head_layouts, prune_ffn, prune_heads
from studio.core.methods.pruning.unstructured import (
    DEFAULT_LAYER_CAP,
    global_masks,
    layer_masks,
)
from studio.core.plan.channels import (
    DENSE_ZEROS_NOTE,
    RESIDUAL_REASON,
    PlanPartition,
    kept_channels,
    partition_plan,
)
from studio.core.plan.plan import ResolvedSpec
from studio.core.train.loop import LossFn, cross_entropy

RETRACE_NOTE = "Channels were removed: rebuild the layer tree (names are unchanged, shapes not)."



@dataclass
class PruningResult:
    masks: MaskSet
    """Re-apply after every optimizer step while fine-tuning (``masks.hook(model)``)."""
    report: dict[str, Any]
    """JSON-ready: what was cut, per layer, with params/MACs before and after."""
    structured: StructuredReport | None = None


def _achieved(model: nn.Module, name: str) -> float:
    weight = layer_weight(model, name).detach()
    return 1.0 - int(torch.count_nonzero(weight)) / weight.numel()


def apply_plan_pruning(model: nn.Module, tree: LayerTree, resolved: list[ResolvedSpec],
                       example_inputs: Any, data: TensorDataset | None = None,
                       importance: str = "magnitude", global_unstructured: bool = False,
                       loss_fn: LossFn = cross_entropy,
                       layer_cap: float = DEFAULT_LAYER_CAP) -> PruningResult:
    """Prune ``model`` in place as the plan says; ``tree`` must describe ``model`` as it is now.

    ``resolved`` comes from ``Plan.resolve(tree)``. ``importance``: ``magnitude`` (``l1``,
    ``l2`` for channels), ``taylor`` (needs ``data``: a few labelled batches, such as the
    task's calibration split) or ``obert`` (single weights by block-Fisher scores, the kept
    ones updated; the task loss's Fisher on labelled ``data``, the outputs' without labels).
    ``global_unstructured`` draws one magnitude threshold across all unstructured layers (the
    same total count removed), each capped at ``layer_cap``.
    """
    check_importance(importance, data)
    partition = partition_plan(tree, resolved)
    before = measure(model, example_inputs)
    units = "magnitude" if importance == "obert" else importance  # oBERT scores single weights
    transformer = _prune_transformer(model, example_inputs, partition, units, data, loss_fn)
    units = "magnitude" if units == "fisher" else units
    if importance == "fisher":  # a search over heads and FFN units; weights go by magnitude
        importance = "magnitude"
    structured = None
    if partition.channels:
        structured = prune_channels(model, example_inputs, partition.channels, units, data,
                                    protect=partition.excluded, loss_fn=loss_fn)
    mask_layers = [*partition.unstructured, *partition.nm]
    fisher = None
    if importance == "obert" and mask_layers:
        assert data is not None
        labelled = len(data.tensors) > 1  # else the Fisher of the outputs, no labels
        fisher = block_fisher(model, mask_layers, data,
                              loss_fn if labelled else output_fisher_loss())
        scores = fisher.scores
    else:
        scores = weight_scores(model, mask_layers, importance, data, loss_fn) \
            if mask_layers else {}
    masks = MaskSet()
    if partition.unstructured:
        chosen = {name: scores[name] for name in partition.unstructured}
        if global_unstructured:
            total = sum(score.numel() for score in chosen.values())
            overall = sum(chosen[name].numel() * s
                          for name, s in partition.unstructured.items()) / total
            masks = global_masks(chosen, overall, layer_cap)
        else:
            masks = layer_masks(chosen, partition.unstructured)
    if partition.nm:
        masks = masks.merged(nm_masks(scores, partition.nm))
    if fisher is not None:  # the kept weights make up for the removed ones
        fisher.update(model, masks)
    masks.apply(model)
    after = measure(model, example_inputs)
    notes = []
    if structured is not None or partition.heads or partition.ffn:
        notes.append(RETRACE_NOTE)
    if structured is not None and structured.skipped:
        notes.append(f"{len(structured.skipped)} channel group(s) were left whole; "
                     "see structured.skipped for why.")
    if mask_layers:
        notes.append(DENSE_ZEROS_NOTE)
    report = {
        "importance": importance,
        **({"obert": fisher.report} if fisher is not None else {}),
        "excluded": partition.excluded,
        "structured": structured.to_dict() if structured is not None else None,
        "transformer": transformer,
        "unstructured": {
            "mode": "global" if global_unstructured else "per-layer",
            "layers": {name: {"asked": s, "sparsity": _achieved(model, name)}
                       for name, s in partition.unstructured.items()},
        },
        "nm": {
            "layers": {name: {"pattern": f"{n}:{m}", "sparsity": _achieved(model, name),
                              "dense_tail": dense_tail(layer_weight(model, name).shape, m)}
                       for name, (n, m) in partition.nm.items()},
        },
        "before": asdict(before),
        "after": asdict(after),
        "notes": notes,
    }
    return PruningResult(masks, report, structured)


def _prune_transformer(model: nn.Module, example_inputs: Any, partition: PlanPartition,
                       importance: str, data: TensorDataset | None,
                       loss_fn: LossFn) -> dict[str, Any] | None:
    """Heads, then FFN width, as the partition says; the JSON-ready report (None: nothing)."""
    if not (partition.heads or partition.ffn or partition.left_whole):
        return None
    heads = ffn = None
    layouts = head_layouts(model, partition.heads)
    searched: dict[str, Any] | None = None
    given: dict[str, Tensor] = {}
    if importance == "fisher":
        assert data is not None
        given, searched = fisher_search(model, partition, layouts, data.tensors[0])
        importance = "magnitude"  # for any layer the search could not place masks on
    if partition.heads:
        heads = prune_heads(model, example_inputs, partition.heads, layouts, importance, data,
                            loss_fn, scores=given)
    if partition.ffn:
        ffn = prune_ffn(model, example_inputs, partition.ffn, importance, data, loss_fn,
                        scores=given)
    return {"heads": heads.to_dict() if heads is not None else None,
            "ffn": ffn.to_dict() if ffn is not None else None,
            "left_whole": partition.left_whole,
            **({"fisher": searched} if searched is not None else {})}


def fisher_search(model: nn.Module, partition: PlanPartition, layouts: dict[str, Any],
                  inputs: Tensor) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Kwon et al.'s mask search and rearrangement for the plan's heads and FFN widths: scores
    (per attention and per FFN first Linear) that make the cuts remove the chosen units, and
    the report (estimated distortion per layer, layers it could not place masks on)."""
    sites: dict[str, MaskSite] = {}
    for name in partition.heads:
        if name in layouts:
            heads = int(attrgetter(layouts[name].num_heads)(model.get_submodule(name)))
            sites[name] = head_site(model, name, layouts[name].output, heads)
    for name in partition.ffn:
        site = ffn_site(model, name)
        if site is not None:
            sites[name] = site
    unplaced = sorted((set(partition.heads) | set(partition.ffn)) - set(sites))
    fisher = mask_fisher(model, sites, inputs) if sites else {}
    given, layers = {}, {}
    for name, block in fisher.items():
        ratio = partition.heads.get(name, partition.ffn.get(name, 0.0))
        count = sites[name].count
        choice = choose_removed(block, count - kept_channels(count, ratio))
        given[name] = keep_scores(count, choice.removed)
        layers[name] = choice.to_dict()
    return given, {"samples": min(len(inputs), FISHER_SAMPLES), "layers": layers,
                   "magnitude_instead": unplaced}


__all__ = ["RESIDUAL_REASON", "MaskSet", "PlanPartition", "PruningResult", "StructuredReport",
           "apply_plan_pruning", "dependency_groups", "partition_plan", "prune_channels"]
