"""Size and cost of a plan, estimated from the layer tree alone, before anything runs.

The figures say what the exported ONNX file and onnxruntime on CPU will hold, because the
estimate runs the engine's own rules rather than a model of them:
- which channels go: :func:`studio.core.plan.channels.partition_plan` sorts the plan as
  structured pruning does, and each group of coupled layers the tree carries
  (``LayerTree.channel_groups``, traced by Torch-Pruning when the model was opened) is cut or
  left whole by :func:`~studio.core.plan.channels.group_cut`, as the engine decides; the layers
  consuming a cut group's channels shrink with it. Without groups (ONNX models, no example
  input) each layer is taken alone and its consumers found by the trace;
- how weights are stored: :func:`studio.core.plan.ort_rules.plan_to_ort` gives each Conv/Linear
  the pass the engine will run (int4 convolutions stored as int8, layers kept float when static
  and dynamic int8 cannot mix); int4/int2 (and weight-only int8) Linear layers become
  onnxruntime ``MatMulNBits``, counted exactly as it stores them (:func:`nbits_bytes`: packed
  integers, one fp32 scale per group of ``group_size`` inputs, packed zero points unless
  symmetric);
- unstructured and N:M sparsity lower the count of nonzero weights, not the dense bytes or MACs.
``Estimate.notes`` says, in words, which asked-for savings will not pay off.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from studio.core.graph.tree import LayerNode, LayerTree
from studio.core.plan.channels import (
    DENSE_ZEROS_NOTE,
    PlanPartition,
    channel_kind,
    group_cut,
    head_keep,
    held_attentions,
    kept_channels,
    partition_plan,
)
from studio.core.plan.ort_rules import plan_to_ort
from studio.core.plan.plan import ResolvedSpec
from studio.core.plan.stages import QuantizeSection

NBITS_BLOCK = 32
"""Weights per MatMulNBits block (the engine's default ``block_size``)."""


def nbits_bytes(outputs: int, inputs: int, bits: int, group_size: int, symmetric: bool) -> int:
    """Exact bytes of one MatMulNBits weight: B uint8 [N, blocks, group x bits / 8], scales
    fp32 [N, blocks], zero points (asymmetric only) uint8 [N, ceil(blocks / (8 / bits))]."""
    blocks = -(-inputs // group_size)
    packed = outputs * blocks * (group_size * bits // 8)
    scales = outputs * blocks * 4
    zeros = 0 if symmetric else outputs * -(-blocks // (8 // bits))
    return packed + scales + zeros


@dataclass(frozen=True)
class Figures:
    params: int
    nonzero_params: int
    nbytes: int
    macs: int


@dataclass(frozen=True)
class Estimate:
    before: Figures
    after: Figures
    notes: tuple[str, ...] = field(default=())
    """What the plan asks for that will not pay off, in words (shown beside the figures)."""

    def ratio(self, field: str) -> float:
        before = getattr(self.before, field)
        return getattr(self.after, field) / before if before else 1.0


def stored_weight_bytes(decision: str | None, weights: int, out_channels: int, float_bits: int,
                        per_channel: bool = True, block_size: int = NBITS_BLOCK,
                        symmetric: bool = False) -> int:
    """Bytes the ONNX file spends on one layer's weight after the backend's ``decision``
    (:attr:`QuantPlan.decisions`): int8 with its scales and zero points (per output channel or
    per tensor), n-bit MatMulNBits blocks of ``block_size`` inputs (:func:`nbits_bytes`; an
    int4 embedding table is stored the same way, and a tied head shares it),
    fp16, or the weight as it is."""
    if decision is None or decision.startswith("float"):
        return weights * float_bits // 8
    if decision == "fp16":
        return weights * 2
    if "MatMulNBits" in decision or "GatherBlockQuantized" in decision:
        bits = int(decision[3])  # "int4 weight-only (MatMulNBits)"
        rows = max(1, out_channels)
        return nbits_bytes(rows, -(-weights // rows), bits, block_size, symmetric)
    scales = out_channels if per_channel else 1
    stored = weights + scales * 5  # int8 weights, one fp32 scale and one int8 zero point each
    if decision == "int8 static":
        stored += scales * 4  # the bias becomes int32 with its own fp32 scale
    return stored


def _folded_norm(tree: LayerTree, node: LayerNode) -> bool:
    """A batch norm right after a convolution: the ONNX export folds it into the conv, leaving
    one fp32 bias per channel where torch holds four tensors (bytes only: the parameter and
    MAC counts are the torch model's, as the run report measures them)."""
    return node.op_type.startswith("BatchNorm") and node.input_from is not None \
        and tree.nodes[node.input_from].op_type.startswith("Conv")


def _after(node: LayerNode, spec: ResolvedSpec, decision: str | None, quantize: QuantizeSection,
           keep: float = 1.0, in_keep: float = 1.0, folded: bool = False) -> Figures:
    """Figures of one node; ``keep`` and ``in_keep`` are the fractions of its output and input
    channels that remain, ``decision`` what the backend does to its weight (with the recipe's
    ``quantize`` settings), ``folded`` whether the export folds it into the conv before it."""
    nonzero = node.params - node.zeros
    if folded:
        return Figures(round(node.params * in_keep), round(nonzero * in_keep),
                       round(node.params // 2 * 4 * in_keep), round(node.macs * in_keep))
    if not node.prunable or spec.exclude:
        # Unchanged, except that a norm over cut channels, or an excluded layer whose producer
        # lost channels, shrinks with its input.
        return Figures(round(node.params * in_keep), round(nonzero * in_keep),
                       round(node.nbytes * in_keep), round(node.macs * in_keep))
    # Channel pruning removes whole channels; it never leaves zeros in the ones it keeps.
    sparsity = 0.0 if spec.granularity == "channels" else spec.effective_sparsity
    weight_bits = node.weight_bits or 32
    other_bytes = max(0, node.nbytes - node.weight_params * weight_bits // 8)
    other_params = node.params - node.weight_params
    weights = round(node.weight_params * keep * in_keep)
    if keep < 1.0:
        nonzero_weights = weights
    else:
        nonzero_weights = min(weights - node.zeros, round(weights * (1.0 - sparsity)))
    out_channels = round(node.out_channels * keep)
    weight_bytes = stored_weight_bytes(decision, weights, out_channels, weight_bits,
                                       quantize.per_channel, spec.group_size, quantize.symmetric)
    return Figures(
        params=weights + round(other_params * keep),
        nonzero_params=nonzero_weights + round(other_params * keep),
        nbytes=weight_bytes + round(other_bytes * keep),
        macs=round(node.macs * keep * in_keep),
    )


def _own_keep(node: LayerNode, sparsity: float | None) -> float:
    if sparsity is None or not node.out_channels:
        return 1.0
    return kept_channels(node.out_channels, sparsity) / node.out_channels


@dataclass
class _Channels:
    """Fractions of channels kept: of each node's outputs, and of each group follower's
    inputs (by name); what the groups left whole, in words."""

    keeps: dict[int, float] = field(default_factory=dict)
    follower_keeps: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _group_keeps(tree: LayerTree, partition: PlanPartition, channels: _Channels) -> None:
    """Cut the tree's dependency groups as the engine does (``group_cut``)."""
    assert tree.channel_groups is not None
    protected = set(partition.excluded)
    inputs: dict[str, list[tuple[int, int]]] = {}  # follower -> (kept, channels) per group
    for group in tree.channel_groups:
        ratio, reason = 0.0, None
        if any(name in partition.channels for name in group.layers):
            ratio, reason = group_cut(group, partition.channels, protected)
        if reason is not None:
            channels.notes.append(f"{', '.join(group.layers)} left whole: {reason}.")
        kept = kept_channels(group.channels, ratio) if ratio > 0.0 else group.channels
        for name in group.layers:
            if name in tree:
                channels.keeps[tree.get(name).id] = kept / group.channels
        for name in group.followers:
            inputs.setdefault(name, []).append((kept, group.channels))
    for name, parts in inputs.items():
        channels.follower_keeps[name] = sum(k for k, _ in parts) / sum(c for _, c in parts)


def _channel_keeps(tree: LayerTree, resolved: list[ResolvedSpec],
                   partition: PlanPartition) -> _Channels:
    channels = _Channels()
    held = held_attentions(tree, resolved)
    grouped = tree.channel_groups is not None
    for node in tree.nodes:
        if node.head_of is not None:
            attention = tree.nodes[node.head_of]
            channels.keeps[node.id] = 1.0 if attention.id in held else head_keep(
                attention, resolved[attention.id])
        elif node.prunable and channel_kind(tree, node) == "ffn":
            channels.keeps[node.id] = _own_keep(node, partition.ffn.get(node.name))
        elif node.prunable and not grouped:
            channels.keeps[node.id] = _own_keep(node, partition.channels.get(node.name))
    if grouped:
        _group_keeps(tree, partition, channels)
    elif partition.channels:
        channels.notes.append("The layers coupled by residual adds are unknown for this model "
                              "(no traced example input): channel savings may be smaller.")
    channels.notes.extend(f"{name} left whole: {reason}."
                          for name, reason in partition.left_whole.items())
    return channels


def estimate(tree: LayerTree, resolved: list[ResolvedSpec],
             quantize: QuantizeSection | None = None) -> Estimate:
    """Whole-model figures before and after the plan (``resolved`` from ``Plan.resolve``)
    under the recipe's ``quantize`` settings (per_channel, weight_only, symmetric, int8_path;
    the defaults when None)."""
    quantize = quantize or QuantizeSection()
    root = tree.root
    folded = {node.id for node in tree.nodes if _folded_norm(tree, node)}
    before = Figures(root.total_params, root.total_params - root.total_zeros,
                     root.total_nbytes - sum(tree.nodes[i].nbytes - tree.nodes[i].params // 2 * 4
                                             for i in folded),
                     root.total_macs)
    partition = partition_plan(tree, resolved)
    channels = _channel_keeps(tree, resolved, partition)
    quant = plan_to_ort(tree, {node.name: spec for node, spec in zip(tree.nodes, resolved,
                                                                      strict=True)},
                        quantize.weight_only, quantize.int8_path)
    params = nonzero = nbytes = macs = 0
    for node in tree.nodes:
        in_keep = channels.follower_keeps.get(node.name)
        if in_keep is None:
            in_keep = channels.keeps.get(node.input_from, 1.0) \
                if node.input_from is not None else 1.0
        keep = channels.keeps.get(node.id, 1.0)
        if node.head_of is not None and not node.prunable:  # score MACs, packed in_proj
            in_keep, keep = in_keep * keep, 1.0
        figures = _after(node, resolved[node.id], quant.decisions.get(node.name), quantize,
                         keep, in_keep, node.id in folded)
        params += figures.params
        nonzero += figures.nonzero_params
        nbytes += figures.nbytes
        macs += figures.macs
    notes = [*channels.notes, *quant.notes]
    if partition.unstructured or partition.nm:
        notes.append(DENSE_ZEROS_NOTE)
    return Estimate(before, Figures(params, nonzero, nbytes, macs), tuple(notes))
