"""The float file as static int8 should see it: equalized (and smoothed) when the recipe asks,
written beside it; and one batch of its calibration feeds for checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from torch.utils.data import TensorDataset

from studio.core.export.onnx_export import save_onnx
from studio.core.methods.quantization.equalization import equalize
from studio.core.methods.quantization.ort import calibration_batches
from studio.core.methods.quantization.smoothing import smooth
from studio.core.models.onnx_feeds import Feeder
from studio.core.plan.stages import QuantizeSection

PREPARED_FILE = "compressed-float-prepared.onnx"


def prepare_float(float_path: Path, section: QuantizeSection, calibration: TensorDataset,
                  feed: Feeder | None, report: dict[str, Any]) -> tuple[Path, list[str]]:
    """``float_path`` itself, or a function-preserving rewrite of it (cross-layer equalization,
    SmoothQuant) that quantizes better, and the nodes it added that must stay float; what was
    done goes into ``report``."""
    if not section.equalize and section.smooth_alpha is None:
        return float_path, []
    model = onnx.load(str(float_path))
    if section.equalize:
        report["equalized_pairs"] = equalize(model)
    target = float_path.with_name(PREPARED_FILE)
    added: list[str] = []
    if section.smooth_alpha is not None:
        save_onnx(model, target)
        smoothed = smooth(model, target, section.smooth_alpha,
                          calibration_batches(target, calibration, feed))
        report["smoothing"] = {"alpha": section.smooth_alpha, **smoothed.to_json()}
        added = smoothed.added
    save_onnx(model, target)
    return target, added


def check_feeds(path: Path, calibration: TensorDataset, feed: Feeder | None
                ) -> dict[str, np.ndarray]:
    """The first calibration batch as the file's feeds."""
    return next(iter(calibration_batches(path, calibration, feed)))
