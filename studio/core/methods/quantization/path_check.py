"""What a quantized file costs against the float file it came from, measured on one
calibration batch: output cosine and latency ratio.

Asking for "int8" must never silently give a file slower than fp32 (dynamic int8 convolutions
run several times slower on CPU) or one whose outputs are wrecked; this check makes both
visible in the report, whatever path was chosen or forced.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from studio.core.data.metrics import cosine
from studio.core.export.measure import latency_ms, ort_session

REPEATS = 5
SLOWER = 1.0
"""Latency ratio above which the quantized file is slower than fp32."""
WRECKED = 0.95
"""Output cosine below which the quantized file no longer computes what fp32 did."""


@dataclass(frozen=True)
class PathCheck:
    cosine: float
    latency_ratio: float
    """Quantized / float median latency on the batch."""

    @property
    def slower(self) -> bool:
        return self.latency_ratio > SLOWER

    @property
    def wrecked(self) -> bool:
        return self.cosine < WRECKED

    def to_json(self) -> dict[str, float]:
        return {"cosine": round(self.cosine, 5), "latency_ratio": round(self.latency_ratio, 3)}


def check_path(float_path: Path, quantized: Path, feeds: Mapping[str, np.ndarray],
               repeats: int = REPEATS) -> PathCheck:
    """Compare the two files on one batch of ``feeds`` (the files' inputs by name)."""
    outputs = {}
    for name, path in (("float", float_path), ("quantized", quantized)):
        outputs[name] = ort_session(path).run(None, dict(feeds))[0].astype(np.float32)
    rows = len(next(iter(feeds.values())))
    timings = latency_ms({"float": float_path, "quantized": quantized}, {rows: dict(feeds)},
                         repeats=repeats, warmup=1)
    ratio = timings["quantized"][rows] / max(timings["float"][rows], 1e-9)
    return PathCheck(cosine(outputs["float"], outputs["quantized"]), ratio)
