"""What channel pruning will do to a plan: the one set of rules the engine and the estimate share.

:func:`partition_plan` sorts a resolved plan's prunable layers by what happens to them (channels,
heads, FFN width, masks); :func:`group_cut` decides, for one group of coupled layers, whether it
is cut and by how much. The engine's structured pruning and :func:`studio.core.plan.estimate.
estimate` both call them, so the number shown before a run is the cut the run makes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from studio.core.graph.groups import ChannelGroup
from studio.core.graph.roles import ATTENTION, BLOCK, DECODER_BLOCK, FFN
from studio.core.graph.tree import LayerNode, LayerTree
from studio.core.plan.plan import ResolvedSpec
from studio.core.plan.spec import parse_nm

DENSE_ZEROS_NOTE = (
    "Unstructured and N:M zeros are stored densely: they make neither the ONNX file smaller nor "
    "onnxruntime on CPU faster. They pay off when the file is compressed, and N:M 2:4 on GPUs "
    "with sparse tensor cores.")
RESIDUAL_REASON = ("its outputs are the transformer's residual width, which is not cut; heads "
                   "and FFN width are")


def kept_channels(out_channels: int, sparsity: float) -> int:
    """Channels left after removing ``sparsity`` of them; at least one always stays."""
    return max(1, out_channels - int(out_channels * sparsity))


ChannelKind = Literal["channels", "heads", "ffn", "residual"]


def channel_kind(tree: LayerTree, node: LayerNode) -> ChannelKind:
    """What channel pruning of the prunable ``node`` means.

    ``heads``: it is split by an attention's heads (query/key/value): the attention's own
    setting removes whole heads. ``ffn``: the first Linear of an FFN, whose hidden units are cut.
    ``residual``: any other Linear inside an attention or encoder block: its outputs are the
    model's residual width, which is never cut. ``channels``: everything else (dependency-aware
    channel pruning).
    """
    if node.head_of is not None:
        return "heads"
    if node.role == FFN:
        return "ffn"
    if any(a.role in (ATTENTION, BLOCK, DECODER_BLOCK) for a in tree.ancestors(node)):
        return "residual"
    return "channels"


def wants_channels(spec: ResolvedSpec) -> bool:
    """The spec asks to remove channels (or heads): channels granularity, sparsity > 0."""
    return spec.granularity == "channels" and spec.effective_sparsity > 0.0


def head_keep(attention: LayerNode, spec: ResolvedSpec) -> float:
    """Fraction of an attention node's heads its (resolved) spec keeps."""
    if not attention.heads or not wants_channels(spec):
        return 1.0
    return kept_channels(attention.heads, spec.effective_sparsity) / attention.heads


def held_attentions(tree: LayerTree, resolved: list[ResolvedSpec]) -> set[int]:
    """Attentions that keep all their heads because a part they would cut is excluded."""
    return {node.head_of for node in tree.nodes
            if node.head_of is not None and resolved[node.id].exclude}


@dataclass(frozen=True)
class PlanPartition:
    """The plan's prunable layers sorted by what will happen to them."""

    channels: dict[str, float] = field(default_factory=dict)
    heads: dict[str, float] = field(default_factory=dict)
    """Attention -> fraction of its heads to remove."""
    ffn: dict[str, float] = field(default_factory=dict)
    """First Linear of an FFN -> fraction of its hidden units to remove."""
    unstructured: dict[str, float] = field(default_factory=dict)
    nm: dict[str, tuple[int, int]] = field(default_factory=dict)
    excluded: list[str] = field(default_factory=list)
    left_whole: dict[str, str] = field(default_factory=dict)
    """Layers asked for channels that channel pruning does not cut, with the reason."""

    @property
    def is_empty(self) -> bool:
        return not (self.channels or self.heads or self.ffn or self.unstructured or self.nm)


def partition_plan(tree: LayerTree, resolved: list[ResolvedSpec]) -> PlanPartition:
    """Split the resolved plan by granularity; layers with nothing to remove are left out."""
    partition = PlanPartition()
    held = held_attentions(tree, resolved)
    for node in tree.nodes:
        spec = resolved[node.id]
        if node.heads and wants_channels(spec):
            if node.id in held:
                partition.left_whole[node.name] = "a layer of this attention is excluded"
            else:
                partition.heads[node.name] = spec.effective_sparsity
        if not node.prunable:
            continue
        if spec.exclude:
            partition.excluded.append(node.name)
            continue
        sparsity = spec.effective_sparsity
        if sparsity <= 0.0:
            continue
        nm = parse_nm(spec.granularity)
        if nm is not None:
            partition.nm[node.name] = nm
        elif spec.granularity == "channels":
            _sort_channels(tree, node, sparsity, resolved, partition)
        else:
            partition.unstructured[node.name] = sparsity
    return partition


def _sort_channels(tree: LayerTree, node: LayerNode, sparsity: float,
                   resolved: list[ResolvedSpec], partition: PlanPartition) -> None:
    kind = channel_kind(tree, node)
    if kind == "channels":
        partition.channels[node.name] = sparsity
    elif kind == "ffn":
        partition.ffn[node.name] = sparsity
    elif kind == "residual":
        partition.left_whole[node.name] = RESIDUAL_REASON
    elif node.head_of is not None and not wants_channels(resolved[node.head_of]):
        attention = tree.nodes[node.head_of].name
        partition.left_whole[node.name] = (f"split by the heads of {attention!r}: set channels "
                                           "on that attention to remove heads")


def skip_reason(info: ChannelGroup, ratios: Mapping[str, float],
                 protected: set[str]) -> str | None:
    if info.feeds_output:
        return "feeds the model output: its channels are the model's outputs"
    kept = sorted(protected.intersection(info.layers))
    if kept:
        return f"coupled with excluded layer(s) {', '.join(kept)}"
    if info.through_attention:
        return ("runs through attention's model width; use head or FFN pruning "
                "(studio.core.methods.pruning.transformer)")
    missing = [name for name in info.layers if ratios.get(name, 0.0) <= 0.0]
    if missing:
        return (f"coupled with {', '.join(missing)}, not set to channel pruning; give every "
                "coupled layer a channels ratio to cut them together")
    return None


def group_cut(info: ChannelGroup, asked: Mapping[str, float], protected: set[str]
              ) -> tuple[float, str | None]:
    """(fraction of the group's channels removed, None) when the group is cut, else
    (0, the reason it is left whole). ``asked``: layer -> channels ratio
    (:attr:`PlanPartition.channels`); ``protected``: excluded layers."""
    reason = skip_reason(info, asked, protected)
    ratio = min(asked.get(name, 0.0) for name in info.layers) if info.layers else 0.0
    if reason is None and info.channels - kept_channels(info.channels, ratio) <= 0:
        reason = f"{ratio:.0%} of {info.channels} channels rounds to none"
    return (0.0, reason) if reason is not None else (ratio, None)
