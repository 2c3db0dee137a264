"""Per-channel means (or largest magnitudes) of intermediate tensors of an ONNX file over
calibration batches.

Bias correction needs the expected input of each quantized layer, smoothing its largest. The
tensors are exposed as extra graph outputs of a copy of the file and reduced batch by batch, so
memory holds one batch of activations, not the whole calibration split (MiniLM's: gigabytes).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from studio.core.export.measure import ort_session
from studio.core.export.onnx_export import save_onnx


def channel_means(path: Path, channel_axis: Mapping[str, int],
                  batches: Iterable[Mapping[str, np.ndarray]], absmax: bool = False
                  ) -> dict[str, np.ndarray]:
    """Tensor name -> mean (``absmax``: largest magnitude) over every axis but
    ``channel_axis[name]`` (negative counts from the end), over every batch of feeds.
    Tensors that are not float are left out."""
    model = onnx.load(str(path))
    present = {o.name for o in model.graph.output}
    for name in channel_axis:
        if name not in present:
            model.graph.output.append(helper.make_tensor_value_info(
                name, onnx.TensorProto.FLOAT, None))
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    names = list(channel_axis)
    with tempfile.TemporaryDirectory(prefix=".means.", dir=path.parent) as scratch:
        session = ort_session(save_onnx(model, Path(scratch) / "exposed.onnx"))
        for feeds in batches:
            for name, value in zip(names, session.run(names, dict(feeds)), strict=True):
                if value.dtype.kind != "f" or value.ndim == 0:
                    continue
                axis = channel_axis[name] % value.ndim
                moved = np.moveaxis(value.astype(np.float64), axis, -1)
                flat = moved.reshape(-1, moved.shape[-1])
                if absmax:
                    sums[name] = np.maximum(sums.get(name, 0), np.abs(flat).max(axis=0))
                    counts[name] = 1
                else:
                    sums[name] = sums.get(name, 0) + flat.sum(axis=0)
                    counts[name] = counts.get(name, 0) + len(flat)
    return {name: (sums[name] / counts[name]).astype(np.float32) for name in sums}
