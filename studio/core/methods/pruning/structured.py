"""Structured pruning: remove whole output channels, so tensors, files and MACs really shrink.

Layers joined by a residual add, a concatenation or a shared batch norm must lose the same
channels, or the model no longer runs. Torch-Pruning's dependency graph finds these groups by
tracing the model once; we choose how many channels each group loses from the plan and which ones
by importance, and let the library cut every tensor the group touches (convs, batch norms, the
inputs of the layers that consume the channels).

Rules, so nothing surprising happens:
- a group is cut only when every layer in it asks for channel pruning; it loses the smallest
  fraction asked (a coupled layer left out of the plan, or excluded, keeps the whole group whole);
- a group that feeds the model's output is never cut (the classifier keeps all its classes);
- a group that runs through attention's model width is skipped (use head or FFN pruning);
- an excluded layer keeps its outputs, but its inputs shrink when the layer feeding it is cut.

Names do not change but shapes do: rebuild the layer tree after pruning.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch_pruning as tp
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from studio.core.errors import StudioError
from studio.core.graph.groups import ChannelGroup
from studio.core.methods.pruning.attention import HeadPrunedAttention
from studio.core.methods.pruning.importance import (
    accumulate_gradients,
    check_importance,
    clear_gradients,
)
from studio.core.methods.pruning.measure import NO_SIZE, Size, measure, output_shapes
from studio.core.plan.channels import group_cut, kept_channels
from studio.core.train.loop import LossFn, cross_entropy

ROOT_TYPES = (tp.ops.TORCH_CONV, tp.ops.TORCH_LINEAR)
"""Layers whose output channels start a group; batch norms and the like follow their conv."""
_PASS_THROUGH = {tp.ops.OPTYPE.ELEMENTWISE, tp.ops.OPTYPE.RESHAPE, tp.ops.OPTYPE.CONCAT,
                 tp.ops.OPTYPE.SPLIT, tp.ops.OPTYPE.UNBIND, tp.ops.OPTYPE.EXPAND,
                 tp.ops.OPTYPE.SLICE, tp.ops.OPTYPE.OUTPUT}
_ATTENTION = (nn.MultiheadAttention, HeadPrunedAttention)


class _OpaqueAttentionPruner(tp.pruner.function.BasePruningFunc):
    """Lets the graph see a :class:`HeadPrunedAttention` as one node, as it sees
    ``nn.MultiheadAttention``; groups through it are skipped, so it never prunes."""

    TARGET_MODULES = HeadPrunedAttention

    def prune_out_channels(self, layer: nn.Module, idxs: list[int]) -> nn.Module:
        raise NotImplementedError("the model width of a head-pruned attention is not cut")

    prune_in_channels = prune_out_channels

    def get_out_channels(self, layer: nn.Module) -> int:
        return layer.embed_dim

    get_in_channels = get_out_channels


@dataclass
class StructuredReport:
    """What structured pruning did; ``to_dict`` is JSON-ready."""

    groups: list[dict[str, Any]] = field(default_factory=list)
    """Each cut group: layers, followers, ratio, channels before/after, removed indices (the
    root's, and each layer's own with its channel count)."""
    skipped: list[dict[str, Any]] = field(default_factory=list)
    """Layers that asked for channel pruning and were left whole, with the reason."""
    channels: dict[str, list[int]] = field(default_factory=dict)
    """Layer -> [output channels before, after] for every layer that lost channels."""
    before: Size = NO_SIZE
    after: Size = NO_SIZE

    @property
    def params_ratio(self) -> float:
        return self.after.params / self.before.params if self.before.params else 1.0

    @property
    def macs_ratio(self) -> float:
        return self.after.macs / self.before.macs if self.before.macs else 1.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "groups": self.groups, "skipped": self.skipped, "channels": self.channels,
            "before": asdict(self.before), "after": asdict(self.after),
            "params_ratio": self.params_ratio, "macs_ratio": self.macs_ratio,
        }


def build_graph(model: nn.Module, example_inputs: Any) -> tp.DependencyGraph:
    """Torch-Pruning's dependency graph of ``model``, leaving its train/eval modes as they were."""
    modes = {module: module.training for module in model.modules()}
    try:
        with torch.enable_grad():
            return tp.DependencyGraph().build_dependency(
                model, example_inputs=example_inputs, verbose=False,
                customized_pruners={HeadPrunedAttention: _OpaqueAttentionPruner()})
    finally:
        for module, mode in modes.items():
            module.train(mode)


def _output_modules(graph: tp.DependencyGraph) -> set[nn.Module]:
    """Modules whose output channels reach the model's output through shape-keeping ops only."""
    found: set[nn.Module] = set()
    stack = [node for node in graph.module2node.values() if not node.outputs]
    seen: set[int] = set()
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if node.type in _PASS_THROUGH:
            stack.extend(node.inputs)
        elif isinstance(node.module, nn.Module):
            found.add(node.module)
    return found


def _describe(group: tp.Group, graph: tp.DependencyGraph, names: Mapping[nn.Module, str],
              outputs: set[nn.Module]) -> ChannelGroup:
    layers: list[str] = []
    followers: list[str] = []
    feeds_output = through_attention = False
    for dep, _ in group:
        module = dep.target.module
        if not isinstance(module, nn.Module) or module not in names:
            continue  # functional ops and unwrapped parameters have no layer name
        name = names[module]
        out = graph.is_out_channel_pruning_fn(dep.handler)
        if out and isinstance(module, ROOT_TYPES):
            if name not in layers:
                layers.append(name)
        elif name not in followers:
            followers.append(name)
        feeds_output |= out and module in outputs
        through_attention |= isinstance(module, _ATTENTION)
    root = group[0].dep.target.module
    return ChannelGroup(layers, [f for f in followers if f not in layers],
                        int(graph.get_out_channels(root)), feeds_output, through_attention)


def _groups(model: nn.Module, graph: tp.DependencyGraph) -> list[tuple[tp.Group, ChannelGroup]]:
    names = {module: name for name, module in model.named_modules()}
    outputs = _output_modules(graph)
    return [(group, _describe(group, graph, names, outputs))
            for group in graph.get_all_groups(root_module_types=ROOT_TYPES)]


def channel_groups(model: nn.Module, example_inputs: Any) -> list[ChannelGroup]:
    """Every group of coupled output channels in ``model``, traced on ``example_inputs``."""
    return [info for _, info in _groups(model, build_graph(model, example_inputs))]


def dependency_groups(model: nn.Module, example_inputs: Any) -> dict[str, list[str]]:
    """Layer name -> the layers whose output channels must be cut with it (itself included)."""
    return {name: list(info.layers) for info in channel_groups(model, example_inputs)
            for name in info.layers}


@dataclass(frozen=True)
class RankedGroup:
    """A group of coupled channels with each channel's importance (the group's L1 norm, as
    once-for-all sorts channels) and the named modules whose outputs carry the channels."""

    info: ChannelGroup
    scores: Tensor | None
    """One score per channel; None when the group has no weights to rank."""
    carriers: list[str]
    """Convs, linears and norms whose output channels are the group's (cut with it)."""


def ranked_groups(model: nn.Module, example_inputs: Any) -> list[RankedGroup]:
    """Every group of coupled output channels in ``model`` with its channels' L1 importance,
    so a caller can keep the most important first (an elastic-width supernet)."""
    graph = build_graph(model, example_inputs)
    names = {module: name for name, module in model.named_modules()}
    scorer = _importance("l1")
    found = []
    for group, info in _groups(model, graph):
        carriers: list[str] = []
        for dep, _ in group:
            module = dep.target.module
            if (isinstance(module, nn.Module) and module in names
                    and graph.is_out_channel_pruning_fn(dep.handler)
                    and names[module] not in carriers):
                carriers.append(names[module])
        with torch.no_grad():
            scores = scorer(group)
        found.append(RankedGroup(info, None if scores is None else scores.detach().cpu(),
                                 carriers))
    return found


def _importance(kind: str) -> tp.importance.Importance:
    if kind == "taylor":
        return tp.importance.GroupTaylorImportance(normalizer=None)
    return tp.importance.GroupMagnitudeImportance(p=1 if kind == "l1" else 2, normalizer=None)


class _GivenScores(tp.importance.Importance):
    """Scores given per layer (by the name of a group's first layer, one per channel) for the
    groups they name; ``fallback`` ranks the others."""

    def __init__(self, model: nn.Module, scores: Mapping[str, Tensor],
                 fallback: tp.importance.Importance) -> None:
        modules = dict(model.named_modules())
        self.by_module = {id(modules[name]): value for name, value in scores.items()}
        self.fallback = fallback

    def __call__(self, group: Any) -> Tensor | None:
        given = self.by_module.get(id(group[0].dep.target.module))
        return given if given is not None else self.fallback(group)


@dataclass(frozen=True)
class _Cut:
    root: nn.Module
    handler: Any
    indices: list[int]
    info: ChannelGroup
    ratio: float


def _choose_cuts(model: nn.Module, graph: tp.DependencyGraph, asked: Mapping[str, float],
                 protected: set[str], scorer: tp.importance.Importance,
                 report: StructuredReport) -> list[_Cut]:
    """Decide every group's cut on the unpruned model; record the groups left whole."""
    cuts = []
    reached: set[str] = set()
    for group, info in _groups(model, graph):
        reached.update(info.layers)
        if not any(name in asked for name in info.layers):
            continue
        ratio, reason = group_cut(info, asked, protected)
        remove = info.channels - kept_channels(info.channels, ratio)
        scores = scorer(group) if reason is None else None
        if reason is None and scores is None:
            reason = "no weights to rank"
        if reason is not None:
            report.skipped.append({"layers": info.layers, "reason": reason})
            continue
        order = torch.argsort(scores.cpu(), stable=True)[:remove]
        root = group[0].dep
        cuts.append(_Cut(root.target.module, root.handler, sorted(order.tolist()), info, ratio))
    for name in sorted(set(asked) - reached):
        report.skipped.append({"layers": [name], "reason": "not a Conv or Linear layer that "
                               "the example input reaches"})
    return cuts


def _removed_by_layer(group: tp.Group, graph: tp.DependencyGraph,
                      names: Mapping[nn.Module, str]) -> dict[str, tuple[int, list[int]]]:
    """Each cut layer's own (output channels before, removed indices): a layer joined to the
    root through a concatenation has the root's indices shifted into its own range."""
    own: dict[str, tuple[int, list[int]]] = {}
    for dep, indices in group:
        module = dep.target.module
        if (isinstance(module, ROOT_TYPES) and module in names
                and graph.is_out_channel_pruning_fn(dep.handler)):
            own[names[module]] = (int(graph.get_out_channels(module)),
                                  sorted(int(i) for i in indices))
    return own


def _apply_cuts(graph: tp.DependencyGraph, cuts: list[_Cut], report: StructuredReport,
                names: Mapping[nn.Module, str]) -> None:
    for cut in cuts:
        group = graph.get_pruning_group(cut.root, cut.handler, cut.indices)
        if not graph.check_pruning_group(group):
            report.skipped.append({"layers": cut.info.layers,
                                   "reason": "would leave a layer without channels"})
            continue
        own = _removed_by_layer(group, graph, names)
        group.prune()
        after = cut.info.channels - len(cut.indices)
        report.groups.append({
            "layers": cut.info.layers, "followers": cut.info.followers, "ratio": cut.ratio,
            "channels_before": cut.info.channels, "channels_after": after,
            "removed_channels": cut.indices,
            "removed_by_layer": {name: removed for name, (_, removed) in own.items()},
            "channels_by_layer": {name: before for name, (before, _) in own.items()}})
        for name in cut.info.layers:
            before, removed = own.get(name, (cut.info.channels, cut.indices))
            report.channels[name] = [before, before - len(removed)]


def prune_channels(model: nn.Module, example_inputs: Any, ratios: Mapping[str, float],
                   importance: str = "magnitude", data: TensorDataset | None = None,
                   protect: Iterable[str] = (), loss_fn: LossFn = cross_entropy,
                   n_batches: int = 4, scores: Mapping[str, Tensor] | None = None
                   ) -> StructuredReport:
    """Remove ``ratios[name]`` of the output channels of each named Conv/Linear, in place.

    ``importance``: ``magnitude``/``l2`` (group L2 norm), ``l1``, or ``taylor`` (needs ``data``,
    labelled batches scored with ``loss_fn``; gradients summed over ``n_batches``). ``protect``
    names layers never to cut (the plan's excluded ones); layers feeding the output are
    protected without being named. Every channel is ranked before any is cut. Should a cut
    leave a model that does not run (a case the graph missed), :class:`StudioError` is raised
    and the model is left cut: callers work on a copy.
    """
    check_importance(importance, data)
    unknown = [name for name in ratios if name not in dict(model.named_modules())]
    if unknown:
        raise ValueError(f"no layer named {', '.join(map(repr, unknown))} in the model")
    report = StructuredReport(before=measure(model, example_inputs))
    shapes = output_shapes(model, example_inputs)
    graph = build_graph(model, example_inputs)
    asked = {name: ratio for name, ratio in ratios.items() if ratio > 0.0}
    if importance == "taylor":
        assert data is not None
        accumulate_gradients(model, data, loss_fn, n_batches)
    try:
        scorer = _importance(importance)
        if scores:
            scorer = _GivenScores(model, scores, scorer)
        cuts = _choose_cuts(model, graph, asked, set(protect), scorer, report)
        _apply_cuts(graph, cuts, report,
                    {module: name for name, module in model.named_modules()})
    finally:
        if importance == "taylor":
            clear_gradients(model)
    _check_runs(model, example_inputs, shapes)
    report.after = measure(model, example_inputs)
    return report


def _check_runs(model: nn.Module, example_inputs: Any, shapes: list[tuple[int, ...]]) -> None:
    try:
        new_shapes = output_shapes(model, example_inputs)
    except Exception as error:  # a cut the graph did not foresee: say so plainly
        raise StudioError(f"structured pruning left a model that does not run: "
                          f"{type(error).__name__}: {error}") from error
    if new_shapes != shapes:
        raise StudioError(f"structured pruning changed the model's output shapes from {shapes} "
                          f"to {new_shapes}")
