"""Size and cost of a plan, estimated from the layer tree alone, before anything runs.

The figures are first-order and say what a dense runtime (onnxruntime on CPU) will see:
- unstructured and N:M sparsity lower the count of nonzero weights, not the dense bytes or MACs;
- structured channel pruning shrinks the layer's weights, bias and MACs by the kept fraction, and
  the layers that consume those channels (found by the trace through norms, activations and
  pooling) shrink with it; after functional ops such as a residual add the consumer is unknown
  and its saving is left out, so the estimate can only err on the cautious side;
- in transformers (see ``studio.core.graph.roles``) channels mean heads on an attention (its
  query/key/value, score MACs and output-projection inputs shrink by the kept heads) and hidden
  units on an FFN; layers whose outputs are the residual width are never cut (:func:`channel_kind`);
- integer bits store ``bits / 8`` bytes per weight plus one fp32 scale per output channel;
  int4/int2 Linear (MatMul) layers become onnxruntime ``MatMulNBits``, counted exactly as it
  stores them (:func:`nbits_bytes`: packed integers, one fp32 scale per group of
  ``group_size`` inputs, packed zero points unless symmetric).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from studio.core.graph.roles import ATTENTION, BLOCK, DECODER_BLOCK, FFN
from studio.core.graph.tree import LayerNode, LayerTree
from studio.core.plan.plan import ResolvedSpec
from studio.core.plan.spec import BITS_PER_ELEMENT

NBITS_OPS = frozenset({"Linear", "Conv1D", "MatMul", "Gemm"})
"""Layers whose int4/int2 weights become MatMulNBits."""


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

    def ratio(self, field: str) -> float:
        before = getattr(self.before, field)
        return getattr(self.after, field) / before if before else 1.0


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


def _after(node: LayerNode, spec: ResolvedSpec, keep: float = 1.0,
           in_keep: float = 1.0, symmetric: bool = False) -> Figures:
    """Figures of one node; ``keep`` and ``in_keep`` are the fractions of its output and input
    channels that remain."""
    nonzero = node.params - node.zeros
    if not node.prunable or spec.exclude:
        # Unchanged, except that a norm over cut channels, or an excluded layer whose producer
        # lost channels, shrinks with its input.
        return Figures(round(node.params * in_keep), round(nonzero * in_keep),
                       round(node.nbytes * in_keep), round(node.macs * in_keep))
    # Channel pruning removes whole channels; it never leaves zeros in the ones it keeps.
    sparsity = 0.0 if spec.granularity == "channels" else spec.effective_sparsity
    weight_bits = node.weight_bits or 32
    weight_bytes = node.weight_params * weight_bits // 8
    other_bytes = max(0, node.nbytes - weight_bytes)
    other_params = node.params - node.weight_params
    weights = round(node.weight_params * in_keep)
    if keep < 1.0:
        weights = round(node.weight_params * keep * in_keep)
        nonzero_weights = weights
    else:
        nonzero_weights = min(weights - node.zeros, round(weights * (1.0 - sparsity)))
    bits = BITS_PER_ELEMENT[spec.weight_bits] if spec.weight_bits else weight_bits
    new_weight_bytes = weights * bits // 8
    outputs = round(node.out_channels * keep)
    if spec.weight_bits in ("int4", "int2") and node.op_type in NBITS_OPS and outputs:
        new_weight_bytes = nbits_bytes(outputs, weights // outputs, bits, spec.group_size,
                                       symmetric)
    elif spec.weight_bits and spec.weight_bits.startswith("int"):
        new_weight_bytes += outputs * 4
    params = weights + round(other_params * keep)
    return Figures(
        params=params,
        nonzero_params=nonzero_weights + round(other_params * keep),
        nbytes=new_weight_bytes + round(other_bytes * keep),
        macs=round(node.macs * keep * in_keep),
    )


def output_keep(node: LayerNode, spec: ResolvedSpec) -> float:
    """Fraction of the node's output channels a channel-pruning plan keeps (1 otherwise)."""
    if not node.prunable or spec.exclude or spec.granularity != "channels" \
            or not node.out_channels:
        return 1.0
    return kept_channels(node.out_channels, spec.effective_sparsity) / node.out_channels


def _keeps(tree: LayerTree, resolved: list[ResolvedSpec]) -> dict[int, float]:
    """Node id -> fraction of its output channels kept, for nodes whose outputs shrink."""
    keeps: dict[int, float] = {}
    held = held_attentions(tree, resolved)
    for node in tree.nodes:
        if node.head_of is not None:
            attention = tree.nodes[node.head_of]
            keeps[node.id] = 1.0 if attention.id in held else head_keep(
                attention, resolved[attention.id])
        elif node.prunable:
            residual = channel_kind(tree, node) == "residual"
            keeps[node.id] = 1.0 if residual else output_keep(node, resolved[node.id])
    return keeps


def estimate(tree: LayerTree, resolved: list[ResolvedSpec], symmetric: bool = False
             ) -> Estimate:
    """Whole-model figures before and after the plan (``resolved`` from ``Plan.resolve``);
    ``symmetric``: block-wise integer weights stored without zero points."""
    root = tree.root
    before = Figures(root.total_params, root.total_params - root.total_zeros,
                     root.total_nbytes, root.total_macs)
    params = nonzero = nbytes = macs = 0
    keeps = _keeps(tree, resolved)
    for node in tree.nodes:
        in_keep = keeps.get(node.input_from, 1.0) if node.input_from is not None else 1.0
        keep = keeps.get(node.id, 1.0)
        if node.head_of is not None and not node.prunable:  # score MACs, packed in_proj
            in_keep, keep = in_keep * keep, 1.0
        figures = _after(node, resolved[node.id], keep, in_keep, symmetric)
        params += figures.params
        nonzero += figures.nonzero_params
        nbytes += figures.nbytes
        macs += figures.macs
    return Estimate(before, Figures(params, nonzero, nbytes, macs))
