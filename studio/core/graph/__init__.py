"""The layer tree: a model's modules (or ONNX name scopes) with shapes, sizes and costs."""

from studio.core.graph.tree import LayerNode, LayerTree

__all__ = ["LayerNode", "LayerTree"]
