"""Unstructured magnitude pruning of an ONNX file's weight initializers, for models that come
without their torch module.

The weights are zeroed in place with the same mask functions the torch path uses (per layer,
or one global threshold). Nodes inside If/Loop/Scan bodies are reached by the names the layer
tree gives them; a weight kept in an external data file is read one tensor at a time. Only
unstructured pruning is possible here: removing channels needs
the dependency graph of the torch model, and importance other than magnitude needs gradients.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from studio.core.graph.onnx_walk import all_graphs, walk_nodes
from studio.core.methods.pruning.unstructured import DEFAULT_LAYER_CAP, global_masks, layer_masks
from studio.core.models.onnx_weights import read_array, tensor_dtype
from studio.core.plan.channels import DENSE_ZEROS_NOTE

WEIGHT_INPUT = {"Conv": 1, "ConvTranspose": 1, "Gemm": 1, "MatMul": 1}
"""Op -> which input is the weight (as the layer tree reads it)."""


def _initializers(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    """Every graph's initializers by name (names are unique across a model's graphs)."""
    return {t.name: t for graph in all_graphs(model.graph) for t in graph.initializer}


def weight_initializers(model: onnx.ModelProto) -> dict[str, str]:
    """Node name (as the layer tree names it) -> the float initializer holding its weight,
    for nodes that have one, in bodies of control-flow nodes too."""
    initializers = _initializers(model)
    found = {}
    for walked in walk_nodes(model.graph):
        node = walked.node
        index = WEIGHT_INPUT.get(node.op_type)
        tensor = initializers.get(node.input[index]) if index is not None \
            and len(node.input) > index else None
        if tensor is not None and np.issubdtype(tensor_dtype(tensor), np.floating):
            found[walked.name] = tensor.name
    return found


def prune_initializers(model: onnx.ModelProto, sparsity: Mapping[str, float],
                       global_threshold: bool = False,
                       layer_cap: float = DEFAULT_LAYER_CAP, data_dir: Path | None = None
                       ) -> dict[str, Any]:
    """Zero the smallest-magnitude weights of each node in ``sparsity`` (node name ->
    fraction), in place; returns a JSON-ready report of what was asked and achieved.

    A weight shared by several nodes is pruned once, at the first node's fraction.
    ``global_threshold`` draws one threshold across all the weights (the same total count
    removed), each layer losing at most ``layer_cap``. ``data_dir``: where the model's
    external data is read from; a pruned weight is held in the model from then on.
    """
    initializers = _initializers(model)
    weight_of = weight_initializers(model)
    owners: dict[str, str] = {}  # initializer -> node that prunes it
    skipped: list[str] = []
    for node_name in sparsity:
        weight = weight_of.get(node_name)
        if weight is None:
            skipped.append(node_name)
        else:
            owners.setdefault(weight, node_name)
    weights = {owner: read_array(initializers[weight], data_dir)
               for weight, owner in owners.items()}
    scores = {name: torch.from_numpy(np.abs(array).astype(np.float32))
              for name, array in weights.items()}
    asked = {name: sparsity[name] for name in scores}
    if global_threshold and scores:
        total = sum(score.numel() for score in scores.values())
        overall = sum(scores[name].numel() * s for name, s in asked.items()) / total
        masks = global_masks(scores, overall, layer_cap)
    else:
        masks = layer_masks(scores, asked)
    layers = {}
    for weight, owner in owners.items():
        pruned = np.where(masks.masks[owner].numpy(), weights[owner], 0).astype(
            weights[owner].dtype)
        initializers[weight].CopyFrom(numpy_helper.from_array(pruned, weight))
        layers[owner] = {"weight": weight, "asked": asked[owner],
                         "sparsity": 1.0 - np.count_nonzero(pruned) / pruned.size}
    notes = [DENSE_ZEROS_NOTE] if layers else []
    if skipped:
        notes.append(f"{len(skipped)} layer(s) hold no float weight initializer to prune "
                     f"({', '.join(skipped[:4])}{' ...' if len(skipped) > 4 else ''}); "
                     "left as they are.")
    return {"mode": "global" if global_threshold else "per-layer", "layers": layers,
            "skipped": skipped, "notes": notes}
