"""Walking an ONNX graph's subgraphs (If/Loop/Scan bodies): one place for the attribute rules."""

from __future__ import annotations

from collections.abc import Iterator

import onnx


def subgraphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """The graphs held directly by ``graph``'s nodes (not their own subgraphs)."""
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                yield attribute.g
            elif attribute.type == onnx.AttributeProto.GRAPHS:
                yield from attribute.graphs


def all_graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """``graph`` and every graph nested in it, at any depth."""
    yield graph
    for sub in subgraphs(graph):
        yield from all_graphs(sub)
