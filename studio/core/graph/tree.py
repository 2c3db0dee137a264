"""Pure-data layer tree shared by the GUI, the CLI and the engine.

Nodes live in one flat list (parents before children), addressed by their integer id, so views
can refer to them cheaply and a 10k-module model stays fast to walk. Each node carries its own
figures; ``total_*`` fields hold the figures of the whole subtree and are filled by
:meth:`LayerTree.finalize`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from studio.core.graph.groups import ChannelGroup


@dataclass(eq=False)
class LayerNode:
    """One module (torch) or name scope / node (ONNX)."""

    id: int
    name: str
    """Full name as the framework knows it: dotted for torch, the node name for ONNX; "" is root."""
    label: str
    """Short name shown in the tree."""
    op_type: str
    parent: int | None
    row: int
    """Position among the parent's children."""
    children: list[int] = field(default_factory=list)
    output_shape: tuple[int | str, ...] | None = None
    params: int = 0
    """Parameters owned directly by this node (shared ones counted once, at their first owner)."""
    zeros: int = 0
    nbytes: int = 0
    macs: int = 0
    weight_bits: int | None = None
    """Bits per element of the main weight (32 for fp32, 8 for int8); None if it has none."""
    weight_params: int = 0
    """Elements of the prunable weight (conv/linear kernels); 0 where nothing can be pruned."""
    out_channels: int = 0
    input_from: int | None = None
    """Id of the weighted layer whose output channels this leaf consumes (traced through
    norms, activations and pooling; unknown after functional ops such as a residual add)."""
    role: str | None = None
    """What the module is in a transformer (``studio.core.graph.roles.ROLES``): embeddings,
    encoder block, attention or FFN; None for everything else."""
    heads: int = 0
    """Attention heads of an "attention" node: what channel pruning removes from it."""
    head_of: int | None = None
    """Id of the attention whose heads split this node: query/key/value (their outputs), the
    node computing the attention scores (its MACs); cutting heads shrinks them alike."""
    query_heads: int = 0
    """Query heads of a decoder's attention (read only: heads are not cut there yet)."""
    kv_heads: int = 0
    """Key/value heads of a decoder's attention: fewer than ``query_heads`` under grouped-query
    attention, where each key/value head serves several query heads."""
    tied_to: int | None = None
    """Id of the layer whose weight this one shares (an LM head tied to the token
    embeddings): cutting or quantizing one changes both."""
    total_params: int = 0
    total_zeros: int = 0
    total_nbytes: int = 0
    total_macs: int = 0

    @property
    def is_leaf(self) -> bool:
        return not self.children

    @property
    def prunable(self) -> bool:
        return self.weight_params > 0

    @property
    def type_label(self) -> str:
        """"BertAttention · attention": the class, then the role a transformer gives it (with a
        decoder attention's head counts, and "tied" for an LM head sharing its weight)."""
        if not self.role:
            return self.op_type
        detail = f" ({self.query_heads} query / {self.kv_heads} key-value heads)" \
            if self.kv_heads else " (tied to the embeddings)" if self.tied_to is not None else ""
        return f"{self.op_type} · {self.role}{detail}"

    @property
    def sparsity(self) -> float:
        """Fraction of this subtree's parameters that are exactly zero."""
        return self.total_zeros / self.total_params if self.total_params else 0.0


class LayerTree:
    """Flat list of :class:`LayerNode`, node 0 being the whole model."""

    def __init__(self, model_name: str, source_format: str) -> None:
        self.model_name = model_name
        self.source_format = source_format
        self.nodes: list[LayerNode] = []
        self._by_name: dict[str, int] = {}
        self.example_input: tuple[int, ...] | None = None
        self.notes: list[str] = []
        """What the figures leave out and why (shapes that could not be inferred), in words."""
        self.channel_groups: list[ChannelGroup] | None = None
        """Layers structured pruning must cut together (traced on the example input); None
        where unknown (ONNX models, no example input)."""

    def add(self, name: str, label: str, op_type: str, parent: int | None) -> LayerNode:
        siblings = self.nodes[parent].children if parent is not None else []
        node = LayerNode(id=len(self.nodes), name=name, label=label, op_type=op_type,
                         parent=parent, row=len(siblings))
        self.nodes.append(node)
        if parent is not None:
            siblings.append(node.id)
        self._by_name[name] = node.id
        return node

    @property
    def root(self) -> LayerNode:
        return self.nodes[0]

    def __len__(self) -> int:
        return len(self.nodes)

    def __iter__(self) -> Iterator[LayerNode]:
        return iter(self.nodes)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def get(self, name: str) -> LayerNode:
        return self.nodes[self._by_name[name]]

    def names(self) -> list[str]:
        return [node.name for node in self.nodes]

    def ancestors(self, node: LayerNode) -> Iterator[LayerNode]:
        """The node's parent, grandparent, ... up to the root."""
        while node.parent is not None:
            node = self.nodes[node.parent]
            yield node

    def subtree(self, node: LayerNode) -> Iterator[LayerNode]:
        """The node and all its descendants, parents before children."""
        stack = [node.id]
        while stack:
            current = self.nodes[stack.pop()]
            yield current
            stack.extend(reversed(current.children))

    def finalize(self) -> LayerTree:
        """Fill the subtree totals; call once after all nodes are added."""
        for node in reversed(self.nodes):  # children always come after their parent
            node.total_params += node.params
            node.total_zeros += node.zeros
            node.total_nbytes += node.nbytes
            node.total_macs += node.macs
            if node.parent is not None:
                parent = self.nodes[node.parent]
                parent.total_params += node.total_params
                parent.total_zeros += node.total_zeros
                parent.total_nbytes += node.total_nbytes
                parent.total_macs += node.total_macs
        return self
