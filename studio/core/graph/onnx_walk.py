"""Walking an ONNX graph's subgraphs (If/Loop/Scan bodies): one place for the attribute rules
and for the names the layer tree, pruning and the quantizers give every node."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import onnx

CONTROL_FLOW_OPS = frozenset({"If", "Loop", "Scan"})


def bodies(node: onnx.NodeProto) -> Iterator[tuple[str, onnx.GraphProto]]:
    """(attribute name, graph) of each graph a node holds: ``then_branch``, ``body``..."""
    for attribute in node.attribute:
        if attribute.type == onnx.AttributeProto.GRAPH:
            yield attribute.name, attribute.g
        elif attribute.type == onnx.AttributeProto.GRAPHS:
            for index, graph in enumerate(attribute.graphs):
                yield f"{attribute.name}.{index}", graph


def subgraphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """The graphs held directly by ``graph``'s nodes (not their own subgraphs)."""
    for node in graph.node:
        for _, body in bodies(node):
            yield body


def all_graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """``graph`` and every graph nested in it, at any depth."""
    yield graph
    for sub in subgraphs(graph):
        yield from all_graphs(sub)


def node_names(graph: onnx.GraphProto, prefix: str = "") -> list[str]:
    """The name the layer tree shows for each node: its own, ``<op>_<index>`` when it has
    none, with ``_<index>`` added when it repeats an earlier node's name. Nodes of a body get
    ``prefix`` (``If_3/then_branch/``) unless their name already starts with it, so the names
    are unique in the whole model and naming a named model changes nothing."""
    names: list[str] = []
    seen: set[str] = set()
    for index, node in enumerate(graph.node):
        name = node.name or f"{node.op_type}_{index}"
        if not name.startswith(prefix):
            name = prefix + name
        if name in seen:
            name = f"{name}_{index}"
        seen.add(name)
        names.append(name)
    return names


@dataclass(frozen=True)
class WalkedNode:
    name: str
    """Unique in the model: see :func:`node_names`."""
    node: onnx.NodeProto
    body: str | None
    """``If_3/then_branch`` for a node inside that body; None in the main graph."""


def walk_nodes(graph: onnx.GraphProto, prefix: str = "", body: str | None = None
               ) -> Iterator[WalkedNode]:
    """Every node of ``graph`` in order, each followed at once by the nodes of its bodies."""
    for name, node in zip(node_names(graph, prefix), graph.node, strict=True):
        yield WalkedNode(name, node, body)
        for attribute, sub in bodies(node):
            yield from walk_nodes(sub, f"{name}/{attribute}/", f"{name}/{attribute}")
