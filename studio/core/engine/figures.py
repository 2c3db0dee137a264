"""The figures a report gives for one model: accuracy of the exported file itself, sizes, MACs.

Accuracy is measured on the ONNX file in onnxruntime, not on the torch model, so the figure is
the one a deployment will see; parity then says how far the file is from the torch model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import TensorDataset

from studio.core.export.measure import onnx_accuracy, parity, zip_bytes
from studio.core.export.onnx_export import onnx_file_bytes
from studio.core.methods.pruning.measure import measure
from studio.core.models.inputs import InputSpec


def model_figures(model: nn.Module, onnx_path: Path, example: InputSpec,
                  test: TensorDataset, parity_samples: int = 256) -> dict[str, Any]:
    size = measure(model, example.make_tensor())
    inputs = test.tensors[0][:parity_samples]
    return {
        "metric": {"name": "accuracy", "value": onnx_accuracy(onnx_path, test)},
        "params": size.params,
        "nonzero_params": size.nonzero_params,
        "macs": size.macs,
        "onnx_bytes": onnx_file_bytes(onnx_path),
        "zip_bytes": zip_bytes(onnx_path),
        "parity": parity(model, onnx_path, inputs),
    }
