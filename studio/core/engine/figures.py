"""The figures a report gives for one model: the task's metric on the exported file itself,
agreement with the uncompressed model, sizes, MACs.

The metric is measured on the ONNX file in onnxruntime, not on the torch model, so the figure is
the one a deployment will see; parity then says how far the file is from the torch model it
came from, and ``agreement`` how far it is from the uncompressed torch model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from studio.core.data.metrics import agreement, higher_is_better
from studio.core.export.measure import (
    compare_outputs,
    run_onnx,
    score_outputs,
    torch_outputs,
    zip_bytes,
)
from studio.core.export.onnx_export import onnx_file_bytes
from studio.core.methods.pruning.measure import measure
from studio.core.models.inputs import InputSpec


def model_figures(model: nn.Module, onnx_path: Path, example: InputSpec,
                  test: TensorDataset, parity_samples: int = 256, metric: str = "accuracy",
                  reference: Tensor | None = None) -> dict[str, Any]:
    """``reference``: the uncompressed torch model's outputs on ``test`` (computed once by the
    caller); agreement metrics need it, and with it ``agreement`` reports all three."""
    size = measure(model, example.make_tensor())
    inputs = test.tensors[0]
    outputs = run_onnx(onnx_path, inputs)
    figures: dict[str, Any] = {
        "metric": {"name": metric, "value": score_outputs(outputs, test, metric, reference),
                   "higher_is_better": higher_is_better(metric)},
    }
    if reference is not None:
        figures["agreement"] = agreement(reference, outputs)
    checked = inputs[:parity_samples]
    return figures | {
        "params": size.params,
        "nonzero_params": size.nonzero_params,
        "macs": size.macs,
        "onnx_bytes": onnx_file_bytes(onnx_path),
        "zip_bytes": zip_bytes(onnx_path),
        "parity": compare_outputs(torch_outputs(model, checked).numpy(),
                                  outputs[:len(checked)].astype(np.float32)),
    }
