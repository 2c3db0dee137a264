"""A per-layer latency table: each convolution or linear configuration the search meets is
timed once in onnxruntime (alone, at the batch and thread count the user targets), and a
model's latency is estimated as the sum over its layers, so most trials need no export or
full timing.

The sum leaves out what runs between the layers (pooling, activations, adds; batch norms are
folded into the convolutions on export) and the runtime's per-call overhead, so it ranks models
rather than predicting their milliseconds; the full-fidelity trials time the real file. Kept as
JSON beside the study, so a resumed search or another worker reuses what was timed.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from studio.core.atomic import write_text_atomic
from studio.core.export.measure import DEFAULT_THREADS, latency_ms
from studio.core.export.onnx_export import export_onnx
from studio.core.graph.observe import observe

TIMED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_CONV_FIELDS = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation",
                "groups")


def layer_config(module: nn.Module, input_shape: tuple[int, ...]) -> dict[str, Any]:
    """What decides a layer's time: its kind, its shape settings and its input's shape past
    the batch."""
    if isinstance(module, nn.Linear):
        fields = {"in_features": module.in_features, "out_features": module.out_features}
    else:
        fields = {name: getattr(module, name) for name in _CONV_FIELDS}
    return {"op": type(module).__name__, "bias": module.bias is not None, **fields,
            "input": list(input_shape[1:])}


def _key(config: dict[str, Any]) -> str:
    return json.dumps(config, sort_keys=True)


class LayerLatencyTable:
    """Milliseconds per layer configuration at ``batch`` on ``threads`` onnxruntime threads,
    read from and saved to ``path`` (None: kept in memory)."""

    def __init__(self, batch: int, threads: int = DEFAULT_THREADS, repeats: int = 10,
                 path: Path | None = None) -> None:
        self.batch, self.threads, self.repeats, self.path = batch, threads, repeats, path
        self.entries: dict[str, float] = {}
        self.measured = 0
        """Configurations this table timed itself (the rest came from the file)."""
        self._read()

    def _read(self) -> None:
        """Take what the file holds at this batch and thread count (another worker of the
        same search may have timed a layer since)."""
        if self.path is None or not self.path.exists():
            return
        saved = json.loads(self.path.read_text())
        if saved.get("batch") == self.batch and saved.get("threads") == self.threads:
            self.entries = {**{k: float(v) for k, v in saved.get("layers", {}).items()},
                            **self.entries}

    def layer_ms(self, module: nn.Module, input_shape: tuple[int, ...]) -> float:
        key = _key(layer_config(module, input_shape))
        if key not in self.entries:
            self._read()
        if key not in self.entries:
            self.entries[key] = self._time(module, input_shape)
            self.measured += 1
            self.save()
        return self.entries[key]

    def _time(self, module: nn.Module, input_shape: tuple[int, ...]) -> float:
        layer = type(module)(**_init_arguments(module)).eval()
        example = torch.zeros((1, *input_shape[1:]))
        with tempfile.TemporaryDirectory(prefix="studio-layer-") as scratch:
            path = export_onnx(layer, example, Path(scratch) / "layer.onnx",
                               external_data=False)
            inputs = np.random.default_rng(0).standard_normal(
                (self.batch, *input_shape[1:])).astype(np.float32)
            timed = latency_ms({"layer": path}, {self.batch: inputs}, repeats=self.repeats,
                               threads=self.threads)
        return timed["layer"][self.batch]

    def model_ms(self, model: nn.Module, example: torch.Tensor) -> float:
        """The sum of the table's times for every conv and linear ``model`` runs on
        ``example`` (layers met for the first time are timed now)."""
        seen: list[tuple[nn.Module, tuple[int, ...]]] = []

        def keep(module: nn.Module, args: tuple, _out: Any) -> None:
            seen.append((module, tuple(args[0].shape)))

        observe(model, example, [(m, keep) for m in model.modules() if isinstance(m, TIMED)])
        return sum(self.layer_ms(module, shape) for module, shape in seen)

    def save(self) -> None:
        if self.path is not None:
            write_text_atomic(self.path, json.dumps(
                {"batch": self.batch, "threads": self.threads, "layers": self.entries},
                indent=1, sort_keys=True) + "\n")


def _init_arguments(module: nn.Module) -> dict[str, Any]:
    if isinstance(module, nn.Linear):
        return {"in_features": module.in_features, "out_features": module.out_features,
                "bias": module.bias is not None}
    return {**{name: getattr(module, name) for name in _CONV_FIELDS},
            "bias": module.bias is not None}
