"""Calibration that chooses per tensor: the activation range that quantizes it best.

One calibration pass with onnxruntime's entropy calibrator gives, for every tensor static int8
quantizes, a histogram of its values and the entropy range. From the histogram come the other
candidates: min-max, two percentiles and the clip that minimises the squared error of uint8
rounding. Each tensor takes the candidate with the least error on its own values, and the
choices go to ``quantize_static`` as ``TensorQuantOverrides`` (rmin/rmax). One method for the
whole model (what ``calibrate_method`` offers) clips some tensors too much and others too little.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod
from onnxruntime.quantization.calibrate import create_calibrator

BINS = 1024
PERCENTILES = (99.9, 99.99)
CLIPS = np.linspace(0.25, 1.0, 16)
"""Fractions of the min-max range tried for the MSE-optimal clip."""
LEVELS = 255
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclass
class RangeChoice:
    overrides: dict[str, list[dict[str, np.ndarray]]]
    """``TensorQuantOverrides`` for quantize_static: tensor -> [{rmin, rmax}]."""
    methods: dict[str, str]
    """Tensor -> the candidate it took (minmax, percentile, entropy, mse)."""

    def counts(self) -> dict[str, int]:
        return dict(Counter(self.methods.values()))


def rounding_error(hist: np.ndarray, centres: np.ndarray, low: float, high: float) -> float:
    """Squared error of uint8 asymmetric rounding (the range widened to hold 0, as
    onnxruntime does) of values at ``centres`` counted by ``hist``."""
    low, high = min(low, 0.0), max(high, 0.0)
    if high - low <= 0:
        return float((hist * centres ** 2).sum())
    scale = (high - low) / LEVELS
    zero = np.round(-low / scale)
    levels = np.clip(np.round(centres / scale) + zero, 0, LEVELS)
    return float((hist * (centres - (levels - zero) * scale) ** 2).sum())


def _percentile_range(hist: np.ndarray, centres: np.ndarray, percent: float
                      ) -> tuple[float, float]:
    cumulative = np.cumsum(hist) / max(hist.sum(), 1)
    tail = (100.0 - percent) / 200.0
    low = centres[min(np.searchsorted(cumulative, tail), len(centres) - 1)]
    high = centres[min(np.searchsorted(cumulative, 1.0 - tail), len(centres) - 1)]
    return float(low), float(high)


def candidates(hist: np.ndarray, edges: np.ndarray, low: float, high: float,
               entropy: tuple[float, float] | None) -> dict[str, tuple[float, float]]:
    """Named ranges to try for one tensor whose values lie in [low, high]."""
    centres = (edges[:-1] + edges[1:]) / 2
    found = {"minmax": (low, high)}
    for percent in PERCENTILES:
        found[f"percentile {percent}"] = _percentile_range(hist, centres, percent)
    if entropy is not None:
        found["entropy"] = entropy
    errors = [rounding_error(hist, centres, low * f, high * f) for f in CLIPS]
    best = CLIPS[int(np.argmin(errors))]
    found["mse"] = (low * float(best), high * float(best))
    return found


def _histograms(model_path: Path, reader: CalibrationDataReader,
                op_types: list[str] | None) -> tuple[dict, Any]:
    with tempfile.TemporaryDirectory(prefix=".calib.", dir=model_path.parent) as scratch:
        calibrator = create_calibrator(
            model_path, op_types, Path(scratch) / "augmented.onnx", CalibrationMethod.Entropy,
            extra_options={"num_bins": BINS, "num_quantized_bins": 128})
        with contextlib.redirect_stdout(io.StringIO()):  # it prints a line per pass
            calibrator.collect_data(reader)
            entropy = calibrator.compute_data()
        return calibrator.collector.histogram_dict, entropy


def choose_ranges(model_path: Path, make_reader: Callable[[], CalibrationDataReader]
                  ) -> RangeChoice:
    """Collect histograms of every tensor static int8 quantizes in ``model_path`` over the
    batches each reader ``make_reader`` gives, and pick each one's range. A model with
    non-finite activations (a transformer's additive attention mask, -3.4e38) cannot be
    histogrammed whole; then only the tensors around its weighted layers are (or none, when
    those hold some too), and the rest keep onnxruntime's min-max ranges."""
    try:
        histograms, entropy = _histograms(model_path, make_reader(), None)
    except ValueError:  # "supplied range of [-inf, inf] is not finite"
        try:
            histograms, entropy = _histograms(model_path, make_reader(), list(WEIGHTED_OPS))
        except ValueError:
            return RangeChoice({}, {})  # every tensor keeps its min-max range
    overrides: dict[str, list[dict[str, np.ndarray]]] = {}
    methods: dict[str, str] = {}
    for tensor, (hist, edges, low, high, *_rest) in histograms.items():
        hist, edges = np.asarray(hist, np.float64), np.asarray(edges, np.float64)
        centres = (edges[:-1] + edges[1:]) / 2
        known = entropy.data.get(tensor) if hasattr(entropy, "data") else None
        entropy_range = (float(known.range_value[0]), float(known.range_value[1])) \
            if known is not None else None
        options = candidates(hist, edges, float(low), float(high), entropy_range)
        name, (rmin, rmax) = min(options.items(),
                                 key=lambda kv: rounding_error(hist, centres, *kv[1]))
        overrides[tensor] = [{"rmin": np.array(min(rmin, 0.0), np.float32),  # ORT reads
                              "rmax": np.array(max(rmax, 0.0), np.float32)}]  # their dtype
        methods[tensor] = name.split()[0]
    return RangeChoice(overrides, methods)
