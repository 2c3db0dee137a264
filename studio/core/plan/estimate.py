"""Size and cost of a plan, estimated from the layer tree alone, before anything runs.

The figures are first-order and say what a dense runtime (onnxruntime on CPU) will see:
- unstructured and N:M sparsity lower the count of nonzero weights, not the dense bytes or MACs;
- structured channel pruning shrinks the layer's weights, bias and MACs by the kept fraction, and
  the layers that consume those channels (found by the trace through norms, activations and
  pooling) shrink with it; after functional ops such as a residual add the consumer is unknown
  and its saving is left out, so the estimate can only err on the cautious side;
- integer bits store ``bits / 8`` bytes per weight plus one fp32 scale per output channel.
"""

from __future__ import annotations

from dataclasses import dataclass

from studio.core.graph.tree import LayerNode, LayerTree
from studio.core.plan.plan import ResolvedSpec
from studio.core.plan.spec import BITS_PER_ELEMENT


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


def _after(node: LayerNode, spec: ResolvedSpec, in_keep: float = 1.0) -> Figures:
    """Figures of one node; ``in_keep`` is the fraction of its input channels that remain."""
    nonzero = node.params - node.zeros
    if not node.prunable or spec.exclude:
        # Unchanged, except that a norm over cut channels, or an excluded layer whose producer
        # lost channels, shrinks with its input.
        return Figures(round(node.params * in_keep), round(nonzero * in_keep),
                       round(node.nbytes * in_keep), round(node.macs * in_keep))
    sparsity = spec.effective_sparsity
    weight_bits = node.weight_bits or 32
    weight_bytes = node.weight_params * weight_bits // 8
    other_bytes = max(0, node.nbytes - weight_bytes)
    other_params = node.params - node.weight_params
    keep, weights = output_keep(node, spec), round(node.weight_params * in_keep)
    if keep < 1.0:
        weights = round(node.weight_params * keep * in_keep)
        nonzero_weights = weights
    else:
        nonzero_weights = min(weights - node.zeros, round(weights * (1.0 - sparsity)))
    bits = BITS_PER_ELEMENT[spec.weight_bits] if spec.weight_bits else weight_bits
    new_weight_bytes = weights * bits // 8
    if spec.weight_bits and spec.weight_bits.startswith("int"):
        new_weight_bytes += round(node.out_channels * keep) * 4
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


def estimate(tree: LayerTree, resolved: list[ResolvedSpec]) -> Estimate:
    """Whole-model figures before and after the plan (``resolved`` from ``Plan.resolve``)."""
    root = tree.root
    before = Figures(root.total_params, root.total_params - root.total_zeros,
                     root.total_nbytes, root.total_macs)
    params = nonzero = nbytes = macs = 0
    keeps = {node.id: output_keep(node, resolved[node.id]) for node in tree.nodes
             if node.prunable}
    for node in tree.nodes:
        in_keep = keeps.get(node.input_from, 1.0) if node.input_from is not None else 1.0
        figures = _after(node, resolved[node.id], in_keep)
        params += figures.params
        nonzero += figures.nonzero_params
        nbytes += figures.nbytes
        macs += figures.macs
    return Estimate(before, Figures(params, nonzero, nbytes, macs))
