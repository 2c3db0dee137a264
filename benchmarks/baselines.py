"""What a user would do without the studio: plain torch-pruning and plain onnxruntime int8.

These are the baselines the Pareto benchmark holds the engine against, so they are written with
the libraries directly (their documented calls, library defaults where a user would not think to
change them) and deliberately share no code with ``studio.core.methods``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
import torch_pruning as tp
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    quantize_static,
)
from torch import nn
from torch.utils.data import TensorDataset

from studio.core.jobs import CancelToken
from studio.core.train.loop import TrainConfig, cross_entropy, train

PLAIN_PRUNING_RATIO = 0.5
PLAIN_INT8_SETTINGS: dict[str, Any] = {
    "quant_format": "QDQ", "per_channel": False, "calibrate_method": "MinMax",
    "activation_type": "library default (QInt8)", "weight_type": "library default (QInt8)",
    "quant_pre_process": False,
}
"""Recorded in the benchmark JSON so the baseline's choices are visible next to its figures."""


class ImageReader(CalibrationDataReader):
    """The simplest reader onnxruntime's docs show: one batch-1 feed per calibration image."""

    def __init__(self, images: torch.Tensor, input_name: str = "input") -> None:
        self._feeds: Iterator[dict[str, np.ndarray]] = iter(
            {input_name: image.unsqueeze(0).numpy().astype(np.float32)} for image in images)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def final_linear(model: nn.Module) -> nn.Linear:
    """The classifier layer, which channel pruning must leave at one output per class."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("the model has no Linear layer to keep as the classifier")
    return linears[-1]


def torch_pruning_magnitude(model: nn.Module, example: torch.Tensor,
                            ratio: float = PLAIN_PRUNING_RATIO) -> nn.Module:
    """A pruned deep copy: torch-pruning's MetaPruner, L2 magnitude, one shot, head kept."""
    pruned = copy.deepcopy(model).cpu().eval()
    pruner = tp.pruner.MetaPruner(
        pruned, example, importance=tp.importance.MagnitudeImportance(p=2),
        pruning_ratio=ratio, ignored_layers=[final_linear(pruned)])
    pruner.step()
    return pruned


def fine_tune(model: nn.Module, data: TensorDataset, config: TrainConfig) -> nn.Module:
    """Plain cross-entropy fine-tuning (no distillation) through the studio's training loop.

    The same loop (optimizer, schedule, batch order) as the engine's recovery stage, so the only
    difference from the engine's structured+KD row is the loss, not the training recipe.
    """
    torch.manual_seed(config.seed)
    for _ in train(model, data, config, CancelToken(), cross_entropy, "plain fine-tune"):
        pass
    return model.eval()


def ort_static_int8(src: str | Path, dst: str | Path, calibration: TensorDataset) -> Path:
    """``quantize_static`` with the defaults a user picks: QDQ, per-tensor, MinMax."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    input_name = onnx.load(str(src), load_external_data=False).graph.input[0].name
    quantize_static(str(src), str(dst), ImageReader(calibration.tensors[0], input_name),
                    quant_format=QuantFormat.QDQ, per_channel=False,
                    calibrate_method=CalibrationMethod.MinMax)
    return dst
