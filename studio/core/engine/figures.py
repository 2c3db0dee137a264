"""The figures a report gives for one model: accuracy of the exported file itself, sizes, MACs.

Accuracy is measured on the ONNX file in onnxruntime, not on the torch model, so the figure is
the one a deployment will see; parity then says how far the file is from the torch model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset

from studio.core.export.measure import onnx_accuracy, parity, zip_bytes
from studio.core.export.onnx_export import onnx_file_bytes
from studio.core.graph.torch_tree import build_torch_tree
from studio.core.models.inputs import InputSpec


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(parameters, nonzero parameters), each tensor counted once."""
    seen: set[int] = set()
    total = nonzero = 0
    for param in model.parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        total += param.numel()
        nonzero += int(torch.count_nonzero(param.detach()))
    return total, nonzero


def model_figures(model: nn.Module, onnx_path: Path, example: InputSpec,
                  test: TensorDataset, parity_samples: int = 256) -> dict[str, Any]:
    params, nonzero = parameter_counts(model)
    tree = build_torch_tree(model, example, "model")
    inputs = test.tensors[0][:parity_samples]
    return {
        "metric": {"name": "accuracy", "value": onnx_accuracy(onnx_path, test)},
        "params": params,
        "nonzero_params": nonzero,
        "macs": tree.root.total_macs,
        "onnx_bytes": onnx_file_bytes(onnx_path),
        "zip_bytes": zip_bytes(onnx_path),
        "parity": parity(model, onnx_path, inputs),
    }
